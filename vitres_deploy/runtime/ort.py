"""ONNX Runtime runners: ``ort-cpu``, ``ort-cuda`` (IO binding on the GPU) and ``ort-trt``.

Every runner binds its inputs and pre-allocated outputs once with IO binding, so a timed run is one
``run_with_iobinding`` call with no host copies and no output allocation. The thread count is fixed
(``intra_op_num_threads = threads``, one inter-op thread, sequential execution) and recorded. GPU runners
run on a ``torch.cuda.Stream`` handed to ONNX Runtime as its compute stream, so CUDA events recorded
on that stream time the execution.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable, ProfileError
from .base import Runner, RunnerOptions, TensorSpec
from .cache import cache_root, fp16_onnx

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64"}


def onnx_input_specs(path: str | Path, batch: int) -> list[TensorSpec]:
    """Concrete input specs of an ONNX file: a symbolic first dimension becomes ``batch``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tt = inp.type.tensor_type
        shape = []
        for i, dim in enumerate(tt.shape.dim):
            if dim.HasField("dim_value"):
                if i == 0 and dim.dim_value != batch:
                    raise ProfileError(f"{path}: input {inp.name!r} has a static batch of {dim.dim_value}, "
                                       f"asked for {batch}: export with a dynamic batch")
                shape.append(dim.dim_value if i else batch)
            elif i == 0:
                shape.append(batch)
            else:
                raise ProfileError(f"{path}: input {inp.name!r} has a symbolic dimension {i}: only the batch may be")
        specs.append(TensorSpec(inp.name, tuple(shape), str(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def tensorrt_major() -> int | None:
    """Major version of the installed ``tensorrt`` Python package, or None when it is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt

    return int(tensorrt.__version__.split(".")[0])


class _OrtRunner(Runner):
    """Shared logic; subclasses choose the execution providers and where buffers live."""

    provider: ClassVar[str] = ""
    ort_device: ClassVar[str] = "cpu"

    def __init__(self, onnx_path: str | Path, options: RunnerOptions | None = None, stream: Any = None) -> None:
        super().__init__(stream)
        import onnxruntime as ort

        self.options = options or RunnerOptions()
        self.onnx_path = Path(onnx_path)
        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{self.backend}: onnxruntime {ort.__version__} has no {self.provider} "
                                     "(install the matching onnxruntime-gpu build)")
        model_path = self._model_path()
        self.input_specs = onnx_input_specs(model_path, self.options.batch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._provider_options = self._providers()
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=self._provider_options)
        except Exception as e:  # onnxruntime raises its own exception types for provider failures
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendUnavailable(
                f"{self.backend}: could not create a session for {model_path.name}: {first}") from None
        active = self.session.get_providers()
        if active[0] != self.provider:
            raise BackendUnavailable(f"{self.backend}: onnxruntime fell back to {active[0]} ({self.provider} failed "
                                     "to start: check the CUDA/TensorRT libraries)")
        self._ort = ort
        self._io: Any = None
        self._keep: list[Any] = []
        self._outs: dict[str, Any] = {}

    def _model_path(self) -> Path:
        if self.options.precision != "fp32":
            raise BackendUnavailable(f"{self.backend} runs fp32 only: use --precision fp32")
        return self.onnx_path

    def _providers(self) -> list[Any]:
        return [self.provider]

    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        ort, dev, dev_id = self._ort, self.ort_device, self.options.device_id
        io = self.session.io_binding()
        self._keep = []
        for spec in self.input_specs:
            if spec.name not in inputs:
                raise ProfileError(f"{self.backend}: missing input {spec.name!r}")
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype),
                                                     dev, dev_id)
            io.bind_ortvalue_input(spec.name, value)
            self._keep.append(value)
        for out in self.session.get_outputs():
            io.bind_output(out.name, dev, dev_id)
        self.session.run_with_iobinding(io)
        produced = io.get_outputs()
        io.clear_binding_outputs()
        self._outs = {}
        for out, value in zip(self.session.get_outputs(), produced):
            dtype = _ORT_TYPES.get(value.data_type(), "float32")
            buf = ort.OrtValue.ortvalue_from_shape_and_type(value.shape(), np.dtype(dtype), dev, dev_id)
            io.bind_ortvalue_output(out.name, buf)
            self._outs[out.name] = buf
        self._io = io

    def run(self) -> None:
        self.session.run_with_iobinding(self._io)

    def outputs(self) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._outs.items()}

    def info(self) -> dict[str, Any]:
        return {
            "onnxruntime": self._ort.__version__,
            "providers": self.session.get_providers(),
            "intra_op_num_threads": self.options.threads,
            "inter_op_num_threads": 1,
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "io_binding": True,
        }

    def close(self) -> None:
        self._io = None
        self._keep, self._outs = [], {}
        self.session = None


class OrtCpuRunner(_OrtRunner):
    """``ort-cpu``: the CPU execution provider with a fixed number of intra-op threads."""

    backend = "ort-cpu"
    provider = "CPUExecutionProvider"


class _OrtGpuRunner(_OrtRunner):
    ort_device = "cuda"

    def __init__(self, onnx_path: str | Path, options: RunnerOptions | None = None) -> None:
        import torch

        options = options or RunnerOptions()
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"{self.backend}: no CUDA GPU is visible to torch")
        torch.cuda.set_device(options.device_id)
        super().__init__(onnx_path, options, torch.cuda.Stream(device=options.device_id))

    def _cuda_options(self) -> dict[str, str]:
        return {"device_id": str(self.options.device_id), "user_compute_stream": str(self.stream.cuda_stream)}


class OrtCudaRunner(_OrtGpuRunner):
    """``ort-cuda``: the CUDA execution provider, device-resident inputs/outputs; fp16 through an fp16 ONNX."""

    backend = "ort-cuda"
    provider = "CUDAExecutionProvider"

    def _model_path(self) -> Path:
        if self.options.precision == "fp16":
            return fp16_onnx(self.onnx_path, self.options.cache_dir)
        return self.onnx_path

    def _providers(self) -> list[Any]:
        return [(self.provider, self._cuda_options())]


class OrtTrtRunner(_OrtGpuRunner):
    """``ort-trt``: ONNX Runtime's TensorRT provider with engine and timing caches, CUDA provider as fallback.

    fp16: ``trt_fp16_enable`` on TensorRT 10; TensorRT 11 has no weak typing, so there the model itself is
    converted to a strongly typed fp16 ONNX.
    """

    backend = "ort-trt"
    provider = "TensorrtExecutionProvider"

    def _model_path(self) -> Path:
        if self.options.precision == "fp16" and (tensorrt_major() or 10) >= 11:
            return fp16_onnx(self.onnx_path, self.options.cache_dir)
        return self.onnx_path

    def _providers(self) -> list[Any]:
        cache = cache_root(self.options.cache_dir) / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        shapes = ",".join(f"{s.name}:{'x'.join(map(str, s.shape))}" for s in self.input_specs)
        fp16_flag = self.options.precision == "fp16" and (tensorrt_major() or 10) < 11
        trt = {
            "device_id": str(self.options.device_id),
            "user_compute_stream": str(self.stream.cuda_stream),
            "trt_fp16_enable": "True" if fp16_flag else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_max_workspace_size": str(self.options.workspace_mb << 20),
            "trt_profile_min_shapes": shapes,
            "trt_profile_opt_shapes": shapes,
            "trt_profile_max_shapes": shapes,
        }
        return [(self.provider, trt), ("CUDAExecutionProvider", self._cuda_options())]

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["tensorrt_major"] = tensorrt_major()
        info["fp16_via"] = ("strongly typed fp16 ONNX" if self._model_path() != self.onnx_path
                            else "trt_fp16_enable" if self.options.precision == "fp16" else None)
        return info
