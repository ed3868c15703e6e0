"""Predicted latency of an arch from a table, and the achievable range of a space.

``predicted(arch) = scale * sum(entry_ms - per_call_ms over the arch's entries) + offset_ms (+ spill)``: each
entry was timed as its own call, so its share of the per-call overhead is taken out and the network's
single call is paid once (``offset_ms``). ``scale``, ``offset_ms`` and the spill (what a network pays for weights
beyond what the cache holds, :class:`~vitres_deploy.latency.correction.Correction`) come from ``profile validate``
(:func:`~vitres_deploy.latency.correction.fit_correction`).

Without a spill the prediction is a positive-weighted sum of per-entry terms, so the fastest and slowest archs of
a space are found exactly by dynamic programming over stages with the stage width as state
(:func:`latency_range`); a spill is added to those two archs' sums (it grows with the weights, which grow with the
entries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..arch import Arch
from ..errors import ArchError, ProfileError
from ..macs import weight_bytes
from .entries import arch_entries
from .extremes import extreme_sum
from .table import LatencyTable


@dataclass(frozen=True)
class Prediction:
    """A predicted latency with its parts (``stem``, ``stage1``.., ``head``; a stage includes its reduction; ``spill``
    where the table's correction has one)."""

    latency_ms: float
    sum_ms: float
    adjusted_sum_ms: float
    entries: int
    parts_ms: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"latency_ms": self.latency_ms, "sum_ms": self.sum_ms, "adjusted_sum_ms": self.adjusted_sum_ms,
                "entries": self.entries, "parts_ms": self.parts_ms}


def check_arch(table: LatencyTable, arch: Arch) -> None:
    """Raise :class:`ProfileError` when ``arch`` belongs to another space or has a choice the table lacks."""
    name = f" {table.path}" if table.path else ""
    if not table.space.holds_family(arch.space):
        raise ProfileError(f"latency table{name} is for space {table.space.name!r}, the arch is of space "
                           f"{arch.space!r}: use a table profiled for {arch.space!r}")
    try:
        arch.validate(table.space)
    except ArchError as e:
        raise ProfileError(f"the arch is not covered by latency table{name}: {e}") from None


def weight_mib(table: LatencyTable, arch: Arch) -> float:
    """MiB of ``arch``'s weights in the table's precision (what the correction's spill counts)."""
    return weight_bytes(arch, table.space, table.meta.precision) / 2**20


def _adjusted(table: LatencyTable, key: str) -> float:
    entry = table.entries.get(key)
    if entry is None:
        name = f" {table.path}" if table.path else ""
        raise ProfileError(f"latency table{name} has no entry {key}: the arch is outside what was profiled; "
                           "re-profile the space (or finish an interrupted profile with "
                           "`vitres-deploy profile ... --resume`)")
    return entry.latency_ms - table.correction.per_call_ms


def predict(table: LatencyTable, arch: Arch) -> Prediction:
    """Predicted end-to-end latency of ``arch`` (ms) with the table's correction."""
    check_arch(table, arch)
    if table.overhead is None:
        table.require_complete()
    parts: dict[str, float] = {}
    raw = adjusted = 0.0
    specs = arch_entries(arch, table.space)
    for spec in specs:
        a = _adjusted(table, spec.key)
        raw += table.entries[spec.key].latency_ms
        adjusted += a
        part = spec.kind if spec.kind in ("stem", "head") else f"stage{spec.stage}"
        parts[part] = parts.get(part, 0.0) + table.correction.scale * a
    weights = weight_mib(table, arch) if table.correction.spill_ms_per_mib else 0.0
    spill = table.correction.spill_ms(weights)
    if spill:
        parts["spill"] = spill
    return Prediction(table.correction.apply(adjusted, weights), raw, adjusted, len(specs), parts)


@dataclass(frozen=True)
class LatencyRange:
    """The fastest and slowest predicted latencies of the whole space, with the archs that reach them."""

    fastest_ms: float
    fastest: Arch
    slowest_ms: float
    slowest: Arch

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"fastest_ms": self.fastest_ms, "fastest": self.fastest.to_dict(),
                "slowest_ms": self.slowest_ms, "slowest": self.slowest.to_dict()}


def latency_range(table: LatencyTable) -> LatencyRange:
    """Extremes of the predicted latency over every arch of the table's space: exact for the entry sum (DP over
    stages), the spill (if any) added for the two archs found."""
    table.require_complete()
    if table.correction.scale <= 0:
        raise ProfileError(f"latency table correction has a non-positive scale {table.correction.scale}: re-validate")
    c = table.correction
    lo_ms, lo_arch = _extreme(table, min)
    hi_ms, hi_arch = _extreme(table, max)
    return LatencyRange(c.apply(lo_ms, weight_mib(table, lo_arch)), lo_arch,
                        c.apply(hi_ms, weight_mib(table, hi_arch)), hi_arch)


def _extreme(table: LatencyTable, pick: Callable[..., Any]) -> tuple[float, Arch]:
    """The min (``pick=min``) or max of the adjusted entry sum over all archs, and an arch reaching it."""
    return extreme_sum(table.space, lambda key: _adjusted(table, key), pick)
