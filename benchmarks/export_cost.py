"""What the ONNX export of a table costs on this machine: seconds per entry at several group sizes, and one network.

A table's build phase exports every entry with the shared export primitive, entries side by side in one exporter
call (:func:`~vitres_deploy.convert.to_onnx.export_onnx_group`, :data:`~vitres_deploy.latency.profiler.GROUP_SIZE`
per call). Here, in one process on one thread (wall clock, after one warm-up export), consecutive entries of a space
are exported in one group of each ``--groups`` size (distinct entries for each group), then one seeded random
network of the space with a dynamic batch (what tables, validations and bundles export) and with a static batch of
1 (for comparison only: nothing exports it). The seconds per entry times the space's entry count, over the build's
worker processes, is the least its build phase takes here::

    python benchmarks/export_cost.py --space fmnist --groups 1 16 32 64 --out runs/export_cost.json
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from vitres_deploy.arch import sample_arch
from vitres_deploy.convert.to_onnx import export_onnx, export_onnx_group
from vitres_deploy.files import atomic_write_json
from vitres_deploy.latency.entries import enumerate_entries
from vitres_deploy.space import PRESETS
from vitres_deploy.vit_resnas import vit_resnas


def main() -> None:
    """Parse the arguments, export, print a table and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="fmnist", choices=sorted(PRESETS))
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 16, 32, 64],
                        help="entries per exporter call, one group of each size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random network")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if any(g < 1 for g in args.groups):
        parser.error("--groups: every size must be at least 1")
    space = PRESETS[args.space]
    specs = list(enumerate_entries(space))
    if sum(args.groups) + 1 > len(specs):
        parser.error(f"--groups: {sum(args.groups)} entries in all, the space has {len(specs)} "
                     "(one more is the warm-up)")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    report: dict[str, Any] = {"space": space.name, "entries": len(specs), "torch": torch.__version__, "groups": []}
    with tempfile.TemporaryDirectory(prefix="export-cost-") as tmp:
        folder = Path(tmp)
        export_onnx_group([(specs[0].build(space, 0), specs[0].sample_shape(space), folder / "warm-up.onnx")])
        start = 1
        print(f"{'entries per call':>16}  {'seconds':>8}  {'per entry':>9}")
        for size in args.groups:
            group = specs[start:start + size]
            start += size
            items = [(s.build(space, 0), s.sample_shape(space), folder / f"{size}-{i}.onnx")
                     for i, s in enumerate(group)]
            t0 = time.perf_counter()
            export_onnx_group(items)
            seconds = time.perf_counter() - t0
            report["groups"].append({"size": size, "seconds": seconds, "per_entry_s": seconds / size})
            print(f"{size:>16}  {seconds:>8.1f}  {seconds / size:>9.2f}", flush=True)
        arch = sample_arch(space, random.Random(args.seed))
        model = vit_resnas(arch, space).eval()
        shape = (space.in_chans, space.image_size, space.image_size)
        report["network"] = {"arch": arch.short(), "hash": arch.hash}
        for dynamic in (True, False):
            t0 = time.perf_counter()
            export_onnx(model, shape, folder / f"network-{dynamic}.onnx", dynamic_batch=dynamic)
            seconds = time.perf_counter() - t0
            report["network"]["dynamic_batch_s" if dynamic else "static_batch_s"] = seconds
            print(f"network {arch.short()}, {'dynamic' if dynamic else 'static'} batch: {seconds:.1f} s", flush=True)
    atomic_write_json(args.out, report)
    print(f"report in {args.out}")


if __name__ == "__main__":
    main()
