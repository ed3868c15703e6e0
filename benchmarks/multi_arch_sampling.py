"""Does multi-architectural sampling pay off? (issue: supernet training, section 7)

Trains the fmnist supernet twice with the same epochs, batch size and images: one sub-network per
step (``--archs-per-batch 1``) and G sub-networks per step (``--archs-per-batch G``). Then reports
the t10k test top-1 of the largest, the smallest and 20 random sub-networks (random:0..19) for both.

    python benchmarks/multi_arch_sampling.py --epochs 8 --groups 4 --out runs/multiarch
    python benchmarks/multi_arch_sampling.py --out runs/multiarch --skip-training   # re-evaluate only

Writes ``<out>/report.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vitres_deploy.arch import max_arch, min_arch, random_arch
from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.evaluate import evaluate_arch
from vitres_deploy.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/multiarch"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-archs", type=int, default=20)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()

    report: dict[str, dict] = {}
    for g in (1, args.groups):
        run = args.out / f"g{g}"
        cfg = TrainConfig(epochs=args.epochs, archs_per_batch=g, warmup_epochs=args.warmup_epochs, seed=args.seed)
        t0 = time.perf_counter()
        if not args.skip_training:
            train(cfg, run, resume=(run / "last.safetensors").is_file())
        seconds = time.perf_counter() - t0
        ckpt = load_checkpoint(run / "supernet.safetensors")
        data = open_checkpoint_data(ckpt)
        space = ckpt.space
        top1 = {name: evaluate_arch(ckpt.supernet, arch, data, "test").top1
                for name, arch in (("largest", max_arch(space)), ("smallest", min_arch(space)))}
        randoms = [evaluate_arch(ckpt.supernet, random_arch(space, s), data, "test").top1
                   for s in range(args.random_archs)]
        report[f"archs_per_batch={g}"] = {
            **top1, "random_mean": statistics.mean(randoms), "random_median": statistics.median(randoms),
            "random_min": min(randoms), "random_max": max(randoms), "random": randoms,
            "train_seconds": None if args.skip_training else seconds,
            "config": ckpt.meta["train_config"],
        }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{'run':<20}{'largest':>9}{'smallest':>10}{'random mean':>13}{'random median':>15}")
    for name, r in report.items():
        print(f"{name:<20}{r['largest']:>9.2%}{r['smallest']:>10.2%}{r['random_mean']:>13.2%}"
              f"{r['random_median']:>15.2%}")
    one, many = report["archs_per_batch=1"], report[f"archs_per_batch={args.groups}"]
    wins = sum(b > a for a, b in zip(one["random"], many["random"]))
    print(f"G={args.groups} beats G=1 on {wins}/{len(one['random'])} random sub-networks")


if __name__ == "__main__":
    main()
