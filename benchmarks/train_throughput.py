"""Training throughput of the fmnist space's largest, smallest and random sub-networks on this machine.

    python benchmarks/train_throughput.py [--space fmnist] [--batch-size 256] [--steps 10]

Full training steps (forward, backward, AdamW) on random inputs; prints images/s and seconds per
60,000 images for: the largest sub-network, the smallest, and G=4 random sub-networks per batch.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from vitres_deploy.arch import max_arch, min_arch, sample_arch
from vitres_deploy.space import load_space
from vitres_deploy.supernet import build_supernet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="fmnist")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    net = build_supernet(space, drop_path_rate=0.1).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, space.in_chans, space.image_size, space.image_size)
    y = torch.randint(0, space.num_classes, (args.batch_size,))
    rng = random.Random(0)
    cases = {"largest": lambda: [max_arch(space)], "smallest": lambda: [min_arch(space)],
             "4 random per batch": lambda: [sample_arch(space, rng) for _ in range(4)]}
    print(f"{args.space}, batch {args.batch_size}, {args.threads} thread(s)")
    for name, archs in cases.items():
        for step in range(args.steps + 2):
            if step == 2:
                t0 = time.perf_counter()
            loss = F.cross_entropy(net(x, archs=archs()), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rate = args.steps * args.batch_size / (time.perf_counter() - t0)
        print(f"  {name:<20} {rate:8.0f} images/s  {60_000 / rate:6.1f} s per 60,000 images")


if __name__ == "__main__":
    main()
