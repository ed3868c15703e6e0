"""Would a larger hold-out split rank sub-networks better? Ranking against test for hold-outs of several sizes.

The search ranks archs by their inherited top-1 on the checkpoint's hold-out split (6,000 training images
for fmnist). A larger split ranks with less sampling noise but leaves fewer images to train on, so measuring it
outright means retraining the supernet. This measures the noise side on the supernet as it is (issue "The search
pays off", item 2): for the same ``--random-archs`` archs as ``benchmarks/supernet_ranking.py`` (same seed, same
archs), each arch's right/wrong answer per image on the hold-out and the test split (inherited weights), then

* **tau against test by hold-out size**: for each size in ``--sizes``, ``--draws`` random subsets of the hold-out
  (seeded), the Kendall tau between the archs' top-1 on the subset and on the whole test split: mean, standard
  deviation and the 5th-95th percentiles over the draws (the whole hold-out is a single draw);
* **pairs a hold-out can tell apart**: for every pair of archs, the paired difference of their hold-out top-1
  and its standard error on the same images; the share of pairs whose difference is beyond 1.96 standard errors
  (the images each pair answers differently stay the same share when the split grows, so at ``k`` times the
  images the standard error shrinks by ``sqrt(k)``: the projected share for 2x the hold-out assumes the same
  supernet and is labelled a projection), and the share of pairs whose hold-out order agrees with test;
* **the reference's own noise**: tau between the two halves of the test split.

Run (the figures in docs/search.md come from the shipped supernet)::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 benchmarks/holdout_size.py --supernet fmnist-demo \\
        --out runs/holdout-size

Evaluations are dealt out to the ranks. Writes ``OUT/report.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from search_vs_baselines import correct_per_image
from supernet_ranking import random_archs, ranked_report

from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.distributed import Ranks
from vitres_deploy.errors import SettingsError
from vitres_deploy.latency.metrics import kendall_tau


def tau_by_size(holdout: np.ndarray, test_top1: np.ndarray, sizes: list[int], draws: int, seed: int
                ) -> list[dict[str, Any]]:
    """Kendall tau between each arch's top-1 on random hold-out subsets of each size and its test top-1.

    ``holdout``: archs x images (1 = right); ``test_top1``: one value per arch.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        whole = n == holdout.shape[1]
        taus = []
        for _ in range(1 if whole else draws):
            columns = np.arange(n) if whole else rng.choice(holdout.shape[1], size=n, replace=False)
            taus.append(kendall_tau(holdout[:, columns].mean(axis=1).tolist(), test_top1.tolist()))
        t = np.asarray([x for x in taus if not np.isnan(x)])  # nan: every arch scored the same on the subset
        if not t.size:
            raise SettingsError(f"hold-out subsets of {n} images: every arch scores the same on each, no tau")
        rows.append({"images": n, "draws": len(t), "constant_draws": len(taus) - len(t), "tau_mean": float(t.mean()),
                     "tau_sd": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                     "tau_p5": float(np.percentile(t, 5)), "tau_p95": float(np.percentile(t, 95))})
    return rows


def resolved_pairs(holdout: np.ndarray, test_top1: np.ndarray, scales: tuple[float, ...] = (0.5, 1.0, 2.0)
                   ) -> dict[str, Any]:
    """Per pair of archs: the paired hold-out difference and its standard error; the share of pairs resolved
    (|difference| > 1.96 SE) with the hold-out scaled by each of ``scales`` (SE / sqrt(scale)), and the share
    of pairs, resolved or not, whose hold-out order agrees with test (ties left out)."""
    diffs, errors, agree, ties = [], [], 0, 0
    for i, j in itertools.combinations(range(holdout.shape[0]), 2):
        d = holdout[i].astype(np.float64) - holdout[j]
        diffs.append(d.mean())
        errors.append(d.std(ddof=1) / np.sqrt(d.size))
        sign = np.sign(diffs[-1]) * np.sign(test_top1[i] - test_top1[j])
        ties += sign == 0
        agree += sign > 0
    diff, error = np.abs(np.asarray(diffs)), np.asarray(errors)
    pairs = len(diffs)
    return {"pairs": pairs, "median_abs_diff": float(np.median(diff)), "median_se": float(np.median(error)),
            "resolved": {f"{scale:g}x": float(np.mean(diff > 1.96 * error / np.sqrt(scale))) for scale in scales},
            "order_agrees_with_test": agree / max(pairs - ties, 1)}


def measure(args: argparse.Namespace, ranks: Ranks) -> dict[str, Any]:
    """Every per-image evaluation (dealt out to ``ranks``) and the statistics of the report."""
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(args.supernet)
    space, data = checkpoint.space, open_checkpoint_data(checkpoint, args.data)
    archs = {a.hash: a for a in random_archs(space, args.random_archs, args.seed)}
    answers = {split: ranks.shard_map(list(archs), lambda h, s=split: correct_per_image(
        checkpoint.supernet, archs[h], data, s, args.eval_limit)) for split in ("holdout", "test")}
    holdout = np.stack([answers["holdout"][h] for h in archs])
    test = np.stack([answers["test"][h] for h in archs])
    sizes = sorted({min(n, holdout.shape[1]) for n in args.sizes} | {holdout.shape[1]})
    if sizes[0] < 2:
        raise SettingsError(f"--sizes {args.sizes}: a hold-out subset needs at least 2 images")
    half = test.shape[1] // 2
    halves = kendall_tau(test[:, :half].mean(axis=1).tolist(), test[:, half:].mean(axis=1).tolist())
    return {
        "command": " ".join(sys.argv), "supernet": str(checkpoint.path), "space": space.name,
        "archs": len(archs), "holdout_images": int(holdout.shape[1]), "test_images": int(test.shape[1]),
        "seed": args.seed, "seconds": time.perf_counter() - t0, "ranks": ranks.world,
        "by_size": tau_by_size(holdout, test.mean(axis=1), sizes, args.draws, args.seed),
        "pairs": resolved_pairs(holdout, test.mean(axis=1)),
        "test_halves_tau": None if np.isnan(halves) else halves,
        "archs_top1": {h: {"holdout": float(holdout[k].mean()), "test": float(test[k].mean())}
                       for k, h in enumerate(archs)},
    }


def markdown(report: dict[str, Any]) -> str:
    """The report's figures as Markdown."""
    p = report["pairs"]
    lines = [f"Space `{report['space']}`, supernet `{report['supernet']}`, {report['archs']} random archs "
             f"(the archs of `benchmarks/supernet_ranking.py`, seed {report['seed']}), inherited weights. "
             f"Command: `{report['command']}` ({report['seconds'] / 60:.1f} min on {report['ranks']} process(es)).",
             "", "| hold-out images | draws | Kendall tau vs test, mean | sd | 5th-95th percentile |",
             "|---|---|---|---|---|"]
    for row in report["by_size"]:
        lines.append(f"| {row['images']} | {row['draws']} | {row['tau_mean']:+.3f} | {row['tau_sd']:.3f} "
                     f"| {row['tau_p5']:+.3f} … {row['tau_p95']:+.3f} |")
    halves = report["test_halves_tau"]
    lines += ["", f"- tau between the two halves of the test split ({report['test_images'] // 2} images each): "
                  + ("undefined (constant)" if halves is None else f"{halves:+.3f}"),
              f"- {p['pairs']} pairs of archs: median |hold-out difference| {100 * p['median_abs_diff']:.2f} points, "
              f"median paired standard error {100 * p['median_se']:.2f} points; resolved beyond 1.96 SE: "
              + ", ".join(f"{100 * v:.0f}% at {k} the hold-out" for k, v in p["resolved"].items())
              +  " (1x: the hold-out as it is; 0.5x and 2x: its standard errors scaled by sqrt(2) either way)",
              f"- hold-out order agrees with test for {100 * p['order_agrees_with_test']:.0f}% of the pairs"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="fmnist-demo", help="Checkpoint file or fmnist-demo.")
    parser.add_argument("--data", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
    parser.add_argument("--out", required=True, type=Path, help="Directory for the report.")
    parser.add_argument("--random-archs", type=int, default=50, help="Random archs (those of supernet_ranking.py).")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[750, 1500, 3000, 6000],
                        help="Hold-out subset sizes, comma-separated (the whole hold-out is always added).")
    parser.add_argument("--draws", type=int, default=200, help="Random subsets per size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random archs and of the subsets.")
    parser.add_argument("--eval-limit", type=int, default=None, help="First N images of each split (smoke runs).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process.")
    return ranked_report(parser.parse_args(), measure, markdown)


if __name__ == "__main__":
    sys.exit(main())
