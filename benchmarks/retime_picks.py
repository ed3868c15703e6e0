"""Re-time the picks of a ``budget_holds.py`` run, interleaved, beside the table's prediction of each.

The budget benchmark measures each pick once, by the export's gate, minutes apart from the others. This script
times every pick again in one interleaved schedule with the table's protocol and statistic (the timing core, as
validation does), with a few of the table's validation networks beside them, so that a pick measured over its
prediction can be told apart from an hour's noise: a network the table under-predicts is over again here.
With ``--flush-mb N`` the entries the networks run are also re-timed with a read of N MiB before every run (the
CPU's private caches evicted, the last level kept) and their sums printed beside the table's: a test of whether
a block inside a network meets its weights evicted from the private caches.

    python benchmarks/retime_picks.py --profile runs/fmnist.json --budget-holds runs/budget-holds \\
        --out runs/retime-picks.json [--flush-mb 1]
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

from vitres_deploy.arch import Arch
from vitres_deploy.files import atomic_write_json
from vitres_deploy.latency import LatencyTable, predict, weight_mib
from vitres_deploy.latency.entries import arch_entries
from vitres_deploy.latency.profiler import entry_target, network_target, prepare_sources
from vitres_deploy.latency.timing import ProfileSettings, time_until_stable
from vitres_deploy.latency.validate import sample_archs
from vitres_deploy.runtime.base import NoisyMeasurement
from vitres_deploy.runtime.statistics import item_latency


def entry_sum(table: LatencyTable, arch: Arch, latency: dict[str, float]) -> float:
    """The corrected prediction of ``arch`` with each entry's latency taken from ``latency`` (entry key -> ms)."""
    per_call = table.correction.per_call_ms
    return table.correction.apply(sum(latency[e.key] - per_call for e in arch_entries(arch, table.space)),
                                  weight_mib(table, arch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, required=True, help="the table the budget benchmark searched")
    parser.add_argument("--budget-holds", type=Path, required=True, help="the budget benchmark's --out folder")
    parser.add_argument("--validation", type=int, default=6, help="validation networks timed beside the picks")
    parser.add_argument("--flush-mb", type=int, default=0, help="also time the entries with this cache flush")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore", NoisyMeasurement)

    table = LatencyTable.load(args.profile)
    report = json.loads((args.budget_holds / "budget_holds.json").read_text())
    archs: dict[str, tuple[Arch, float | None]] = {}
    for row in report["rows"]:
        if "measured_ms" in row:
            best = json.loads((args.budget_holds / f"search-{row['fraction']:g}" / "best.json").read_text())
            archs[f"pick {row['fraction']:g}"] = (Arch.from_dict(best), row["measured_ms"])
    validation = table.validation
    if validation is not None and args.validation:
        drawn = sample_archs(table, validation.samples, validation.seed)  # the draw is the validation's own
        if [a.hash for a in drawn] != [r.hash for r in validation.rows]:
            raise SystemExit("error: the table's validation networks cannot be drawn again: pass --validation 0")
        for i in range(0, len(drawn), max(1, len(drawn) // args.validation)):
            archs[f"validation {i}"] = (drawn[i], None)

    settings = ProfileSettings.from_table(table, workers=1)
    networks = {name: network_target(arch) for name, (arch, _) in archs.items()}
    entries = {spec.key: entry_target(spec) for arch, _ in archs.values() for spec in arch_entries(arch, table.space)}
    wanted = list(networks.values()) + (list(entries.values()) if args.flush_mb else [])
    sources = prepare_sources(table.space, wanted, settings)
    passes = time_until_stable({t.name: sources[t.name] for t in networks.values()}, settings)
    flushed: dict[str, float] = {}
    if args.flush_mb:
        cold = replace(settings, protocol=replace(settings.protocol, flush_cache_mb=args.flush_mb))
        timed = time_until_stable({t.name: sources[t.name] for t in entries.values()}, cold)
        flushed = {key: item_latency(timed[t.name], cold.protocol) for key, t in entries.items()}

    rows = []
    for name, (arch, gate_ms) in archs.items():
        measured = item_latency(passes[networks[name].name], settings.protocol)
        row = {"name": name, "hash": arch.hash, "predicted_ms": predict(table, arch).latency_ms,
               "retimed_ms": measured, "gate_ms": gate_ms}
        if flushed:
            row["predicted_flushed_ms"] = entry_sum(table, arch, flushed)
        rows.append(row)
    print(f"{'network':14} {'predicted':>9} {'re-timed':>9} {'error':>7} {'gate':>8}"
          + (f" {'flushed':>8} {'error':>7}" if flushed else ""))
    for r in rows:
        gate = f"{r['gate_ms']:8.4f}" if r["gate_ms"] is not None else f"{'':8}"
        line = (f"{r['name']:14} {r['predicted_ms']:9.4f} {r['retimed_ms']:9.4f} "
                f"{r['predicted_ms'] / r['retimed_ms'] - 1:+7.1%} {gate}")
        if flushed:
            line += f" {r['predicted_flushed_ms']:8.4f} {r['predicted_flushed_ms'] / r['retimed_ms'] - 1:+7.1%}"
        print(line)
    atomic_write_json(args.out, {"table": str(args.profile), "budget_holds": str(args.budget_holds),
                                 "statistic": settings.protocol.statistic, "flush_mb": args.flush_mb, "rows": rows})


if __name__ == "__main__":
    main()
