"""How much could precision per stage buy over precision per network? An upper bound from two latency tables.

Issue "INT8 end to end" asks for precision per stage (mixed precision searched with the architecture) if the
tables show stages where int8 wins and stages where it loses. This tells from an fp32 and an int8 table of one
device and batch whether they do, arch by arch: for every stage-uniform arch of the space and ``--random``
seeded random archs, the predicted latency of each of the 2^3 plans that give each stage one precision (the stem
goes with stage 1, the head with stage 3, a reduction with the stage it leads into), against the faster of the
two whole-network precisions.

The mixed plans are priced as an **upper bound** on what per-stage precision buys: each stage's share of its
table's prediction (its entries, scaled by that table's correction) plus the smaller of the two tables' call
offsets, with the float/int8 boundaries free (``vitres_deploy.latency.mixed.MixedTables``, the composition the
search of precision per stage uses, with a zero boundary). Every int8 entry was timed as its own model with float
input and output, so its own quantize and dequantize steps are in it; a real mixed network would add nothing at a
boundary only if the runtime fused nothing across it. If even this bound buys little, per-stage precision has
nothing to buy on this device and batch.

``--measure K`` then checks the bound on the device (idle machine): K archs the bound favours a mixed plan for,
spread over the predicted gain, each exported (random weights: speed only) as fp32, as int8 whole and in its
mixed plan (only the int8 stages' nodes quantized, ``vitres_deploy.convert.int8.stage_nodes``), and timed with
the tables' protocol and statistic: the measured gain of the mixed network over the faster whole network, and
how far the bound was from the measured mixed latency, and the boundary: what the mixed network measured beyond
its stages' part of the two measured whole networks (each split by its table's stage shares), the cost of the
float/int8 boundaries and the fusions lost there, measured rather than assumed.

    python benchmarks/mixed_precision_headroom.py --fp32 profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json \\
        --int8 profiles/amd-epyc/fmnist-ort-cpu-int8-b1.json --measure 8 --out docs/benchmarks/mixed_precision-b1.json
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from search_vs_baselines import uniform_archs

from vitres_deploy.arch import Arch, MixedArch, sample_arch
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.errors import VitresError
from vitres_deploy.files import atomic_write_json
from vitres_deploy.latency import LatencyTable, ProfileSettings, predict
from vitres_deploy.latency.entries import network_sample_shape
from vitres_deploy.latency.mixed import MixedTables, mixed_onnx
from vitres_deploy.latency.predict import Prediction
from vitres_deploy.latency.timing import measure_onnx
from vitres_deploy.runtime.cache import int8_onnx
from vitres_deploy.search.precisions import check_tables
from vitres_deploy.vit_resnas import vit_resnas

PRECISIONS = ("fp32", "int8")


def stage_shares(prediction: Prediction, stages_count: int) -> list[float]:
    """A prediction's latency split by stage (stem in stage 1, head in the last), offset out."""
    parts = prediction.parts_ms
    stages = [parts.get(f"stage{i + 1}", 0.0) for i in range(stages_count)]
    stages[0] += parts.get("stem", 0.0)
    stages[-1] += parts.get("head", 0.0)
    return stages


def headroom(fp32: LatencyTable, int8: LatencyTable, arch: Arch) -> dict[str, Any]:
    """The arch's whole-network predictions, its fastest per-stage plan (upper bound) and the gain over the
    faster whole-network precision."""
    predictions = {"fp32": predict(fp32, arch), "int8": predict(int8, arch)}
    whole = {p: prediction.latency_ms for p, prediction in predictions.items()}
    shares = {p: stage_shares(prediction, len(arch.stages)) for p, prediction in predictions.items()}
    free = MixedTables(fp32, int8, boundary_ms=0.0)  # the search's composition, boundaries free
    plans = {plan: free.predict(MixedArch(arch.space, arch.stages, tuple(i + 1 for i, p in enumerate(plan)
                                                                        if p == "int8")))
             for plan in itertools.product(PRECISIONS, repeat=len(arch.stages))}
    best_plan = min(plans, key=plans.__getitem__)
    best_whole = min(whole, key=whole.__getitem__)
    return {"hash": arch.hash, "short": arch.short(), "whole_ms": whole, "best_whole": best_whole,
            "best_plan": list(best_plan), "best_plan_ms": plans[best_plan],
            "mixed": len(set(best_plan)) > 1, "gain": whole[best_whole] / plans[best_plan] - 1, "shares_ms": shares,
            "stage_int8_over_fp32": [i / f for i, f in zip(shares["int8"], shares["fp32"], strict=True)]}


def boundary_ms(row: dict[str, Any], measured: dict[str, float]) -> float:
    """What the mixed network measured beyond its stages' part of the measured whole networks (each whole
    network split by its table's stage shares): the cost of the float/int8 boundaries and the lost fusions."""
    part = 0.0
    for i, precision in enumerate(row["best_plan"]):
        shares = row["shares_ms"][precision]
        part += measured[precision] * shares[i] / sum(shares)
    return measured["mixed"] - part


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many archs a mixed plan would make faster, and by how much (upper bound)."""
    mixed = [r for r in rows if r["mixed"]]
    gains = [r["gain"] for r in mixed]
    plans: dict[str, int] = {}
    for r in mixed:
        key = "/".join(r["best_plan"])
        plans[key] = plans.get(key, 0) + 1
    stages = len(rows[0]["stage_int8_over_fp32"])
    return {"archs": len(rows), "mixed_faster": len(mixed),
            "gain_median": statistics.median(gains) if gains else 0.0, "gain_max": max(gains, default=0.0),
            "gain_over_2pct": sum(g > 0.02 for g in gains), "plans": plans,
            "whole_int8_faster": sum(r["best_whole"] == "int8" for r in rows),
            "stage_int8_over_fp32_median": [statistics.median(r["stage_int8_over_fp32"][i] for r in rows)
                                            for i in range(stages)]}


def measure_mixed(fp32: LatencyTable, int8: LatencyTable, archs: dict[str, Arch], rows: list[dict[str, Any]],
                  count: int, work: Path) -> list[dict[str, Any]]:
    """Export ``count`` archs whose bound favours a mixed plan (evenly spread over the gain, the largest
    included), each as fp32, whole int8 and its mixed plan (``stage_nodes`` of the int8 stages quantized,
    calibrated like the int8 table's entries), and time the three with their tables' protocol (fp32 with the fp32
    table's, the others with the int8 table's; the order alternating arch by arch). Returns the measured rows."""
    space = fp32.space
    favoured = sorted((r for r in rows if r["mixed"]), key=lambda r: r["gain"])
    if not favoured or count < 1:
        return []
    chosen = [favoured[round(i * (len(favoured) - 1) / max(count - 1, 1))] for i in range(min(count, len(favoured)))]
    settings = ProfileSettings.from_table(int8).int8
    measured = []
    for i, row in enumerate({r["hash"]: r for r in chosen}.values()):
        arch = archs[row["hash"]]
        torch.manual_seed(0)
        path = export_onnx(vit_resnas(arch, space).eval(), network_sample_shape(space), work / f"{arch.hash}.onnx")
        stages = tuple(k + 1 for k, p in enumerate(row["best_plan"]) if p == "int8")
        mixed = mixed_onnx(MixedArch(arch.space, arch.stages, stages), fp32, int8, work)
        files = [("fp32", fp32, path), ("int8", int8, int8_onnx(path, settings)), ("mixed", int8, mixed)]
        ms = {name: measure_onnx(table, file).latency_ms for name, table, file in (files[::-1] if i % 2 else files)}
        best_whole = min(ms["fp32"], ms["int8"])
        measured.append({**row, "measured_ms": ms, "measured_gain": best_whole / ms["mixed"] - 1,
                         "bound_over_measured": row["best_plan_ms"] / ms["mixed"] - 1,
                         "boundary_ms": boundary_ms(row, ms)})
        print(f"{arch.hash} {'/'.join(row['best_plan'])}: measured fp32 {ms['fp32']:.4f}, int8 {ms['int8']:.4f}, "
              f"mixed {ms['mixed']:.4f} ms (gain {100 * measured[-1]['measured_gain']:+.1f}%; bound "
              f"{row['best_plan_ms']:.4f} ms, {100 * row['gain']:+.1f}%; boundary "
              f"{measured[-1]['boundary_ms']:+.4f} ms)", flush=True)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", required=True, type=Path, help="fp32 latency table.")
    parser.add_argument("--int8", required=True, type=Path, help="int8 latency table of the same device and batch.")
    parser.add_argument("--random", type=int, default=200, help="Seeded random archs beside the uniform ones.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random archs.")
    parser.add_argument("--out", type=Path, default=None, help="Write the report (JSON) here.")
    parser.add_argument("--measure", type=int, default=0,
                        help="Export and time this many archs the bound favours a mixed plan for (idle machine).")
    args = parser.parse_args()
    try:
        fp32, int8 = LatencyTable.load(args.fp32), LatencyTable.load(args.int8)
        check_tables([fp32, int8])
        space = fp32.space
        rng = random.Random(f"headroom/{args.seed}")
        archs = {a.hash: a for a in [*uniform_archs(space), *(sample_arch(space, rng) for _ in range(args.random))]}
        rows = [headroom(fp32, int8, a) for a in archs.values()]
        with tempfile.TemporaryDirectory() as work:
            measured = measure_mixed(fp32, int8, archs, rows, args.measure, Path(work))
    except VitresError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    report = {"command": " ".join(sys.argv), "fp32": str(args.fp32), "int8": str(args.int8),
              "space": space.name, "batch": fp32.meta.batch, "summary": summary(rows), "measured": measured,
              "mixed_archs": [r for r in rows if r["mixed"]]}
    s = report["summary"]
    print(f"{space.name}, batch {fp32.meta.batch}: {s['archs']} archs; int8 faster as a whole for "
          f"{s['whole_int8_faster']}; a per-stage plan faster than both whole precisions for {s['mixed_faster']} "
          f"(upper bound, boundaries free): median gain {100 * s['gain_median']:.1f}%, max {100 * s['gain_max']:.1f}%, "
          f"over 2% for {s['gain_over_2pct']}; plans {s['plans']}; int8/fp32 by stage (median) "
          + " / ".join(f"{x:.2f}" for x in s["stage_int8_over_fp32_median"]))
    if measured:
        gains = [m["measured_gain"] for m in measured]
        print(f"measured {len(measured)}: mixed faster than both whole precisions for {sum(g > 0 for g in gains)}, "
              f"gain median {100 * statistics.median(gains):+.1f}% ({100 * min(gains):+.1f} … "
              f"{100 * max(gains):+.1f}%); the bound over the measured mixed latency: median "
              f"{100 * statistics.median(m['bound_over_measured'] for m in measured):+.1f}%; the boundary (the mixed "
              f"network beyond its stages' share of the measured whole ones): median "
              f"{1e3 * statistics.median(m['boundary_ms'] for m in measured):+.1f} us")
    if args.out:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
