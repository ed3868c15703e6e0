"""Slow spells of a shared machine, and what the timing core's disturbed-pass rule does about them.

Four views, each printed as a table and written as JSON (``--out``):

``probe``: one network of a space (seeded random sub-network), exported to ONNX and timed with the table
protocol's passes back to back for ``--seconds``: every pass's window floor against the lowest, the share of
passes more than 10% above it and the lengths of the runs of such passes (the machine's slow spells)::

    python benchmarks/slow_spells.py probe --space fmnist --seconds 30 --out runs/spells-probe.json

``replay``: a table's recorded passes fed back through the timing core's schedule (the order in which they were
timed is rebuilt exactly: :func:`~vitres_deploy.latency.timing.time_until_stable` with a timer that hands out
each entry's recorded passes in turn), then every pass's state (:func:`~vitres_deploy.latency.timing.pass_states`)
and the entries whose lowest pass was timed in a state above ``1 + --disturbed-above``::

    python benchmarks/slow_spells.py replay --profile runs/r8/fmnist.json --out runs/spells-replay.json

``ablate``: a table made with the rule (``--without rule``) or with the recheck's slowest items (``--without
slowest``), its entries taken without the passes that added (the schedule without it fed each entry's recorded
passes in turn: it stops where that protocol would have), and its validation recomputed with those entries against
the same measured networks (the correction refitted on the fit half): what it changed in that table. The
counterfactual keeps each entry's passes as they were timed; a run without it would have timed them at other
moments::

    python benchmarks/slow_spells.py ablate --profile runs/r10/B1.json --out runs/spells-ablate.json

``simulate``: ``--entries`` items of latencies drawn from 0.01-0.1 ms timed by the table protocol on a simulated
machine that enters slow spells (1.3-1.8x, each pass 0.95-1.1x the spell's factor) after ``--quiet-passes``
quick passes on average (within 4% of the item's latency) and leaves them after ``--spell-passes`` on average,
``--seeds`` times, with the rule off and on: the share of entries that end more than 10% slow and the passes
spent::

    python benchmarks/slow_spells.py simulate --spell-passes 20 --quiet-passes 20 --seeds 20 --out runs/spells-sim.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vitres_deploy.arch import sample_arch
from vitres_deploy.latency import LatencyTable
from vitres_deploy.latency.correction import Correction
from vitres_deploy.latency.predict import predict
from vitres_deploy.latency.profiler import network_target, prepare_sources
from vitres_deploy.latency.report import PredictionErrors
from vitres_deploy.latency.timing import (
    TABLE_PROTOCOL,
    ProfileSettings,
    disturbed_items,
    lowest_pass_states,
    measure_source,
    pass_states,
    time_until_stable,
)
from vitres_deploy.latency.validate import fit_on_half, sample_archs
from vitres_deploy.runtime.base import NoisyMeasurement
from vitres_deploy.runtime.statistics import Protocol, TimingStats, item_latency
from vitres_deploy.space import load_space

SLOW = 1.1


def runs_of(flags: list[bool]) -> list[int]:
    """Lengths of the runs of consecutive True values."""
    out, n = [], 0
    for flag in [*flags, False]:
        if flag:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """Time one network in back-to-back passes of the table protocol; the passes against the lowest."""
    space = load_space(args.space)
    arch = sample_arch(space, random.Random(args.seed))
    settings = ProfileSettings()
    target = network_target(arch)
    source = prepare_sources(space, [target], settings)[target.name]
    start, floors, seconds = time.monotonic(), [], []
    while time.monotonic() - start < args.seconds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurement)  # every pass of a spell would say so
            stats, _ = measure_source(source, settings)
        floors.append(stats.value(TABLE_PROTOCOL.statistic))
        seconds.append(stats.seconds)
    ratio = np.asarray(floors) / min(floors)
    spells = runs_of([r > SLOW for r in ratio])
    pass_s = float(np.mean(seconds))
    return {"space": args.space, "arch": arch.to_dict(), "passes": len(floors), "pass_seconds": pass_s,
            "lowest_ms": min(floors), "ratio_percentiles": dict(zip(("p10", "p50", "p90"),
                                                                    np.percentile(ratio, [10, 50, 90]).tolist(),
                                                                    strict=True)),
            "slow_share": float(np.mean(ratio > SLOW)), "quiet_ratio_max": float(ratio[ratio <= SLOW].max()),
            "slow_ratio_range": [float(ratio[ratio > SLOW].min()), float(ratio.max())] if spells else None,
            "spell_passes": spells, "ratios": ratio.round(4).tolist()}


def replay_schedule(table: LatencyTable, protocol: Protocol) -> tuple[dict[str, list[TimingStats]],
                                                                     list[tuple[str, int]]]:
    """The timing core's schedule under ``protocol``, fed each entry's recorded passes in the order it timed them:
    the passes it takes and the order it takes them in."""
    recorded = {key: list(entry.passes) for key, entry in table.entries.items()}
    order: list[tuple[str, int]] = []
    handed = {key: 0 for key in recorded}

    def feed(source: Any, settings: ProfileSettings) -> TimingStats:
        handed[source] += 1
        if handed[source] > len(recorded[source]):
            raise SystemExit(f"error: the schedule asks {source} for a pass {table.path} does not have: the table "
                             "was not made by this schedule")
        order.append((source, handed[source] - 1))
        return recorded[source][handed[source] - 1]

    settings = ProfileSettings(protocol=dataclasses.replace(protocol, round_s=0.0))
    return time_until_stable({key: key for key in recorded}, settings, measure_pass=feed), order


def replay_order(table: LatencyTable) -> tuple[dict[str, list[TimingStats]], list[tuple[str, int]]]:
    """The table's passes and the order they were timed in, rebuilt by running its schedule again."""
    passes, order = replay_schedule(table, table.meta.protocol)
    if any(len(passes[key]) != len(entry.passes) for key, entry in table.entries.items()):
        raise SystemExit("error: the schedule left recorded passes unused: the table was resumed or made by "
                         "another schedule")
    return passes, order


def replay(args: argparse.Namespace) -> dict[str, Any]:
    """States of a recorded table's passes and the entries the rule would have timed again."""
    table = LatencyTable.load(args.profile)
    passes, order = replay_order(table)
    protocol = dataclasses.replace(table.meta.protocol, disturbed_above=args.disturbed_above)
    states = pass_states(passes, order, protocol)
    at = dict(zip(order, states, strict=True))
    flagged = sorted(k for k, s in lowest_pass_states(passes, order, protocol).items() if s > 1 + args.disturbed_above)
    return {"table": str(args.profile), "passes": len(order), "entries": len(passes),
            "disturbed_above": args.disturbed_above,
            "state_percentiles": dict(zip(("p10", "p50", "p75", "p90"), np.percentile(states, [10, 50, 75, 90])
                                          .tolist(), strict=True)),
            "flagged": flagged, "flagged_under_rounds": sorted(disturbed_items(passes, order, protocol)),
            "entries_states": {k: [round(at[(k, i)], 3) for i in range(len(ps))] for k, ps in passes.items()}}


def ablate(args: argparse.Namespace) -> dict[str, Any]:
    """A table without the passes the disturbed-pass rule (``--without rule``) or the recheck's slowest items
    (``--without slowest``) added: which entries they timed again, by how much they lowered them, and the table's
    validation with and without them."""
    table = LatencyTable.load(args.profile)
    field = {"rule": "disturbed_above", "slowest": "recheck_slowest"}[args.without]
    if getattr(table.meta.protocol, field) <= 0:
        raise SystemExit(f"error: {args.profile} was made with {field} 0: nothing to take out")
    if table.validation is None:
        raise SystemExit(f"error: {args.profile} is not validated: run profile validate on it first")
    recorded = {key: entry.passes for key, entry in table.entries.items()}
    off = dataclasses.replace(table.meta.protocol, **{field: 0})
    passes, _ = replay_schedule(table, off)
    extra = {k: len(recorded[k]) - len(passes[k]) for k in recorded if len(recorded[k]) > len(passes[k])}
    change = {k: item_latency(recorded[k], off) / item_latency(passes[k], off) - 1 for k in extra}
    rows = table.validation.rows
    raw = dataclasses.replace(table, correction=Correction(offset_ms=table.correction.per_call_ms,
                                                           per_call_ms=table.correction.per_call_ms))
    archs = sample_archs(raw, len(rows), table.validation.seed)  # the validation's networks, drawn again
    if [a.hash for a in archs] != [r.hash for r in rows]:
        raise SystemExit(f"error: the validation networks of {args.profile} are not drawn again: another sampler")
    measured = [r.measured_ms for r in rows]
    lowered = {k: dataclasses.replace(e, latency_ms=e.latency_ms / (1 + change.get(k, 0.0)))
               for k, e in raw.entries.items()}
    without = dataclasses.replace(raw, entries=lowered)
    validation = {}
    for label, t in (("with", raw), ("without", without)):
        fitted = dataclasses.replace(t, correction=fit_on_half(t, archs, measured))
        test = range(1, len(archs), 2)
        validation[label] = PredictionErrors.of([predict(fitted, archs[i]).latency_ms for i in test],
                                                [measured[i] for i in test]).to_dict()
    return {"table": str(args.profile), "without": args.without, "passes": sum(map(len, recorded.values())),
            "passes_without": sum(map(len, passes.values())), "extra_passes": extra, "change": change,
            "validation": validation}


def spell_machine(rng: random.Random, values: dict[str, float], spell: float, quiet: float
                  ) -> tuple[Callable[[Any, ProfileSettings], TimingStats], list[int]]:
    """A pass timer of a machine that enters and leaves slow spells; the list counts its passes."""
    state = {"factor": 1.0}
    count = [0]

    def timer(source: Any, settings: ProfileSettings) -> TimingStats:
        if state["factor"] > 1 and rng.random() < 1 / spell:
            state["factor"] = 1.0
        elif state["factor"] == 1 and rng.random() < 1 / quiet:
            state["factor"] = rng.uniform(1.3, 1.8)
        count[0] += 1
        f = state["factor"] * rng.uniform(0.95, 1.1) if state["factor"] > 1 else rng.uniform(1.0, 1.04)
        v = values[source] * f
        return TimingStats(v, v, v, v, v, 0.0, 0.0, 100, 0.1, floor_ms=v)

    return timer, count


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    """The rule off and on over seeded simulated machines."""
    out: dict[str, Any] = {"entries": args.entries, "spell_passes": args.spell_passes,
                           "quiet_passes": args.quiet_passes, "seeds": args.seeds}
    for label, above in (("off", 0.0), ("on", args.disturbed_above)):
        protocol: Protocol = dataclasses.replace(TABLE_PROTOCOL, round_s=0.0, disturbed_above=above)
        slow, spent = [], []
        for seed in range(args.seeds):
            rng = random.Random(seed)
            values = {f"e{i}": rng.uniform(0.01, 0.1) for i in range(args.entries)}
            timer, count = spell_machine(rng, values, args.spell_passes, args.quiet_passes)
            passes = time_until_stable({k: k for k in values}, ProfileSettings(protocol=protocol), measure_pass=timer)
            slow.append(float(np.mean([item_latency(passes[k], protocol) / v > SLOW for k, v in values.items()])))
            spent.append(count[0])
        out[label] = {"disturbed_above": above, "slow_share_mean": float(np.mean(slow)),
                      "slow_share_max": float(np.max(slow)), "passes_mean": float(np.mean(spent))}
    return out


def show(view: str, report: dict[str, Any]) -> None:
    """A few readable lines of the report."""
    if view == "probe":
        p = report["ratio_percentiles"]
        print(f"{report['passes']} passes of {report['pass_seconds']:.3f} s, lowest {report['lowest_ms']:.4f} ms; "
              f"window floor / lowest p10 {p['p10']:.3f}, p50 {p['p50']:.3f}, p90 {p['p90']:.3f}; "
              f"{report['slow_share']:.0%} of passes > {SLOW}x; slow runs (passes): {report['spell_passes']}")
    elif view == "replay":
        p = report["state_percentiles"]
        print(f"{report['table']}: {report['passes']} passes over {report['entries']} entries; state p10 "
              f"{p['p10']:.3f}, p50 {p['p50']:.3f}, p75 {p['p75']:.3f}, p90 {p['p90']:.3f}; lowest pass in a state > "
              f"{1 + report['disturbed_above']:.2f}: {len(report['flagged'])} entries "
              f"({len(report['flagged_under_rounds'])} under the protocol's rounds)")
    elif view == "ablate":
        lowered = [c for c in report["change"].values() if c < 0]
        what = {"rule": "the rule", "slowest": "the recheck's slowest items"}[report["without"]]
        print(f"{report['table']}: {what} added {report['passes'] - report['passes_without']} passes to "
              f"{len(report['extra_passes'])} entries ({report['passes_without']} without it) and lowered "
              f"{len(lowered)} of them (median {np.median(lowered) if lowered else 0:.1%}, largest "
              f"{min(lowered, default=0):.1%})")
        for label in ("with", "without"):
            v = report["validation"][label]
            print(f"  validation {label:<7} those passes: MAPE {v['mape']:.2f}%, max {v['max_error_pct']:.1f}%, "
                  f"within ±5% {v['within_5pct']:.0%}, ±10% {v['within_10pct']:.0%}, Kendall τ {v['kendall_tau']:.3f}")
    else:
        for label in ("off", "on"):
            r = report[label]
            print(f"rule {label:<3} (disturbed_above {r['disturbed_above']}): entries > {SLOW}x their latency "
                  f"{r['slow_share_mean']:.2%} (worst seed {r['slow_share_max']:.1%}), passes {r['passes_mean']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    views = parser.add_subparsers(dest="view", required=True)
    p = views.add_parser("probe")
    p.add_argument("--space", default="fmnist")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0)
    r = views.add_parser("replay")
    r.add_argument("--profile", type=Path, required=True)
    a = views.add_parser("ablate")
    a.add_argument("--profile", type=Path, required=True)
    a.add_argument("--without", choices=("rule", "slowest"), default="rule")
    a.add_argument("--out", type=Path, required=True)
    s = views.add_parser("simulate")
    s.add_argument("--entries", type=int, default=180)
    s.add_argument("--spell-passes", type=float, default=20.0)
    s.add_argument("--quiet-passes", type=float, default=20.0)
    s.add_argument("--seeds", type=int, default=20)
    for sub in (p, r, s):
        sub.add_argument("--disturbed-above", type=float, default=TABLE_PROTOCOL.disturbed_above)
        sub.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = {"probe": probe, "replay": replay, "ablate": ablate, "simulate": simulate}[args.view](args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    show(args.view, report)


if __name__ == "__main__":
    main()
