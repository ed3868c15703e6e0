"""Where backends keep what is expensive to rebuild: exported ONNX files, fp16 and int8 models, engines, timing
caches, the float exports of the networks a search scores in int8.

The root is ``$VITRES_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/vitres-deploy``, else
``~/.cache/vitres-deploy``. Every cached file is named by a hash of what it was made from, and
written atomically, so concurrent workers and interrupted runs never leave a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import package_versions
from ..files import atomic_write, sha256_file

if TYPE_CHECKING:
    from torch import nn

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


def network_onnx(model: nn.Module, sample_shape: Sequence[int], identity: str,
                 cache_dir: str | Path | None = None, *, opset: int | None = None) -> Path:
    """The fp32 ONNX export (dynamic batch) of the static network ``model``, cached by a digest of its structure
    (its modules' description), its weights, the input shape, the opset (None: the exporter's default) and the
    versions of vitres-deploy and the packages that make an export (torch, onnxscript, onnx), and named by
    ``identity`` (what the network is: an arch's hash). The int8 evaluations of a search and the export of a bundle
    export each sub-network once, however many precision plans, searches and exports (an fp32 and an int8 one, one
    resumed after a failed check) take it; other weights (another checkpoint, a fine-tuned network) are another
    file."""
    from ..convert.to_onnx import DEFAULT_OPSET, export_onnx

    opset = DEFAULT_OPSET if opset is None else opset
    digest = hashlib.sha256(json.dumps({"modules": repr(model), "shape": list(sample_shape), "opset": opset,
                                        "versions": package_versions(("onnxscript",))}, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    dst = cache_root(cache_dir) / "networks" / f"{identity}-{digest.hexdigest()[:16]}.onnx"
    if dst.is_file():
        os.utime(dst)  # recently used: trimmed last
        return dst
    atomic_write(dst, lambda tmp: export_onnx(model, sample_shape, tmp, opset=opset), suffix=".tmp.onnx")
    trim_cache(dst.parent, NETWORK_CACHE_MIB << 20)
    return dst


#: Size the ``networks/`` folder of the cache is trimmed to (a search of a large space scores hundreds of
#: networks of tens of MB each).
NETWORK_CACHE_MIB = 2048


def trim_cache(folder: Path, keep_bytes: int) -> None:
    """Delete the least recently used ``.onnx`` files of ``folder`` until the rest take at most ``keep_bytes``
    (the most recent one is always kept)."""
    files = []
    for f in folder.glob("*.onnx"):
        with contextlib.suppress(FileNotFoundError):  # another process may trim at the same time
            stat = f.stat()
            files.append((stat.st_mtime, stat.st_size, f))
    total = 0
    for i, (_, size, f) in enumerate(sorted(files, reverse=True)):
        total += size
        if i and total > keep_bytes:
            f.unlink(missing_ok=True)
