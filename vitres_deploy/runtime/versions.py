"""Versions of the runtime libraries, and the one reading of a TensorRT version.

Nothing heavy is imported unless the package is installed (``find_spec`` first), so the backend registry can
report versions on machines without onnxruntime-gpu or TensorRT.
"""

from __future__ import annotations

import importlib
import importlib.util

#: TensorRT major versions whose Python API the ``tensorrt`` and ``ort-trt`` backends are written against.
SUPPORTED_TENSORRT_MAJORS = (10, 11)


def installed_version(module: str) -> str | None:
    """``__version__`` of the importable module ``module`` (``onnxruntime``, ``tensorrt``), None when absent."""
    if importlib.util.find_spec(module) is None:
        return None
    return str(importlib.import_module(module).__version__)


def major_version(version: str) -> int:
    """The major number of a version string: ``"10.13.2.6"`` -> 10."""
    return int(version.split(".")[0])


def tensorrt_major() -> int | None:
    """Major version of the installed ``tensorrt`` Python package, or None when it is not installed."""
    version = installed_version("tensorrt")
    return None if version is None else major_version(version)
