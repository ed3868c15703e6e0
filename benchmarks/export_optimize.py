"""What the exporter's graph optimizer costs, and whether the drift check could do without it.

A drift check with an empty export cache spends most of its time exporting its items (the entries and three
networks of :func:`~vitres_deploy.latency.drift.drift_targets`). Each item of a table is exported here twice in
this process, with the dynamo exporter's ``optimize=True`` (what vitres-deploy ships and times) and with
``optimize=False``, each export timed (wall clock, one thread, after one warm-up export); then both files are
optimized by ONNX Runtime as a session does (``ORT_ENABLE_ALL``, one thread) and the node types of the two graphs
ONNX Runtime would run are compared. Where they differ, an unoptimized export would time another graph than the
one shipped.

    python benchmarks/export_optimize.py --profile profiles/amd-epyc/vit-resnas-tiny@112-ort-cpu-fp32-b1.json \\
        --out runs/export_optimize.json
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from vitres_deploy.convert.to_onnx import DEFAULT_OPSET
from vitres_deploy.files import atomic_write_json
from vitres_deploy.latency import LatencyTable
from vitres_deploy.latency.drift import drift_targets
from vitres_deploy.latency.profiler import Target, entry_target, network_target


def export(target: Target, table: LatencyTable, path: Path, optimize: bool) -> float:
    """Export ``target`` to ``path`` (dynamic batch, as the profiler does); returns the seconds it took."""
    module = target.module(table.space).eval()
    example = torch.zeros(2, *target.sample_shape(table.space))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=table.meta.opset or DEFAULT_OPSET,
                                    input_names=["input"], output_names=["output"], optimize=optimize,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), verbose=False)
        program.save(str(path), external_data=False)
    return time.perf_counter() - start


def runtime_nodes(path: Path) -> collections.Counter[str]:
    """The node types of the graph ONNX Runtime runs for ``path`` (its own optimizations applied)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    return collections.Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help="Latency table whose drift-check items are exported.")
    parser.add_argument("--out", type=Path, required=True, help="JSON report.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = LatencyTable.load(args.profile)
    specs, archs = drift_targets(table)
    targets = [entry_target(s) for s in specs] + [network_target(a) for a in archs]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        export(targets[0], table, Path(tmp) / "warm-up.onnx", True)
        for i, target in enumerate(targets):
            seconds, nodes = {}, {}
            for optimize in (True, False):
                path = Path(tmp) / f"{i}-{optimize}.onnx"
                seconds[optimize] = export(target, table, path, optimize)
                nodes[optimize] = runtime_nodes(path)
            only_optimized, only_plain = nodes[True] - nodes[False], nodes[False] - nodes[True]
            rows.append({"item": target.name, "seconds_optimize": round(seconds[True], 2),
                         "seconds_no_optimize": round(seconds[False], 2),
                         "same_runtime_graph": nodes[True] == nodes[False],
                         "runtime_nodes": sum(nodes[True].values()),
                         "runtime_nodes_no_optimize": sum(nodes[False].values()),
                         "only_with_optimize": dict(only_optimized), "only_without": dict(only_plain)})
            print(f"{target.name}: {seconds[True]:.1f} s optimized, {seconds[False]:.1f} s not; runtime graph "
                  f"{'the same' if nodes[True] == nodes[False] else 'differs: ' + str(dict(only_optimized))}")
    total = {k: round(sum(r[k] for r in rows), 1) for k in ("seconds_optimize", "seconds_no_optimize")}
    print(f"all {len(rows)} items: {total['seconds_optimize']} s optimized, {total['seconds_no_optimize']} s not; "
          f"{sum(not r['same_runtime_graph'] for r in rows)} runtime graphs differ")
    atomic_write_json(args.out, {"table": args.profile, "statistic": "wall-clock seconds of one export each",
                                 "total": total, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
