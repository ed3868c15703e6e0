"""Where backends keep what is expensive to rebuild: exported ONNX files, fp16 models, engines, timing caches.

The root is ``$VITRES_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/vitres-deploy``, else
``~/.cache/vitres-deploy``. Every cached file is named by a hash of what it was made from, and
written atomically, so concurrent workers and interrupted runs never leave a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import sha256_file


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
