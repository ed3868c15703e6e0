"""ONNX Runtime runners: ``ort-cpu``, ``ort-cuda`` (IO binding on the GPU) and ``ort-trt``.

Every runner is built from an :class:`~vitres_deploy.runtime.loaders.OnnxFile` and creates its session when
activated. It binds its inputs and pre-allocated outputs once with IO binding, so a timed run is one
``run_with_iobinding`` call with no host copies and no output allocation. The thread count is fixed
(``intra_op_num_threads = threads``, one inter-op thread, sequential execution) and recorded. GPU runners
run on a ``torch.cuda.Stream`` handed to ONNX Runtime as its compute stream, so CUDA events recorded
on that stream time the execution. ONNX Runtime failing to load or run a model is a :class:`RuntimeFailure`.

fp32 means fp32 on the GPU too: the CUDA provider's ``use_tf32`` (on by default) is turned off, and TensorRT,
whose builder allows TF32 by default and whose ONNX Runtime provider has no option for it, runs in a process
with ``NVIDIA_TF32_OVERRIDE=0``, set before the process's first TensorRT session (the variable is read once).
Every session records which execution provider each node was placed on (``nodes_by_provider`` in
:meth:`_OrtRunner.info`), so a TensorRT run shows the share of nodes that fell back to CUDA, and warns
(:class:`TensorRTFallback`) when some did.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable, RuntimeFailure, first_line
from .base import Runner, RunnerOptions, TensorSpec, require_cuda_device
from .cache import cache_root, fp16_onnx, int8_onnx
from .loaders import OnnxFile
from .versions import ort_tensorrt_major

if TYPE_CHECKING:
    from ..convert.int8 import Int8Settings

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(double)": "float64"}


def onnx_input_specs(path: str | Path, batch: int) -> list[TensorSpec]:
    """Concrete input specs of an ONNX file: a symbolic first dimension becomes ``batch``.

    A file that is not an ONNX model, or whose inputs cannot take ``batch``, is a :class:`RuntimeFailure`.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and OSError: not an ONNX model we can read
        raise RuntimeFailure(f"cannot read the ONNX model {path}: {first_line(e)}") from None
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        specs.append(TensorSpec(inp.name, _concrete_shape(inp.name, dims, batch, path),
                                str(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def session_input_specs(session: Any, batch: int, path: str | Path) -> list[TensorSpec]:
    """:func:`onnx_input_specs` of the model a live ONNX Runtime ``session`` (of the file ``path``) runs, read from the
    session rather than by parsing the file again: for a network of tens of megabytes that parse cost about 55 ms a
    pass on a 2-core CPU (2 s of a 12-item drift check)."""
    specs = []
    for inp in session.get_inputs():
        if inp.type not in _ORT_TYPES:
            raise RuntimeFailure(f"{path}: input {inp.name!r} has type {inp.type}, which no runner feeds")
        dims = [d if isinstance(d, int) else None for d in inp.shape]
        specs.append(TensorSpec(inp.name, _concrete_shape(inp.name, dims, batch, path), _ORT_TYPES[inp.type]))
    return specs


def _concrete_shape(name: str, dims: Sequence[int | None], batch: int, path: str | Path) -> tuple[int, ...]:
    """The shape of input ``name`` of ``path`` (``dims``: None where symbolic) with ``batch`` as its first dimension;
    a static batch other than ``batch``, or a symbolic dimension other than the first, is a :class:`RuntimeFailure`."""
    shape = []
    for i, dim in enumerate(dims):
        if dim is not None:
            if i == 0 and dim != batch:
                raise RuntimeFailure(f"{path}: input {name!r} has a static batch of {dim}, "
                                     f"asked for {batch}: export with a dynamic batch")
            shape.append(dim)
        elif i == 0:
            shape.append(batch)
        else:
            raise RuntimeFailure(f"{path}: input {name!r} has a symbolic dimension {i}: only the batch may be")
    return tuple(shape)


#: Session configuration key that makes ONNX Runtime record the nodes of each execution provider
#: (``InferenceSession.get_provider_graph_assignment_info``).
_RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
#: Session configuration key that stops ONNX Runtime fusing QuantizeLinear/DequantizeLinear nodes into its own
#: quantized ops ("1": "ORT doesn't do fusion logic for QDQ format", onnxruntime_session_options_config_keys.h,
#: https://github.com/microsoft/onnxruntime/blob/main/include/onnxruntime/core/session/
#: onnxruntime_session_options_config_keys.h): an int8 ``ort-trt`` session hands TensorRT the Q/DQ graph as written.
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"
#: The CUDA libraries read this variable once per process: "0" keeps TensorRT, cuBLAS and cuDNN off TF32.
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def cuda_provider_options(device_id: int, stream: int, precision: str) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA provider: the device, the compute stream ``stream`` (a ``cudaStream_t``
    as an int), and ``use_tf32`` off for fp32 (ONNX Runtime turns TF32 on by default)."""
    options = {"device_id": str(device_id), "user_compute_stream": str(stream)}
    if precision == "fp32":
        options["use_tf32"] = "0"
    return options


def tensorrt_provider_options(device_id: int, stream: int, *, engines: Path, shapes: str,
                              workspace_mb: int) -> dict[str, str]:
    """Options of ONNX Runtime's TensorRT provider: engine and timing caches under ``engines``, one optimization
    profile fixed at ``shapes`` (``name:AxBxC,...``), and ``trt_fp16_enable`` and ``trt_int8_enable`` off at every
    precision: without them the provider builds a strongly typed network (TensorRT 10 and later), which runs every
    tensor at the type the ONNX gives it, so fp16 comes from a strongly typed fp16 ONNX, nodes kept in fp32
    included, and int8 from an explicitly quantized (Q/DQ) ONNX. ``trt_int8_enable`` is TensorRT's implicit,
    calibration-table int8 mode: a Q/DQ model takes no calibration table
    (https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html, ``trt_int8_calibration_table_
    name``), and TensorRT builds explicit quantization strongly typed, without precision flags
    (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html).
    TF32 has no option here (see :func:`tensorrt_environment`)."""
    return {
        "device_id": str(device_id),
        "user_compute_stream": str(stream),
        "trt_fp16_enable": "False",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(engines),
        "trt_max_workspace_size": str(workspace_mb << 20),
        "trt_profile_min_shapes": shapes,
        "trt_profile_opt_shapes": shapes,
        "trt_profile_max_shapes": shapes,
    }


def tensorrt_environment(precision: str) -> dict[str, str]:
    """Environment variables a process needs before its first TensorRT session at ``precision``: TF32 off for fp32."""
    return {TF32_OVERRIDE: "0"} if precision == "fp32" else {}


#: How TensorRT runs int8 (``ort-trt`` and ``tensorrt``), for records.
INT8_VIA = "explicit Q/DQ ONNX (tensorrt layout), strongly typed network, no int8 flag or calibration table"


class TensorRTFallback(UserWarning):
    """ONNX Runtime placed some nodes of an ``ort-trt`` session on the CUDA provider instead of TensorRT."""


def nodes_by_provider(session: Any) -> dict[str, int]:
    """Number of graph nodes ONNX Runtime placed on each execution provider of ``session`` (created with
    :data:`_RECORD_ASSIGNMENT` on); a TensorRT subgraph counts the ONNX nodes inside it."""
    counts: dict[str, int] = {}
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


#: Activations beyond this magnitude keep their node in fp32 in an fp16 model: fp16's largest finite value
#: (65504) with a safety factor of 2, as activations on images outside the calibration set run larger.
FP16_SAFE_LIMIT = 32752.0


def int8_settings(options: RunnerOptions) -> Int8Settings:
    """The int8 settings a runner quantizes with: ``options.extra["int8"]``, else the defaults."""
    from ..convert.int8 import Int8Settings

    return options.extra.get("int8") or Int8Settings()


def node_id(node: Any) -> str:
    """How a node of an ONNX graph is named in records: its name, else its first output's."""
    return node.name or node.output[0]


def tensor_peaks(path: str | Path, images: np.ndarray) -> dict[str, float]:
    """Largest magnitude of every float tensor of the fp32 ONNX file ``path`` (its first input, ``images``, and
    every node's float outputs), by name, run in ONNX Runtime on the CPU with every intermediate tensor exposed
    as a graph output. A model ONNX Runtime cannot run is a :class:`RuntimeFailure`."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {vi.name for vi in [*inferred.graph.value_info, *inferred.graph.output]
              if vi.type.tensor_type.elem_type == TensorProto.FLOAT}
    exposed = {o.name for o in model.graph.output}
    for name in sorted(floats - exposed):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own nodes, unfused
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images.astype(np.float32)}
        values = session.run(None, feed)
    except Exception as e:  # onnxruntime's own exception types
        raise RuntimeFailure(f"onnxruntime could not run {Path(path).name} to measure activations: "
                             f"{first_line(e)}") from None
    arrays = {**feed, **{out.name: v for out, v in zip(session.get_outputs(), values) if out.name in floats}}
    return {name: float(np.abs(v).max()) if v.size else 0.0 for name, v in arrays.items()}


def overflowing_nodes(path: str | Path, images: np.ndarray, limit: float = FP16_SAFE_LIMIT) -> dict[str, float]:
    """The nodes of ``path`` (by :func:`node_id`) that read or write a tensor beyond ``limit`` in magnitude on
    ``images`` (:func:`tensor_peaks`), with the largest such magnitude: the nodes an fp16 model keeps in fp32.
    The producer of an overflowing tensor and all its consumers stay fp32, so the tensor is never cast to fp16
    (as NVIDIA's AutoCast does)."""
    import onnx

    peaks = tensor_peaks(path, images)
    kept = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        worst = max((peaks[t] for t in (*node.input, *node.output) if t in peaks), default=0.0)
        if not worst <= limit:
            kept[node_id(node)] = worst
    return kept


class _OrtRunner(Runner):
    """Shared logic; subclasses choose the execution providers, where buffers live, and the stream."""

    provider: ClassVar[str] = ""
    ort_device: ClassVar[str] = "cpu"
    #: The int8 layout (:data:`~vitres_deploy.convert.int8.LAYOUTS`) the provider runs static int8 models in with
    #: integer kernels, not float fallbacks; None: no int8 (the registry's precisions say so too).
    int8_layout: ClassVar[str | None] = None

    def __init__(self, model: OnnxFile, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        self.model = model
        self.session: Any = None
        self._ort: Any = None
        self._model_file = model.path
        self._io: Any = None
        self._keep: list[Any] = []
        self._outs: dict[str, Any] = {}

    def _activate(self) -> None:
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{self.backend}: onnxruntime {ort.__version__} has no {self.provider} "
                                     "(install the matching onnxruntime-gpu build)")
        self.stream = self._stream()
        model_path = self._model_path(self.model())
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        for key, value in self._session_config().items():
            so.add_session_config_entry(key, value)
        self._prepare_process()
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=self._providers(model_path))
        except Exception as e:  # onnxruntime raises its own exception types (bad model, provider failures)
            raise RuntimeFailure(
                f"{self.backend}: onnxruntime could not load {model_path}: {first_line(e)}") from None
        active = self.session.get_providers()
        if active[0] != self.provider:
            raise BackendUnavailable(f"{self.backend}: onnxruntime fell back to {active[0]} ({self.provider} failed "
                                     "to start: check the CUDA/TensorRT libraries)")
        self.input_specs = session_input_specs(self.session, self.options.batch, model_path)
        self._ort = ort
        self._model_file = model_path

    def _session_config(self) -> dict[str, str]:
        """Session configuration entries: where each node runs is recorded."""
        return {_RECORD_ASSIGNMENT: "1"}

    def _prepare_process(self) -> None:
        """Set what this process needs before the session is created (nothing, but for TensorRT)."""

    def _deactivate(self) -> None:
        self._io = None
        self._keep, self._outs = [], {}
        self.session = None

    def _stream(self) -> Any:
        """The CUDA stream of GPU runners (None on the CPU)."""
        return None

    def _model_path(self, onnx_path: Path) -> Path:
        """The file the session loads: ``onnx_path``, or a precision-specific version of it (int8: the static
        int8 model of :func:`~.cache.int8_onnx` with the ``int8`` settings of the options' ``extra``, which must
        suit the provider's :attr:`int8_layout`)."""
        if self.options.precision == "int8" and self.int8_layout is not None:
            settings = int8_settings(self.options)
            settings.check_layout(self.int8_layout)
            return int8_onnx(onnx_path, settings, self.options.cache_dir)
        if self.options.precision != "fp32":
            raise BackendUnavailable(f"{self.backend} runs fp32 only: use precision fp32", field="precision")
        return onnx_path

    def _providers(self, model_path: Path) -> list[Any]:
        return [self.provider]

    def _bind(self, inputs: dict[str, np.ndarray]) -> None:
        ort, dev, dev_id = self._ort, self.ort_device, self.options.device_id
        io = self.session.io_binding()
        self._keep = []
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(array, dev, dev_id)
            io.bind_ortvalue_input(name, value)
            self._keep.append(value)
        for out in self.session.get_outputs():
            io.bind_output(out.name, dev, dev_id)
        self._run(io)
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
        self._run(self._io)

    def _run(self, io: Any) -> None:
        try:
            self.session.run_with_iobinding(io)
        except Exception as e:  # onnxruntime's own exception types
            raise RuntimeFailure(f"{self.backend}: onnxruntime failed to run {self._model_file.name}: "
                                 f"{first_line(e)}") from None

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
            "nodes_by_provider": nodes_by_provider(self.session),
            "model_file": self._model_file.name,
        }


class OrtCpuRunner(_OrtRunner):
    """``ort-cpu``: the CPU execution provider with a fixed number of intra-op threads."""

    backend = "ort-cpu"
    provider = "CPUExecutionProvider"
    int8_layout = "ort-cpu"


class _OrtGpuRunner(_OrtRunner):
    ort_device = "cuda"

    def _stream(self) -> Any:
        import torch

        require_cuda_device(self.options.device_id, self.backend)
        torch.cuda.set_device(self.options.device_id)
        return torch.cuda.Stream(device=self.options.device_id)

    def _cuda_options(self) -> dict[str, str]:
        return cuda_provider_options(self.options.device_id, self.stream.cuda_stream, self.options.precision)


class OrtCudaRunner(_OrtGpuRunner):
    """``ort-cuda``: the CUDA execution provider, device-resident inputs/outputs; fp16 through an fp16 ONNX.

    No int8: the registry refuses it (:data:`~.registry.ORT_CUDA_INT8`)."""

    backend = "ort-cuda"
    provider = "CUDAExecutionProvider"

    def _model_path(self, onnx_path: Path) -> Path:
        if self.options.precision == "fp16":
            return fp16_onnx(onnx_path, self.options.cache_dir)
        return onnx_path

    def _providers(self, model_path: Path) -> list[Any]:
        return [(self.provider, self._cuda_options())]


class OrtTrtRunner(_OrtGpuRunner):
    """``ort-trt``: ONNX Runtime's TensorRT provider with engine and timing caches, CUDA provider as fallback.

    fp16 runs the strongly typed fp16 ONNX with ``trt_fp16_enable`` off (:func:`tensorrt_provider_options`), the
    same on TensorRT 10 and 11, whichever the provider loads (:func:`~.versions.ort_tensorrt_major`, recorded).
    int8 runs the explicitly quantized ONNX of the ``tensorrt`` layout (Q/DQ, int8, zero points 0) with
    ``trt_int8_enable`` off and no calibration table, its Q/DQ nodes left unfused by ONNX Runtime
    (:data:`DISABLE_QDQ_FUSION`). fp32 runs with TF32 off (:func:`tensorrt_environment`). A session that leaves
    nodes to the CUDA provider warns (:class:`TensorRTFallback`).
    """

    backend = "ort-trt"
    provider = "TensorrtExecutionProvider"
    int8_layout = "tensorrt"

    #: The TF32 override this process's first TensorRT session started with (None: no session yet).
    _process_tf32: ClassVar[str | None] = None

    def _activate(self) -> None:
        super()._activate()
        share = self.tensorrt_node_share()
        if share < 1:
            warnings.warn(TensorRTFallback(f"{self.backend}: {1 - share:.0%} of the nodes of {self._model_file.name} "
                                           "fell back from TensorRT to the CUDA provider"), stacklevel=2)

    def _prepare_process(self) -> None:
        """Set :func:`tensorrt_environment` before the first TensorRT session of the process; refuse fp32 when an
        earlier session started without it (TensorRT reads the variable once)."""
        wanted = tensorrt_environment(self.options.precision)
        first = OrtTrtRunner._process_tf32 is None
        if first:
            os.environ.update(wanted)
            OrtTrtRunner._process_tf32 = os.environ.get(TF32_OVERRIDE, "")
        elif wanted.get(TF32_OVERRIDE, OrtTrtRunner._process_tf32) != OrtTrtRunner._process_tf32:
            raise BackendUnavailable(f"{self.backend}: TF32 cannot be turned off after this process ran TensorRT "
                                     "with it on: run fp32 in a new process", field="precision")

    def _model_path(self, onnx_path: Path) -> Path:
        if self.options.precision == "fp16":
            return fp16_onnx(onnx_path, self.options.cache_dir)
        return super()._model_path(onnx_path)

    def _session_config(self) -> dict[str, str]:
        config = super()._session_config()
        if self.options.precision == "int8":
            config[DISABLE_QDQ_FUSION] = "1"
        return config

    def _providers(self, model_path: Path) -> list[Any]:
        engines = cache_root(self.options.cache_dir) / "ort-trt"
        engines.mkdir(parents=True, exist_ok=True)
        specs = onnx_input_specs(model_path, self.options.batch)
        shapes = ",".join(f"{s.name}:{'x'.join(map(str, s.shape))}" for s in specs)
        trt = tensorrt_provider_options(self.options.device_id, self.stream.cuda_stream, engines=engines,
                                        shapes=shapes, workspace_mb=self.options.workspace_mb)
        return [(self.provider, trt), ("CUDAExecutionProvider", self._cuda_options())]

    def tensorrt_node_share(self) -> float:
        """The share of the active session's nodes that ONNX Runtime placed on TensorRT (the rest: CUDA)."""
        nodes = nodes_by_provider(self.session)
        return nodes.get(self.provider, 0) / max(1, sum(nodes.values()))

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["tensorrt_major"] = ort_tensorrt_major()
        info["tensorrt_node_share"] = self.tensorrt_node_share()
        info["fp16_via"] = "strongly typed fp16 ONNX" if self.options.precision == "fp16" else None
        info["int8_via"] = INT8_VIA if self.options.precision == "int8" else None
        info["tf32"] = os.environ.get(TF32_OVERRIDE) != "0"
        return info
