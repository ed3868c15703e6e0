"""Validation of a latency table against whole measured sub-networks.

``N`` seeded random sub-networks are exported and measured end to end with the table's own backend,
settings and protocol (in the protocol's interleaved rounds, like the entries). The correction
(:func:`~vitres_deploy.latency.predict.fit_correction`) is fitted on the even-numbered half and judged on
the odd-numbered half: MAPE, largest error, share within ±5% and ±10%, Kendall's tau and Spearman's rho,
with the measurement noise (coefficient of variation) beside them. The correction and the report are
stored in the table.
"""

from __future__ import annotations

import datetime as dt
import random
import warnings
from pathlib import Path
from typing import Any

from ..arch import Arch, sample_arch
from ..errors import ProfileError
from ..progress import progress_bar
from ..runtime.base import NoisyMeasurement
from ..runtime.statistics import TimingStats
from .metrics import kendall_tau, mape, max_abs_error_pct, median, spearman, within
from .predict import fit_correction, predict
from .profiler import ProfileSettings, network_target, prepare_sources, time_in_passes
from .table import Correction, LatencyTable

DEFAULT_SAMPLES = 40


def sample_archs(table: LatencyTable, n: int, seed: int) -> list[Arch]:
    """``n`` distinct random archs of the table's space, reproducible by ``seed``."""
    rng = random.Random(seed)
    seen: dict[str, Arch] = {}
    for _ in range(100 * n):
        arch = sample_arch(table.space, rng)
        seen.setdefault(arch.hash, arch)
        if len(seen) == n:
            break
    if len(seen) < n:
        raise ProfileError(f"space {table.space.name!r} has fewer than {n} distinct sub-networks: "
                           "ask for fewer samples")
    return list(seen.values())


def accuracy(predicted: list[float], measured: list[float]) -> dict[str, float]:
    """MAPE (%), max error (%), within ±5% / ±10% (fractions), Kendall tau and Spearman rho."""
    return {
        "mape": mape(predicted, measured),
        "max_error_pct": max_abs_error_pct(predicted, measured),
        "within_5pct": within(predicted, measured, 0.05),
        "within_10pct": within(predicted, measured, 0.10),
        "kendall_tau": kendall_tau(predicted, measured),
        "spearman": spearman(predicted, measured),
    }


def validate_table(
    table: LatencyTable | str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    save: bool = True,
) -> dict[str, Any]:
    """Measure ``samples`` random networks, fit the correction on half, report on the other half.

    The fitted correction and the report are stored in the table (saved atomically when ``save``).
    Returns the report; its keys include ``mape`` (%), ``within_10pct`` (a fraction) and ``kendall_tau``.
    """
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    table.require_complete()
    if samples < 4:
        raise ProfileError("--samples must be at least 4: half fit the correction, half are reported")
    settings = ProfileSettings.from_table(table, workers=workers,
                                          cache_dir=Path(cache_dir) if cache_dir is not None else None)
    archs = sample_archs(table, samples, seed)
    targets = [network_target(a) for a in archs]
    measured: list[float] = []
    cvs: list[float] = []
    pass_medians: list[list[float]] = []
    with progress_bar(progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurement)
        build = bar.add_task("build", total=len(targets))
        sources = prepare_sources(table.space, targets, settings, lambda: bar.advance(build))
        timing = bar.add_task("time", total=len(targets) * settings.protocol.rounds)
        passes = time_in_passes({t.name: sources[t.name] for t in targets}, settings,
                                on_pass=lambda *_: bar.advance(timing))
        for t in targets:
            stats = TimingStats.combine(passes[t.name])
            measured.append(stats.median_ms)
            cvs.append(stats.cv)
            pass_medians.append([p.median_ms for p in passes[t.name]])

    preds = [predict(table, a) for a in archs]
    adjusted = [p.adjusted_sum_ms for p in preds]
    fit_idx, test_idx = list(range(0, samples, 2)), list(range(1, samples, 2))
    per_call = table.correction.per_call_ms
    correction = fit_correction([adjusted[i] for i in fit_idx], [measured[i] for i in fit_idx], per_call)
    uncalibrated = Correction(offset_ms=per_call, per_call_ms=per_call)
    test_measured = [measured[i] for i in test_idx]
    table.correction = correction
    preds = [predict(table, a) for a in archs]  # parts_ms with the fitted scale
    predicted = [p.latency_ms for p in preds]
    rows = [{
        "index": i, "split": "fit" if i % 2 == 0 else "test", "hash": a.hash, "arch": a.short(),
        "entries": p.entries, "sum_ms": p.sum_ms, "predicted_ms": predicted[i], "measured_ms": measured[i],
        "error_pct": 100 * (predicted[i] - measured[i]) / measured[i], "cv": cvs[i], "pass_medians_ms": pass_medians[i],
        "parts_ms": p.parts_ms,
    } for i, (a, p) in enumerate(zip(archs, preds))]
    report: dict[str, Any] = {
        **accuracy([predicted[i] for i in test_idx], test_measured),
        "samples": samples,
        "seed": seed,
        "fit_samples": len(fit_idx),
        "test_samples": len(test_idx),
        "noise_cv_median": median(cvs),
        "noise_cv_max": max(cvs),
        "entry_cv_median": median([e.stats.cv for e in table.entries.values()]),
        "uncalibrated": accuracy([uncalibrated.apply(adjusted[i]) for i in test_idx], test_measured),
        "correction": correction.to_dict(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": table.meta.protocol.to_dict(),
        "rows": rows,
    }
    table.validation = report
    if save:
        table.save()
    return report
