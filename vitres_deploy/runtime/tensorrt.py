"""``tensorrt``: the native TensorRT Python API (10.x and 11.x).

Build: ``OnnxParser`` into a network, a builder config with a workspace limit, one optimization
profile fixed at the profiled shapes (min = opt = max, like ``trtexec --shapes``), and a timing cache
kept on disk; the serialized plan is cached by the hash of everything it depends on, so
:func:`build_engine` can run in worker processes ahead of timing. Run: ``execute_async_v3`` on a torch
CUDA stream with device buffers bound once by ``set_tensor_address``, timed with CUDA events.

Precision: fp32 builds clear TF32. fp16 uses ``BuilderFlag.FP16`` on 10.x; 11.x removed weak typing
(that flag included), so there the ONNX is converted to a strongly typed fp16 model with LayerNorm and
softmax kept in fp32 (:mod:`vitres_deploy.export.fp16`) and parsed into a strongly typed network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, ProfileError
from .base import Runner, RunnerOptions, TensorSpec
from .cache import atomic_write_bytes, cache_root, file_digest, fp16_onnx
from .ort import onnx_input_specs

SUPPORTED_MAJORS = (10, 11)


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("tensorrt: the tensorrt Python package is not installed") from None
    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailable(f"tensorrt {trt.__version__}: only TensorRT 10.x and 11.x are supported")
    return trt


def _device_name(device_id: int) -> str:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt: no CUDA GPU is visible to torch")
    return torch.cuda.get_device_name(device_id)


def _strongly_typed_fp16(trt: Any, options: RunnerOptions) -> bool:
    return options.precision == "fp16" and int(trt.__version__.split(".")[0]) >= 11


def build_engine(onnx_path: str | Path, options: RunnerOptions) -> Path:
    """Build (or find in the cache) the serialized engine of ``onnx_path`` for ``options``; returns its path.

    Safe to call from worker processes: the plan and the timing cache are written atomically.
    """
    trt = _trt()
    device = _device_name(options.device_id)
    major = int(trt.__version__.split(".")[0])
    strongly_typed = _strongly_typed_fp16(trt, options)
    model_path = fp16_onnx(onnx_path, options.cache_dir) if strongly_typed else Path(onnx_path)
    specs = onnx_input_specs(model_path, options.batch)
    root = cache_root(options.cache_dir) / "tensorrt"
    key = hashlib.sha256(json.dumps({
        "onnx": file_digest(model_path), "trt": trt.__version__, "device": device, "precision": options.precision,
        "shapes": [[s.name, list(s.shape)] for s in specs], "workspace_mb": options.workspace_mb,
    }, sort_keys=True).encode()).hexdigest()[:20]
    plan_path = root / "engines" / f"{model_path.stem}-{key}.plan"
    if plan_path.is_file():
        return plan_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ProfileError(f"tensorrt could not parse {model_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for s in specs:
        profile.set_shape(s.name, s.shape, s.shape, s.shape)
    config.add_optimization_profile(profile)
    timing_path = root / f"timing-{trt.__version__}-{_slug(device)}.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ProfileError(f"tensorrt failed to build an engine for {model_path.name} (see the TensorRT log)")
    _save_timing_cache(config, timing_path)
    return atomic_write_bytes(plan_path, bytes(memoryview(plan)))


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timing cache into the file (another worker may have written it meanwhile)."""
    ours = config.get_timing_cache()
    if path.is_file():
        merged = config.create_timing_cache(path.read_bytes())
        merged.combine(ours, True)
        ours = merged
    atomic_write_bytes(path, bytes(memoryview(ours.serialize())))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _torch_dtype(trt: Any, dt: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dtype in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return torch_dtype
    raise ProfileError(f"tensorrt: I/O tensors of type {dt} are not supported")


class TensorRTRunner(Runner):
    """A TensorRT engine from an ONNX file, run with ``execute_async_v3`` on device-resident buffers."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, onnx_path: str | Path, options: RunnerOptions | None = None) -> None:
        import torch

        self.options = options or RunnerOptions()
        trt = _trt()
        _device_name(self.options.device_id)
        torch.cuda.set_device(self.options.device_id)
        super().__init__(torch.cuda.Stream(device=self.options.device_id))
        self._trt = trt
        self.plan_path = build_engine(onnx_path, self.options)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise ProfileError(f"tensorrt could not deserialize {self.plan_path} (built by another TensorRT?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        model_path = fp16_onnx(onnx_path, self.options.cache_dir) if _strongly_typed_fp16(trt, self.options) \
            else Path(onnx_path)
        for spec in onnx_input_specs(model_path, self.options.batch):
            self.context.set_input_shape(spec.name, spec.shape)
        self._buffers: dict[str, Any] = {}
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.empty(shape, dtype=dtype, device=f"cuda:{self.options.device_id}")
            self.context.set_tensor_address(n, self._buffers[n].data_ptr())
        self.input_specs = [TensorSpec(n, tuple(self._buffers[n].shape), str(self._buffers[n].dtype).split(".")[-1])
                            for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]

    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        import torch

        for spec in self.input_specs:
            if spec.name not in inputs:
                raise ProfileError(f"tensorrt: missing input {spec.name!r}")
            host = torch.from_numpy(np.ascontiguousarray(inputs[spec.name]))
            self._buffers[spec.name].copy_(host.to(self._buffers[spec.name].dtype))
        torch.cuda.synchronize(self.options.device_id)

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ProfileError("tensorrt: execute_async_v3 failed (see the TensorRT log)")

    def outputs(self) -> dict[str, np.ndarray]:
        import torch

        self.synchronize()
        out = {}
        for n in self._outputs:
            t = self._buffers[n]
            out[n] = (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
        return out

    def info(self) -> dict[str, Any]:
        major = int(self._trt.__version__.split(".")[0])
        return {
            "tensorrt": self._trt.__version__,
            "plan": self.plan_path.name,
            "fp16_via": None if self.options.precision == "fp32"
            else "strongly typed fp16 ONNX" if major >= 11 else "BuilderFlag.FP16",
            "tf32": False if self.options.precision == "fp32" else None,
            "optimization_profile": {s.name: list(s.shape) for s in self.input_specs},
        }

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._buffers = {}
