"""Does the supernet rank sub-networks? Inherited accuracy against test, and against the archs trained alone.

A search chooses by the hold-out top-1 of sub-networks with the supernet's inherited weights, so it pays off
only if that order carries over (issue "The search pays off", item 2). This measures, for one supernet:

* **inherited hold-out vs test**: ``--random-archs`` archs sampled uniformly per choice (seeded, over the whole
  space), each evaluated with its inherited weights on the hold-out and the test split; Kendall tau and
  Spearman between the two (target: tau >= 0.5);
* **inherited vs trained alone**: ``--alone`` of those archs spread evenly over their predicted latency, each
  trained alone from freshly initialised weights for ``--alone-epochs`` (``vitres-deploy finetune
  --from-scratch``, same data, the supernet's hold-out split kept out); Kendall tau between their inherited
  and their trained-alone test top-1;
* **the accuracy-latency curve** of the space: test top-1 of every *uniform* arch (one position of each choice
  list in every block of every stage) against its predicted latency, plotted with the random archs
  (``OUT/curve.png``), and the smallest and largest sub-network.

Run (the figures in docs/search.md come from the shipped supernet and table)::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 benchmarks/supernet_ranking.py \\
        --supernet fmnist-demo --profile profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json --out runs/ranking

Evaluations and the trained-alone runs are dealt out to the ranks (each run resumes if its folder holds an
interrupted one, and a finished one is reused). A trained-alone run starts from fresh weights, so it does not
depend on the supernet: ``--alone-from REPORT`` takes the trained-alone test top-1 of the archs an earlier report
of the same space measured with the same epochs, learning rate, seed and images, and trains only the others (to
compare two supernets of one space). Writes ``OUT/report.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from search_vs_baselines import uniform_archs

from vitres_deploy.arch import Arch, max_arch, min_arch, sample_arch
from vitres_deploy.checkpoint import load_checkpoint, load_finetuned
from vitres_deploy.data import ImageData, open_checkpoint_data
from vitres_deploy.distributed import Ranks, join_ranks
from vitres_deploy.errors import SettingsError, VitresError
from vitres_deploy.evaluate import evaluate_arch, evaluate_model
from vitres_deploy.files import atomic_write_json, atomic_write_text, loads_json
from vitres_deploy.finetune import FINAL
from vitres_deploy.latency import LatencyTable, predict
from vitres_deploy.latency.metrics import kendall_tau, spearman
from vitres_deploy.space import SearchSpace

TORCHRUN_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                      "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS"}


def random_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """``n`` distinct archs sampled uniformly per choice from the seeded stream ``ranking/<seed>``."""
    rng, found = random.Random(f"ranking/{seed}"), {}
    while len(found) < n:
        arch = sample_arch(space, rng)
        found.setdefault(arch.hash, arch)
    return list(found.values())


def spread(archs: list[Arch], latency: dict[str, float], k: int) -> list[Arch]:
    """``k`` of ``archs`` evenly spaced in the order of their predicted latency, fastest and slowest included."""
    ordered = sorted(archs, key=lambda a: latency[a.hash])
    return [ordered[round(i * (len(ordered) - 1) / (k - 1))] for i in range(k)] if k > 1 else ordered[:k]


def train_alone(args: argparse.Namespace, arch: Arch, data: ImageData) -> float:
    """Test top-1 of ``arch`` trained alone from scratch for ``--alone-epochs`` (resumed if begun).

    The run is a ``vitres-deploy finetune --from-scratch`` child process with one thread and none of torchrun's
    variables, so that each rank trains its own share of the archs side by side.
    """
    out = args.out / "alone" / arch.hash
    final = out / FINAL
    if not final.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        arch_file = out.parent / f"{arch.hash}.json"
        atomic_write_json(arch_file, arch.to_dict())
        command = [sys.executable, "-m", "vitres_deploy.cli", "finetune", "--from-scratch", "--supernet",
                   str(args.supernet), "--arch", str(arch_file), "--out", str(out), "--epochs", str(args.alone_epochs),
                   "--lr", str(args.alone_lr), "--seed", str(args.seed)]
        if args.data:
            command += ["--data", str(args.data)]
        if args.alone_steps_per_epoch:
            command += ["--steps-per-epoch", str(args.alone_steps_per_epoch), "--eval-limit", "500"]
        if (out / "last.safetensors").is_file():
            command.append("--resume")
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES} | {"OMP_NUM_THREADS": "1"}
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return evaluate_model(load_finetuned(final).model, data, "test", 500, args.eval_limit).top1


def earlier_alone(args: argparse.Namespace, space: SearchSpace) -> dict[str, float]:
    """Trained-alone test top-1 by arch hash from the report ``--alone-from`` (none without it), refused unless
    it measured the same space with the same epochs, learning rate, seed and images."""
    if args.alone_from is None:
        return {}
    report = loads_json(args.alone_from.read_text())
    alone = report["alone"]
    words = report["command"].split()
    seed = alone.get("seed", int(words[words.index("--seed") + 1]) if "--seed" in words else 0)
    mine = {"space": space.name, "epochs": args.alone_epochs, "lr": args.alone_lr, "seed": args.seed,
            "eval_limit": args.eval_limit}
    theirs = {"space": report["space"], "epochs": alone["epochs"], "lr": alone["lr"], "seed": seed,
              "eval_limit": report["eval_limit"]}
    for key in mine:
        if mine[key] != theirs[key]:
            raise SettingsError(f"--alone-from {args.alone_from}: its trained-alone runs have {key} {theirs[key]!r}, "
                                f"this run {mine[key]!r}")
    return {row["hash"]: row["alone_test_top1"] for row in alone["rows"]}


def measure(args: argparse.Namespace, ranks: Ranks) -> dict[str, Any]:
    """Every evaluation of the report (dealt out to ``ranks``); the trained-alone runs on rank 0."""
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(args.supernet)
    space, data = checkpoint.space, open_checkpoint_data(checkpoint, args.data)
    table = LatencyTable.load(args.profile)
    randoms = random_archs(space, args.random_archs, args.seed)
    uniforms = uniform_archs(space)
    every = {a.hash: a for a in [*randoms, *uniforms, min_arch(space), max_arch(space)]}
    latency = {h: predict(table, a).latency_ms for h, a in every.items()}

    def accuracy(split: str, archs: list[Arch]) -> dict[str, float]:
        return ranks.shard_map([a.hash for a in archs], lambda h: evaluate_arch(
            checkpoint.supernet, every[h], data, split, 500, args.eval_limit).top1)

    holdout = accuracy("holdout", randoms)
    test = accuracy("test", list(every.values()))
    chosen = spread(randoms, latency, args.alone)
    reused = earlier_alone(args, space)
    alone = reused | ranks.shard_map([a.hash for a in chosen if a.hash not in reused],
                                     lambda h: train_alone(args, every[h], data))
    h, t = [holdout[a.hash] for a in randoms], [test[a.hash] for a in randoms]
    inherited, trained = [test[a.hash] for a in chosen], [alone[a.hash] for a in chosen]
    row = {a.hash: {"arch": a.to_dict(), "predicted_ms": latency[a.hash]} for a in every.values()}
    return {
        "command": " ".join(sys.argv), "supernet": str(checkpoint.path), "table": str(table.path), "space": space.name,
        "eval_limit": args.eval_limit, "seconds": time.perf_counter() - t0, "ranks": ranks.world,
        "largest": {"hash": max_arch(space).hash, "test_top1": test[max_arch(space).hash],
                    "predicted_ms": latency[max_arch(space).hash]},
        "smallest": {"hash": min_arch(space).hash, "test_top1": test[min_arch(space).hash],
                     "predicted_ms": latency[min_arch(space).hash]},
        "random": {"archs": len(randoms), "holdout_test_kendall_tau": kendall_tau(h, t),
                   "holdout_test_spearman": spearman(h, t),
                   "rows": [{**row[a.hash], "hash": a.hash, "holdout_top1": holdout[a.hash],
                             "test_top1": test[a.hash]} for a in randoms]},
        "alone": {"archs": len(chosen), "epochs": args.alone_epochs, "lr": args.alone_lr, "seed": args.seed,
                  "taken_from": str(args.alone_from) if reused else None,
                  "taken": sorted(a.hash for a in chosen if a.hash in reused),
                  "inherited_alone_kendall_tau": kendall_tau(inherited, trained) if len(chosen) > 1 else None,
                  "holdout_alone_kendall_tau": (kendall_tau([holdout[a.hash] for a in chosen], trained)
                                                if len(chosen) > 1 else None),
                  "rows": [{**row[a.hash], "hash": a.hash, "inherited_test_top1": test[a.hash],
                            "holdout_top1": holdout[a.hash], "alone_test_top1": alone[a.hash]} for a in chosen]},
        "uniform": [{**row[a.hash], "hash": a.hash, "test_top1": test[a.hash]} for a in uniforms],
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Test top-1 against predicted latency: the uniform archs, the random archs, the smallest and the largest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    u, r = report["uniform"], report["random"]["rows"]
    ax.scatter([x["predicted_ms"] for x in r], [100 * x["test_top1"] for x in r], s=14, color="0.6",
               label=f"{len(r)} random archs")
    ax.scatter([x["predicted_ms"] for x in u], [100 * x["test_top1"] for x in u], s=14, color="tab:blue",
               label=f"{len(u)} uniform archs")
    front = sorted((x["predicted_ms"], 100 * x["test_top1"]) for x in u)
    best = [max(y for _, y in front[:i + 1]) for i in range(len(front))]
    ax.step([x for x, _ in front], best, where="post", color="tab:blue", linewidth=1,
            label="best uniform arch at most this latency")
    for key, color in (("smallest", "tab:red"), ("largest", "tab:green")):
        ax.scatter([report[key]["predicted_ms"]], [100 * report[key]["test_top1"]], s=60, marker="*", color=color,
                   label=f"{key} ({100 * report[key]['test_top1']:.2f}%)", zorder=3)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("test top-1 (%), inherited weights")
    ax.set_title(f"{report['space']}: accuracy over the latency range")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    """The report's figures as Markdown (top-1 in %)."""
    r, a = report["random"], report["alone"]
    big, small = report["largest"], report["smallest"]
    lines = [f"Space `{report['space']}`, supernet `{report['supernet']}`, table `{report['table']}`. "
             f"Command: `{report['command']}` ({report['seconds'] / 60:.0f} min on {report['ranks']} process(es)).",
             "",
             f"- largest {100 * big['test_top1']:.2f}% at {big['predicted_ms']:.4g} ms, smallest "
             f"{100 * small['test_top1']:.2f}% at {small['predicted_ms']:.4g} ms (test, inherited): "
             f"{100 * (big['test_top1'] - small['test_top1']):.2f} points apart",
             f"- {r['archs']} random archs, hold-out against test top-1: Kendall tau "
             f"{r['holdout_test_kendall_tau']:+.3f}, Spearman {r['holdout_test_spearman']:+.3f}",
             (f"- {a['archs']} archs spread over the latency range, inherited test top-1 against trained alone for "
              f"{a['epochs']} epochs: Kendall tau {a['inherited_alone_kendall_tau']:+.3f} (inherited hold-out "
              f"against alone: {a['holdout_alone_kendall_tau']:+.3f})"
              + (f"; the trained-alone results of {len(a['taken'])} of them are taken from `{a['taken_from']}`"
                 if a.get("taken") else "")) if a["inherited_alone_kendall_tau"] is not None
             else "- no archs trained alone (`--alone` below 2)", "",
             "| arch | predicted ms | inherited hold-out | inherited test | trained alone, test |",
             "|---|---|---|---|---|"]
    for x in a["rows"]:
        lines.append(f"| `{x['hash']}` | {x['predicted_ms']:.4f} | {100 * x['holdout_top1']:.2f} "
                     f"| {100 * x['inherited_test_top1']:.2f} | {100 * x['alone_test_top1']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="fmnist-demo", help="Checkpoint file or fmnist-demo.")
    parser.add_argument("--profile", required=True, type=Path, help="Latency table of the supernet's space.")
    parser.add_argument("--data", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
    parser.add_argument("--out", required=True, type=Path, help="Directory for the report and the trained-alone runs.")
    parser.add_argument("--random-archs", type=int, default=50, help="Random archs for the hold-out/test tau.")
    parser.add_argument("--alone", type=int, default=8,
                        help="Archs trained alone (spread over the latency range; below 2: none, no tau).")
    parser.add_argument("--alone-epochs", type=int, default=3, help="Epochs of each trained-alone run.")
    parser.add_argument("--alone-lr", type=float, default=2e-3, help="Peak learning rate of the trained-alone runs.")
    parser.add_argument("--alone-steps-per-epoch", type=int, default=None,
                        help="Cap the trained-alone epochs (smoke runs).")
    parser.add_argument("--alone-from", type=Path, default=None,
                        help="An earlier report.json of the same space whose trained-alone results are reused.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random archs and of the trained-alone runs.")
    parser.add_argument("--eval-limit", type=int, default=None, help="First N images of each split (smoke runs).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process.")
    args = parser.parse_args()
    return ranked_report(args, measure, markdown, lambda report: plot(report, args.out / "curve.png"))


def ranked_report(args: argparse.Namespace, measure: Callable[[argparse.Namespace, Ranks], dict[str, Any]],
                  markdown: Callable[[dict[str, Any]], str],
                  also: Callable[[dict[str, Any]], None] | None = None) -> int:
    """``measure(args, ranks)`` on every rank of this launch, then on rank 0 ``OUT/report.json``,
    ``OUT/report.md`` (and ``also(report)``) and the Markdown printed; a :class:`VitresError` is one error line."""
    torch.set_num_threads(args.threads)
    try:
        with join_ranks("cpu") as ranks:
            report = measure(args, ranks)
    except VitresError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if ranks.main:
        atomic_write_json(args.out / "report.json", report)
        atomic_write_text(args.out / "report.md", markdown(report))
        if also is not None:
            also(report)
        print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
