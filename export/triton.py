"""Triton Inference Server model repositories: write them into a bundle, and read ``config.pbtxt`` back.

A bundle holds a Triton model repository (``triton/<name>/config.pbtxt`` + ``triton/<name>/1/model.onnx``,
and ``triton/<name>_trt/...`` with ``model.plan`` when an engine was built), written by
:func:`write_repository`. Configurations declare the batch dimension through ``max_batch_size`` (so ``dims``
are per sample) and turn dynamic batching on. :func:`parse_pbtxt` reads the protobuf text format subset such
files use, so ``verify`` can check that a configuration still matches the model it serves.

An int8 ONNX model (and the TensorRT engine built from it) keeps fp32 inputs and outputs, so its configuration
declares the same tensors; its quantization is stated in the model's ``parameters`` (:func:`int8_parameters`:
Triton keeps a model's parameters as strings for its backend, which reads the keys it knows),
and in full in the bundle's manifest.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BundleError
from .options import BatchRange

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


@dataclass(frozen=True)
class TensorConfig:
    """A model input or output as Triton sees it: name, numpy dtype name, per-sample dims."""

    name: str
    dtype: str
    dims: tuple[int, ...]


def int8_parameters(quantization: Mapping[str, Any] | None) -> dict[str, str]:
    """The model parameters that state an int8 model's quantization (``{}`` without one): its precision, and
    its settings and calibration in one line (the manifest's ``quantization`` holds the full record)."""
    if quantization is None:
        return {}
    settings, calibration = quantization["settings"], quantization["calibration"]
    weights = "per-channel" if settings["per_channel"] else "per-tensor"
    stages = quantization.get("stages")
    where = ""
    if stages:
        where = f" in stage{'s' if len(stages) > 1 else ''} {','.join(map(str, stages))}, the others float"
    return {"vitres_deploy.precision": "int8" if not stages else "int8 (mixed)",
            "vitres_deploy.int8": (f"static {settings['format']}, {settings['activations']} activations, {weights} "
                                   f"{settings['weights']} weights of {', '.join(settings['op_types'])}{where}; "
                                   f"{settings['method']} calibration on {calibration['images']} "
                                   f"{calibration['source']} (sha256 {calibration['digest']})")}


def _quoted(text: str) -> str:
    """``text`` as a protobuf text format string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_config(name: str, fmt: str, max_batch_size: int, preferred_batch_sizes: Sequence[int],
                 inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig],
                 max_queue_delay_us: int = 100, parameters: Mapping[str, str] | None = None) -> str:
    """The ``config.pbtxt`` text of a model in format ``onnx`` or ``tensorrt``, dynamic batching on, with
    ``parameters`` (string values) for the backend."""
    platform, filename = PLATFORMS[fmt]
    lines = [f'name: "{name}"', f'platform: "{platform}"', f'default_model_filename: "{filename}"',
             f"max_batch_size: {max_batch_size}"]
    for key, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        body = []
        for t in tensors:
            body.append(f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n'
                        f"    dims: [ {', '.join(map(str, t.dims))} ]\n  }}")
        lines.append(",\n".join(body))
        lines.append("]")
    preferred = sorted({b for b in preferred_batch_sizes if 1 < b <= max_batch_size})
    lines.append("dynamic_batching {")
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
    lines.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
    lines.append("}")
    if fmt == "tensorrt":
        lines.append("instance_group [\n  {\n    kind: KIND_GPU\n    count: 1\n  }\n]")
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{\n  key: {_quoted(key)}\n  value: {{ string_value: {_quoted(value)} }}\n}}")
    return "\n".join(lines) + "\n"


def write_repository(root: Path, name: str, formats: Sequence[str], batch_range: BatchRange,
                     inputs: Sequence[TensorConfig], outputs: Sequence[TensorConfig],
                     parameters: Mapping[str, str] | None = None) -> None:
    """Write ``root/triton``: per format, a copy of the bundle's model file and its configuration.

    The ONNX model is served as ``name``, the TensorRT engine as ``name_trt``, both with ``parameters`` (an int8
    model's :func:`int8_parameters`: the engine of an int8 bundle is built from its quantized ONNX); both
    batch up to ``batch_range.max`` and prefer ``opt`` and ``max``.
    """
    for fmt in formats:
        model = name if fmt == "onnx" else f"{name}_trt"
        filename = PLATFORMS[fmt][1]
        version = root / "triton" / model / "1"
        version.mkdir(parents=True)
        shutil.copyfile(root / filename, version / filename)
        text = model_config(model, fmt, batch_range.max, (batch_range.opt, batch_range.max), inputs, outputs,
                            parameters=parameters)
        (root / "triton" / model / "config.pbtxt").write_text(text)


class PbtxtError(BundleError):
    """A ``config.pbtxt`` is not valid protobuf text format."""


_TOKEN = re.compile(r"""\s*(?:\#[^\n]*\n?\s*)*             # whitespace and comments
                        (?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')  # a quoted string
                        |([{}\[\]:,;])                        # punctuation
                        |([^\s{}\[\]:,;\#"']+))                 # a bare word or number""", re.VERBOSE)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PbtxtError(f"config.pbtxt: cannot read at character {pos}: {text[pos:pos + 20]!r}")
        token = m.group(1) or m.group(2) or m.group(3)
        if token is not None:
            out.append(token)
        pos = m.end()
    return out


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values...]}`` (every field a list; messages are dicts)."""
    tokens = _tokens(text)
    message, pos = _message(tokens, 0, None)
    if pos != len(tokens):
        raise PbtxtError(f"config.pbtxt: unexpected {tokens[pos]!r}")
    return message


def _message(tokens: list[str], pos: int, end: str | None) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while pos < len(tokens) and tokens[pos] != end:
        name = tokens[pos]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PbtxtError(f"config.pbtxt: expected a field name, found {name!r}")
        pos += 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 1
        if pos >= len(tokens):
            raise PbtxtError(f"config.pbtxt: field {name} has no value")
        if tokens[pos] == "[":
            values, pos = _list(tokens, pos + 1)
            fields.setdefault(name, []).extend(values)
        else:
            value, pos = _value(tokens, pos)
            fields.setdefault(name, []).append(value)
        if pos < len(tokens) and tokens[pos] in (",", ";"):
            pos += 1
    if end is not None:
        if pos >= len(tokens):
            raise PbtxtError(f"config.pbtxt: missing {end!r}")
        pos += 1
    return fields, pos


def _list(tokens: list[str], pos: int) -> tuple[list[Any], int]:
    values = []
    while pos < len(tokens) and tokens[pos] != "]":
        value, pos = _value(tokens, pos)
        values.append(value)
        if pos < len(tokens) and tokens[pos] == ",":
            pos += 1
    if pos >= len(tokens):
        raise PbtxtError("config.pbtxt: missing ']'")
    return values, pos + 1


def _value(tokens: list[str], pos: int) -> tuple[Any, int]:
    token = tokens[pos]
    if token == "{":
        return _message(tokens, pos + 1, "}")
    if token[0] in "\"'":
        return bytes(token[1:-1], "utf-8").decode("unicode_escape"), pos + 1
    if token in ("}", "]", ":", ","):
        raise PbtxtError(f"config.pbtxt: unexpected {token!r}")
    for kind in (int, float):
        try:
            return kind(token), pos + 1
        except ValueError:
            continue
    return {"true": True, "false": False}.get(token, token), pos + 1


def parameters_of(config: dict[str, list[Any]]) -> dict[str, str]:
    """The ``parameters`` of a parsed configuration, ``{key: string_value}``."""
    try:
        return {p["key"][0]: p["value"][0]["string_value"][0] for p in config.get("parameters", [])}
    except (KeyError, IndexError, TypeError):
        raise PbtxtError("config.pbtxt: a parameters entry lacks key or value.string_value") from None


def tensors_of(config: dict[str, list[Any]], key: str) -> list[TensorConfig]:
    """The ``input`` or ``output`` entries of a parsed configuration."""
    out = []
    reverse = {v: k for k, v in TRITON_TYPES.items()}
    for t in config.get(key, []):
        try:
            out.append(TensorConfig(t["name"][0], reverse.get(t["data_type"][0], t["data_type"][0]),
                                    tuple(int(d) for d in t["dims"])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise PbtxtError(f"config.pbtxt: {key} entry {t!r} lacks name, data_type or dims") from None
    return out
