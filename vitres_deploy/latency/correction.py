"""The correction: how the sum of an arch's table entries becomes a predicted end-to-end latency, and its fit.

``predicted = scale * sum(entry_ms - per_call_ms over the arch's entries) + offset_ms``. Before validation
the scale is 1 and the offset the per-call overhead; ``profile validate`` fits both on measured networks
(:func:`fit_correction`) and keeps the scale only where it predicts held-out networks better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ProfileError
from .metrics import mape


@dataclass
class Correction:
    """Turns the sum of an arch's entries into a predicted end-to-end latency.

    ``predicted = scale * sum(entry - per_call_ms for each entry) + offset_ms``: each entry's measured
    per-call overhead is taken out and the whole network's overhead (``offset_ms``) is added once.
    Before validation, ``scale = 1`` and ``offset_ms = per_call_ms``; ``profile validate`` fits them.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    per_call_ms: float = 0.0
    model: str = "uncalibrated"
    fitted_on: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def apply(self, adjusted_sum_ms: float) -> float:
        """Predicted latency (ms) of an arch whose entries, each less ``per_call_ms``, sum to ``adjusted_sum_ms``."""
        return self.scale * adjusted_sum_ms + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


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
