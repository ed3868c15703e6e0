"""Static int8 ONNX models, calibrated with ONNX Runtime's quantization tool (``onnxruntime.quantization``).

:func:`quantize_onnx` rewrites an fp32 model: the weights of the ops in :attr:`Int8Settings.op_types` (MatMul,
Conv and Gemm by default) become int8 (per output channel by default), and their input activations are
quantized with scales calibrated on the images handed in (:data:`METHODS`: min/max, entropy or percentile of
the activations). Every other op (LayerNorm, Softmax, GELU, the residual additions) stays in float, and the
record says which op types those were. The graph inputs and outputs stay fp32, so callers feed the same arrays
as to the fp32 model.

Two formats (:data:`FORMATS`): ``qoperator`` writes ONNX Runtime's fused integer ops (``QLinearMatMul``,
``QLinearConv``, ``QGemm``), ``qdq`` writes ``QuantizeLinear``/``DequantizeLinear`` pairs around float ops
(the explicit-quantization layout TensorRT builds int8 engines from). Which one runs faster depends on the
runtime, so it is a recorded setting.

Each runtime has its int8 *layout* (:data:`LAYOUTS`, :meth:`Int8Settings.for_layout`): ``ort-cpu`` is ONNX
Runtime's fast x86 path (fused ops, uint8 activations, 7-bit weights); ``tensorrt`` is the form TensorRT
accepts, explicit Q/DQ with int8 activations and weights, both symmetric (zero point 0), and float biases
(:meth:`Int8Settings.check_layout` refuses the rest, naming the flag), with full-range weights.

Calibration is deterministic: the same model, images and settings give the same file. Latency tables calibrate
on seeded random inputs (:func:`timing_calibration`): scales and zero points are constants of the graph, so
the values do not change the speed, only the accuracy; accuracy is always measured on a model calibrated on
training images.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import shutil
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError, SettingsError, first_line
from ..files import atomic_write

METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qoperator", "qdq")
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")
#: Op types that mark a model as already quantized (it is run as it is, never quantized twice).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "QGemm",
                           "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"})
#: How the models of latency tables are calibrated (recorded in the table; see the module docstring).
TIMING_CALIBRATION = "seeded standard-normal inputs, 8 per model (scales change the accuracy, not the speed)"
#: Images per calibration batch fed to ONNX Runtime's calibrator.
CALIBRATION_BATCH = 16
#: The settings each int8 layout fixes, by layout: ``ort-cpu`` (ONNX Runtime's CPU provider) and ``tensorrt``
#: (TensorRT, directly or through ONNX Runtime's TensorRT provider). TensorRT quantizes symmetrically, signed
#: int8 activations and weights, scale only (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
#: work-quantized-types.html); ONNX Runtime's quantization on GPU "only supports S8S8"
#: (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html#data-type-selection).
LAYOUTS: dict[str, dict[str, Any]] = {
    "ort-cpu": {"format": "qoperator", "activations": "uint8", "reduce_range": True, "symmetric": False,
                "float_bias": False},
    "tensorrt": {"format": "qdq", "activations": "int8", "reduce_range": False, "symmetric": True,
                 "float_bias": True},
}
#: ``/proc/cpuinfo`` flags of x86 instructions that sum uint8 x int8 products in 32 bits (VNNI).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


@dataclass(frozen=True)
class Int8Settings:
    """How a model is quantized: calibration method, layout, per-channel weights, which op types get int8.

    ``activations`` are ``uint8`` by default (ONNX Runtime's fast x86 path is u8 activations times s8 weights),
    ``weights`` are ``int8``. ``reduce_range`` quantizes weights to 7 bits: x86 CPUs without VNNI (AVX2, AVX-512F)
    multiply u8 by s8 into saturating 16-bit sums, which full-range weights overflow (on this project's AVX2
    machine the demo's largest arch lost 3.4 points of hold-out top-1 with full-range weights, 0.2 with 7-bit).
    ``symmetric`` quantizes activations symmetrically (zero point 0, ONNX Runtime's ``ActivationSymmetric``);
    weights are always symmetric. ``float_bias`` keeps the biases of a Q/DQ model float (else int32 behind a
    ``DequantizeLinear``). The defaults are the ``ort-cpu`` layout (:data:`LAYOUTS`).
    """

    method: str = "minmax"
    format: str = "qoperator"
    per_channel: bool = True
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = True
    symmetric: bool = False
    float_bias: bool = False

    def __post_init__(self) -> None:
        choices = {"method": METHODS, "format": FORMATS, "activations": ("uint8", "int8"), "weights": ("int8",)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"int8_{name} {getattr(self, name)!r}: use one of {', '.join(allowed)}",
                                    field=f"int8_{name}")
        if not self.op_types:
            raise SettingsError("int8_ops: name at least one op type to quantize", field="int8_ops")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in tables, arch files and manifests)."""
        return {**asdict(self), "op_types": list(self.op_types)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Settings:
        """Inverse of :meth:`to_dict`; unknown or bad values are a :class:`SettingsError`."""
        if not isinstance(data, dict):
            raise SettingsError(f"int8 settings must be an object, got {type(data).__name__}", field="int8")
        known = {k: data[k] for k in ("method", "format", "per_channel", "activations", "weights", "reduce_range",
                                      "symmetric", "float_bias") if k in data}
        if "op_types" in data:
            if not isinstance(data["op_types"], list) or not all(isinstance(t, str) for t in data["op_types"]):
                raise SettingsError("int8_ops must be a list of op type names", field="int8_ops")
            known["op_types"] = tuple(data["op_types"])
        return cls(**known)

    @classmethod
    def for_layout(cls, layout: str, **given: Any) -> Int8Settings:
        """Settings for the int8 ``layout`` (a key of :data:`LAYOUTS`): ``given`` settings whose value is None take
        the layout's value; the result must suit the layout (:meth:`check_layout`)."""
        if layout not in LAYOUTS:
            raise SettingsError(f"int8 layout {layout!r}: use one of {', '.join(LAYOUTS)}", field="int8")
        chosen = {name: value for name, value in given.items() if value is not None}
        settings = cls(**{**LAYOUTS[layout], **chosen})
        settings.check_layout(layout)
        return settings

    def check_layout(self, layout: str) -> None:
        """Raise a one-line :class:`SettingsError` naming the flag of the first setting that the int8 ``layout``
        cannot run (only ``tensorrt`` has such settings: explicit Q/DQ, int8 activations, zero points 0)."""
        if layout != "tensorrt":
            return
        # TensorRT reads int8 only from Q/DQ nodes, signed and symmetric: https://docs.nvidia.com/deeplearning/
        # tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
        # and its ONNX parser takes no int32 bias behind a DequantizeLinear ("only activation types allowed as
        # input to this layer": https://github.com/microsoft/onnxruntime/issues/14229)
        needs = (("format", "qdq", "int8_format", "explicit QuantizeLinear/DequantizeLinear nodes"),
                 ("activations", "int8", "int8_activations", "signed int8 activations"),
                 ("symmetric", True, "int8_symmetric", "symmetric activations (zero point 0)"),
                 ("float_bias", True, "int8_float_bias", "float biases"))
        for name, wanted, field, what in needs:
            if getattr(self, name) != wanted:
                raise SettingsError(f"{field} {getattr(self, name)!r}: TensorRT builds int8 engines only from {what}: "
                                    f"use {wanted!r} (the tensorrt layout's default)", field=field)

    def key(self) -> str:
        """A short digest of the settings, for cache file names."""
        return hashlib.sha256(repr(sorted(self.to_dict().items())).encode()).hexdigest()[:12]


def calibration_digest(images: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the calibration images' shape, dtype and bytes."""
    h = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:16]


def timing_calibration(path: str | Path, count: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every input of the ONNX file ``path`` (``count`` samples each), to
    calibrate models that are only timed (see the module docstring)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    inputs = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        inputs[inp.name] = rng.standard_normal((count, *dims)).astype(dtype)
    return inputs


def uint8_may_saturate() -> bool:
    """Whether this is an x86 CPU without VNNI (by ``/proc/cpuinfo``; False where that cannot be told): there
    ONNX Runtime multiplies uint8 activations by int8 weights with ``VPMADDUBSW``, whose 16-bit sums of pairs
    can saturate with full-range weights (ONNX Runtime's quantization guide warns of it; :attr:`Int8Settings.
    reduce_range` avoids it). Measured on such a CPU (AVX2): a ``fmnist`` arch lost 3.8 points of hold-out top-1
    with uint8 activations and full-range weights, none with int8 activations."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not VNNI_FLAGS & set(flags)


def is_quantized(path: str | Path) -> bool:
    """Whether the ONNX file ``path`` already holds quantized ops."""
    import onnx

    return any(n.op_type in QUANTIZED_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantization tool's advice on the root logger (it logs through ``logging.warning``)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """A calibration data reader over arrays (``onnxruntime.quantization.CalibrationDataReader``'s protocol)."""

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        count = len(next(iter(inputs.values())))
        self._batches = iter([{name: x[i:i + CALIBRATION_BATCH] for name, x in inputs.items()}
                              for i in range(0, count, CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


def quantize_onnx(src: str | Path, dst: str | Path, calibration: dict[str, np.ndarray] | np.ndarray,
                  settings: Int8Settings | None = None, *, source: str = "images",
                  nodes: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the static int8 version of the fp32 ONNX file ``src`` to ``dst`` (atomically), calibrated on
    ``calibration`` (an array for the model's single input, or arrays by input name). ``nodes``: quantize only
    the nodes of these names (the others stay float, as for mixed precision; default: every node of the
    settings' op types).

    Returns the record of what was done: the settings, the calibration (``source``, image count, digest), and
    the op types left in float. A model without any op to quantize is copied as it is. A model the quantization
    tool cannot handle is a :class:`ConversionError`.
    """
    import onnx
    from onnxruntime import quantization as q

    settings = settings or Int8Settings()
    model = onnx.load(str(src))
    if not isinstance(calibration, dict):
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        if len(names) != 1:
            raise ConversionError(f"{Path(src).name} has {len(names)} inputs: give calibration arrays by name")
        calibration = {names[0]: calibration}
    count = len(next(iter(calibration.values())))
    if count < 1:
        raise SettingsError("calibration needs at least one image", field="calibration_images")
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
              "percentile": q.CalibrationMethod.Percentile}[settings.method]
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    # documented extra_options of quantize_static (onnxruntime/quantization/quantize.py): zero points 0 for
    # symmetric activations, symmetric weights (ONNX Runtime's default for int8 weights, stated), and biases left
    # float instead of int32 behind a DequantizeLinear (QuantizeBias, Q/DQ format only)
    extra = {"ActivationSymmetric": settings.symmetric, "WeightSymmetric": True,
             "QuantizeBias": not settings.float_bias}

    names = None if nodes is None else set(nodes)

    def write(tmp: Path) -> None:
        # nothing to quantize or calibrate (an empty nodes_to_quantize would mean every node to the tool)
        if not any(n.op_type in settings.op_types and (names is None or n.name in names) for n in model.graph.node):
            shutil.copyfile(src, tmp)
            return
        with _quiet_quantizer():
            q.quantize_static(
                str(src), str(tmp), _Reader(calibration),
                quant_format=q.QuantFormat.QOperator if settings.format == "qoperator" else q.QuantFormat.QDQ,
                op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=types[settings.activations], weight_type=types[settings.weights],
                calibrate_method=method, calibration_providers=["CPUExecutionProvider"], extra_options=extra,
                nodes_to_quantize=None if nodes is None else list(nodes),
            )

    try:
        atomic_write(Path(dst), write, suffix=".onnx")
    except (SettingsError, ConversionError):
        raise
    except Exception as e:  # the quantization tool raises plain exceptions on graphs it cannot handle
        raise ConversionError(f"int8 quantization of {Path(src).name} failed: {first_line(e)}") from None
    record = quantization_record(model, settings, calibration, source)
    return record if nodes is None else {**record, "nodes": sorted(nodes)}


def quantization_record(model: Any, settings: Int8Settings, calibration: dict[str, np.ndarray],
                        source: str) -> dict[str, Any]:
    """What a quantization did, for tables, arch files and manifests (see :func:`quantize_onnx`)."""
    float_ops = sorted({n.op_type for n in model.graph.node} - set(settings.op_types))
    first = next(iter(calibration.values()))
    return {"settings": settings.to_dict(), "calibration": {"source": source, "images": len(first),
                                                            "digest": calibration_digest(first)},
            "float_ops": float_ops}


#: the ONNX exporter's record of the torch module scopes a node came from (``node.metadata_props``)
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def node_stages(path: str | Path, num_stages: int) -> dict[str, int]:
    """The 0-based stage of every node of an exported ViT-ResNAS network that belongs to one, by node name.

    A node belongs to the stage of its outermost module: ``stem`` to stage 0, ``stages.i`` to stage ``i``,
    ``reductions.i`` to the stage it leads into (``i + 1``), ``norm`` and ``head`` to the last stage. Nodes of no
    module (the class token's concatenation) belong to none. A file without the exporter's module scopes is a
    :class:`ConversionError`.
    """
    import ast

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    owner = {"stem": 0, "norm": num_stages - 1, "head": num_stages - 1}
    scoped, stages = False, {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), None)
        if scopes is None:
            continue
        scoped = True
        outer = next((s for s in ast.literal_eval(scopes) if s), "")
        kind, _, index = outer.partition(".")
        if not index.isdigit():
            stage = owner.get(outer)
        else:
            stage = {"stages": int(index), "reductions": int(index) + 1}.get(kind)
        if stage is not None:
            stages[node.name] = stage
    if not scoped:
        raise ConversionError(f"{Path(path).name} has no module scopes ({NAME_SCOPES}): export it with vitres-deploy")
    return stages


def stage_nodes(path: str | Path, stages: Collection[int], num_stages: int) -> list[str]:
    """Names of the nodes of the 0-based ``stages`` (:func:`node_stages`), for quantizing some stages only
    (``quantize_onnx(..., nodes=...)``)."""
    return [name for name, stage in node_stages(path, num_stages).items() if stage in stages]


def quantized_share(path: str | Path, op_types: Sequence[str] = DEFAULT_OP_TYPES) -> float:
    """Share of the compute ops (``op_types``, counted in the fp32 graph's terms) that run quantized in the
    int8 ONNX file ``path``: fused integer ops, or float ops with a DequantizeLinear on their inputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fused = {"QLinearMatMul": "MatMul", "QLinearConv": "Conv", "QGemm": "Gemm", "MatMulInteger": "MatMul",
             "ConvInteger": "Conv"}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    total = quantized = 0
    for n in graph.node:
        if fused.get(n.op_type) in op_types:
            total += 1
            quantized += 1
        elif n.op_type in op_types:
            total += 1
            quantized += any(i in dequantized for i in n.input)
    return quantized / total if total else 0.0
