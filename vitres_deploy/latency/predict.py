"""Predicted latency of an arch from a table, the exact achievable range of a space, and the correction fit.

``predicted(arch) = scale * sum(entry_ms - per_call_ms over the arch's entries) + offset_ms``: each
entry was timed as its own call, so its share of the per-call overhead is taken out and the network's
single call is paid once (``offset_ms``). ``scale`` and ``offset_ms`` come from ``profile validate``
(:func:`fit_correction`), which keeps the scale only where it predicts held-out networks better.

The prediction is a positive-weighted sum of per-entry terms, so the fastest and slowest archs of a
space are found exactly by dynamic programming over stages with the stage width as state
(:func:`latency_range`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..arch import Arch, BlockArch, StageArch
from ..errors import ArchError, ProfileError
from .entries import EntrySpec, arch_entries
from .metrics import mape
from .table import Correction, LatencyTable


@dataclass(frozen=True)
class Prediction:
    """A predicted latency with its parts (``stem``, ``stage1``.., ``head``; a stage includes its reduction)."""

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


def _adjusted(table: LatencyTable, key: str) -> float:
    entry = table.entries.get(key)
    if entry is None:
        name = f" {table.path}" if table.path else ""
        raise ProfileError(f"latency table{name} has no entry {key}: the arch is outside what was profiled; "
                           "re-profile the space (or --resume an interrupted profile)")
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
    return Prediction(table.correction.apply(adjusted), raw, adjusted, len(specs), parts)


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
    """Exact extremes of the predicted latency over every arch of the table's space (DP over stages)."""
    table.require_complete()
    if table.correction.scale <= 0:
        raise ProfileError(f"latency table correction has a non-positive scale {table.correction.scale}: re-validate")
    lo_ms, lo_arch = _extreme(table, min)
    hi_ms, hi_arch = _extreme(table, max)
    return LatencyRange(table.correction.apply(lo_ms), lo_arch, table.correction.apply(hi_ms), hi_arch)


def _extreme(table: LatencyTable, pick: Callable[..., Any]) -> tuple[float, Arch]:
    """The min (``pick=min``) or max of the adjusted entry sum over all archs, and an arch reaching it."""
    space = table.space
    n = len(space.stages)
    # Best total up to and including stage i for each width d: (cost, [StageArch, ...]).
    best: dict[int, tuple[float, list[StageArch]]] = {}
    for i, st in enumerate(space.stages, 1):
        stage_best: dict[int, tuple[float, StageArch]] = {}
        for d in st.embed_dims:
            block_cost, block = pick(
                ((_adjusted(table, EntrySpec("block", i, (d, h, m)).key), BlockArch(h, m))
                 for h in st.heads for m in st.mlp_hidden),
                key=lambda t: t[0],
            )
            depth = pick(st.depths, key=lambda k: k * block_cost)
            stage_best[d] = (depth * block_cost, StageArch(d, (block,) * depth))
        new: dict[int, tuple[float, list[StageArch]]] = {}
        for d, (cost, stage) in stage_best.items():
            if i == 1:
                prev_cost, prev = _adjusted(table, EntrySpec("stem", 1, (d,)).key), []
            else:
                prev_cost, prev = pick(
                    ((c + _adjusted(table, EntrySpec("reduction", i, (dp, d)).key), stages)
                     for dp, (c, stages) in best.items()),
                    key=lambda t: t[0],
                )
            new[d] = (prev_cost + cost, [*prev, stage])
        best = new
    total, stages = pick(
        ((c + _adjusted(table, EntrySpec("head", n, (d,)).key), s) for d, (c, s) in best.items()),
        key=lambda t: t[0],
    )
    return total, Arch(space.family, tuple(stages))


def fit_correction(adjusted_sums: Sequence[float], measured: Sequence[float], per_call_ms: float) -> Correction:
    """Fit ``measured ~ scale * adjusted_sum + offset`` on validation networks, minimising relative error.

    Two candidates: offset only (scale 1) and scale + offset (weighted least squares, weights 1/measured²).
    The one with the lower leave-one-out MAPE on these samples is kept; both scores are recorded.
    """
    n = len(measured)
    if n < 2 or len(adjusted_sums) != n:
        raise ProfileError("fitting the correction needs at least 2 measured networks")

    def fit(idx: Sequence[int], with_scale: bool) -> tuple[float, float]:
        w = [1.0 / measured[i] ** 2 for i in idx]
        x = [adjusted_sums[i] for i in idx]
        y = [measured[i] for i in idx]
        sw = sum(w)
        if not with_scale:
            return 1.0, sum(wi * (yi - xi) for wi, xi, yi in zip(w, x, y)) / sw
        mx = sum(wi * xi for wi, xi in zip(w, x)) / sw
        my = sum(wi * yi for wi, yi in zip(w, y)) / sw
        sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
        if sxx <= 0:
            return 1.0, my - mx
        scale = sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, y)) / sxx
        return scale, my - scale * mx

    def loo(with_scale: bool) -> float | None:
        if n < (4 if with_scale else 3):
            return None
        preds = []
        for k in range(n):
            scale, offset = fit([i for i in range(n) if i != k], with_scale)
            preds.append(scale * adjusted_sums[k] + offset)
        return mape(preds, list(measured))

    scores = {"offset": loo(False), "scale+offset": loo(True)}
    with_scale, offset_only = scores["scale+offset"], scores["offset"]
    model = "scale+offset" if with_scale is not None and offset_only is not None and with_scale < offset_only \
        else "offset"
    scale, offset = fit(range(n), model == "scale+offset")
    if scale <= 0:
        model, (scale, offset) = "offset", fit(range(n), False)
    return Correction(scale=scale, offset_ms=offset, per_call_ms=per_call_ms, model=model, fitted_on=n,
                      details={"loo_mape_pct": scores})
