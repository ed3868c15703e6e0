"""Where backends keep what is expensive to rebuild: exported ONNX files, fp16 and int8 models, engines, timing
caches.

The root is ``$VITRES_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/vitres-deploy``, else
``~/.cache/vitres-deploy``. Every cached file is named by a hash of what it was made from, and
written atomically, so concurrent workers and interrupted runs never leave a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import sha256_file

if TYPE_CHECKING:
    from ..convert.int8 import Int8Settings


def cache_root(override: str | Path | None = None) -> Path:
    """The cache directory (``override`` wins over the environment)."""
    if override is not None:
        return Path(override)
    if os.environ.get("VITRES_DEPLOY_CACHE"):
        return Path(os.environ["VITRES_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vitres-deploy"


def fp16_onnx(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The strongly typed fp16 version of the ONNX file ``path`` (LayerNorm/softmax in fp32), cached by content."""
    from ..convert.fp16 import convert_file

    dst = cache_root(cache_dir) / "fp16" / f"{Path(path).stem}-{sha256_file(path)[:16]}.fp16.onnx"
    if not dst.is_file():
        convert_file(path, dst)
    return dst


def int8_onnx(path: str | Path, settings: Int8Settings, cache_dir: str | Path | None = None) -> Path:
    """The static int8 version of the fp32 ONNX file ``path`` for timing, cached by content and ``settings``:
    calibrated on seeded random inputs (:func:`~vitres_deploy.convert.int8.timing_calibration`; the values
    change the accuracy, not the speed). A file that is quantized already is returned as it is."""
    from ..convert.int8 import TIMING_CALIBRATION, is_quantized, quantize_onnx, timing_calibration

    dst = cache_root(cache_dir) / "int8" / f"{Path(path).stem}-{sha256_file(path)[:16]}-{settings.key()}.int8.onnx"
    if dst.is_file():
        return dst
    if is_quantized(path):
        return Path(path)
    quantize_onnx(path, dst, timing_calibration(path), settings, source=TIMING_CALIBRATION)
    return dst
