"""Options of every command that quantizes to int8: calibration method, layout, weights, the ops quantized."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from ..convert.int8 import DEFAULT_OP_TYPES, FORMATS, METHODS, Int8Settings


@dataclass(frozen=True)
class Int8Flags:
    """The ``--int8-*`` flags as given (None: not given, the layout's default applies)."""

    given: dict[str, Any]

    def settings(self, layout: str) -> Int8Settings:
        """The settings for the int8 ``layout`` the command's backend or format runs (``ort-cpu`` or ``tensorrt``:
        :meth:`Int8Settings.for_layout`); a flag that layout cannot run is a one-line error naming it."""
        return Int8Settings.for_layout(layout, **self.given)


def int8_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--int8-method``, ``--int8-format``, ``--int8-ops``, ``--int8-per-tensor``, ``--int8-full-range``,
    ``--int8-activations`` and ``--int8-symmetric`` (used with ``--precision int8``); the command receives them as
    one ``int8`` keyword (:class:`Int8Flags`) and resolves them for its int8 layout."""

    @functools.wraps(command)
    def settings(*args: Any, int8_method: str, int8_format: str | None, int8_ops: str, int8_per_tensor: bool,
                 int8_full_range: bool | None, int8_activations: str | None, int8_symmetric: bool | None,
                 **kwargs: Any) -> Any:
        ops = tuple(op.strip() for op in int8_ops.split(",") if op.strip())
        kwargs["int8"] = Int8Flags({
            "method": int8_method, "format": int8_format, "op_types": ops, "per_channel": not int8_per_tensor,
            "reduce_range": None if int8_full_range is None else not int8_full_range,
            "activations": int8_activations, "symmetric": int8_symmetric})
        return command(*args, **kwargs)

    decorated: Callable[..., Any] = settings
    for option in reversed([
        click.option("--int8-method", type=click.Choice(METHODS), default="minmax", show_default=True,
                     help="int8: how activation ranges are calibrated."),
        click.option("--int8-format", type=click.Choice(FORMATS), default=None,
                     help="int8: fused integer ops (qoperator, ONNX Runtime CPU) or QuantizeLinear/DequantizeLinear "
                          "pairs (qdq, TensorRT's explicit quantization) [default: qoperator on ort-cpu, qdq for "
                          "TensorRT, which needs it]."),
        click.option("--int8-ops", default=",".join(DEFAULT_OP_TYPES), show_default=True,
                     help="int8: op types quantized, comma-separated; every other op (LayerNorm, Softmax, GELU, "
                          "additions) stays float and is recorded."),
        click.option("--int8-per-tensor", is_flag=True, help="int8: one weight scale per tensor, not per channel."),
        click.option("--int8-full-range/--int8-reduced-range", default=None,
                     help="int8: 8-bit or 7-bit weights [default: 7-bit on ort-cpu (x86 CPUs without VNNI saturate "
                          "full-range u8 x s8 products), 8-bit for TensorRT]."),
        click.option("--int8-activations", type=click.Choice(("uint8", "int8")), default=None,
                     help="int8: activation type [default: uint8 on ort-cpu, where uint8 times (7-bit) int8 weights "
                          "is ONNX Runtime's fast x86 path; int8 for TensorRT, which needs it]."),
        click.option("--int8-symmetric/--int8-asymmetric", default=None,
                     help="int8: activations quantized symmetrically (zero point 0) or not [default: asymmetric on "
                          "ort-cpu, symmetric for TensorRT, which needs it]."),
    ]):
        decorated = option(decorated)
    return decorated
