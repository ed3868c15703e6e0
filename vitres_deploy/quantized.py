"""Accuracy in the precision a network will run in: a sub-network's static int8 ONNX, calibrated on training
images, evaluated in ONNX Runtime on the CPU.

The float network is extracted from the supernet, exported with the shared ONNX export primitive and quantized
(:func:`~vitres_deploy.convert.int8.quantize_onnx`) on :meth:`ImageData.calibration_images` (seeded training
images, never hold-out or test), the same way ``export --precision int8`` quantizes a bundle.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arch import Arch, MixedArch
from .convert.int8 import Int8Settings, quantize_onnx, stage_nodes
from .convert.to_onnx import export_onnx
from .data import ImageData
from .errors import RuntimeFailure, SettingsError, first_line
from .evaluate import TopKAccuracy, count_topk
from .runtime.cache import network_onnx
from .supernet import ViTResNASSupernet
from .vit_resnas import ViTResNAS


@dataclass(frozen=True)
class Calibration:
    """How int8 networks are calibrated: ``images`` training images drawn by ``seed``, quantized with ``int8``."""

    images: int = 512
    seed: int = 0
    int8: Int8Settings = field(default_factory=Int8Settings)

    def __post_init__(self) -> None:
        if self.images < 1:
            raise SettingsError(f"calibration_images {self.images}: must be at least 1", field="calibration_images")

    @property
    def source(self) -> str:
        """Where the calibration images come from, for records."""
        return f"training images (hold-out excluded), seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (search settings, arch files)."""
        return {"images": self.images, "seed": self.seed, "source": self.source, "int8": self.int8.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["images"]), int(data["seed"]), Int8Settings.from_dict(data["int8"]))


def quantize_network(model: ViTResNAS, sample_shape: tuple[int, ...], data: ImageData, calibration: Calibration,
                     workdir: str | Path, int8_stages: Sequence[int] = (), *,
                     cache_as: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Export the static float network ``model`` into ``workdir`` and quantize it there (only the nodes of the
    1-based ``int8_stages`` when given, :func:`~vitres_deploy.convert.int8.stage_nodes`); returns the int8 ONNX
    file and the quantization record. With ``cache_as`` (what the network is: an arch's hash) the float export
    is taken from, or added to, the export cache (:func:`~vitres_deploy.runtime.cache.network_onnx`)."""
    if cache_as is None:
        fp32 = export_onnx(model, sample_shape, Path(workdir) / "model.fp32.onnx")
    else:
        fp32 = network_onnx(model, sample_shape, cache_as)
    path = Path(workdir) / "model.int8.onnx"
    nodes = None
    if int8_stages:
        nodes = stage_nodes(fp32, {s - 1 for s in int8_stages}, len(model.stages))
    return path, quantize_file(fp32, path, data, calibration, nodes)


def quantize_file(fp32: Path, dst: Path, data: ImageData, calibration: Calibration,
                  nodes: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the static int8 version of the fp32 ONNX file ``fp32`` to ``dst``, calibrated as ``calibration`` says
    on ``data``'s training images (only ``nodes`` quantized when given); returns the quantization record (its
    source names the data)."""
    images = data.calibration_images(calibration.images, calibration.seed).numpy()
    return quantize_onnx(fp32, dst, images, calibration.int8, source=f"{data.kind} {calibration.source}",
                         nodes=nodes)


def evaluate_onnx(path: str | Path, data: ImageData, split: str = "holdout", batch_size: int = 500,
                  limit: int | None = None, threads: int = 1) -> TopKAccuracy:
    """Top-1/top-5 accuracy of the ONNX classifier ``path`` (input ``input``) on ``split``, in ONNX Runtime on the
    CPU with ``threads`` threads. A model ONNX Runtime cannot run is a :class:`RuntimeFailure`."""
    import onnxruntime as ort

    if batch_size < 1:
        raise SettingsError(f"batch_size {batch_size} must be at least 1", field="batch_size")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise RuntimeFailure(f"onnxruntime could not load {Path(path).name}: {first_line(e)}") from None

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": np.ascontiguousarray(x.numpy())})[0])

    return count_topk(predict, data.eval_batches(split, batch_size, limit))


def evaluate_arch_int8(supernet: ViTResNASSupernet, arch: Arch, data: ImageData, calibration: Calibration,
                       split: str = "holdout", batch_size: int = 500, limit: int | None = None) -> TopKAccuracy:
    """Top-1/top-5 accuracy of ``arch``'s int8 network (see the module docstring) on ``split``; a
    :class:`~vitres_deploy.arch.MixedArch` with only its int8 stages quantized."""
    model = supernet.extract(arch).cpu().eval()
    shape = (supernet.space.in_chans, supernet.space.image_size, supernet.space.image_size)
    int8_stages = arch.int8_stages if isinstance(arch, MixedArch) else ()
    with tempfile.TemporaryDirectory(prefix="vitres-int8-eval-") as work:
        plain = arch.plain if isinstance(arch, MixedArch) else arch  # one float export serves every plan
        path, _ = quantize_network(model, shape, data, calibration, work, int8_stages, cache_as=plain.hash)
        return evaluate_onnx(path, data, split, batch_size, limit)
