"""The timing protocol and its statistics: how long to time, what one pass yields, when an item is settled.

:class:`Protocol` says how to time (warm-up, iterations, seconds, passes) and which statistic stands for
an item's latency; :class:`TimingStats` summarises one pass (or several combined); :class:`Settled` says
where an item's passes stand. :func:`vitres_deploy.runtime.base.measure` times one pass;
:func:`vitres_deploy.latency.timing.time_until_stable` schedules the passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ProfileError
from ..values import check_count, check_real

STATISTICS = ("window_floor", "median")


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and to time, and which statistic stands for an item's latency.

    Defaults follow ``trtexec`` (200 ms warm-up, 10 iterations, 3 s). :func:`measure` times one *pass*:
    ``warmup_s``, then at least ``min_iterations`` and ``min_seconds`` of single timed runs. The timing
    core (:func:`vitres_deploy.latency.timing.time_until_stable`) times every item of a table, a validation
    or a gate in interleaved passes, each with a fresh runner: at least ``min_rounds`` and at most
    ``rounds`` passes, stopping an item once its two best pass values agree within ``stable_within``
    (relative). A round lasts at least ``round_s`` of wall time (a schedule of few items waits before the
    next round), so two passes of one item are never back to back: a neighbour's burst shorter than that
    cannot give an item two agreeing passes. When every item is done, up to ``recheck_rounds`` times a
    sample of the items is timed once more: if they now read lower than the values they settled on (their
    median ratio below ``1 - stable_within``), the machine has become quieter than it was while they were
    timed, and every other item gets one more pass (a slow spell of a shared machine lasting several rounds
    otherwise settles items on its level). With ``disturbed_above`` > 0 an item whose lowest pass was timed while
    the passes around it (other items', in the order they were timed) read more than that fraction above their
    own items' values gets another pass, up to ``rounds``: the machine was slow when the item found its best
    level, so that level may be the slow spell's (0 turns this off). Each recheck also times the
    ``recheck_slowest`` items of the highest latency (the widest entries, which a shared machine can slow on
    their own while the small ones around them read quiet; tables made before 2026-12-04 record 0).

    ``statistic`` is what a table predicts and every later measurement reproduces: ``window_floor`` (the
    lowest median over windows of about ``window_s`` of wall time, then the lowest over passes: the
    device's own latency when the machine's neighbours are quiet, see docs/latency.md) or ``median`` (the
    median of the per-pass medians: tables made before the window floor, read as they were measured).
    """

    warmup_s: float = 0.2
    min_iterations: int = 10
    min_seconds: float = 3.0
    max_cv: float = 0.05
    flush_cache_mb: int = 0
    rounds: int = 1
    min_rounds: int | None = None
    stable_within: float = 0.0
    window_s: float = 0.01
    statistic: str = "median"
    round_s: float = 0.0
    recheck_rounds: int = 0
    disturbed_above: float = 0.0
    recheck_slowest: int = 0

    def __post_init__(self) -> None:
        """Refuse a protocol no measurement can follow (NaN and infinity included), naming the field."""
        try:
            for name in ("warmup_s", "min_seconds", "stable_within", "round_s", "flush_cache_mb", "disturbed_above"):
                check_real(name, getattr(self, name), low=0.0, error=ProfileError)
            check_real("window_s", self.window_s, low_open=0.0, error=ProfileError)
            for name in ("min_iterations", "rounds"):
                check_count(name, getattr(self, name), error=ProfileError)
        except ProfileError as e:
            raise ProfileError(f"protocol: {e}", field=e.field) from None
        for name in ("recheck_rounds", "recheck_slowest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProfileError(f"protocol: {name} {value!r} must be a whole number of at least 0", field=name)
        if not self.max_cv > 0:  # infinity is allowed: no pass is reported as noisy
            raise ProfileError(f"protocol: max_cv {self.max_cv!r} must be a number > 0", field="max_cv")
        if self.min_rounds is not None and not 1 <= self.min_rounds <= self.rounds:
            raise ProfileError(f"protocol: min_rounds {self.min_rounds} must be in 1..rounds ({self.rounds})")
        if self.statistic not in STATISTICS:
            raise ProfileError(f"protocol: statistic {self.statistic!r} is not one of {', '.join(STATISTICS)}")

    @property
    def fewest_rounds(self) -> int:
        """Passes every item gets (``min_rounds``; all ``rounds`` for a protocol without one)."""
        return self.rounds if self.min_rounds is None else self.min_rounds

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        """Inverse of :meth:`to_dict` (fields a table made before them lacks keep their old meaning)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def window_floor(samples_ms: Sequence[float], seconds: float, window_s: float) -> float:
    """The lowest median over consecutive windows of about ``window_s`` seconds of one pass's samples (ms).

    ``seconds`` is the wall time the samples took. A window holds at least 3 samples; a pass too short for
    two windows is one window (its median). One slow run cannot move a window's median, and the lowest
    window is the stretch of the pass in which the machine's neighbours were quietest.
    """
    n = len(samples_ms)
    if n == 0:
        raise ValueError("no timing samples")
    per_sample = seconds / n if seconds > 0 else 0.0
    size = max(3, math.ceil(window_s / per_sample)) if per_sample > 0 else n
    if n < 2 * size:
        return float(np.median(samples_ms))
    a = np.asarray(samples_ms[: n - n % size], dtype=np.float64).reshape(-1, size)
    return float(np.median(a, axis=1).min())


@dataclass(frozen=True)
class TimingStats:
    """Summary of per-iteration latencies, in milliseconds."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    iterations: int
    seconds: float
    floor_ms: float | None = None

    def value(self, statistic: str) -> float:
        """The latency that stands for the item under ``statistic`` (see :class:`Protocol`)."""
        if statistic == "window_floor":
            if self.floor_ms is None:
                raise ProfileError("these timings have no window floor: they were measured for the median")
            return self.floor_ms
        return self.median_ms

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], seconds: float, window_s: float | None = None
                     ) -> TimingStats:
        """Statistics of a list of per-iteration latencies (ms) timed over ``seconds`` of wall clock.

        With ``window_s`` the pass's :func:`window_floor` is computed too.
        """
        if not len(samples_ms):
            raise ValueError("no timing samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        return cls(
            median_ms=float(np.median(a)),
            mean_ms=mean,
            min_ms=float(a.min()),
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            std_ms=std,
            cv=std / mean if mean > 0 else math.inf,
            iterations=int(a.size),
            seconds=float(seconds),
            floor_ms=window_floor(samples_ms, seconds, window_s) if window_s else None,
        )

    @classmethod
    def combine(cls, passes: Sequence[TimingStats]) -> TimingStats:
        """Statistics of several passes over one item (see :attr:`Protocol.rounds`).

        The median is the median of the per-pass medians, so one pass disturbed by the machine does not
        move it; p90 and p99 are the medians of the passes' too; the window floor is the lowest pass's.
        Mean, std and CV pool every iteration of every pass (the spread between passes included);
        iterations and seconds add up.
        """
        if not passes:
            raise ValueError("no timing passes")
        if len(passes) == 1:
            return passes[0]
        n = sum(p.iterations for p in passes)
        mean = sum(p.mean_ms * p.iterations for p in passes) / n
        spread = sum((p.iterations - 1) * p.std_ms ** 2 + p.iterations * (p.mean_ms - mean) ** 2 for p in passes)
        std = math.sqrt(spread / max(n - 1, 1))
        return cls(
            median_ms=float(np.median([p.median_ms for p in passes])),
            mean_ms=mean,
            min_ms=min(p.min_ms for p in passes),
            p90_ms=float(np.median([p.p90_ms for p in passes])),
            p99_ms=float(np.median([p.p99_ms for p in passes])),
            std_ms=std,
            cv=std / mean if mean > 0 else math.inf,
            iterations=n,
            seconds=sum(p.seconds for p in passes),
            floor_ms=None if any(p.floor_ms is None for p in passes) else min(p.floor_ms for p in passes),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingStats:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k != "floor_ms" or k in data})


@dataclass(frozen=True)
class Settled:
    """Where an item's passes stand: its value (the statistic over its passes) and how well two passes agree."""

    value_ms: float
    second_ms: float | None
    passes: int

    @property
    def spread(self) -> float:
        """Relative distance of the second-best pass value from the best (inf with one pass)."""
        return math.inf if self.second_ms is None else (self.second_ms - self.value_ms) / self.value_ms

    @classmethod
    def of(cls, passes: Sequence[TimingStats], protocol: Protocol) -> Settled:
        """The state of one item's ``passes`` under ``protocol``'s statistic."""
        if not passes:
            raise ValueError("no timing passes")
        values = sorted(p.value(protocol.statistic) for p in passes)
        if protocol.statistic == "median":  # tables made before the window floor: the median of pass medians
            combined = TimingStats.combine(passes).median_ms
            return cls(combined, None, len(values))
        return cls(values[0], values[1] if len(values) > 1 else None, len(values))

    def done(self, protocol: Protocol) -> bool:
        """True when the item needs no further pass: ``rounds`` reached, or ``min_rounds`` and settled."""
        if self.passes >= protocol.rounds:
            return True
        return self.passes >= protocol.fewest_rounds and self.spread <= protocol.stable_within


def needs_pass(passes: Sequence[TimingStats], protocol: Protocol) -> bool:
    """True when an item with these ``passes`` is to be timed again under ``protocol``."""
    return not passes or not Settled.of(passes, protocol).done(protocol)


def item_latency(passes: Sequence[TimingStats], protocol: Protocol) -> float:
    """The latency that stands for an item timed in ``passes``: the protocol's statistic over them."""
    return Settled.of(passes, protocol).value_ms
