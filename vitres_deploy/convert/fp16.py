"""Strongly typed fp16 ONNX models, with LayerNorm and softmax kept in fp32.

TensorRT 11 removed the builder flags that let it pick fp16 kernels on its own (weak typing), and on 10.x
they would ignore the nodes kept in fp32: an fp16 engine is built from a strongly typed network whose
tensors are fp16 in the graph itself. :func:`convert_to_fp16`
rewrites an fp32 model that way: float initializers, constants and activations become fp16, except
around the ops in ``keep_fp32`` (LayerNormalization and Softmax by default: their reductions lose
accuracy in fp16) and the nodes named in ``keep_nodes`` (those that read or write activations beyond
fp16's range on calibration images, :func:`vitres_deploy.runtime.ort.overflowing_nodes`, as NVIDIA's
AutoCast does), which get their float inputs cast to fp32 and their outputs cast back. With
``keep_io_types`` the graph inputs and outputs stay fp32 (casts at the edges), so callers feed the
same arrays as to the fp32 model. The result is type-checked by ONNX shape inference and the checker.

This is the one module that runs ONNX shape inference and the checker on a conversion: a model they reject
is a :class:`~vitres_deploy.errors.ConversionError` (the input model is malformed) or an
:class:`~vitres_deploy.errors.Fp16ConversionError` (the input is valid, its fp16 version is not), with the
first line of ONNX's reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConversionError, Fp16ConversionError, first_line
from ..files import atomic_write

KEEP_FP32_OPS = frozenset({"LayerNormalization", "Softmax", "LogSoftmax"})

# Inputs that the ONNX spec types as float32 whatever the data type (op -> input indices).
_FP32_INPUTS = {"Resize": {2}, "Upsample": {1}}
_FP16_MAX = float(np.finfo(np.float16).max)


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_fp32: Iterable[str] = KEEP_FP32_OPS,
    keep_nodes: Iterable[str] = (),
    keep_io_types: bool = True,
) -> onnx.ModelProto:
    """Return a strongly typed fp16 copy of ``model`` (see the module docstring); ``model`` is not changed.

    When the fp16 copy fails strict shape inference or the checker, ``model`` itself is checked the same way:
    a :class:`ConversionError` if it is malformed, else an :class:`Fp16ConversionError`.
    """
    keep = frozenset(keep_fp32)
    source = model
    names = frozenset(keep_nodes)
    unknown = names - {n.name or n.output[0] for n in model.graph.node}
    if unknown:
        raise Fp16ConversionError(f"keep_nodes: no node {sorted(unknown)[0]!r} in the model", field="keep_nodes")
    model = _flat_copy(model)
    graph = model.graph
    float_names = _float_tensors(model)
    rewrite = _Rewrite(float_names, names)
    for inp in graph.input:
        if inp.name in float_names:
            rewrite.dtype[inp.name] = TensorProto.FLOAT if keep_io_types else TensorProto.FLOAT16
            if not keep_io_types:
                inp.type.tensor_type.elem_type = TensorProto.FLOAT16
    _convert_initializers(graph, keep, names, rewrite.dtype)
    for node in graph.node:
        rewrite.add_node(node, keep)
    for out in graph.output:
        if out.name in float_names:
            rewrite.fix_output(out, keep_io_types)
    del graph.node[:]
    graph.node.extend(rewrite.nodes)
    del graph.value_info[:]
    try:
        return _checked(model, "the fp16 model", Fp16ConversionError)
    except Fp16ConversionError:
        _checked(source, "the model", ConversionError)  # a malformed input is the input's fault, named as such
        raise


def convert_file(src: str | Path, dst: str | Path, **kwargs: object) -> Path:
    """Convert the ONNX file ``src`` to fp16 and write it to ``dst`` atomically; returns ``dst``.

    A file that is not an ONNX model, or one the conversion rejects, is a :class:`ConversionError` naming it.
    """
    src = Path(src)
    try:
        model = onnx.load(str(src))
    except Exception as e:  # protobuf's DecodeError, OSError: not an ONNX model we can read
        raise ConversionError(f"cannot read the ONNX model {src}: {first_line(e)}") from None
    try:
        fp16 = convert_to_fp16(model, **kwargs)  # type: ignore[arg-type]
    except ConversionError as e:
        raise type(e)(f"{src.name}: {e}") from None
    return atomic_write(dst, lambda tmp: onnx.save(fp16, str(tmp)))


def _checked(model: onnx.ModelProto, what: str, error: type[ConversionError]) -> onnx.ModelProto:
    """``model`` with its types inferred, after strict shape inference and the checker; ``error`` naming ``what``
    and ONNX's reason when either rejects it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise error(f"onnx rejects {what}: {first_line(e)}") from None
    return inferred


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of every fp32 tensor of the graph (inputs, initializers, intermediates, outputs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as e:
        raise ConversionError(f"onnx shape inference rejects the model: {first_line(e)}") from None
    g = inferred.graph
    names = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(vi.name)
    typed = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output)} | {t.name for t in g.initializer}
    missing = [o for n in g.node for o in n.output if o and o not in typed]
    if missing:
        _checked(model, "the model", ConversionError)  # a malformed model: ONNX's own reason
        raise Fp16ConversionError(f"shape inference left the type of {missing[0]!r} unknown: cannot convert")
    return names


def _flat_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its local functions inlined; refused when a node holds a subgraph."""
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Fp16ConversionError(f"node {node.name or node.op_type} has a subgraph: not supported")
    return model


def _convert_initializers(graph: onnx.GraphProto, keep: frozenset[str], keep_nodes: frozenset[str],
                          dtype: dict[str, int]) -> None:
    """Store float initializers as fp16, except those read only where fp32 stays; record their types."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        users = consumers.get(tensor.name, [])
        if users and all(_stays_fp32(n, tensor.name, keep, keep_nodes) for n in users):
            dtype[tensor.name] = TensorProto.FLOAT
            continue
        tensor.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(tensor)), tensor.name))
        dtype[tensor.name] = TensorProto.FLOAT16


class _Rewrite:
    """The rewritten node list, the current element type of every float tensor, and the casts made so far."""

    def __init__(self, float_names: set[str], keep_nodes: frozenset[str] = frozenset()) -> None:
        self.float_names = float_names
        self.keep_nodes = keep_nodes
        self.dtype: dict[str, int] = {}
        self.nodes: list[onnx.NodeProto] = []
        self._casts: dict[tuple[str, int], str] = {}

    def cast(self, name: str, to: int) -> str:
        """``name`` as element type ``to``: itself, or the output of a Cast (made once per tensor and type)."""
        if self.dtype.get(name) == to:
            return name
        key = (name, to)
        if key not in self._casts:
            out = f"{name}__to_{'fp32' if to == TensorProto.FLOAT else 'fp16'}"
            self.nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            self._casts[key] = out
            self.dtype[out] = to
        return self._casts[key]

    def add_node(self, node: onnx.NodeProto, keep: frozenset[str]) -> None:
        """Append ``node`` computing in fp16 (or fp32 for ops in ``keep``), its float inputs cast to match."""
        fp32_node = (node.op_type in keep and node.domain in ("", "ai.onnx")) or \
            (node.name or node.output[0]) in self.keep_nodes
        for i, name in enumerate(node.input):
            if name and name in self.dtype:
                keep_input = fp32_node or i in _FP32_INPUTS.get(node.op_type, ())
                node.input[i] = self.cast(name, TensorProto.FLOAT if keep_input else TensorProto.FLOAT16)
        if not fp32_node:
            _retype_attributes(node)
        for name in node.output:
            if name in self.float_names:
                self.dtype[name] = TensorProto.FLOAT if fp32_node else TensorProto.FLOAT16
        self.nodes.append(node)

    def fix_output(self, out: onnx.ValueInfoProto, keep_io_types: bool) -> None:
        """Give the graph output ``out`` its declared type (fp32 with ``keep_io_types``, else fp16) by a last Cast."""
        want = TensorProto.FLOAT if keep_io_types else TensorProto.FLOAT16
        out.type.tensor_type.elem_type = want
        if self.dtype[out.name] == want:
            return
        inner = f"{out.name}__{'fp16' if keep_io_types else 'fp32'}"
        _rename_output(self.nodes, out.name, inner)
        self.dtype[inner] = self.dtype[out.name]
        self.nodes.append(helper.make_node("Cast", [inner], [out.name], to=want, name=f"{out.name}__cast_out"))


def _to_fp16(array: np.ndarray) -> np.ndarray:
    """``array`` as fp16, values beyond fp16's range clipped to its largest finite value."""
    return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _stays_fp32(node: onnx.NodeProto, name: str, keep: frozenset[str], keep_nodes: frozenset[str]) -> bool:
    if node.op_type in keep or (node.name or node.output[0]) in keep_nodes:
        return True
    return any(node.input[i] == name for i in _FP32_INPUTS.get(node.op_type, ()) if i < len(node.input))


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Turn float32 type attributes and constant values of a node that now computes in fp16 into fp16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.name == "dtype" and attr.type == onnx.AttributeProto.INT and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(attr.t)), attr.t.name))
    if node.op_type == "Constant":
        for i, attr in enumerate(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                values = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float16)
                del node.attribute[i]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))
                break


def _rename_output(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
