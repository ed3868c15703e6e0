"""Validation of a latency table against whole measured sub-networks.

``N`` seeded sub-networks spread evenly over the table's predicted latency range (:func:`sample_archs`: the
networks a search picks at any budget, the slowest included) are exported and measured end to end with the
table's own backend, settings, protocol and statistic (the timing core, like the entries), **twice**: two
independent runs, one after the other, so the report knows its noise floor (how far the same networks move
between runs). A network's measured latency is the statistic over the passes of both runs. The correction
(:func:`~vitres_deploy.latency.correction.fit_correction`) is fitted on the even-numbered half and judged on
the odd-numbered half: MAPE, largest error, share within ±5% and ±10%, Kendall's tau and Spearman's rho;
beside them the repeatability, a MACs-linear model fitted on the same half (is the measured table worth
more than counting MACs?), the verdict (validated, or noise or the model to blame) and the margin a search
keeps below its budget. The correction and the report
(:class:`~vitres_deploy.latency.report.ValidationReport`) are stored in the table.

The steps, in order: :func:`sample_archs` -> :func:`measure_networks` -> :func:`fit_on_half` ->
:func:`judge_on_half` -> store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..arch import Arch, sample_arch_sized
from ..errors import SettingsError
from ..macs import arch_cost
from ..progress import advance_plan, progress_bar
from ..rundir import hold_output
from ..runtime.base import NoisyMeasurement
from ..runtime.registry import get_backend
from ..runtime.statistics import Protocol, TimingStats, item_latency, needs_pass
from .correction import Correction, fit_correction
from .metrics import median
from .predict import latency_range, predict, weight_mib
from .profiler import network_target, prepare_sources
from .report import PredictionErrors, Repeatability, ValidationReport, ValidationRow, under_prediction_margin
from .table import LatencyTable, user_copy_path
from .timing import ProfileSettings, time_until_stable

DEFAULT_SAMPLES = 40
MIN_SAMPLES = 4  # half fit the correction, half are reported: two of each at least


#: Candidates drawn per validation network; the networks are picked among them by predicted latency.
POOL_PER_SAMPLE = 50


def sample_archs(table: LatencyTable, n: int, seed: int) -> list[Arch]:
    """``n`` distinct archs of the table's space spread evenly over its predicted latency range, reproducible by
    ``seed``, fastest first.

    A search at a high budget picks networks near the slowest end, which uniform sampling per choice almost
    never reaches (its networks are middle-sized), so the validation would not know how the table predicts
    them. The range from the fastest to the slowest arch (exact, :func:`~.predict.latency_range`) is cut into
    ``n`` strata of equal width: the first and last take those two archs, every other one a random arch of a pool
    drawn at random sizes (:func:`~vitres_deploy.arch.sample_arch_sized`) whose prediction falls in it (an empty
    stratum takes the unused arch predicted nearest its middle). Taken fastest first, the even-numbered (fit)
    and odd-numbered (held-out) halves both span the range, and the slowest arch is held out.
    """
    rng = random.Random(seed)
    span = latency_range(table)
    ends = {span.fastest.hash: span.fastest, span.slowest.hash: span.slowest}
    pool: dict[str, Arch] = {}
    for _ in range(POOL_PER_SAMPLE * n):
        arch = sample_arch_sized(table.space, rng, rng.random())
        if arch.hash not in ends:
            pool.setdefault(arch.hash, arch)
    if len(pool) + len(ends) < n or len(ends) < 2:
        raise SettingsError(f"space {table.space.name!r} has fewer than {n} distinct sub-networks: ask for fewer "
                            "samples", field="samples")
    predicted = {h: predict(table, a).latency_ms for h, a in pool.items()}
    lo, width = span.fastest_ms, (span.slowest_ms - span.fastest_ms) / n
    picked = [span.fastest]
    for k in range(1, n - 1):
        inside = [h for h, ms in predicted.items() if lo + k * width <= ms < lo + (k + 1) * width]
        middle = lo + (k + 0.5) * width
        h = rng.choice(sorted(inside)) if inside else min(predicted, key=lambda h: abs(predicted[h] - middle))
        picked.append(pool[h])
        del predicted[h]
    picked.append(span.slowest)
    return sorted(picked, key=lambda a: predict(table, a).latency_ms)


#: Independent measurement runs of the validation networks (their agreement is the report's noise floor).
RUNS = 2


@dataclass(frozen=True)
class Measured:
    """One network measured end to end in independent runs: each run's passes, all of them combined."""

    runs: tuple[tuple[TimingStats, ...], ...]
    protocol: Protocol

    @property
    def passes(self) -> list[TimingStats]:
        """Every pass of every run, in order."""
        return [p for run in self.runs for p in run]

    @property
    def stats(self) -> TimingStats:
        """All passes combined (median, CV over every run)."""
        return TimingStats.combine(self.passes)

    @property
    def latency_ms(self) -> float:
        """The table's statistic over every pass."""
        return item_latency(self.passes, self.protocol)

    @property
    def runs_ms(self) -> tuple[float, ...]:
        """The table's statistic of each run."""
        return tuple(item_latency(run, self.protocol) for run in self.runs)


def measure_networks(table: LatencyTable, archs: list[Arch], settings: ProfileSettings,
                     progress: bool, runs: int = RUNS) -> list[Measured]:
    """Build every arch, then time them all as the table's entries were timed, in ``runs`` independent runs."""
    targets = [network_target(a) for a in archs]
    protocol = settings.protocol
    with progress_bar(progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurement)
        build = bar.add_task("build", total=len(targets))
        sources = prepare_sources(table.space, targets, settings, lambda: bar.advance(build))
        timing = bar.add_task("time", total=len(targets) * protocol.fewest_rounds * runs)

        def timed(_name: str, passes: list[TimingStats]) -> None:
            advance_plan(bar, timing,
                         another_step=needs_pass(passes, protocol) and len(passes) >= protocol.fewest_rounds)

        measured = [time_until_stable({t.name: sources[t.name] for t in targets}, settings, on_pass=timed)
                    for _ in range(runs)]
        bar.update(timing, total=bar.tasks[timing].completed)  # a recheck may reopen an item it does not time
    return [Measured(tuple(tuple(run[t.name]) for run in measured), protocol) for t in targets]


def macs_linear(archs: list[Arch], table: LatencyTable, measured: list[float]) -> PredictionErrors:
    """A two-parameter model ``latency = a * MACs + b`` fitted on the even-numbered networks, judged on the
    odd-numbered ones: the FLOPs interpolation a user without a measured table would use."""
    macs = [arch_cost(a, table.space).macs for a in archs]
    fit_idx, test_idx = range(0, len(archs), 2), range(1, len(archs), 2)
    slope, intercept = np.polyfit([macs[i] for i in fit_idx], [measured[i] for i in fit_idx], 1)
    return PredictionErrors.of([slope * macs[i] + intercept for i in test_idx], [measured[i] for i in test_idx])


def fit_on_half(table: LatencyTable, archs: list[Arch], measured: list[float]) -> Correction:
    """The correction fitted on the even-numbered networks (their entry sums and weights against their
    measurements)."""
    fit_idx = range(0, len(archs), 2)
    adjusted = [predict(table, archs[i]).adjusted_sum_ms for i in fit_idx]
    return fit_correction(adjusted, [measured[i] for i in fit_idx], table.correction.per_call_ms,
                          [weight_mib(table, archs[i]) for i in fit_idx])


def judge_on_half(table: LatencyTable, archs: list[Arch], networks: list[Measured], correction: Correction,
                  seed: int) -> ValidationReport:
    """The report of ``correction`` on the odd-numbered networks (and of no correction, beside it)."""
    uncalibrated = Correction(offset_ms=correction.per_call_ms, per_call_ms=correction.per_call_ms)
    fitted = replace(table, correction=correction)  # adjusted sums are the fit's own: it keeps per_call_ms
    preds = [predict(fitted, a) for a in archs]
    measured = [n.latency_ms for n in networks]
    test_idx = range(1, len(archs), 2)
    test_measured = [measured[i] for i in test_idx]
    rows = tuple(ValidationRow(
        index=i, split="fit" if i % 2 == 0 else "test", hash=a.hash, arch=a.short(), entries=p.entries,
        sum_ms=p.sum_ms, predicted_ms=p.latency_ms, measured_ms=measured[i],
        error_pct=100 * (p.latency_ms - measured[i]) / measured[i], cv=networks[i].stats.cv,
        pass_medians_ms=tuple(s.median_ms for s in networks[i].passes), parts_ms=p.parts_ms,
        runs_ms=networks[i].runs_ms, macs=arch_cost(a, table.space).macs, weight_mib=weight_mib(table, a),
    ) for i, (a, p) in enumerate(zip(archs, preds)))
    cvs = [n.stats.cv for n in networks]
    runs = [n.runs_ms for n in networks]
    return ValidationReport(
        errors=PredictionErrors.of([preds[i].latency_ms for i in test_idx], test_measured),
        samples=len(archs), seed=seed, fit_samples=len(archs) - len(test_idx), test_samples=len(test_idx),
        noise_cv_median=median(cvs), noise_cv_max=max(cvs),
        entry_cv_median=median([e.stats.cv for e in table.entries.values()]),
        uncalibrated=PredictionErrors.of([uncalibrated.apply(preds[i].adjusted_sum_ms) for i in test_idx],
                                         test_measured),
        correction=correction, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        protocol=table.meta.protocol, rows=rows,
        repeatability=Repeatability.of([r[0] for r in runs], [r[1] for r in runs]) if len(runs[0]) > 1 else None,
        macs_linear=macs_linear(archs, table, measured),
        margin=under_prediction_margin([preds[i].latency_ms for i in test_idx], test_measured))


def validate_table(
    table: LatencyTable | str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    save: bool = True,
    out: str | Path | None = None,
) -> ValidationReport:
    """Measure ``samples`` networks spread over the latency range, fit the correction on half, report on the other
    half.

    The fitted correction and the report are stored in the table, saved atomically when ``save``: to ``out``,
    by default where it was read from, or for a shipped table (read-only) to its copy in the current folder
    (:func:`~.table.user_copy_path`); ``table.path`` then says where. The file written is locked while the
    networks are measured (:func:`~vitres_deploy.rundir.hold_output`).
    """
    if not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    table.require_complete()
    get_backend(table.meta.backend).check(table.meta.precision)  # before building anything
    target = Path(out) if out is not None else user_copy_path(table.path) if table.path is not None else None
    if samples < MIN_SAMPLES:
        raise SettingsError(f"samples {samples} must be at least {MIN_SAMPLES}: half fit the correction, half are "
                            "reported", field="samples")
    settings = ProfileSettings.from_table(table, workers=workers,
                                          cache_dir=Path(cache_dir) if cache_dir is not None else None)
    # one process writes a table: a second validation, or a profile, of the same file is refused before measuring
    with hold_output(target) if save and target is not None else contextlib.nullcontext():
        archs = sample_archs(table, samples, seed)
        networks = measure_networks(table, archs, settings, progress)
        correction = fit_on_half(table, archs, [n.latency_ms for n in networks])
        report = judge_on_half(table, archs, networks, correction, seed)
        table.correction, table.validation = correction, report
        if save:
            table.save(target)
    return report
