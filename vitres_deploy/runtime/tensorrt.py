"""``tensorrt``: the native TensorRT Python API (10.x and 11.x), the one home of TensorRT engines.

Build (:func:`serialize_engine`): ``OnnxParser`` into a network, a builder config with a workspace limit,
one optimization profile on the batch dimension (MIN, OPT, MAX), and a timing cache kept on disk. The
latency-table backend fixes the profile at the profiled shapes (min = opt = max, like ``trtexec --shapes``)
and :func:`build_engine` caches its plan by the hash of everything it depends on, so the profiler builds
every engine ahead of timing, one at a time on the GPU; the export builds a served engine over a batch range
from the same function.
Run (:class:`TensorRTRunner`, from an engine loader: :class:`EngineFile`, a built plan file, or
:class:`EngineFromOnnx`, built or found in the cache when the runner is activated): ``execute_async_v3`` on a
torch CUDA stream with device buffers bound once by ``set_tensor_address``, timed with CUDA events.
A model TensorRT cannot parse or build is an :class:`EngineBuildError`; an engine that does not deserialize
or execute is a :class:`RuntimeFailure`.

Precision: fp32 builds clear TF32. fp16 engines are built, on 10.x and 11.x alike, from a strongly typed fp16
ONNX (:mod:`vitres_deploy.convert.fp16`: LayerNorm, softmax and the nodes an export keeps for their activation
range stay fp32) parsed into a strongly typed network, which runs every tensor at the type the ONNX gives
it. 11.x has no other way (it removed weak typing, ``BuilderFlag.FP16`` included); on 10.x that flag would
let TensorRT run the nodes kept in fp32 in fp16 too. int8 engines are explicitly quantized: the ONNX of the
``tensorrt`` int8 layout (:data:`~vitres_deploy.convert.int8.LAYOUTS`: QuantizeLinear/DequantizeLinear nodes,
int8, zero points 0) parsed into a strongly typed network, with no ``BuilderFlag.INT8`` and no calibrator (the
implicit quantization TensorRT 10 deprecated and 11 removed; "use explicit quantization with Strong Typing.
Precision-control build flags are not required and should not be specified":
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, EngineBuildError, RuntimeFailure
from ..files import atomic_write_bytes, sha256_file
from ..text import slug
from .base import Runner, RunnerOptions, TensorSpec, require_cuda_device
from .cache import cache_root, fp16_onnx, int8_onnx
from .loaders import OnnxFile
from .ort import INT8_VIA, int8_settings, onnx_input_specs
from .versions import SUPPORTED_TENSORRT_MAJORS, major_version


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; :class:`BackendUnavailable` when it is missing or not 10.x/11.x."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("tensorrt: the tensorrt Python package is not installed") from None
    if major_version(trt.__version__) not in SUPPORTED_TENSORRT_MAJORS:
        raise BackendUnavailable(f"tensorrt {trt.__version__}: only TensorRT 10.x and 11.x are supported")
    return trt


def cuda_device_name(device_id: int) -> str:
    """Name of CUDA device ``device_id``; :class:`BackendUnavailable` when torch does not see that device."""
    import torch

    require_cuda_device(device_id, "tensorrt")
    return torch.cuda.get_device_name(device_id)


#: Precisions built from a strongly typed network (the ONNX gives every tensor's type).
STRONGLY_TYPED = ("fp16", "int8")


def precision_record(precision: str) -> dict[str, Any]:
    """How ``precision`` is obtained, for records: ``fp16_via`` and ``int8_via`` (None at other precisions) and
    ``tf32`` (False for fp32)."""
    return {"fp16_via": "strongly typed fp16 ONNX" if precision == "fp16" else None,
            "int8_via": INT8_VIA if precision == "int8" else None,
            "tf32": False if precision == "fp32" else None}


def engine_profile(options: RunnerOptions) -> tuple[int, int, int]:
    """The batch profile (min, opt, max) of the engines the ``tensorrt`` backend builds for ``options``: fixed at
    ``options.batch``, so TensorRT tunes its tactics for the batch that is timed (tables, the export's gate)."""
    return (options.batch,) * 3


def serialize_engine(model_path: str | Path, options: RunnerOptions, batch_profile: tuple[int, int, int]) -> bytes:
    """Build the engine of the ONNX file ``model_path`` for ``options``; returns the serialized plan.

    The one optimization profile spans the batch dimension at ``batch_profile`` (min, opt, max; latency
    tables fix it: :func:`engine_profile`); the other dimensions are the model's. For fp16 ``model_path`` must
    already be a strongly typed fp16 ONNX (:func:`~.cache.fp16_onnx`, or an export's), for int8 an ONNX of the
    ``tensorrt`` int8 layout (:func:`~.cache.int8_onnx`, or an export's). The engine is built and
    tuned on CUDA device ``options.device_id`` (made current for the build), whose name keys the timing cache
    of ``options.cache_dir``, read and updated atomically; ``options.batch`` is not used. A model that does
    not parse or build is an :class:`EngineBuildError`.
    """
    import torch

    trt = import_tensorrt()
    device = cuda_device_name(options.device_id)
    with torch.cuda.device(options.device_id):  # TensorRT builds and tunes on the current device
        return _serialize(trt, device, Path(model_path), options, batch_profile)


def _serialize(trt: Any, device: str, model_path: Path, options: RunnerOptions,
               batch_profile: tuple[int, int, int]) -> bytes:
    """:func:`serialize_engine` on the current CUDA device, named ``device`` (for the timing cache's file)."""
    lo, opt, hi = batch_profile
    specs = onnx_input_specs(model_path, opt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = options.precision in STRONGLY_TYPED
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"tensorrt could not parse {model_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for s in specs:
        sample = s.shape[1:]
        profile.set_shape(s.name, (lo, *sample), (opt, *sample), (hi, *sample))
    config.add_optimization_profile(profile)
    timing_path = cache_root(options.cache_dir) / "tensorrt" / f"timing-{trt.__version__}-{slug(device)}.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"tensorrt failed to build an engine for {model_path.name} (see the TensorRT log)")
    _save_timing_cache(config, timing_path)
    return bytes(memoryview(plan))


def typed_model(onnx_path: str | Path, options: RunnerOptions) -> Path:
    """The ONNX file an engine of ``options.precision`` is parsed from: ``onnx_path`` for fp32, its strongly typed
    fp16 version (:func:`~.cache.fp16_onnx`), or its int8 version (:func:`~.cache.int8_onnx`: the settings of the
    options' ``extra["int8"]``, which must be the ``tensorrt`` layout; a file quantized already is taken as it is)."""
    if options.precision == "fp16":
        return fp16_onnx(onnx_path, options.cache_dir)
    if options.precision == "int8":
        settings = int8_settings(options)
        settings.check_layout("tensorrt")
        return int8_onnx(onnx_path, settings, options.cache_dir)
    return Path(onnx_path)


def engine_key(model_path: Path, options: RunnerOptions, trt_version: str, device: str) -> str:
    """The cache key of an engine: everything it depends on, the int8 settings of an int8 engine included."""
    specs = onnx_input_specs(model_path, options.batch)
    return hashlib.sha256(json.dumps({
        "onnx": sha256_file(model_path)[:16], "trt": trt_version, "device": device,
        "precision": options.precision, "shapes": [[s.name, list(s.shape)] for s in specs],
        "workspace_mb": options.workspace_mb,
        "int8": int8_settings(options).to_dict() if options.precision == "int8" else None,
    }, sort_keys=True).encode()).hexdigest()[:20]


def build_engine(onnx_path: str | Path, options: RunnerOptions) -> Path:
    """Build (or find in the cache) the engine of ``onnx_path`` at :func:`engine_profile`, from its
    :func:`typed_model`; returns its path.

    The plan and the timing cache are written atomically. Builds are one at a time per GPU: concurrent builds
    would tune each other's tactics (:func:`~vitres_deploy.latency.profiler.prepare_sources` runs them in turn).
    """
    trt = import_tensorrt()
    device = cuda_device_name(options.device_id)
    model_path = typed_model(onnx_path, options)
    key = engine_key(model_path, options, trt.__version__, device)
    plan_path = cache_root(options.cache_dir) / "tensorrt" / "engines" / f"{model_path.stem}-{key}.plan"
    if plan_path.is_file():
        return plan_path
    return atomic_write_bytes(plan_path, serialize_engine(model_path, options, engine_profile(options)))


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timing cache into the file (another process may have written it meanwhile)."""
    ours = config.get_timing_cache()
    if path.is_file():
        merged = config.create_timing_cache(path.read_bytes())
        merged.combine(ours, True)
        ours = merged
    atomic_write_bytes(path, bytes(memoryview(ours.serialize())))


def _torch_dtype(trt: Any, dt: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dtype in table.items():
        if hasattr(trt.DataType, name) and dt == getattr(trt.DataType, name):
            return torch_dtype
    raise RuntimeFailure(f"tensorrt: I/O tensors of type {dt} are not supported")


@dataclass(frozen=True)
class EngineFile:
    """Loader of a built engine: a TensorRT plan file (e.g. a bundle's ``model.plan``)."""

    path: Path

    def __call__(self) -> Path:
        if not self.path.is_file():
            raise RuntimeFailure(f"TensorRT engine {self.path} does not exist")
        return self.path


@dataclass(frozen=True)
class EngineFromOnnx:
    """Loader of the engine of an ONNX file fixed at batch ``options.batch``: built, or found in the cache."""

    model: OnnxFile
    options: RunnerOptions

    def __call__(self) -> Path:
        return build_engine(self.model(), self.options)


class TensorRTRunner(Runner):
    """A TensorRT engine run with ``execute_async_v3`` on device-resident buffers.

    The engine comes from ``engine`` when the runner is activated: an :class:`EngineFile` runs a plan at batch
    ``options.batch``, which must lie inside its optimization profile (e.g. a bundle's ``model.plan``); an
    :class:`EngineFromOnnx` builds (or finds in the cache) the engine of an ONNX file first, as the
    ``tensorrt`` backend does.
    """

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine: EngineFile | EngineFromOnnx, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        self.engine_loader = engine
        self.plan_path: Path | None = None
        self.engine: Any = None
        self.context: Any = None
        self._runtime: Any = None
        self._buffers: dict[str, Any] = {}
        self._outputs: list[str] = []

    def _activate(self) -> None:
        import torch

        trt = import_tensorrt()
        require_cuda_device(self.options.device_id, self.backend)
        torch.cuda.set_device(self.options.device_id)
        self.stream = torch.cuda.Stream(device=self.options.device_id)
        self._trt = trt
        self.plan_path = self.engine_loader()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeFailure(f"tensorrt {trt.__version__} could not deserialize {self.plan_path.name}: "
                                 "engines only load with the TensorRT version and GPU they were built with")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeFailure(f"tensorrt could not create an execution context for {self.plan_path.name}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        for n in names:
            if is_input[n]:
                self.context.set_input_shape(n, self._batch_shape(n))
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.empty(shape, dtype=dtype, device=f"cuda:{self.options.device_id}")
            self.context.set_tensor_address(n, self._buffers[n].data_ptr())
        self.input_specs = [TensorSpec(n, tuple(self._buffers[n].shape), str(self._buffers[n].dtype).split(".")[-1])
                            for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]

    def _deactivate(self) -> None:
        self.context = None  # the context before its engine, the engine before its runtime
        self.engine = None
        self._runtime = None
        self._buffers, self._outputs = {}, []

    def _batch_shape(self, name: str) -> tuple[int, ...]:
        """Shape of input ``name`` at batch ``options.batch``, checked against the engine's profile."""
        lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        if not lo[0] <= self.options.batch <= hi[0]:
            raise BackendUnavailable(f"{self.plan_path.name}: batch {self.options.batch} is outside the "
                                     f"engine's profile {lo[0]}..{hi[0]}")
        sample = tuple(int(d) for d in self.engine.get_tensor_shape(name))[1:]
        return (self.options.batch, *sample)

    def _bind(self, inputs: dict[str, np.ndarray]) -> None:
        import torch

        for name, array in inputs.items():
            self._buffers[name].copy_(torch.from_numpy(array))
        torch.cuda.synchronize(self.options.device_id)

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeFailure("tensorrt: execute_async_v3 failed (see the TensorRT log)")

    def outputs(self) -> dict[str, np.ndarray]:
        import torch

        self.synchronize()
        out = {}
        for n in self._outputs:
            t = self._buffers[n]
            out[n] = (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()
        return out

    def info(self) -> dict[str, Any]:
        return {
            "tensorrt": self._trt.__version__,
            "plan": self.plan_path.name,
            **precision_record(self.options.precision),
            "optimization_profile": {s.name: list(s.shape) for s in self.input_specs},
        }
