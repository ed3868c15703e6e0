"""Versions of the runtime libraries, and the one reading of a TensorRT version.

Nothing heavy is imported unless the package is installed (``find_spec`` first), so the backend registry can
report versions on machines without onnxruntime-gpu or TensorRT.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import re
import sys
from pathlib import Path

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


#: How a library names the TensorRT runtime it links: ``libnvinfer.so.10`` (Linux), ``nvinfer_10.dll`` (Windows).
_NVINFER = re.compile(rb"libnvinfer\.so\.(\d+)|nvinfer_(\d+)\.dll")


def nvinfer_major(library: bytes) -> int | None:
    """The TensorRT major version a shared library links (the ``libnvinfer`` it names), None when it names none."""
    found = _NVINFER.search(library)
    return None if found is None else int(found.group(1) or found.group(2))


def ort_tensorrt_major(capi: Path | None = None) -> int | None:
    """Major version of the TensorRT that ONNX Runtime's TensorRT provider loads, read from the provider library
    in ``capi`` (default: the ``capi`` folder of the installed onnxruntime, where it ships
    ``libonnxruntime_providers_tensorrt.so``); None when there is none or it names none.

    This, not the ``tensorrt`` Python package, is the TensorRT that runs ``ort-trt``: the two may differ.
    """
    if capi is None:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or spec.origin is None:
            return None
        capi = Path(spec.origin).parent / "capi"
    for name in ("libonnxruntime_providers_tensorrt.so", "onnxruntime_providers_tensorrt.dll"):
        if (capi / name).is_file():
            return nvinfer_major((capi / name).read_bytes())
    return None


def nvinfer_loadable(major: int) -> bool:
    """Whether TensorRT ``major``'s runtime library (``libnvinfer.so.<major>``) loads in this process: from the
    library path, or from the ``tensorrt-cu12-libs``/``tensorrt-cu13-libs`` wheel, whose ``tensorrt_libs``
    package loads its libraries when imported (ONNX Runtime's provider then finds them loaded)."""
    if importlib.util.find_spec("tensorrt_libs") is not None:
        importlib.import_module("tensorrt_libs")
    name = f"nvinfer_{major}.dll" if sys.platform == "win32" else f"libnvinfer.so.{major}"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True
