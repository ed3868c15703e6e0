"""The correction: how the sum of an arch's table entries becomes a predicted end-to-end latency, and its fit.

``predicted = scale * sum(entry_ms - per_call_ms over the arch's entries) + offset_ms
+ spill_ms_per_mib * max(0, weight_mib - spill_above_mib)``. Before validation the scale is 1, the offset the
per-call overhead and there is no spill; ``profile validate`` fits them on measured networks
(:func:`fit_correction`) and keeps the scale, or the spill, only where it predicts held-out networks better.

The spill is the cost of a last-level cache too small for a network's weights. An entry is timed alone, its
weights cached between runs (warm caches: the median network of the space fits the cache); inside a network
whose weights outgrow what the cache holds for this process, every block's weights come from memory on every
inference. On a 2-core share of an 8 MiB L3 (AMD EPYC, Zen 1) fmnist networks above about 2.5 MiB of weights
measured up to 14% slower than their entries' sum, in proportion to the weights beyond that
(docs/latency.md, thirteenth round).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ProfileError
from .metrics import mape


@dataclass
class Correction:
    """Turns the sum of an arch's entries into a predicted end-to-end latency.

    ``predicted = scale * sum(entry - per_call_ms for each entry) + offset_ms``: each entry's measured
    per-call overhead is taken out and the whole network's overhead (``offset_ms``) is added once.
    A network whose weights exceed ``spill_above_mib`` MiB pays ``spill_ms_per_mib`` for each MiB beyond.
    Before validation, ``scale = 1``, ``offset_ms = per_call_ms`` and no spill; ``profile validate`` fits them.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    per_call_ms: float = 0.0
    model: str = "uncalibrated"
    fitted_on: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    spill_ms_per_mib: float = 0.0
    spill_above_mib: float = 0.0

    def spill_ms(self, weight_mib: float) -> float:
        """What a network with ``weight_mib`` MiB of weights pays beyond its entries for weights the cache lost."""
        return self.spill_ms_per_mib * max(0.0, weight_mib - self.spill_above_mib)

    def apply(self, adjusted_sum_ms: float, weight_mib: float = 0.0) -> float:
        """Predicted latency (ms) of an arch whose entries, each less ``per_call_ms``, sum to ``adjusted_sum_ms``
        and whose weights take ``weight_mib`` MiB (they count only with a spill)."""
        return self.scale * adjusted_sum_ms + self.offset_ms + self.spill_ms(weight_mib)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (without a spill, the spill's fields left out: what tables before it stored)."""
        out = asdict(self)
        if not self.spill_ms_per_mib:
            del out["spill_ms_per_mib"], out["spill_above_mib"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def fit_correction(adjusted_sums: Sequence[float], measured: Sequence[float], per_call_ms: float,
                   weight_mib: Sequence[float] | None = None) -> Correction:
    """Fit ``measured ~ scale * adjusted_sum + offset (+ spill)`` on validation networks, minimising relative error.

    Candidates: offset only (scale 1); scale + offset (weighted least squares, weights 1/measured²); and, given
    each network's ``weight_mib``, offset + spill (scale 1, the knee ``spill_above_mib`` one of the networks' own
    weight sizes, the rate positive, both chosen by the lowest weighted squared error). The one with the lowest
    leave-one-out MAPE on these samples is kept (the spill's knee chosen again inside every fold); every score
    is recorded.
    """
    n = len(measured)
    if n < 2 or len(adjusted_sums) != n or (weight_mib is not None and len(weight_mib) != n):
        raise ProfileError("fitting the correction needs at least 2 measured networks")
    x, y = np.asarray(adjusted_sums, float), np.asarray(measured, float)
    w = None if weight_mib is None else np.asarray(weight_mib, float)

    def fit(idx: np.ndarray, model: str) -> tuple[float, float, float, float]:
        """(scale, offset, spill rate, knee) of ``model`` fitted on the networks ``idx``."""
        weight = 1.0 / y[idx] ** 2
        if model == "scale+offset":
            mx, my = np.average(x[idx], weights=weight), np.average(y[idx], weights=weight)
            sxx = float(np.sum(weight * (x[idx] - mx) ** 2))
            if sxx > 0:
                scale = float(np.sum(weight * (x[idx] - mx) * (y[idx] - my)) / sxx)
                return scale, float(my - scale * mx), 0.0, 0.0
        rest = y[idx] - x[idx]
        best = (float(np.average(rest, weights=weight)), 0.0, 0.0)
        if model == "offset+spill" and w is not None:
            best_sse = float(np.sum(weight * (rest - best[0]) ** 2))
            for knee in np.unique(w[idx])[:-2]:  # at least two networks above the knee
                beyond = np.maximum(0.0, w[idx] - knee)
                design = np.stack([np.ones_like(beyond), beyond], axis=1) * np.sqrt(weight)[:, None]
                (offset, rate), *_ = np.linalg.lstsq(design, rest * np.sqrt(weight), rcond=None)
                sse = float(np.sum(weight * (rest - offset - rate * beyond) ** 2))
                if rate > 0 and sse < best_sse:
                    best, best_sse = (float(offset), float(rate), float(knee)), sse
        return 1.0, *best

    def predicted(params: tuple[float, float, float, float], k: np.ndarray) -> np.ndarray:
        scale, offset, rate, knee = params
        spill = 0.0 if w is None else rate * np.maximum(0.0, w[k] - knee)
        return scale * x[k] + offset + spill

    def loo(model: str) -> float | None:
        if n < {"offset": 2, "scale+offset": 3, "offset+spill": 5}[model]:  # each fold: enough networks to fit
            return None
        preds = [float(predicted(fit(np.delete(np.arange(n), k), model), np.array([k]))[0]) for k in range(n)]
        return mape(preds, list(measured))

    models = ("offset", "scale+offset") + (("offset+spill",) if w is not None else ())
    scores = {m: loo(m) for m in models}
    scored = {m: v for m, v in scores.items() if v is not None}
    model = min(scored, key=lambda m: (scored[m], models.index(m)))  # n >= 2: the offset is always scored
    scale, offset, rate, knee = fit(np.arange(n), model)
    if scale <= 0 or (model == "offset+spill" and not rate):  # a spill found in the folds but not in all
        model, (scale, offset, rate, knee) = "offset", fit(np.arange(n), "offset")
    return Correction(scale=scale, offset_ms=offset, per_call_ms=per_call_ms, model=model, fitted_on=n,
                      details={"loo_mape_pct": scores}, spill_ms_per_mib=rate, spill_above_mib=knee)
