"""int8 exports of supernet sub-networks with the default settings: the export's hold-out drop and the test top-1.

Each arch (``max``, ``min``, ``random:SEED`` or an arch file) is exported with ``export --precision int8`` (its
accuracy check: hold-out top-1 of the int8 model against PyTorch fp32), then the bundle's ``model.onnx`` and the
fp32 sub-network are evaluated on the test split.

    python benchmarks/int8_accuracy.py --supernet fmnist-demo --archs min,random:3,max --out runs/int8-accuracy
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitres_deploy.archfile import resolve_arch
from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.evaluate import evaluate_arch
from vitres_deploy.files import atomic_write_json
from vitres_deploy.quantized import evaluate_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="fmnist-demo")
    parser.add_argument("--archs", default="min,random:3,max", help="comma-separated arch specs or files")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.supernet)
    data = open_checkpoint_data(checkpoint)
    cli = Path(sys.executable).with_name("vitres-deploy")
    rows = []
    for i, spec in enumerate(args.archs.split(",")):
        bundle = args.out / f"bundle-{i}"
        shutil.rmtree(bundle, ignore_errors=True)
        t0 = time.perf_counter()
        done = subprocess.run([str(cli), "export", "--supernet", args.supernet, "--arch", spec, "--precision", "int8",
                               "--out", str(bundle), "--json"], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{spec}: export failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        check = next(c for c in json.loads(done.stdout)["checks"] if c["check"] == "accuracy")["values"]
        arch = resolve_arch(spec, checkpoint.space)
        test_fp32 = evaluate_arch(checkpoint.supernet, arch, data, "test").top1
        test_int8 = evaluate_onnx(bundle / "model.onnx", data, "test").top1
        row = {"arch": spec, "hash": arch.hash, "holdout_fp32": check["reference_top1"], "holdout_int8": check["top1"],
               "holdout_drop_points": check["drop_points"], "holdout_agreement": check["top1_agreement"],
               "test_fp32": test_fp32, "test_int8": test_int8, "test_drop_points": 100 * (test_fp32 - test_int8),
               "export_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{spec} ({arch.hash}): hold-out {row['holdout_fp32']:.2%} -> {row['holdout_int8']:.2%}, test "
              f"{test_fp32:.2%} -> {test_int8:.2%} ({row['test_drop_points']:+.2f} points)", flush=True)
    atomic_write_json(args.out / "int8_accuracy.json", rows)


if __name__ == "__main__":
    main()
