"""Where int8 pays off on this device: per block (from an fp32 and an int8 table), per network (measured), and on
a wide ViT-ResNAS-Tiny sub-network.

1. **Blocks**: the int8/fp32 ratio of every entry of the two tables (one space, device, batch), by kind and
   width, plotted (``--plot``).
2. **Networks**: ``--samples`` seeded random archs of the space plus its smallest and largest: each exported to
   fp32 ONNX and quantized as the int8 table's entries were (seeded calibration: the values change the accuracy,
   not the speed), each timed with its table's protocol and statistic, every network in both precisions in one
   interleaved schedule over wall time (as a table's validation networks are). The ratio the tables predict
   (``predict(int8) / predict(fp32)``) is compared with the measured one (target: within 10%).
3. **Tiny** (``--tiny-arch`` of ``vit-resnas-tiny@112``, random weights): fp32 and int8 timed with the tiny fp32
   table's protocol (``--tiny-profile``), and the int8 network's outputs compared with fp32's (cosine, top-1
   agreement on 16 seeded random inputs; int8 calibrated on 512 other ones, as an export calibrates) (target: at
   least 1.5x faster).

    python benchmarks/int8_speed.py --fp32 profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json \\
        --int8 profiles/amd-epyc/fmnist-ort-cpu-int8-b1.json --out docs/benchmarks/int8_speed.json \\
        --plot docs/int8-vs-fp32.png
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitres_deploy.arch import max_arch, min_arch, sample_arch
from vitres_deploy.archfile import resolve_arch
from vitres_deploy.convert.int8 import quantize_onnx
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.files import atomic_write, atomic_write_json
from vitres_deploy.latency import LatencyTable, predict
from vitres_deploy.latency.entries import network_sample_shape
from vitres_deploy.latency.timing import ProfileSettings, measure_onnx, measure_source, time_until_stable
from vitres_deploy.runtime import NoisyMeasurement, OnnxFile, RunnerOptions, get_backend
from vitres_deploy.runtime.cache import int8_onnx
from vitres_deploy.runtime.loaders import ModelLoader
from vitres_deploy.runtime.statistics import TimingStats, item_latency
from vitres_deploy.vit_resnas import vit_resnas


def block_ratios(fp32: LatencyTable, int8: LatencyTable) -> list[dict[str, Any]]:
    """int8/fp32 latency of every entry of both tables."""
    return [{"key": k, "kind": e.kind, "stage": e.stage, "dims": list(e.dims), "fp32_ms": e.latency_ms,
             "int8_ms": int8.entries[k].latency_ms, "ratio": int8.entries[k].latency_ms / e.latency_ms}
            for k, e in fp32.entries.items() if k in int8.entries]


def by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, lowest and highest int8/fp32 ratio per entry kind."""
    kinds: dict[str, list[float]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r["ratio"])
    return {k: {"entries": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}
            for k, v in kinds.items()}


def plot_blocks(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """int8/fp32 ratio of each block against its width (embed dim), coloured by stage; other kinds beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, gridspec_kw={"width_ratios": [3, 1]})
    try:
        blocks = [r for r in rows if r["kind"] == "block"]
        for stage in sorted({r["stage"] for r in blocks}):
            rs = [r for r in blocks if r["stage"] == stage]
            ax.scatter([r["dims"][0] for r in rs], [r["ratio"] for r in rs], s=14, alpha=0.7,
                       label=f"stage {stage} blocks ({len(rs)})")
        ax.axhline(1.0, color="black", linewidth=1.0)
        ax.set_xlabel("block width (embedding dim)")
        ax.set_ylabel("int8 / fp32 latency (below 1: int8 faster)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        others = sorted({r["kind"] for r in rows} - {"block"})
        bx.boxplot([[r["ratio"] for r in rows if r["kind"] == k] for k in others], tick_labels=others)
        bx.axhline(1.0, color="black", linewidth=1.0)
        bx.grid(True, alpha=0.3)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def networks(fp32: LatencyTable, int8: LatencyTable, samples: int, seed: int, work: Path) -> list[dict[str, Any]]:
    """Predicted and measured int8/fp32 ratio of seeded random archs plus the smallest and the largest.

    Every network in both precisions is timed in one interleaved schedule over wall time
    (:func:`~vitres_deploy.latency.timing.time_until_stable`, each with its own table's settings), as a table's
    validation networks are: slow drift of the machine meets both precisions of a network alike.
    """
    space = fp32.space
    rng = random.Random(seed)
    archs = [min_arch(space), max_arch(space), *(sample_arch(space, rng) for _ in range(samples))]
    tables = {"fp32": fp32, "int8": int8}
    settings = {p: ProfileSettings.from_table(t) for p, t in tables.items()}
    sources: dict[str, OnnxFile] = {}
    for arch in archs:
        torch.manual_seed(0)
        path = export_onnx(vit_resnas(arch, space).eval(), network_sample_shape(space), work / f"{arch.hash}.onnx")
        sources[f"{arch.hash}/fp32"] = OnnxFile(path)
        sources[f"{arch.hash}/int8"] = OnnxFile(int8_onnx(path, settings["int8"].int8))
    precision_of = {source.path: name.split("/")[1] for name, source in sources.items()}

    def one_pass(source: ModelLoader, _: ProfileSettings) -> TimingStats:
        assert isinstance(source, OnnxFile)
        return measure_source(source, settings[precision_of[source.path]])[0]

    print(f"timing {len(sources)} networks in interleaved passes", flush=True)
    passes = time_until_stable(sources, settings["fp32"], measure_pass=one_pass)
    rows = []
    for arch in archs:
        measured = {p: item_latency(passes[f"{arch.hash}/{p}"], settings[p].protocol) for p in tables}
        predicted = {p: predict(t, arch).latency_ms for p, t in tables.items()}
        ratio_p, ratio_m = predicted["int8"] / predicted["fp32"], measured["int8"] / measured["fp32"]
        rows.append({"arch": arch.hash, "short": arch.short(), "predicted_ms": predicted, "measured_ms": measured,
                     "passes": {p: len(passes[f"{arch.hash}/{p}"]) for p in tables},
                     "predicted_ratio": ratio_p, "measured_ratio": ratio_m, "ratio_error": ratio_p / ratio_m - 1})
        print(f"{arch.hash}: fp32 {measured['fp32']:.4f} ms, int8 {measured['int8']:.4f} ms; ratio predicted "
              f"{ratio_p:.3f} measured {ratio_m:.3f} ({100 * (ratio_p / ratio_m - 1):+.1f}%)", flush=True)
    return rows


def tiny(table: LatencyTable, spec: str, work: Path) -> dict[str, Any]:
    """fp32 vs int8 speed and agreement of one vit-resnas-tiny sub-network (random weights)."""
    space = table.space
    arch = resolve_arch(spec, space)
    torch.manual_seed(0)
    path = export_onnx(vit_resnas(arch, space).eval(), network_sample_shape(space), work / "tiny.onnx")
    settings = ProfileSettings.from_table(table)
    # calibrated like an export (512 inputs), on inputs of the check's distribution but not the check's own: the
    # tables' 8 timing inputs set scales good enough for speed, not for numerics (cosine 0.68 against 0.88 here)
    calibration = np.random.default_rng(2).standard_normal((512, *network_sample_shape(space))).astype(np.float32)
    quantized = work / "tiny.int8.onnx"
    quantize_onnx(path, quantized, calibration, dataclasses.replace(settings, precision="int8").int8,
                  source="512 seeded standard-normal inputs")
    fp32_ms = measure_onnx(table, path).latency_ms
    int8_ms = measure_onnx(table, quantized, precision="int8").latency_ms
    x = np.random.default_rng(1).standard_normal((16, *network_sample_shape(space))).astype(np.float32)
    outs = []
    for file in (path, quantized):
        with get_backend("ort-cpu").runner(OnnxFile(file), RunnerOptions(batch=16)) as runner:
            outs.append(runner.infer({"input": x})["output"])
    a, b = (o.astype(np.float64) for o in outs)
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    return {"arch": arch.hash, "spec": spec, "short": arch.short(), "fp32_ms": fp32_ms, "int8_ms": int8_ms,
            "speedup": fp32_ms / int8_ms, "cosine": cosine,
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()), "calibration_inputs": len(calibration),
            "statistic": table.meta.protocol.statistic}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=Path, required=True, help="fp32 table")
    parser.add_argument("--int8", type=Path, required=True, help="int8 table of the same space, device and batch")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny-profile", type=Path,
                        default=Path("profiles/amd-epyc/vit-resnas-tiny@112-ort-cpu-fp32-b1.json"))
    parser.add_argument("--tiny-arch", default="random:5")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", NoisyMeasurement)  # the protocol's passes settle; CVs are not the statistic
    fp32, int8 = LatencyTable.load(args.fp32), LatencyTable.load(args.int8)
    rows = block_ratios(fp32, int8)
    kinds = by_kind(rows)
    for kind, s in kinds.items():
        print(f"{kind}: int8/fp32 median {s['median']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}) over "
              f"{s['entries']} entries", flush=True)
    if args.plot:
        plot_blocks(args.plot, rows, f"{fp32.meta.space}: int8 / fp32 per table entry ({fp32.meta.backend} "
                                     f"{fp32.meta.backend_version}, batch {fp32.meta.batch}, {fp32.meta.device})")
    with tempfile.TemporaryDirectory(prefix="int8-speed-") as tmp:
        nets = networks(fp32, int8, args.samples, args.seed, Path(tmp))
        wide = tiny(LatencyTable.load(args.tiny_profile), args.tiny_arch, Path(tmp))
    print(f"tiny {wide['spec']}: fp32 {wide['fp32_ms']:.2f} ms, int8 {wide['int8_ms']:.2f} ms, "
          f"{wide['speedup']:.2f}x; cosine {wide['cosine']:.4f}, top-1 agreement {wide['top1_agreement']:.3f}")
    errors = [abs(r["ratio_error"]) for r in nets]
    summary = {"ratio_error_median": statistics.median(errors), "ratio_error_max": max(errors),
               "within_10pct": sum(e <= 0.10 for e in errors) / len(errors)}
    print(f"networks: |predicted/measured ratio - 1| median {100 * summary['ratio_error_median']:.1f}%, max "
          f"{100 * summary['ratio_error_max']:.1f}%, {100 * summary['within_10pct']:.0f}% within 10%")
    atomic_write_json(args.out, {"fp32_table": str(args.fp32), "int8_table": str(args.int8),
                                 "int8_settings": int8.meta.options.get("int8"), "blocks_by_kind": kinds,
                                 "blocks": rows, "networks": nets, "network_summary": summary, "tiny": wide,
                                 "statistic": fp32.meta.protocol.statistic})


if __name__ == "__main__":
    main()
