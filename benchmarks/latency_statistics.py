"""Which latency statistic reproduces on a shared machine? The evidence behind the table protocol's statistic.

``N`` seeded random sub-networks of a space are exported to ONNX and timed with ONNX Runtime (1 thread) in
``T`` trials of ``S`` seconds each, the networks interleaved within a trial (odd trials in reverse order),
``--gap`` seconds between trials. For every statistic of a trial's per-iteration latencies — minimum,
5th percentile, median, mean, and the *window floor* (lowest median over windows of ``--window-ms``) — the
report gives how far it moves across trials: per network ``(max - min) / min`` over the trials, then the
median and the 90th percentile over networks. The statistic that moves least is the one a table can
predict and a later measurement can reproduce.

    python benchmarks/latency_statistics.py --networks 12 --trials 8 --seconds 0.5 --out runs/latency-statistics.json
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
from vitres_deploy.runtime.statistics import window_floor
from vitres_deploy.space import load_space
from vitres_deploy.vit_resnas import vit_resnas

STATISTICS = ("min", "p5", "window_floor", "median", "mean")


def trial(session: ort.InferenceSession, x: np.ndarray, seconds: float, window_s: float) -> dict[str, float]:
    """Warm up 50 ms, then time single runs for ``seconds``; the statistics of the samples (ms)."""
    feed = {session.get_inputs()[0].name: x}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        session.run(None, feed)
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        a = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - a) * 1e-6)
    elapsed = time.perf_counter() - start
    a = np.asarray(samples)
    return {"min": float(a.min()), "p5": float(np.percentile(a, 5)), "median": float(np.median(a)),
            "mean": float(a.mean()), "window_floor": window_floor(samples, elapsed, window_s), "iterations": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="fmnist")
    parser.add_argument("--networks", type=int, default=12)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

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
                results[i].append(trial(sessions[i], x, args.seconds, args.window_ms / 1e3))
            print(f"trial {t + 1}/{args.trials} done", flush=True)
            time.sleep(args.gap)

    report: dict[str, object] = {"space": args.space, "networks": args.networks, "trials": args.trials,
                                 "seconds_per_trial": args.seconds, "window_ms": args.window_ms,
                                 "protocol": "ONNX Runtime CPU, 1 thread, batch 1; networks interleaved per trial"}
    summary = {}
    for stat in STATISTICS:
        moves = [100 * (max(r[stat] for r in runs) - min(r[stat] for r in runs)) / min(r[stat] for r in runs)
                 for runs in results]
        summary[stat] = {"median_move_pct": float(np.median(moves)), "p90_move_pct": float(np.percentile(moves, 90)),
                         "max_move_pct": float(max(moves))}
    report["summary"] = summary
    report["networks_detail"] = [{"arch": a.hash, "trials": runs} for a, runs in zip(archs, results)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'statistic':<14}{'median move %':>15}{'p90 move %':>12}{'max move %':>12}")
    for stat, s in summary.items():
        print(f"{stat:<14}{s['median_move_pct']:>15.1f}{s['p90_move_pct']:>12.1f}{s['max_move_pct']:>12.1f}")


if __name__ == "__main__":
    main()
