"""TensorRT engines (plans) for serving: a dynamic-batch optimization profile, and a runner for a built plan.

The latency-table backend (:mod:`vitres_deploy.runtime.tensorrt`) builds engines fixed at one shape, for
timing; a served engine takes every batch of ``--batch-range MIN:OPT:MAX``, so :func:`build_plan` sets one
optimization profile ``(MIN, OPT, MAX)`` on the batch dimension. It shares the backend's version check,
precision rules (fp32 with TF32 cleared; fp16 through ``BuilderFlag.FP16`` on 10.x and a strongly typed
fp16 ONNX on 11.x, where weak typing is gone) and its on-disk timing cache. :class:`PlanRunner` runs a
serialized plan through the backend's runner code (``execute_async_v3`` on device buffers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, CheckFailed
from ..runtime.base import RunnerOptions, TensorSpec
from ..runtime.cache import cache_root
from ..runtime.tensorrt import TensorRTRunner, _device_name, _save_timing_cache, _slug, _torch_dtype, _trt


def build_plan(fp32_onnx: str | Path, fp16_onnx: str | Path | None, precision: str,
               batch_range: tuple[int, int, int], *, device_id: int = 0, workspace_mb: int = 4096,
               cache_dir: str | Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """Serialized engine with the batch dimension profiled at ``batch_range`` (min, opt, max), and its record.

    fp32 and fp16 on TensorRT 10 build from ``fp32_onnx``; fp16 on TensorRT 11 from the strongly typed
    ``fp16_onnx``. The timing cache in the vitres-deploy cache is read and updated.
    """
    trt = _trt()
    device = _device_name(device_id)
    major = int(trt.__version__.split(".")[0])
    strongly_typed = precision == "fp16" and major >= 11
    if strongly_typed and fp16_onnx is None:
        raise BackendUnavailable(f"tensorrt {trt.__version__} builds fp16 only from a strongly typed fp16 ONNX")
    onnx_path = Path(fp16_onnx if strongly_typed else fp32_onnx)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed
                                     else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"tensorrt could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    lo, opt, hi = batch_range
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        sample = tuple(int(d) for d in tensor.shape)[1:]
        if any(d < 0 for d in sample):
            raise CheckFailed(f"tensorrt: input {tensor.name!r} has a dynamic non-batch dimension {tensor.shape}")
        profile.set_shape(tensor.name, (lo, *sample), (opt, *sample), (hi, *sample))
    config.add_optimization_profile(profile)
    timing_path = cache_root(cache_dir) / "tensorrt" / f"timing-{trt.__version__}-{_slug(device)}.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CheckFailed(f"tensorrt failed to build an engine for {onnx_path.name} (see the TensorRT log)")
    _save_timing_cache(config, timing_path)
    record = {"tensorrt": trt.__version__, "device": device,
              "profile": dict(zip(("min", "opt", "max"), batch_range)),
              "fp16_via": None if precision == "fp32" else "strongly typed fp16 ONNX" if strongly_typed
              else "BuilderFlag.FP16", "tf32": False if precision == "fp32" else None}
    return bytes(memoryview(plan)), record


class PlanRunner(TensorRTRunner):
    """A built plan run at batch ``options.batch`` (inside its profile); the rest is the ``tensorrt`` runner."""

    def __init__(self, plan_path: str | Path, options: RunnerOptions | None = None) -> None:
        import torch

        self.options = options or RunnerOptions()
        trt = _trt()
        _device_name(self.options.device_id)
        torch.cuda.set_device(self.options.device_id)
        super(TensorRTRunner, self).__init__(torch.cuda.Stream(device=self.options.device_id))
        self._trt = trt
        self.plan_path = Path(plan_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"tensorrt {trt.__version__} could not deserialize {self.plan_path.name}: "
                                     "engines only load with the TensorRT version and GPU they were built with")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for n in names:
            if is_input[n]:
                lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0))
                if not lo[0] <= self.options.batch <= hi[0]:
                    raise BackendUnavailable(f"{self.plan_path.name}: batch {self.options.batch} is outside the "
                                             f"engine's profile {lo[0]}..{hi[0]}")
                sample = tuple(int(d) for d in self.engine.get_tensor_shape(n))[1:]
                self.context.set_input_shape(n, (self.options.batch, *sample))
        self._buffers: dict[str, Any] = {}
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.empty(shape, dtype=dtype, device=f"cuda:{self.options.device_id}")
            self.context.set_tensor_address(n, self._buffers[n].data_ptr())
        self.input_specs = [TensorSpec(n, tuple(self._buffers[n].shape), str(self._buffers[n].dtype).split(".")[-1])
                            for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
