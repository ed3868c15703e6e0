"""The validation report of a latency table: written by ``profile validate``, stored in the table, read by
``profile show``, the table's plot and the demo.

Its JSON form (the table's ``"validation"``) is flat: the prediction-error statistics of the held-out half
at the top level, then the run's figures, the uncalibrated statistics, the fitted correction, the protocol
and one row per measured network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..runtime.base import Protocol
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


@dataclass(frozen=True)
class ValidationRow:
    """One measured network: its prediction, its measurement (median of ``pass_medians_ms`` with several
    rounds; None in reports written before rounds existed) and its noise."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``pass_medians_ms`` left out when None)."""
        out = asdict(self)
        if self.pass_medians_ms is None:
            del out["pass_medians_ms"]
        else:
            out["pass_medians_ms"] = list(self.pass_medians_ms)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationRow:
        """Inverse of :meth:`to_dict`."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "pass_medians_ms"}
        passes = data.get("pass_medians_ms")
        return cls(**values, pass_medians_ms=None if passes is None else tuple(passes))


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
                   tuple(ValidationRow.from_dict(r) for r in data["rows"]))
