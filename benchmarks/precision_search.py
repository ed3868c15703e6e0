"""Does searching the precision pay off? fp32-only search against the precision-aware search (issue #17, §6).

One ``search --profile fp32.json,int8.json`` (two tables of one device, measured in one window) at three budgets
spread over the union of the two tables' ranges (10%, 25% and 40% of ``fastest .. slowest`` by default). Its fp32
sub-search *is* the fp32-only search with the same settings and seed, its int8 sub-search the int8-only one, and
the precision-aware pick is the better of the two on hold-out. Per budget the report gives each pick's predicted
latency (its own table), hold-out and test top-1 (the int8 pick measured on its int8 network calibrated on
training images, in ONNX Runtime), and the paired difference on the same test images of the precision-aware pick
minus the fp32-only pick with its 95% interval. ``--measure`` then times every pick end to end as its table was
measured (one process, an idle machine), beside a drift check of each table. ``--per-stage`` adds the search of
precision per stage (``search --per-stage``: int8 in some stages, fp32 in the others, the float/int8 boundary
timed first, so start it on an idle machine); its picks are scored on test with only their int8 stages quantized
and timed (``--measure``) with the int8 table's protocol.

    .venv/bin/python benchmarks/precision_search.py --supernet fmnist-demo \\
        --profiles runs/fmnist-fp32.json,profiles/amd-epyc/fmnist-ort-cpu-int8-b1.json \\
        --population 8 --iterations 2 --parents 4 --mutations 4 --crossovers 4 --out runs/precision-search
    .venv/bin/python benchmarks/precision_search.py ... --out runs/precision-search --measure

It writes ``OUT/report.json`` and ``OUT/report.md`` and keeps the search in ``OUT/search`` (``--resume``
continues an interrupted run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from search_vs_baselines import correct_per_image, paired_difference

from vitres_deploy.arch import Arch, MixedArch
from vitres_deploy.archfile import ArchFile
from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.cli.output import print_table
from vitres_deploy.data import ImageData, open_checkpoint_data
from vitres_deploy.errors import VitresError
from vitres_deploy.files import atomic_write_json, atomic_write_text
from vitres_deploy.latency import LatencyTable, ProfileSettings, latency_range
from vitres_deploy.latency.drift import check_drift
from vitres_deploy.latency.mixed import mixed_onnx
from vitres_deploy.latency.timing import time_until_stable
from vitres_deploy.latency.validate import measure_networks
from vitres_deploy.quantized import Calibration, quantize_network
from vitres_deploy.runtime.loaders import OnnxFile
from vitres_deploy.runtime.statistics import item_latency
from vitres_deploy.search import PRESETS, SearchOptions, search_precisions
from vitres_deploy.supernet import ViTResNASSupernet


def correct_int8(supernet: ViTResNASSupernet, arch: Arch, data: ImageData, calibration: Calibration,
                 split: str, int8_stages: tuple[int, ...] = ()) -> np.ndarray:
    """1 where the sub-network's int8 network (quantized as the search scored it: only ``int8_stages`` when given)
    is right, per image of ``split``."""
    import onnxruntime as ort

    model = supernet.extract(arch).cpu().eval()
    shape = (supernet.space.in_chans, supernet.space.image_size, supernet.space.image_size)
    with tempfile.TemporaryDirectory(prefix="vitres-precision-") as work:
        path, _ = quantize_network(model, shape, data, calibration, work, int8_stages)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": x.numpy()})[0].argmax(1) == y.numpy()
                               for x, y in data.eval_batches(split, 500)])


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Run the precision search and score every pick on test; return the report."""
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(args.supernet)
    data = open_checkpoint_data(checkpoint, args.data)
    tables = [LatencyTable.load(p) for p in args.profiles.split(",")]
    overrides = {k: getattr(args, k) for k in ("population", "iterations", "parents", "mutations", "crossovers")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(PRESETS[args.preset], seed=args.seed, **overrides)
    calibration = Calibration(images=args.calibration_images, seed=args.seed)
    options = SearchOptions(budgets_ms=(), budget_shares=tuple(float(f) for f in args.fractions.split(",")),
                            out_dir=args.out / "search", evolution=config, resume=args.resume, drift_check=False,
                            calibration=calibration, per_stage=args.per_stage)
    result = search_precisions(checkpoint, tables, options, data, progress=True)
    supernet = checkpoint.supernet
    correct: dict[tuple[str, str], np.ndarray] = {}

    def test_correct(best: ArchFile) -> np.ndarray:
        """Per test image, whether ``best`` is right in the precision it was searched in."""
        key = (best.searched.plan, best.arch.hash)
        if key not in correct:
            correct[key] = (correct_int8(supernet, best.arch, data, calibration, "test",
                                         tuple(best.searched.int8_stages or ()))
                            if best.searched.precision == "int8"
                            else correct_per_image(supernet, best.arch, data, "test", None))
        return correct[key]

    rows = []
    for budget, winner in zip(result.budgets_ms, result.winners):
        picks = {p: f for p, s in result.searches.items() for c, f in zip(s.constraints, s.best_files)
                 if c.budget_ms == budget}
        row: dict[str, Any] = {"budget_ms": budget, "chosen": winner.searched.plan, "picks": {}}
        for precision, best in picks.items():
            row["picks"][precision] = {"arch": best.arch.to_dict(), "hash": best.arch.hash,
                                       "int8_stages": best.searched.int8_stages,
                                       "predicted_ms": best.searched.latency_ms, "macs": best.searched.macs,
                                       "holdout_top1": best.searched.holdout_top1,
                                       "test_top1": float(test_correct(best).mean())}
        if "fp32" in picks:
            row["paired_test_chosen_minus_fp32"] = paired_difference(test_correct(winner),
                                                                     test_correct(picks["fp32"]))
        rows.append(row)
    ranges = {t.meta.precision: latency_range(t) for t in tables}
    return {"supernet": args.supernet, "profiles": args.profiles.split(","), "fractions": args.fractions,
            "ranges_ms": {p: [r.fastest_ms, r.slowest_ms] for p, r in ranges.items()},
            "evolution": dataclasses.asdict(config), "calibration": calibration.to_dict(),
            "evaluated": {p: len(s.records) for p, s in result.searches.items()},
            "search_seconds": {p: round(s.seconds, 1) for p, s in result.searches.items()},
            "boundary": result.boundary,
            "budgets": rows, "seconds": round(time.perf_counter() - t0, 1)}


def add_measured(report: dict[str, Any], runs: int) -> None:
    """Time every pick end to end as its table was measured (``runs`` independent runs), beside a drift check of
    each table, and add ``measured_ms`` to each pick; the mixed picks (int8 in some stages) with the int8 table's
    protocol, only their int8 stages quantized."""
    report["measured"] = {"runs": runs}
    tables = {t.meta.precision: t for t in (LatencyTable.load(path) for path in report["profiles"])}
    for precision, table in tables.items():
        picks = [row["picks"][precision] for row in report["budgets"] if precision in row["picks"]]
        drift = check_drift(table)
        measured = measure_networks(table, [Arch.from_dict(p["arch"]) for p in picks],
                                    ProfileSettings.from_table(table), progress=True, runs=runs)
        for pick, m in zip(picks, measured):
            pick["measured_ms"] = m.latency_ms
        report["measured"][precision] = {"protocol": table.meta.protocol.to_dict(), "drift_ratio": drift.ratio,
                                         "drift_ci95": [drift.low, drift.high]}
    mixed = {p["hash"] + str(p["int8_stages"]): p for row in report["budgets"] if (p := row["picks"].get("mixed"))}
    if mixed:
        settings = ProfileSettings.from_table(tables["int8"])
        with tempfile.TemporaryDirectory(prefix="vitres-mixed-") as work:
            sources = {}
            for key, pick in mixed.items():
                arch = Arch.from_dict(pick["arch"])
                path = mixed_onnx(MixedArch(arch.space, arch.stages, tuple(pick["int8_stages"])), tables["fp32"],
                                  tables["int8"], Path(work))
                sources[key] = OnnxFile(path)
            passes = [time_until_stable(sources, settings) for _ in range(runs)]
        for key, pick in mixed.items():
            pick["measured_ms"] = item_latency([p for run in passes for p in run[key]], settings.protocol)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _ms(pick: dict[str, Any] | None, key: str) -> str:
    return "-" if pick is None or pick.get(key) is None else f"{pick[key]:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table and a few lines of context."""
    searches = [p for p in ("fp32", "int8", "mixed") if p in report["evaluated"]]
    lines = ["| budget ms | fp32 pick: predicted / measured ms, hold-out / test % | int8 pick: the same | "
             + ("mixed pick (int8 stages): the same | " if "mixed" in searches else "")
             + "chosen | chosen − fp32-only on test (95% interval) |",
             "| --- " * (len(searches) + 3) + "|"]
    for row in report["budgets"]:
        cells = []
        for precision in searches:
            pick = row["picks"].get(precision)
            stages = f" (int8:{','.join(map(str, pick['int8_stages']))})" if pick and pick.get("int8_stages") else ""
            cells.append("not reachable" if pick is None else
                         f"{_ms(pick, 'predicted_ms')} / {_ms(pick, 'measured_ms')}, "
                         f"{_pct(pick['holdout_top1'])} / {_pct(pick['test_top1'])}{stages}")
        paired = row.get("paired_test_chosen_minus_fp32")
        diff = "-" if paired is None else (f"{100 * paired['diff']:+.2f} points ({100 * paired['ci95'][0]:+.2f} .. "
                                           f"{100 * paired['ci95'][1]:+.2f})")
        lines.append(f"| {row['budget_ms']:.4g} | {' | '.join(cells)} | {row['chosen']} | {diff} |")
    ranges = ", ".join(f"{p} {lo:.4g}-{hi:.4g} ms" for p, (lo, hi) in report["ranges_ms"].items())
    evaluated = ", ".join(f"{p} {n} archs in {report['search_seconds'][p]} s" for p, n in report["evaluated"].items())
    lines += ["", f"Tables' ranges: {ranges}. Evaluated: {evaluated}; the whole run {report['seconds']} s."]
    if report.get("boundary"):
        b = report["boundary"]
        lines.append(f"Float/int8 boundary measured on {len(b['networks'])} mixed networks: "
                     f"{1e3 * b['boundary_ms']:+.1f} us each.")
    if "measured" in report:
        drift = ", ".join(f"{p} {m['drift_ratio']:.3f}" for p, m in report["measured"].items()
                          if isinstance(m, dict))
        lines.append(f"Measured end to end in {report['measured']['runs']} runs; drift ratios then: {drift}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="fmnist-demo", help="Checkpoint file or fmnist-demo.")
    parser.add_argument("--profiles", required=True, help="fp32 and int8 tables of one device, comma-separated.")
    parser.add_argument("--data", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
    parser.add_argument("--out", required=True, type=Path, help="Directory for the search and the report.")
    parser.add_argument("--fractions", default="0.1,0.25,0.4",
                        help="Budgets as fractions of the tables' joint fastest..slowest range.")
    parser.add_argument("--preset", default="demo", choices=list(PRESETS), help="Evolution preset of the search.")
    for name in ("population", "iterations", "parents", "mutations", "crossovers"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"Override the preset's {name}.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the search and of the calibration images.")
    parser.add_argument("--calibration-images", type=int, default=512, help="Training images int8 is calibrated on.")
    parser.add_argument("--per-stage", action="store_true",
                        help="Also search precision per stage (search --per-stage; the boundary is timed first).")
    parser.add_argument("--resume", action="store_true", help="Continue the search in OUT/search.")
    parser.add_argument("--measure", action="store_true",
                        help="Only time the picks of OUT/report.json end to end (one process, idle machine).")
    parser.add_argument("--measure-runs", type=int, default=2, help="Independent timing runs of --measure.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        if args.measure:
            report = json.loads((args.out / "report.json").read_text())
            add_measured(report, args.measure_runs)
        else:
            report = compare(args)
    except VitresError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    atomic_write_json(args.out / "report.json", report)
    atomic_write_text(args.out / "report.md", markdown(report))
    print_table("fp32-only vs precision-aware search (top-1 %)",
                ["budget ms", "fp32 ho/test", "int8 ho/test", "mixed ho/test", "chosen"],
                [(f"{r['budget_ms']:.4g}",
                  *(f"{_pct(r['picks'][p]['holdout_top1'])}/{_pct(r['picks'][p]['test_top1'])}"
                    if p in r["picks"] else "-" for p in ("fp32", "int8", "mixed")), r["chosen"])
                 for r in report["budgets"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
