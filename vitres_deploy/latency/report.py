"""The validation report of a latency table: written by ``profile validate``, stored in the table, read by
``profile show``, the table's plot and the demo.

Its JSON form (the table's ``"validation"``) is flat: the prediction-error statistics of the held-out half
at the top level, then the run's figures, the uncalibrated statistics, the fitted correction, the protocol
and one row per measured network. Reports of this version add the repeatability of the measurement (every
network measured in two independent runs), a MACs-linear baseline fitted on the same half, the verdict
(validated, or whether noise or the model is to blame) and the search margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import numpy as np

from ..runtime.statistics import Protocol
from .correction import Correction
from .metrics import kendall_tau, mape, max_abs_error_pct, spearman, within


@dataclass(frozen=True)
class PredictionErrors:
    """How far predicted latencies are from measured ones: MAPE and largest error (%), the shares within
    ±5% and ±10% (fractions), and how well the order is kept (Kendall's tau-b, Spearman's rho)."""

    mape: float
    max_error_pct: float
    within_5pct: float
    within_10pct: float
    kendall_tau: float
    spearman: float

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> PredictionErrors:
        """The statistics of ``predicted`` against ``measured`` (same length, non-empty)."""
        return cls(mape(predicted, measured), max_abs_error_pct(predicted, measured),
                   within(predicted, measured, 0.05), within(predicted, measured, 0.10),
                   kendall_tau(predicted, measured), spearman(predicted, measured))

    def to_dict(self) -> dict[str, float]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionErrors:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: float(data[f.name]) for f in fields(cls)})


#: A table is validated when its held-out networks meet both: share within ±10% and Kendall's tau.
TARGET_WITHIN_10PCT = 0.95
TARGET_KENDALL_TAU = 0.9
#: Measurement noise above this (90th percentile of |change| between two runs of the same networks, %) is
#: enough to explain a missed target.
NOISE_P90_CHANGE_PCT = 5.0


@dataclass(frozen=True)
class Repeatability:
    """How far the same networks moved between two independent measurement runs (|change| in %).

    ``shift_pct`` is the median signed change: a move of the whole machine between the two runs (minutes apart),
    which every network shares; ``p90_around_shift_pct`` the 90th percentile of |change - shift|, how far the
    networks moved apart from that. Both are None in reports written before them."""

    median_change_pct: float
    p90_change_pct: float
    max_change_pct: float
    shift_pct: float | None = None
    p90_around_shift_pct: float | None = None

    @classmethod
    def of(cls, first: Sequence[float], second: Sequence[float]) -> Repeatability:
        """The |change| statistics of ``second`` against ``first`` (same networks, same order)."""
        signed = 100 * (np.asarray(second) - np.asarray(first)) / np.asarray(first)
        change, shift = np.abs(signed), float(np.median(signed))
        return cls(float(np.median(change)), float(np.percentile(change, 90)), float(change.max()), shift,
                   float(np.percentile(np.abs(signed - shift), 90)))

    def to_dict(self) -> dict[str, float]:
        """Plain-JSON form (the fields a report written before them lacks are left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Repeatability:
        """Inverse of :meth:`to_dict`."""
        return cls(**{f.name: None if f.default is not MISSING and data.get(f.name) is None else float(data[f.name])
                      for f in fields(cls)})


def under_prediction_margin(predicted: Sequence[float], measured: Sequence[float], quantile: float = 90) -> float:
    """The ``quantile``-th percentile of how much networks measured above their prediction (a fraction, >= 0).

    A search keeps its predicted latency ``margin`` below the budget, so that networks the table
    under-predicts by up to this much still measure within the budget.
    """
    under = np.maximum(0.0, np.asarray(measured) / np.asarray(predicted) - 1.0)
    return float(np.percentile(under, quantile))


@dataclass(frozen=True)
class ValidationRow:
    """One measured network: its prediction, its measurement (the table's statistic over every pass; with
    ``runs_ms`` the statistic of each of the two runs, None in reports written before them) and its noise."""

    index: int
    split: str
    hash: str
    arch: str
    entries: int
    sum_ms: float
    predicted_ms: float
    measured_ms: float
    error_pct: float
    cv: float
    pass_medians_ms: tuple[float, ...] | None
    parts_ms: dict[str, float]
    runs_ms: tuple[float, ...] | None = None
    macs: int | None = None
    weight_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (optional fields left out when None)."""
        out = asdict(self)
        for name in ("pass_medians_ms", "runs_ms", "macs", "weight_mib"):
            if out[name] is None:
                del out[name]
            elif isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRow:
        """Inverse of :meth:`to_dict`."""
        optional = ("pass_medians_ms", "runs_ms", "macs", "weight_mib")
        values = {f.name: data[f.name] for f in fields(cls) if f.name not in optional}
        passes, runs = data.get("pass_medians_ms"), data.get("runs_ms")
        return cls(**values, pass_medians_ms=None if passes is None else tuple(passes),
                   runs_ms=None if runs is None else tuple(runs), macs=data.get("macs"),
                   weight_mib=data.get("weight_mib"))


@dataclass(frozen=True)
class ValidationReport:
    """What ``profile validate`` found: ``errors`` of the fitted prediction on the held-out (``test``) half,
    beside ``uncalibrated`` (the same networks before the fit), with the measurement noise of the networks
    (``noise_cv_*``) and of the table's entries (``entry_cv_median``)."""

    errors: PredictionErrors
    samples: int
    seed: int
    fit_samples: int
    test_samples: int
    noise_cv_median: float
    noise_cv_max: float
    entry_cv_median: float
    uncalibrated: PredictionErrors
    correction: Correction
    date: str
    protocol: Protocol
    rows: tuple[ValidationRow, ...]
    repeatability: Repeatability | None = None
    macs_linear: PredictionErrors | None = None
    margin: float | None = None

    @property
    def validated(self) -> bool:
        """True when the held-out networks meet :data:`TARGET_WITHIN_10PCT` and :data:`TARGET_KENDALL_TAU`."""
        return self.errors.within_10pct >= TARGET_WITHIN_10PCT and self.errors.kendall_tau >= TARGET_KENDALL_TAU

    @property
    def blame(self) -> str | None:
        """Why a table missed the target: ``noise`` (the measurement does not repeat well enough to meet it),
        ``model`` (it repeats, the prediction is off), None when validated or the noise is unknown."""
        if self.validated or self.repeatability is None:
            return None
        return "noise" if self.repeatability.p90_change_pct > NOISE_P90_CHANGE_PCT else "model"

    @property
    def search_margin(self) -> float:
        """The margin a search keeps below its budget: :attr:`margin`, or for a report written before it was
        recorded, the same statistic of its held-out rows."""
        if self.margin is not None:
            return self.margin
        rows = self.test_rows
        return under_prediction_margin([r.predicted_ms for r in rows], [r.measured_ms for r in rows])

    @property
    def test_rows(self) -> list[ValidationRow]:
        """The rows of the held-out half, the ones ``errors`` is computed on."""
        return [r for r in self.rows if r.split == "test"]

    def to_dict(self, *, rows: bool = True) -> dict[str, Any]:
        """The table's ``"validation"`` form; without ``rows`` the per-network rows are left out."""
        out: dict[str, Any] = {
            **self.errors.to_dict(), "samples": self.samples, "seed": self.seed, "fit_samples": self.fit_samples,
            "test_samples": self.test_samples, "noise_cv_median": self.noise_cv_median,
            "noise_cv_max": self.noise_cv_max, "entry_cv_median": self.entry_cv_median,
            "uncalibrated": self.uncalibrated.to_dict(), "correction": self.correction.to_dict(), "date": self.date,
            "protocol": self.protocol.to_dict(),
        }
        if self.repeatability is not None:
            out["repeatability"] = self.repeatability.to_dict()
        if self.macs_linear is not None:
            out["macs_linear"] = self.macs_linear.to_dict()
        if self.margin is not None:
            out["margin"] = self.margin
        out["validated"] = self.validated
        out["blame"] = self.blame
        if rows:
            out["rows"] = [r.to_dict() for r in self.rows]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationReport:
        """Inverse of :meth:`to_dict` (with rows)."""
        return cls(PredictionErrors.from_dict(data), int(data["samples"]), int(data["seed"]),
                   int(data["fit_samples"]), int(data["test_samples"]), float(data["noise_cv_median"]),
                   float(data["noise_cv_max"]), float(data["entry_cv_median"]),
                   PredictionErrors.from_dict(data["uncalibrated"]), Correction.from_dict(data["correction"]),
                   str(data["date"]), Protocol.from_dict(data["protocol"]),
                   tuple(ValidationRow.from_dict(r) for r in data["rows"]),
                   Repeatability.from_dict(data["repeatability"]) if data.get("repeatability") else None,
                   PredictionErrors.from_dict(data["macs_linear"]) if data.get("macs_linear") else None,
                   float(data["margin"]) if data.get("margin") is not None else None)
