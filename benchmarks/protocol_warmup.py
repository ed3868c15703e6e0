"""Does the table protocol's warm-up move its statistic? Entries of a table timed with several warm-ups.

``--entries`` seeded entries of a table (its cached exports are reused, missing ones exported) are timed in
``--rounds`` interleaved rounds; in each round every entry is timed once per warm-up of ``--warmups``, each
pass with a fresh runner and the table's protocol otherwise. Reported per entry and warm-up: the lowest window
floor over the rounds (the table's statistic), and each warm-up's floor against the longest warm-up's.

The window floor is the quietest 10 ms window of a pass, so a slower start of a fresh session should not move
it: this benchmark is the evidence for the protocol's 0.01 s warm-up (0.03 s before 2026-12-03).

    python benchmarks/protocol_warmup.py --profile runs/fmnist.json --out runs/protocol_warmup.json
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import warnings
from pathlib import Path

from vitres_deploy.files import atomic_write_json
from vitres_deploy.latency import LatencyTable
from vitres_deploy.latency.entries import EntrySpec
from vitres_deploy.latency.profiler import entry_target, prepare_sources
from vitres_deploy.latency.timing import ProfileSettings, measure_source
from vitres_deploy.runtime import NoisyMeasurement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, required=True, help="the table whose entries and protocol to use")
    parser.add_argument("--entries", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmups", default="0,0.01,0.03", help="warm-up seconds, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    warnings.simplefilter("ignore", NoisyMeasurement)  # CVs are not the statistic
    table = LatencyTable.load(args.profile)
    warmups = sorted(float(w) for w in args.warmups.split(","))
    keys = random.Random(args.seed).sample(sorted(table.entries), min(args.entries, len(table.entries)))
    base = ProfileSettings.from_table(table)
    targets = [entry_target(EntrySpec.from_key(k, table.space)) for k in keys]
    sources = prepare_sources(table.space, targets, base)
    floors: dict[str, dict[float, float]] = {k: {} for k in keys}
    for _ in range(args.rounds):
        for key in keys:
            for w in warmups:
                settings = dataclasses.replace(base, protocol=dataclasses.replace(base.protocol, warmup_s=w))
                stats, _ = measure_source(sources[key], settings)
                floors[key][w] = min(floors[key].get(w, float("inf")), stats.floor_ms)
    longest = warmups[-1]
    rows = [{"entry": k, "floor_ms": {str(w): f[w] for w in warmups},
             "vs_longest": {str(w): f[w] / f[longest] - 1 for w in warmups[:-1]}} for k, f in floors.items()]
    print(f"{'entry':<28} " + " ".join(f"{w:>9g}s" for w in warmups) + "   (floor, µs; change vs the longest)")
    for r in rows:
        cells = " ".join(f"{v * 1e3:>10.2f}" for v in r["floor_ms"].values())
        print(f"{r['entry']:<28} {cells}   " + " ".join(f"{v:+.2%}" for v in r["vs_longest"].values()))
    summary = {str(w): {"median": statistics.median(r["vs_longest"][str(w)] for r in rows),
                        "min": min(r["vs_longest"][str(w)] for r in rows),
                        "max": max(r["vs_longest"][str(w)] for r in rows)} for w in warmups[:-1]}
    for w, s in summary.items():
        print(f"warm-up {w} s vs {longest:g} s: median {s['median']:+.2%} ({s['min']:+.2%} … {s['max']:+.2%})")
    atomic_write_json(args.out, {"table": str(args.profile), "rounds": args.rounds, "warmups": warmups,
                                 "entries": rows, "vs_longest": summary})


if __name__ == "__main__":
    main()
