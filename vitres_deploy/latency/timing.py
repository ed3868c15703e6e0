"""The one timing core: tables, validation, the drift check and the export's latency gate measure through it.

**The statistic** (:class:`~vitres_deploy.runtime.base.Protocol`'s ``statistic``). On a shared machine the
low end of a latency distribution is the device; the median is whatever the neighbours do: over eight
1-second trials of one network here the minimum moved ±3% while the median moved ±20%
(``benchmarks/latency_statistics.py`` measures this for any space). So a pass is cut into windows of about
``window_s`` of wall time, each window is summarised by its median (one disturbed run does not move it)
and the pass by its quietest window, the *window floor*; an item's latency is the lowest window floor of
its passes.

**Stopping.** Items are timed in interleaved passes, each with a fresh runner (odd passes in reverse order,
so slow drift of the machine meets every item alike): at least ``min_rounds`` passes, at most ``rounds``;
an item leaves the schedule once its two lowest pass values agree within ``stable_within``: two passes at
different times of the run that found the same quiet level. A round lasts at least ``round_s``: one model
alone (the export's gate) waits between its passes instead of timing them back to back, where one burst
of a neighbour's load can cover two passes that then agree on the wrong level. An item that never settles
stops at ``rounds`` and is reported as unsettled (its spread is recorded).

**Recheck.** Settling cannot tell a quiet level from a slow spell of the machine that lasts several rounds:
two passes in the spell agree too. So when every item is done, a sample spread over the items
(:func:`recheck_sample`) is timed once more; if the sample now reads lower than the values its items settled
on (median ratio below ``1 - stable_within``), the machine is quieter than while they were timed and every
other item gets one more pass, then another sample is rechecked: at most ``recheck_rounds`` times. A quiet run
pays one short pass per sampled item; a run whose slow spell ended before it did is timed again at the quiet
level (the statistic is the lowest pass, so a pass can only lower an item's value). Each recheck also times the
``recheck_slowest`` items of the highest latency: a shared machine can slow the widest entries on their own
while the small ones around them read quiet (docs/latency.md, eighth and tenth rounds), and neither the sample's
median nor the disturbed-pass rule sees that; a lower pass lowers such an item and reopens it.

**Disturbed passes.** The other items tell how the machine was doing when a pass was timed: on a noisy hour
the shared CPU alternates between its quiet level and spells of one to a few seconds 1.3-1.8x slower, and a
pass that falls in a spell reads slow for every item timed around it. An item whose lowest pass was timed
while the passes around it read more than ``disturbed_above`` above their own items' values
(:func:`disturbed_items`) is timed again, up to ``rounds``: its best level may be a spell's, however well
its passes agree. A lone model (the export's gate) has no other items: it is timed among *references*, a few
of its table's own entries timed in each of its rounds, which tell the machine's state around its passes.

**Time cap.** A schedule given ``seconds`` (the drift check) starts no new round once they have passed, beyond
the ``min_rounds`` every item gets, and no recheck.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..convert.int8 import TIMING_CALIBRATION, Int8Settings
from ..convert.to_onnx import DEFAULT_OPSET
from ..errors import CheckFailed, ProfileError
from ..runtime.base import RunnerOptions, measure
from ..runtime.loaders import ModelLoader, ModuleLoader, OnnxFile
from ..runtime.registry import get_backend
from ..runtime.statistics import Protocol, Settled, TimingStats, item_latency, needs_pass
from .quantization import table_int8_settings
from .table import LatencyTable

#: Protocol of table entries, validation networks, the drift check and the latency gate: short passes (a
#: table has hundreds of entries of tens of microseconds to milliseconds each; still thousands of runs for
#: small ones), at least three passes each (the third after every item's second: a check that the level two
#: passes agreed on is the quiet one), more until the two best agree within 3% (at most six), rounds at
#: least 1 s long (the passes of a lone model are spread over wall time), up to two rechecks at the end (each
#: with the five slowest items), and another pass for an item whose best pass was timed while the others read
#: more than 10% slow.
TABLE_PROTOCOL = Protocol(warmup_s=0.01, min_iterations=20, min_seconds=0.1, rounds=6, min_rounds=3,
                          stable_within=0.03, window_s=0.01, statistic="window_floor", round_s=1.0,
                          recheck_rounds=2, disturbed_above=0.1, recheck_slowest=5)


@dataclass(frozen=True)
class ProfileSettings:
    """Everything that decides what a table measures (recorded in its metadata) plus how to build it."""

    backend: str = "ort-cpu"
    precision: str = "fp32"
    batch: int = 1
    threads: int = 1
    protocol: Protocol = TABLE_PROTOCOL
    cuda_graphs: bool = False
    device_id: int = 0
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    workers: int = 2
    cache_dir: Path | None = None
    cache_state: str = "auto"
    int8: Int8Settings = field(default_factory=Int8Settings)

    def runner_options(self) -> RunnerOptions:
        """The options every runner of this profile is built with."""
        extra = {"int8": self.int8} if self.precision == "int8" else {}
        return RunnerOptions(batch=self.batch, precision=self.precision, threads=self.threads,
                             device_id=self.device_id, cache_dir=self.cache_dir, cuda_graphs=self.cuda_graphs,
                             extra=extra)

    def recorded_options(self) -> dict[str, Any]:
        """Backend options that change results and are not already top-level metadata: CUDA graphs (torch-cuda)
        and how int8 models are quantized (int8 tables)."""
        options: dict[str, Any] = {"cuda_graphs": self.cuda_graphs} if self.backend == "torch-cuda" else {}
        if self.precision == "int8":
            options["int8"] = {**self.int8.to_dict(), "calibration": TIMING_CALIBRATION}
        return options

    @classmethod
    def from_table(cls, table: LatencyTable, **overrides: Any) -> ProfileSettings:
        """The settings a table was measured with (``overrides``: workers, cache_dir, ...)."""
        m = table.meta
        base = cls(backend=m.backend, precision=m.precision, batch=m.batch, threads=m.threads, protocol=m.protocol,
                   cuda_graphs=bool(m.options.get("cuda_graphs", False)), opset=m.opset, dynamic_batch=m.dynamic_batch,
                   int8=table_int8_settings(table))
        return replace(base, **overrides)


def measure_source(source: ModelLoader, settings: ProfileSettings) -> tuple[TimingStats, dict[str, Any]]:
    """Time one pass of a model (an :class:`OnnxFile` or a :class:`ModuleLoader`) with a fresh runner of the
    settings' backend; returns the pass's statistics and the runner's recorded settings. A model whose output
    holds Inf or NaN, at any precision, fails loudly (:class:`CheckFailed`): its timing would not be the model's."""
    backend = get_backend(settings.backend)
    with backend.runner(source, settings.runner_options()) as runner:
        stats = measure(runner, settings.protocol)
        bad = [name for name, out in runner.outputs().items() if not np.isfinite(out).all()]
        if bad:
            model = source.path.name if isinstance(source, OnnxFile) else "the module"
            fp16 = settings.precision == "fp16"
            raise CheckFailed(f"{settings.backend} {settings.precision}: output {bad[0]!r} of {model} has Inf or NaN"
                              + (": fp16 overflows in this model (profile it in fp32)" if fp16 else ""),
                              field="precision" if fp16 else None)
        return stats, runner.info()


def time_until_stable(sources: Mapping[str, ModelLoader], settings: ProfileSettings,
                      done: Mapping[str, Sequence[TimingStats]] | None = None,
                      on_pass: Callable[[str, list[TimingStats]], None] | None = None,
                      measure_pass: Callable[[ModelLoader, ProfileSettings], TimingStats] | None = None,
                      references: Mapping[str, ModelLoader] | None = None,
                      seconds: float | None = None) -> dict[str, list[TimingStats]]:
    """Time every source in interleaved passes until each is settled (see the module docstring).

    ``done`` holds passes measured before (an interrupted profile). Pass ``r`` times every item that has at
    most ``r`` passes and still needs one (not settled, or its lowest pass disturbed: :func:`disturbed_items`);
    odd passes run in reverse order; a round shorter than the protocol's ``round_s`` waits out the rest before
    the next; then up to ``recheck_rounds`` rechecks (see the module docstring), after which every item is
    settled or at ``rounds`` again. ``on_pass(name, passes)`` is called after each pass; ``measure_pass`` times
    one pass (default: :func:`measure_source`).

    ``references`` are timed once in every round that times a source, half before and half after them: they
    tell the machine's state around the sources' passes (:func:`pass_states`) where the sources alone cannot (a
    lone model, the export's gate), but they do not keep the schedule going. ``seconds`` caps the wall time
    (the drift check's bound): beyond the ``min_rounds`` every source gets, a round starts only when it is
    expected to end within the cap (its passes at the mean time of the passes so far, after the wait of
    ``round_s``). Returns every item's passes (the references' too) in order.
    """
    protocol = settings.protocol
    timer = measure_pass or (lambda source, s: measure_source(source, s)[0])
    refs = dict(references or {})
    if set(refs) & set(sources):
        raise ValueError(f"references {sorted(set(refs) & set(sources))} are also sources")
    loaders = {**sources, **refs}
    passes = {name: list((done or {}).get(name, ())) for name in loaders}
    order: list[tuple[str, int]] = []  # (item, index of its pass) in the order this call timed them
    started: float | None = None
    deadline = None if seconds is None else time.monotonic() + seconds
    spent, timed = 0.0, 0  # seconds spent in passes by this call, and their number
    ref_names = list(refs)
    before_refs, after_refs = ref_names[:len(ref_names) // 2], ref_names[len(ref_names) // 2:]

    def time_round(names: Sequence[str], backwards: bool) -> None:
        nonlocal started, spent, timed
        if not names:
            return
        if started is not None:
            time.sleep(max(0.0, started + protocol.round_s - time.monotonic()))
        started = time.monotonic()
        scheduled = [*before_refs, *names, *after_refs]
        for name in reversed(scheduled) if backwards else scheduled:
            t0 = time.monotonic()
            passes[name].append(timer(loaders[name], settings))
            spent, timed = spent + time.monotonic() - t0, timed + 1
            order.append((name, len(passes[name]) - 1))
            if on_pass is not None:
                on_pass(name, passes[name])

    def fits(names: Sequence[str]) -> bool:  # a round of these sources is expected to end within the cap
        if deadline is None:
            return True
        begin = time.monotonic() if started is None else max(time.monotonic(), started + protocol.round_s)
        per_pass = spent / timed if timed else 0.0
        return begin + per_pass * (len(names) + len(ref_names)) <= deadline

    def settle() -> None:  # pass r times the items with at most r passes that still need one
        for r in range(protocol.rounds):
            again = disturbed_items(passes, order, protocol)
            pending = [name for name in sources if needs_pass(passes[name], protocol) or name in again]
            due = [name for name in pending if len(passes[name]) <= r]
            if not pending or (r >= protocol.fewest_rounds and not fits(due)):
                break
            time_round(due, bool(r % 2))

    settle()
    names = list(sources)
    for attempt in range(protocol.recheck_rounds if names else 0):
        slowest = sorted(names, key=lambda n: item_latency(passes[n], protocol))[::-1][:protocol.recheck_slowest]
        sample = recheck_sample(names, attempt)
        sample += [name for name in slowest if name not in sample]
        if not fits(sample):
            break
        before = {name: item_latency(passes[name], protocol) for name in sample}
        time_round(sample, False)
        ratio = float(np.median([passes[n][-1].value(protocol.statistic) / before[n] for n in sample]))
        quieter = ratio < 1.0 - protocol.stable_within
        others = [name for name in names if name not in before]
        if quieter and fits(others):  # every other item once more, at the quieter level
            time_round(others, attempt % 2 == 0)
        settle()  # an item a lower pass reopened is settled again
        if not quieter:
            break
    return passes


#: Passes on each side of an item's pass that tell how the machine was doing when it was timed: about a
#: second of a table's schedule (passes of 0.1-0.15 s), the shortest slow spells seen on the shared CPU.
NEIGHBOURS = 4


def pass_states(passes: Mapping[str, Sequence[TimingStats]], order: Sequence[tuple[str, int]],
                protocol: Protocol) -> list[float]:
    """How slow the machine was at each pass of ``order`` (item, index of its pass, in the order timed).

    Each pass is read against its own item's latency (its lowest pass); a pass's state is the median of that
    ratio over the :data:`NEIGHBOURS` passes of other items timed before and after it (1.0 without any).
    """
    latency = {name: item_latency(passes[name], protocol) for name in {name for name, _ in order}}
    ratios = [passes[name][k].value(protocol.statistic) / latency[name] for name, k in order]
    states = []
    for i, (name, _) in enumerate(order):
        low = max(0, i - NEIGHBOURS)
        around = [r for j, r in enumerate(ratios[low:i + NEIGHBOURS + 1], low) if order[j][0] != name]
        states.append(float(np.median(around)) if around else 1.0)
    return states


def lowest_pass_states(passes: Mapping[str, Sequence[TimingStats]], order: Sequence[tuple[str, int]],
                       protocol: Protocol) -> dict[str, float]:
    """The :func:`pass_states` state of each item's lowest pass, for the items whose lowest pass is in ``order``
    (passes measured before this schedule, as a resumed table's, have no state)."""
    states = dict(zip(order, pass_states(passes, order, protocol), strict=True))
    out: dict[str, float] = {}
    for name in {name for name, _ in order}:
        values = [p.value(protocol.statistic) for p in passes[name]]
        state = states.get((name, values.index(min(values))))
        if state is not None:
            out[name] = state
    return out


def disturbed_items(passes: Mapping[str, Sequence[TimingStats]], order: Sequence[tuple[str, int]],
                    protocol: Protocol) -> set[str]:
    """Items under ``rounds`` passes whose lowest pass was timed while the machine was slow: its state
    (:func:`lowest_pass_states`) is above ``1 + disturbed_above``. Such an item found its best level while the
    others read slow; the level may be the slow spell's, and one more pass tells."""
    if protocol.disturbed_above <= 0 or len(order) < 2:
        return set()
    return {name for name, state in lowest_pass_states(passes, order, protocol).items()
            if len(passes[name]) < protocol.rounds and state > 1.0 + protocol.disturbed_above}


#: Items a recheck times again: a tenth of the schedule, at least :data:`RECHECK_FEWEST` (all of a smaller
#: one) and at most :data:`RECHECK_MOST` (a median of 24 ratios is steady; a tiny table's 480 cold entries
#: would otherwise cost 20 s a recheck).
RECHECK_FEWEST, RECHECK_MOST = 5, 24


def recheck_sample(names: Sequence[str], attempt: int) -> list[str]:
    """The items the ``attempt``-th recheck times again: evenly spread over ``names`` (entries of every kind
    and size in a table's order), the stride's offset alternating between its start and its middle."""
    count = min(len(names), max(RECHECK_FEWEST, min(RECHECK_MOST, len(names) // 10)))
    step = len(names) / count  # at least 1: the indices below are distinct and below len(names)
    offset = step / 2 if attempt % 2 else 0.0
    return [names[int(offset + i * step)] for i in range(count)]


@dataclass(frozen=True)
class Measurement:
    """One model measured the way a table was: its latency under the table's statistic, and its passes."""

    latency_ms: float
    spread: float
    passes: tuple[TimingStats, ...]
    statistic: str
    references: Mapping[str, float] = field(default_factory=dict)

    @property
    def stats(self) -> TimingStats:
        """The passes combined (median, p90, p99, CV over every run)."""
        return TimingStats.combine(self.passes)

    @property
    def machine_ratio(self) -> float | None:
        """The median over the reference entries timed beside the model of *measured / table*: how the machine
        read against the table while the model was measured (None without references)."""
        return float(np.median(list(self.references.values()))) if self.references else None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"latency_ms": self.latency_ms, "statistic": self.statistic, "passes": len(self.passes),
                "spread": None if math.isinf(self.spread) else self.spread, "stats": self.stats.to_dict(),
                "machine_ratio": self.machine_ratio, "references": dict(self.references)}


def measure_like(table: LatencyTable, source: ModelLoader, references: Mapping[str, ModelLoader] | None = None,
                 **overrides: Any) -> Measurement:
    """Time one model exactly as ``table`` was measured: backend, precision, batch, threads, protocol, statistic.

    This is how a shipped network is compared with its prediction (``predict(table, arch).latency_ms``).
    ``references`` (by entry key: the table's own entries, built as when it was profiled) are timed beside the
    model (:func:`time_until_stable`): the disturbed-pass rule then sees the machine's state around the model's
    passes, and the measurement records each reference's *measured / table* ratio.
    """
    settings = ProfileSettings.from_table(table, **overrides)
    kind = get_backend(settings.backend).source
    if kind == "onnx" and not isinstance(source, OnnxFile):
        raise ProfileError(f"table backend {settings.backend} times ONNX files: export the module first")
    if kind == "module" and not isinstance(source, ModuleLoader):
        raise ProfileError(f"table backend {settings.backend} times torch modules, not ONNX files")
    references = references or {}
    unknown = sorted(set(references) - set(table.entries))
    if unknown:
        raise ProfileError(f"reference {unknown[0]!r} is not an entry of latency table {table.path}")
    timed = time_until_stable({"model": source}, settings,
                              references={f"ref:{k}": v for k, v in references.items()})
    protocol = settings.protocol
    ratios = {key: item_latency(timed[f"ref:{key}"], protocol) / table.entries[key].latency_ms for key in references}
    state = Settled.of(timed["model"], protocol)
    return Measurement(state.value_ms, state.spread, tuple(timed["model"]), protocol.statistic, ratios)


def measure_onnx(table: LatencyTable, path: str | Path, references: Mapping[str, ModelLoader] | None = None,
                 **overrides: Any) -> Measurement:
    """Time the ONNX file ``path`` as ``table`` was measured (:func:`measure_like`)."""
    return measure_like(table, OnnxFile(Path(path)), references, **overrides)


def measure_module(table: LatencyTable, module: nn.Module, sample_shape: Sequence[int],
                   references: Mapping[str, ModelLoader] | None = None, **overrides: Any) -> Measurement:
    """Time a static module as ``table`` was measured (torch backends; :func:`measure_like`)."""
    return measure_like(table, ModuleLoader.of(module, tuple(sample_shape)), references, **overrides)
