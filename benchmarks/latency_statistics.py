"""Which latency statistic reproduces on a shared machine? The evidence behind the table protocol's statistic.

``N`` seeded random sub-networks of a space are exported to ONNX and timed with ONNX Runtime (1 thread) in
``T`` trials of ``S`` seconds each, the networks interleaved within a trial (odd trials in reverse order),
``--gap`` seconds between trials. For every statistic of a trial's per-iteration latencies — minimum,
5th percentile, median, mean, the *window floor* (lowest median over windows of ``--window-ms``, at least 3 runs
each) and the window floor over windows of 5 runs (``floor_5_runs``: wider windows for networks slower than one)
— the report gives how far it moves across trials: per network ``(max - min) / min`` over the trials, then the
median and the 90th percentile over networks. The statistic that moves least is the one a table can
predict and a later measurement can reproduce. Whether more passes would repeat better: the lowest window floor
of the first k trials against the lowest of the next k, for k up to half the trials (``lowest_of_k_trials``).

    python benchmarks/latency_statistics.py --networks 12 --trials 8 --seconds 0.5 --out runs/latency-statistics.json

``--flush-mb`` reads a buffer of that size before every timed run, outside the timed region (the table
protocol's cold state, as ``vit-resnas-tiny`` tables are timed).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vitres_deploy.arch import sample_arch
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.latency.entries import network_sample_shape
from vitres_deploy.runtime.base import HostCacheFlush
from vitres_deploy.runtime.statistics import window_floor
from vitres_deploy.space import load_space
from vitres_deploy.vit_resnas import vit_resnas

STATISTICS = ("min", "p5", "window_floor", "floor_5_runs", "median", "mean")
RUNS_PER_WINDOW = 5


def trial(session: ort.InferenceSession, x: np.ndarray, seconds: float, window_s: float,
          flush: HostCacheFlush | None = None) -> dict[str, float]:
    """Warm up 50 ms, then time single runs for ``seconds`` (``flush`` before each); the statistics of the
    samples (ms)."""
    feed = {session.get_inputs()[0].name: x}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        session.run(None, feed)
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if flush is not None:
            flush()
        a = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - a) * 1e-6)
    elapsed = time.perf_counter() - start
    a = np.asarray(samples)
    return {"min": float(a.min()), "p5": float(np.percentile(a, 5)), "median": float(np.median(a)),
            "mean": float(a.mean()), "window_floor": window_floor(samples, elapsed, window_s),
            # windows of RUNS_PER_WINDOW runs (window_floor rounds the window's run count up: aim half a run short)
            "floor_5_runs": window_floor(samples, elapsed, (RUNS_PER_WINDOW - 0.5) * elapsed / len(samples)),
            "iterations": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="fmnist")
    parser.add_argument("--networks", type=int, default=12)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flush-mb", type=int, default=0, help="read this many MB before every timed run (cold)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    flush = HostCacheFlush(args.flush_mb << 20) if args.flush_mb else None

    space = load_space(args.space)
    rng = random.Random(args.seed)
    archs = [sample_arch(space, rng) for _ in range(args.networks)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    x = np.random.default_rng(0).standard_normal((1, *network_sample_shape(space))).astype(np.float32)
    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arch in enumerate(archs):
            torch.manual_seed(i)
            path = export_onnx(vit_resnas(arch, space).eval(), network_sample_shape(space), Path(tmp) / f"{i}.onnx")
            sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        results: list[list[dict[str, float]]] = [[] for _ in archs]
        for t in range(args.trials):
            order = list(range(len(archs)))
            for i in reversed(order) if t % 2 else order:
                results[i].append(trial(sessions[i], x, args.seconds, args.window_ms / 1e3, flush))
            print(f"trial {t + 1}/{args.trials} done", flush=True)
            time.sleep(args.gap)

    report: dict[str, object] = {"space": args.space, "networks": args.networks, "trials": args.trials,
                                 "seconds_per_trial": args.seconds, "window_ms": args.window_ms,
                                 "flush_mb": args.flush_mb,
                                 "protocol": "ONNX Runtime CPU, 1 thread, batch 1; networks interleaved per trial"}
    summary = {}
    for stat in STATISTICS:
        moves = [100 * (max(r[stat] for r in runs) - min(r[stat] for r in runs)) / min(r[stat] for r in runs)
                 for runs in results]
        summary[stat] = {"median_move_pct": float(np.median(moves)), "p90_move_pct": float(np.percentile(moves, 90)),
                         "max_move_pct": float(max(moves))}
    report["summary"] = summary
    report["lowest_of_k_trials"] = lowest_of_k(results)
    report["networks_detail"] = [{"arch": a.hash, "trials": runs} for a, runs in zip(archs, results)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'statistic':<14}{'median move %':>15}{'p90 move %':>12}{'max move %':>12}")
    for stat, s in summary.items():
        print(f"{stat:<14}{s['median_move_pct']:>15.1f}{s['p90_move_pct']:>12.1f}{s['max_move_pct']:>12.1f}")
    for k, s in report["lowest_of_k_trials"].items():
        print(f"lowest window floor of {k} trial(s) vs the next {k}: |change| median {s['median_change_pct']:.1f}%, "
              f"p90 {s['p90_change_pct']:.1f}%")


def lowest_of_k(results: list[list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Would more passes repeat better? For k = 1 .. trials / 2: the lowest window floor of the first k trials
    against the lowest of the next k (two "runs" of k passes each, as validation measures twice), |change| in %
    over the networks: median and 90th percentile."""
    out = {}
    for k in range(1, len(results[0]) // 2 + 1):
        change = [100 * abs(_lowest(runs[k:2 * k]) / _lowest(runs[:k]) - 1) for runs in results]
        out[str(k)] = {"median_change_pct": float(np.median(change)),
                       "p90_change_pct": float(np.percentile(change, 90))}
    return out


def _lowest(trials: list[dict[str, float]]) -> float:
    return min(t["window_floor"] for t in trials)


if __name__ == "__main__":
    main()
