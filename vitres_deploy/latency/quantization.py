"""How an int8 table's models were quantized, and the check that a search or an export quantizes like it.

A table records its int8 settings (``meta.options.int8``). Whoever predicts with it the latency of an int8 model
quantized in another way (another format, op types, zero points, ...) predicts the speed of another graph, so the
search and the export's latency gate refuse that, naming the flag.
"""

from __future__ import annotations

from ..convert.int8 import Int8Settings
from ..errors import ProfileError
from .table import LatencyTable

#: How an int8 table's models were quantized, as far as it changes their graph and so their speed (or whether
#: TensorRT builds them at all: zero points, float biases), and the flag of each setting (the calibration method,
#: images and weight range change the scales, constants of the graph, not the speed).
INT8_SPEED_SETTINGS = {"format": "int8_format", "op_types": "int8_ops", "per_channel": "int8_per_tensor",
                       "activations": "int8_activations", "weights": "int8_weights", "symmetric": "int8_symmetric",
                       "float_bias": "int8_float_bias"}


def table_int8_settings(table: LatencyTable) -> Int8Settings:
    """The int8 settings the table's models were quantized with (the defaults where the table records none)."""
    return Int8Settings.from_dict(table.meta.options.get("int8", {}))


def check_int8_settings(table_path: str, table: Int8Settings, ours: Int8Settings, who: str = "the export") -> None:
    """Raise :class:`ProfileError` unless the int8 models of the table at ``table_path`` were quantized like
    ``ours`` (``who`` quantizes with them) in every setting that changes their speed (:data:`INT8_SPEED_SETTINGS`)."""
    for name, field in INT8_SPEED_SETTINGS.items():
        mine, theirs = getattr(ours, name), getattr(table, name)
        if mine != theirs:
            show = ",".join(theirs) if isinstance(theirs, tuple) else theirs
            mine = ",".join(mine) if isinstance(mine, tuple) else mine
            raise ProfileError(f"latency table {table_path} times int8 models quantized with {name} {show}, {who} "
                               f"quantizes with {mine}: quantize like the table ({field}) or pass a table of these "
                               "settings", field=field)
