"""Options of every command that quantizes to int8: calibration method, layout, weights, the ops quantized."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from ..convert.int8 import DEFAULT_OP_TYPES, FORMATS, METHODS, Int8Settings


def int8_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--int8-method``, ``--int8-format``, ``--int8-ops``, ``--int8-per-tensor``, ``--int8-full-range`` and
    ``--int8-activations`` (used with ``--precision int8``); the command receives them as one ``int8`` keyword
    (:class:`Int8Settings`)."""

    @functools.wraps(command)
    def settings(*args: Any, int8_method: str, int8_format: str, int8_ops: str, int8_per_tensor: bool,
                 int8_full_range: bool, int8_activations: str, **kwargs: Any) -> Any:
        ops = tuple(op.strip() for op in int8_ops.split(",") if op.strip())
        kwargs["int8"] = Int8Settings(method=int8_method, format=int8_format, op_types=ops,
                                      per_channel=not int8_per_tensor, reduce_range=not int8_full_range,
                                      activations=int8_activations)
        return command(*args, **kwargs)

    decorated: Callable[..., Any] = settings
    for option in reversed([
        click.option("--int8-method", type=click.Choice(METHODS), default="minmax", show_default=True,
                     help="int8: how activation ranges are calibrated."),
        click.option("--int8-format", type=click.Choice(FORMATS), default="qoperator", show_default=True,
                     help="int8: fused integer ops (qoperator, ONNX Runtime CPU) or QuantizeLinear/DequantizeLinear "
                          "pairs (qdq, TensorRT's explicit quantization)."),
        click.option("--int8-ops", default=",".join(DEFAULT_OP_TYPES), show_default=True,
                     help="int8: op types quantized, comma-separated; every other op (LayerNorm, Softmax, GELU, "
                          "additions) stays float and is recorded."),
        click.option("--int8-per-tensor", is_flag=True, help="int8: one weight scale per tensor, not per channel."),
        click.option("--int8-full-range", is_flag=True,
                     help="int8: 8-bit weights (default 7-bit: x86 CPUs without VNNI saturate full-range u8 x s8 "
                          "products)."),
        click.option("--int8-activations", type=click.Choice(("uint8", "int8")), default="uint8", show_default=True,
                     help="int8: activation type. uint8 times (7-bit) int8 weights is ONNX Runtime's fast x86 path; "
                          "int8 activations avoid saturation with full-range weights but run slower on x86."),
    ]):
        decorated = option(decorated)
    return decorated
