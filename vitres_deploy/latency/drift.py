"""Does a latency table still describe this machine? The device fingerprint and a fast drift check.

A table is a measurement of one device on one day. Before a search or an export trusts it:

1. **Fingerprint.** A table records what the hardware reports about itself
   (:mod:`~vitres_deploy.latency.fingerprint`); a table of another fingerprint is refused unless the user
   asks to use it anyway.
2. **Drift check.** A stratified handful of the table's entries (per stage the fastest and the slowest
   block, the stem, a reduction, the head) and three whole networks (the fastest and the slowest by the
   table's prediction, and the middle one of the table's validation, or a random sub-network when it has
   none or its middle is one of the ends; each against its prediction) are re-timed with the table's own
   protocol and statistic. The three are networks ``profile validate`` measured, so after a validation their
   exports are cached already.
   The ratio *measured / table* of each is summarised by its median with a distribution-free 95% interval
   (order statistics of the ratios). A median outside ``1 ± tolerance`` means the table no
   longer describes the machine: re-profile, or rescale the table's predictions by the measured ratio.
   The check is bounded in time (:data:`DRIFT_SECONDS`, exports included): beyond the three passes every item
   gets, a round of passes (or a recheck) starts only when it is expected to end within the bound, at the mean
   time of the passes so far; the items left unsettled are counted in the report.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..arch import Arch, sample_arch
from ..errors import ArchError, ProfileError
from ..runtime.base import NoisyMeasurement
from ..runtime.loaders import ModelLoader
from ..runtime.statistics import item_latency, needs_pass
from ..values import check_real
from .entries import EntrySpec, enumerate_entries
from .fingerprint import device_fingerprint, fingerprint_difference
from .predict import latency_range, predict
from .profiler import entry_target, network_target, prepare_sources
from .table import LatencyTable
from .timing import ProfileSettings, time_until_stable

#: A table whose median measured/table ratio is outside 1 ± this is drifted.
DRIFT_TOLERANCE = 0.10

#: Seconds from the drift check's start within which a round of passes beyond the first ``min_rounds`` must be
#: expected to end, or it does not start (the first ``min_rounds`` are timed whatever the time).
DRIFT_SECONDS = 25.0


@dataclass(frozen=True)
class DriftItem:
    """One re-timed item: a table entry (against its entry) or a network (against its prediction)."""

    name: str
    kind: str
    table_ms: float
    measured_ms: float

    @property
    def ratio(self) -> float:
        """measured / table."""
        return self.measured_ms / self.table_ms


@dataclass(frozen=True)
class DriftReport:
    """The drift check's result: every item, the median ratio with its 95% interval, and the verdict."""

    items: tuple[DriftItem, ...]
    ratio: float
    low: float
    high: float
    tolerance: float
    seconds: float
    unsettled: int = 0

    @property
    def drifted(self) -> bool:
        """True when the median ratio is outside ``1 ± tolerance``."""
        return abs(self.ratio - 1) > self.tolerance

    def describe(self) -> str:
        """``measured 1.32x the table (95% interval 1.25-1.40, 12 items)``."""
        unsettled = f", {self.unsettled} unsettled" if self.unsettled else ""
        return (f"measured {self.ratio:.3f}x the table (95% interval {self.low:.3f}-{self.high:.3f}, "
                f"{len(self.items)} items{unsettled})")

    def to_dict(self, *, items: bool = True) -> dict[str, Any]:
        """Plain-JSON form (without ``items``, the summary alone)."""
        out: dict[str, Any] = {"ratio": self.ratio, "interval": [self.low, self.high], "tolerance": self.tolerance,
                               "drifted": self.drifted, "seconds": self.seconds, "unsettled": self.unsettled}
        if items:
            out["items"] = [{**asdict(i), "ratio": i.ratio} for i in self.items]
        return out


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Median of ``values`` and a distribution-free ``confidence`` interval for it (order statistics)."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    mid = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2
    alpha = (1 - confidence) / 2
    # the largest k with P(Binomial(n, 1/2) < k) <= alpha: [x_k, x_(n-k+1)] covers the median
    k, tail = 0, 0.0
    while k < n // 2:
        nxt = tail + math.comb(n, k) / 2 ** n
        if nxt > alpha:
            break
        tail, k = nxt, k + 1
    return mid, x[max(k - 1, 0)], x[min(n - k, n - 1)]


def drift_targets(table: LatencyTable, seed: int = 0) -> tuple[list[EntrySpec], list[Arch]]:
    """The entries and networks the drift check re-times (see the module docstring)."""
    specs = {s.key: s for s in enumerate_entries(table.space)}
    picked: list[EntrySpec] = []
    for kind in ("stem", "reduction", "head"):
        of_kind = [s for s in specs.values() if s.kind == kind]
        if of_kind:
            picked.append(of_kind[len(of_kind) // 2])
    for stage in range(1, len(table.space.stages) + 1):
        blocks = sorted((s for s in specs.values() if s.kind == "block" and s.stage == stage),
                        key=lambda s: table.entries[s.key].latency_ms)
        if blocks:
            picked.extend([blocks[0], blocks[-1]] if len(blocks) > 1 else blocks)
    span = latency_range(table)
    middle = validated_middle(table)
    if middle is None or middle.hash in (span.fastest.hash, span.slowest.hash):
        middle = sample_arch(table.space, random.Random(seed))
    return picked, [span.fastest, span.slowest, middle]


def validated_middle(table: LatencyTable) -> Arch | None:
    """The network of the middle measured latency among the table's validation networks (None: no validation,
    or a row that does not parse back to an arch of the table's space with the recorded hash)."""
    if table.validation is None or not table.validation.rows:
        return None
    rows = sorted(table.validation.rows, key=lambda r: r.measured_ms)
    row = rows[len(rows) // 2]
    try:
        arch = Arch.from_short(row.arch, table.space.family).validate(table.space)
    except ArchError:
        return None
    return arch if arch.hash == row.hash else None


def reference_entries(table: LatencyTable) -> list[EntrySpec]:
    """The entries timed beside a lone model (the export's gate, :func:`reference_sources`): the slowest stem and
    the slowest block of each stage, the wide entries whose slowdowns on a shared machine are also the network's."""
    specs = enumerate_entries(table.space)
    groups = [[s for s in specs if s.kind == "stem"]]
    groups += [[s for s in specs if s.kind == "block" and s.stage == stage]
               for stage in range(1, len(table.space.stages) + 1)]
    return [max(group, key=lambda s: table.entries[s.key].latency_ms) for group in groups if group]


def reference_sources(table: LatencyTable, *, workers: int = 2, cache_dir: Any = None) -> dict[str, ModelLoader]:
    """The :func:`reference_entries` of ``table``, built as when it was profiled (cached files reused), by key:
    the ``references`` of :func:`~vitres_deploy.latency.timing.measure_like`."""
    table.require_complete()
    settings = ProfileSettings.from_table(table, workers=workers, cache_dir=cache_dir)
    specs = reference_entries(table)
    return dict(prepare_sources(table.space, [entry_target(s) for s in specs], settings))


def check_drift(table: LatencyTable, *, tolerance: float = DRIFT_TOLERANCE, workers: int = 2,
                cache_dir: Any = None, seed: int = 0, seconds: float | None = DRIFT_SECONDS) -> DriftReport:
    """Re-time the table's drift targets with its own protocol; the report says whether the table drifted
    (its median ratio outside ``1 ± tolerance``, a finite fraction above 0). ``seconds`` bounds the check's
    time, exports included (None: unbounded; see the module docstring)."""
    check_real("tolerance", tolerance, low_open=0.0)
    if seconds is not None:
        check_real("seconds", seconds, low_open=0.0)
    table.require_complete()
    start = time.perf_counter()
    settings = ProfileSettings.from_table(table, workers=workers, cache_dir=cache_dir)
    specs, archs = drift_targets(table, seed)
    targets = [entry_target(s) for s in specs] + [network_target(a) for a in archs]
    sources: Mapping[str, ModelLoader] = prepare_sources(table.space, targets, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurement)
        left = None if seconds is None else max(0.0, seconds - (time.perf_counter() - start))
        passes = time_until_stable({t.name: sources[t.name] for t in targets}, settings, seconds=left)
    protocol = settings.protocol
    items = [DriftItem(s.key, "entry", table.entries[s.key].latency_ms, item_latency(passes[s.key], protocol))
             for s in specs]
    items += [DriftItem(f"network {a.hash}", "network", predict(table, a).latency_ms,
                        item_latency(passes[network_target(a).name], protocol)) for a in archs]
    ratio, low, high = median_interval([i.ratio for i in items])
    unsettled = sum(needs_pass(passes[t.name], protocol) for t in targets)
    return DriftReport(tuple(items), ratio, low, high, tolerance, time.perf_counter() - start, unsettled)


def here_fingerprint(table: LatencyTable) -> dict[str, Any]:
    """This machine's fingerprint for the device ``table``'s backend runs on."""
    from ..runtime.registry import get_backend

    return device_fingerprint(get_backend(table.meta.backend).device)


def check_fingerprint(table: LatencyTable, allow_other_device: bool = False) -> list[str]:
    """Refuse a table measured on hardware of another fingerprint (unless allowed); returns the differences.

    A table made before fingerprints were recorded has none to compare and passes.
    """
    if not table.meta.fingerprint:
        return []
    differences = fingerprint_difference(table.meta.fingerprint, here_fingerprint(table))
    if differences and not allow_other_device:
        raise ProfileError(f"latency table {table.path} was measured on other hardware ({differences[0]}"
                           f"{f' and {len(differences) - 1} more' if len(differences) > 1 else ''}): profile this "
                           "device, or pass allow_other_device to use it anyway", field="allow_other_device")
    return differences


def rescaled(table: LatencyTable, ratio: float) -> LatencyTable:
    """A copy of ``table`` whose predictions are ``ratio`` times the original's (recorded in its correction)."""
    c = table.correction
    correction = replace(c, scale=c.scale * ratio, offset_ms=c.offset_ms * ratio,
                         spill_ms_per_mib=c.spill_ms_per_mib * ratio,
                         details={**c.details, "rescaled_by": ratio * c.details.get("rescaled_by", 1.0)})
    return replace(table, correction=correction, path=table.path)


def trusted_table(table: LatencyTable, *, drift_check: bool = True, rescale: bool = False,
                  allow_other_device: bool = False, workers: int = 2,
                  cache_dir: Any = None) -> tuple[LatencyTable, DriftReport | None]:
    """The table a search or an export may trust here: fingerprint checked, drift checked (unless opted out).

    A drifted table is refused with a one-line error naming the fix, or with ``rescale`` its predictions
    are multiplied by the measured ratio. Returns the table to use and the drift report (None when skipped).
    """
    check_fingerprint(table, allow_other_device)
    if not drift_check:
        return table, None
    report = check_drift(table, workers=workers, cache_dir=cache_dir)
    if not report.drifted:
        return table, report
    if rescale:
        return rescaled(table, report.ratio), report
    raise ProfileError(f"latency table {table.path} no longer describes this machine: {report.describe()}, "
                       f"beyond ±{report.tolerance:.0%}; re-profile it, or pass rescale to apply the measured "
                       "ratio", field="rescale")
