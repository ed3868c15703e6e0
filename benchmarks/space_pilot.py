"""Pilot of a candidate search space: one of its sub-networks trained alone, hold-out top-1 after every epoch.

    python benchmarks/space_pilot.py --space fmnist --arch min --epochs 12 [--stem-channels 4] [--json]

Before a 50-minute supernet training, tells what capacity the smallest (or largest) sub-network of a candidate
space has: the arch is built as a static network from fresh seeded weights and trained alone with the
supernet's recipe (AdamW, linear-warm-up cosine schedule, label smoothing, the data's augmentation), one
thread by default so that two pilots run side by side. ``--stem-channels`` overrides the space's stem width
(the shared conv stem sets the floor of every sub-network of the demo space). Hold-out images only; the test
split is never read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import torch.nn.functional as F

from vitres_deploy.arch import max_arch, min_arch
from vitres_deploy.data import open_data
from vitres_deploy.evaluate import evaluate_model
from vitres_deploy.macs import arch_cost
from vitres_deploy.space import load_space
from vitres_deploy.train import TrainConfig, lr_at
from vitres_deploy.vit_resnas import vit_resnas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="fmnist", help="Preset or space file.")
    parser.add_argument("--arch", choices=("min", "max"), default="min")
    parser.add_argument("--stem-channels", type=int, default=None, help="Override the space's stem width.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    if args.stem_channels is not None:
        space = dataclasses.replace(space, stem_channels=args.stem_channels)
    arch = (min_arch if args.arch == "min" else max_arch)(space)
    cfg = TrainConfig(space=args.space, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    torch.manual_seed(args.seed)
    net = vit_resnas(arch, space)
    data = open_data("fmnist", None, space.image_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = data.num_train() // cfg.batch_size
    cost = arch_cost(arch, space)
    report = {"command": " ".join(sys.argv), "space": space.name, "stem_channels": space.stem_channels,
              "arch": args.arch, "macs": cost.macs, "params": cost.params, "epochs": []}
    print(f"{space.name} stem {space.stem_channels}, {args.arch}: {cost.macs / 1e6:.2f}M MACs", file=sys.stderr)
    for epoch in range(cfg.epochs):
        net.train()
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(data.train_batches(cfg.batch_size, epoch, cfg.seed)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps + step, steps)
            loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        top1 = evaluate_model(net, data, "holdout", 1000).top1
        report["epochs"].append({"epoch": epoch + 1, "holdout_top1": top1, "seconds": time.perf_counter() - t0})
        print(f"epoch {epoch + 1}: hold-out top-1 {100 * top1:.2f}%", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
