"""Does the search pay off? The searched arch against two baselines under the same latency budgets (issue 5, §7).

For three budgets spread over the latency table's achievable range (by default at 25%, 50% and 75% of
``fastest .. slowest``) this compares, on hold-out and on test top-1:

* **search**: the arch ``vitres-deploy search`` picks (one search over the three budgets, evaluations shared);
* **uniform**: the best, by hold-out top-1, of the *stage-uniform* archs under B: the same choice (heads,
  MLP width) in every block of a stage, with each stage's width and depth free (144^3 = 3.0M archs for
  ``fmnist``). All of them are enumerated with their predicted latency and MACs (vectorised); of those whose
  predicted latency is <= B, the ``--uniform-candidates`` with the most MACs are evaluated, together with
  every *globally* uniform arch under B (one position of each choice list in every stage);
* **uniform at the search's limit**: the same, under the limit the search itself keeps, ``B / (1 + margin)``
  with the table's validated margin (a like-for-like baseline: what a user who trusts the tool's latency
  promise could pick among the uniform archs; the issue's target is judged against the uniform arch under B);
* **random**: the median of 50 archs sampled uniformly per choice (seeded) whose predicted latency is <= B.

Selection uses the hold-out split only; the test split is evaluated for the chosen archs to report.
The search must beat both baselines at every budget; the margins are reported, and for search against the
best uniform arch also the paired difference over the same images with its 95% interval (how far apart
two sub-networks of one supernet really are; ``--paired-only`` recomputes it for a finished report).
It also reports how well the hold-out order of the random archs carries over to test (Kendall tau and
Spearman between their hold-out and test top-1): the premise of any search on the hold-out split.

Run (the lead's numbers in docs/ come from the shipped supernet and table)::

    .venv/bin/python benchmarks/search_vs_baselines.py --supernet fmnist-demo \\
        --profile profiles/<device>/fmnist-ort-cpu-fp32-b1.json --preset demo --out runs/search-vs-baselines

On several cores run it under ``torchrun`` (one torch thread per process; every evaluation of the search
and of the baselines is dealt out to the ranks, the results are the same as one process's)::

    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 benchmarks/search_vs_baselines.py ...

It writes ``OUT/report.json`` and ``OUT/report.md`` and keeps the search in ``OUT/search`` (``--resume``
continues an interrupted run).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitres_deploy.arch import Arch, BlockArch, StageArch, sample_arch
from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.cli.output import print_table
from vitres_deploy.data import ImageData, open_checkpoint_data
from vitres_deploy.distributed import Ranks, join_ranks
from vitres_deploy.errors import VitresError
from vitres_deploy.evaluate import evaluate_arch
from vitres_deploy.files import atomic_write_json, atomic_write_text
from vitres_deploy.latency import EntrySpec, LatencyTable, ProfileSettings, latency_range
from vitres_deploy.latency.drift import check_drift
from vitres_deploy.latency.metrics import kendall_tau, spearman
from vitres_deploy.latency.validate import measure_networks
from vitres_deploy.macs import block_macs, reduction_macs
from vitres_deploy.search import PRESETS, CostModel, Fitness, SearchOptions, plan_search, run_search
from vitres_deploy.space import SearchSpace


def stage_uniform_under(table: LatencyTable, budget_ms: float, k: int) -> list[Arch]:
    """The ``k`` stage-uniform archs with the most MACs whose predicted latency is <= ``budget_ms``."""
    space = table.space
    per_call, corr = table.correction.per_call_ms, table.correction

    def adj(kind: str, stage: int, dims: tuple[int, ...]) -> float:
        return table.entries[EntrySpec(kind, stage, dims).key].latency_ms - per_call

    options, lat, macs = [], [], []
    for i, st in enumerate(space.stages):
        opts = list(itertools.product(st.embed_dims, st.depths, st.heads, st.mlp_hidden))
        options.append(opts)
        n = space.tokens[i]
        lat.append(np.array([d * adj("block", i + 1, (e, h, m)) for e, d, h, m in opts]))
        macs.append(np.array([d * block_macs(n, e, h, st.head_dim, m) for e, d, h, m in opts], dtype=np.float64))
    first, last = options[0], options[-1]
    total_lat = (np.array([adj("stem", 0, (o[0],)) for o in first]) + lat[0]).reshape(-1)
    total_macs = macs[0].copy()
    for i in range(1, len(space.stages)):
        red = np.array([[adj("reduction", i + 1, (a[0], b[0])) for b in options[i]] for a in options[i - 1]])
        red_macs = np.array([[reduction_macs(a[0], b[0], space.grids[i]) for b in options[i]]
                             for a in options[i - 1]], dtype=np.float64)
        prev = total_lat.reshape(-1, len(options[i - 1]))
        total_lat = (prev[:, :, None] + red[None] + lat[i][None, None, :]).reshape(-1)
        total_macs = (total_macs.reshape(-1, len(options[i - 1]))[:, :, None] + red_macs[None]
                      + macs[i][None, None, :]).reshape(-1)
    total_lat = total_lat.reshape(-1, len(last)) + np.array([adj("head", len(space.stages), (o[0],)) for o in last])
    predicted = corr.scale * total_lat.reshape(-1) + corr.offset_ms
    feasible = np.flatnonzero(predicted <= budget_ms)
    chosen = feasible[np.argsort(-total_macs[feasible], kind="stable")[:k]]
    sizes = [len(o) for o in options]
    archs = []
    for flat in chosen:
        idx = np.unravel_index(int(flat), sizes)
        archs.append(Arch(space.family, tuple(
            StageArch(e, (BlockArch(h, m),) * d) for e, d, h, m in (options[s][j] for s, j in enumerate(idx)))))
    return archs


def uniform_archs(space: SearchSpace) -> list[Arch]:
    """Every uniform arch: one position in each choice list, used in every block of every stage."""
    lengths = [min(len(getattr(st, name)) for st in space.stages) for name in ("embed_dims", "depths", "heads",
                                                                                "mlp_hidden")]
    out = []
    for e, d, h, m in itertools.product(*(range(n) for n in lengths)):
        out.append(Arch(space.family, tuple(
            StageArch(st.embed_dims[e], (BlockArch(st.heads[h], st.mlp_hidden[m]),) * st.depths[d])
            for st in space.stages)))
    return out


def random_under(space: SearchSpace, cost: CostModel, budget_ms: float, n: int, seed: int,
                 tries: int = 200_000) -> list[Arch]:
    """``n`` distinct archs sampled uniformly per choice whose predicted latency is <= ``budget_ms``."""
    rng, found = random.Random(f"random-baseline/{seed}/{budget_ms!r}"), {}
    for _ in range(tries):
        arch = sample_arch(space, rng)
        if arch.hash not in found and cost(arch).latency_ms <= budget_ms:
            found[arch.hash] = arch
            if len(found) == n:
                break
    return list(found.values())


class TestAccuracy:
    """Test-split top-1 of archs, cached by hash, sharded like :class:`Fitness` (reported only, never to choose)."""

    def __init__(self, fitness: Fitness, data: ImageData, limit: int | None) -> None:
        self.fitness, self.data, self.limit, self.cache = fitness, data, limit, {}

    def evaluate(self, archs: list[Arch]) -> list[float]:
        """Test top-1 of each arch (in order); uncached archs are dealt out to the ranks."""
        by_hash = {a.hash: a for a in archs}
        todo = [h for h in by_hash if h not in self.cache]
        self.cache.update(self.fitness.ranks.shard_map(todo, lambda h: evaluate_arch(
            self.fitness.supernet, by_hash[h], self.data, "test", self.fitness.batch_size, self.limit).top1))
        return [self.cache[a.hash] for a in archs]


@torch.inference_mode()
def correct_per_image(supernet: Any, arch: Arch, data: ImageData, split: str, limit: int | None) -> np.ndarray:
    """1 where the extracted sub-network's top-1 is right, per image of ``split`` (in the split's order)."""
    model = supernet.extract(arch).eval()
    return np.concatenate([(model(x).argmax(1) == y).numpy() for x, y in data.eval_batches(split, 500, limit)])


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Top-1 of ``a`` minus ``b`` on the same images, with a 95% interval of the mean paired difference
    (normal approximation) and how many images only one of the two gets right."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mean, half = float(d.mean()), 1.96 * float(d.std(ddof=1)) / float(np.sqrt(d.size))
    return {"diff": mean, "ci95": [mean - half, mean + half], "images": int(d.size),
            "only_first_right": int((d > 0).sum()), "only_second_right": int((d < 0).sum())}


def add_paired(report: dict[str, Any], supernet: Any, data: ImageData, limit: int | None) -> None:
    """Add, per budget, the paired differences on hold-out and test of the searched arch minus the best uniform
    arch (``paired_vs_uniform``; under the search's own limit: ``paired_vs_uniform_at_limit``), minus the random
    arch of median test top-1 (``paired_vs_random``) and minus the MACs-constrained pick (``paired_vs_macs``)."""
    for row in report["budgets"]:
        searched = Arch.from_dict(row["search"]["arch"])
        others = {"paired_vs_uniform": row["uniform"]["arch"], "paired_vs_random": row["random"]["median_test_arch"],
                  "paired_vs_macs": row["macs_search"]["arch"]}
        if "uniform_at_limit" in row:  # reports written before it have no such baseline
            others["paired_vs_uniform_at_limit"] = row["uniform_at_limit"]["arch"]
        for key, other in others.items():
            row[key] = {split: paired_difference(correct_per_image(supernet, searched, data, split, limit),
                                                 correct_per_image(supernet, Arch.from_dict(other), data, split, limit))
                        for split in ("holdout", "test")}


def macs_search(args: argparse.Namespace, checkpoint: Any, table: LatencyTable, data: ImageData, ranks: Ranks,
                config: Any, index: int, max_macs: int) -> Any:
    """The arch a user who only knows MACs gets: the same search under a MACs cap (the best uniform arch's MACs)
    and no latency limit (the window spans the whole table, no margin); its best record."""
    span = latency_range(table)
    options = SearchOptions(budgets_ms=(span.slowest_ms,), out_dir=args.out / f"search-macs-{index}", evolution=config,
                            alpha=span.fastest_ms / span.slowest_ms, max_macs=max_macs, margin=0.0,
                            resume=args.resume, eval_limit=args.eval_limit, drift_check=False)
    return run_search(plan_search(checkpoint, table, options, ranks), data, ranks=ranks, progress=ranks.main).bests[0]


def add_measured(report: dict[str, Any], table: LatencyTable, runs: int) -> None:
    """Time the searched, the best uniform and the MACs-constrained arch of every budget end to end as the table
    was measured (all of them interleaved, ``runs`` independent runs) and add ``measured_ms`` to each."""
    keys = [k for k in ("search", "uniform", "uniform_at_limit", "macs_search") if k in report["budgets"][0]]
    archs = [Arch.from_dict(row[k]["arch"]) for row in report["budgets"] for k in keys]
    drift = check_drift(table)
    measured = measure_networks(table, archs, ProfileSettings.from_table(table), progress=True, runs=runs)
    values = iter(m.latency_ms for m in measured)
    for row in report["budgets"]:
        for k in keys:
            row[k]["measured_ms"] = next(values)
        m = row["macs_search"]
        row["macs_pick_over_budget_or_lower"] = (m["measured_ms"] > row["budget_ms"]
                                                 or m["test_top1"] < row["search"]["test_top1"])
    report["measured"] = {"runs": runs, "protocol": table.meta.protocol.to_dict(), "drift_ratio": drift.ratio,
                          "drift_ci95": [drift.low, drift.high]}


def compare(args: argparse.Namespace, ranks: Ranks) -> dict[str, Any]:
    """Run the search and both baselines (evaluations dealt out to ``ranks``); return the report."""
    t0 = time.perf_counter()
    checkpoint = load_checkpoint(args.supernet)
    data = open_checkpoint_data(checkpoint, args.data)
    table = LatencyTable.load(args.profile)
    space = checkpoint.space
    cost = CostModel(table, space)
    achievable = latency_range(table)
    if args.budgets_ms:
        budgets = [float(b) for b in args.budgets_ms.split(",")]
    else:
        budgets = [achievable.fastest_ms + float(f) * (achievable.slowest_ms - achievable.fastest_ms)
                   for f in args.fractions.split(",")]
    overrides = {k: getattr(args, k) for k in ("population", "iterations", "parents", "mutations", "crossovers")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(PRESETS[args.preset], seed=args.seed, **overrides)
    # no drift check here: this compares accuracy under the table's budgets; --measure times the picks, beside a
    # drift check of the table at that time
    options = SearchOptions(budgets_ms=tuple(budgets), out_dir=args.out / "search", evolution=config, alpha=args.alpha,
                            resume=args.resume, eval_limit=args.eval_limit, drift_check=False)
    result = run_search(plan_search(checkpoint, table, options, ranks), data, ranks=ranks, progress=ranks.main)
    fitness = Fitness(checkpoint.supernet, data, ranks=ranks, limit=args.eval_limit)
    test = TestAccuracy(fitness, data, args.eval_limit)

    uniform = uniform_archs(space)

    def uniform_under(limit_ms: float) -> list[Arch]:
        found = {a.hash: a for a in uniform if cost(a).latency_ms <= limit_ms}
        found.update((a.hash, a) for a in stage_uniform_under(table, limit_ms, args.uniform_candidates))
        return [a for a in found.values() if cost(a).latency_ms <= limit_ms]

    candidates, at_limit = [], []
    for c in result.constraints:
        under, limited = uniform_under(c.budget_ms), uniform_under(c.limit_ms)
        if not under or not limited:
            raise VitresError(f"no uniform arch is under {c.limit_ms:g} ms (the search's limit for "
                              f"{c.budget_ms:g} ms): choose a higher budget")
        candidates.append((under, random_under(space, cost, c.budget_ms, args.random_archs, args.seed)))
        at_limit.append(limited)
    # one sharded pass over every baseline arch of every budget, then the test split of what is reported
    fitness.evaluate([a for under, randoms in candidates for a in under + randoms]
                     + [a for limited in at_limit for a in limited])

    def holdout(arch: Arch) -> float:
        return fitness.evaluate([arch])[0].top1

    def best_of(archs: list[Arch]) -> Arch:
        return max(archs, key=lambda a: (holdout(a), -cost(a).latency_ms))

    chosen = [best_of(under) for under, _ in candidates]
    chosen_at_limit = [best_of(limited) for limited in at_limit]
    macs_picks = [macs_search(args, checkpoint, table, data, ranks, config, i, cost(u).macs)
                  for i, u in enumerate(chosen)]
    test.evaluate([b.arch for b in result.bests] + chosen + chosen_at_limit + [b.arch for b in macs_picks]
                  + [a for _, randoms in candidates for a in randoms])
    rows = []
    for c, best, best_uniform, limited_uniform, limited, macs_pick, (under, randoms) in zip(
            result.constraints, result.bests, chosen, chosen_at_limit, at_limit, macs_picks, candidates):
        random_holdout = [holdout(a) for a in randoms]
        random_test = test.evaluate(randoms)
        median_random = sorted(randoms, key=lambda a: (test.evaluate([a])[0], a.hash))[len(randoms) // 2]
        row = {
            "budget_ms": c.budget_ms,
            "search": {"hash": best.hash, "latency_ms": best.latency_ms, "holdout_top1": best.holdout_top1,
                       "test_top1": test.evaluate([best.arch])[0], "arch": best.arch.to_dict()},
            "uniform": {"hash": best_uniform.hash, "latency_ms": cost(best_uniform).latency_ms,
                        "holdout_top1": holdout(best_uniform), "test_top1": test.evaluate([best_uniform])[0],
                        "candidates_under_budget": len(under), "arch": best_uniform.to_dict()},
            "uniform_at_limit": {"hash": limited_uniform.hash, "limit_ms": c.limit_ms,
                                 "latency_ms": cost(limited_uniform).latency_ms,
                                 "holdout_top1": holdout(limited_uniform),
                                 "test_top1": test.evaluate([limited_uniform])[0],
                                 "candidates_under_limit": len(limited), "arch": limited_uniform.to_dict()},
            "random": {"archs": len(randoms), "median_holdout_top1": statistics.median(random_holdout),
                       "median_test_top1": statistics.median(random_test),
                       "holdout_top1_range": [min(random_holdout), max(random_holdout)],
                       "test_top1_range": [min(random_test), max(random_test)],
                       # does the hold-out order of these archs carry over to test? (what a search relies on)
                       "holdout_test_kendall_tau": kendall_tau(random_holdout, random_test),
                       "holdout_test_spearman": spearman(random_holdout, random_test),
                       "holdout_top1": random_holdout, "test_top1": random_test,
                       "median_test_arch": median_random.to_dict()},
            # the paper's constraint: searched under a MACs cap equal to the best uniform arch's MACs, no latency
            "macs_search": {"hash": macs_pick.hash, "max_macs": cost(best_uniform).macs,
                            "macs": cost(macs_pick.arch).macs, "latency_ms": cost(macs_pick.arch).latency_ms,
                            "holdout_top1": macs_pick.holdout_top1, "test_top1": test.evaluate([macs_pick.arch])[0],
                            "arch": macs_pick.arch.to_dict()},
        }
        s, u, r = row["search"], row["uniform"], row["random"]
        row["margins"] = {
            "vs_uniform_holdout": s["holdout_top1"] - u["holdout_top1"],
            "vs_uniform_test": s["test_top1"] - u["test_top1"],
            "vs_random_holdout": s["holdout_top1"] - r["median_holdout_top1"],
            "vs_random_test": s["test_top1"] - r["median_test_top1"],
        }
        row["search_beats_both"] = all(v > 0 for v in row["margins"].values())
        m = row["macs_search"]
        row["macs_pick_over_budget_or_lower"] = m["latency_ms"] > c.budget_ms or m["test_top1"] < s["test_top1"]
        rows.append(row)
    report = {
        "command": " ".join(sys.argv),
        "supernet": str(checkpoint.path), "table": str(table.path), "space": space.name,
        "device": table.meta.device, "backend": table.meta.backend,
        "achievable_ms": [achievable.fastest_ms, achievable.slowest_ms],
        "preset": args.preset, "evolution": dataclasses.asdict(config), "alpha": args.alpha,
        "search_evaluations": len(result.records), "eval_limit": args.eval_limit,
        "holdout_images": result.records[0].images, "torch_threads": torch.get_num_threads(), "ranks": ranks.world,
        "seconds": time.perf_counter() - t0, "budgets": rows,
        "search_beats_both_everywhere": all(r["search_beats_both"] for r in rows),
    }
    if ranks.main:
        add_paired(report, checkpoint.supernet, data, args.eval_limit)
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _standing(paired: dict[str, Any]) -> str:
    """``above``, ``below`` or ``level`` by the paired 95% interval of a test difference."""
    lo, hi = paired["ci95"]
    return "above" if lo > 0 else "below" if hi < 0 else "level"


def _verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The search against each baseline on test, by the paired 95% intervals, budget by budget."""
    vs_random = [_standing(r["paired_vs_random"]["test"]) for r in rows]
    out = [f"above the random median with the interval above 0 at every budget: "
           f"{'met' if all(v == 'above' for v in vs_random) else 'not met'} ({', '.join(vs_random)})"]
    for key, what in (("paired_vs_uniform", "the best uniform arch"),
                      ("paired_vs_uniform_at_limit", "the best uniform arch under the search's own limit (reported, "
                                                     "not the issue's target)")):
        if all(key in r for r in rows):
            vs = [_standing(r[key]["test"]) for r in rows]
            out.append(f"at least level with {what} everywhere and above it somewhere: "
                       f"{'met' if 'below' not in vs and 'above' in vs else 'not met'} ({', '.join(vs)})")
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (top-1 in %, margins in percentage points)."""
    lines = [f"Space `{report['space']}`, table `{report['table']}` ({report['backend']} on {report['device']}), "
             f"supernet `{report['supernet']}`, preset `{report['preset']}` ({report['search_evaluations']} "
             f"evaluations), {report['holdout_images']} hold-out images. Command: `{report['command']}`", "",
             "| budget (ms) | search hold-out / test | best uniform hold-out / test | median random hold-out / test "
             "| margin vs uniform (hold-out / test) | margin vs random (hold-out / test) |",
             "|---|---|---|---|---|---|"]
    for r in report["budgets"]:
        s, u, q, m = r["search"], r["uniform"], r["random"], r["margins"]
        lines.append(f"| {r['budget_ms']:.4g} | {_pct(s['holdout_top1'])} / {_pct(s['test_top1'])} "
                     f"| {_pct(u['holdout_top1'])} / {_pct(u['test_top1'])} "
                     f"| {_pct(q['median_holdout_top1'])} / {_pct(q['median_test_top1'])} "
                     f"| {100 * m['vs_uniform_holdout']:+.2f} / {100 * m['vs_uniform_test']:+.2f} "
                     f"| {100 * m['vs_random_holdout']:+.2f} / {100 * m['vs_random_test']:+.2f} |")
    verdict = "beats" if report["search_beats_both_everywhere"] else "does NOT beat"
    lines += ["", f"The search {verdict} both baselines at every budget."]
    if all("uniform_at_limit" in r for r in report["budgets"]):
        lines += ["", "The search keeps its predicted latency under `B / (1 + margin)` (the table's validated margin); "
                  "the best uniform arch under that same limit:", "",
                  "| budget (ms) | search's limit (ms) | uniform archs under it | best: predicted ms, hold-out / test "
                  "| best uniform under B: predicted ms |", "|---|---|---|---|---|"]
        for r in report["budgets"]:
            u, w = r["uniform_at_limit"], r["uniform"]
            lines.append(f"| {r['budget_ms']:.4g} | {u['limit_ms']:.4f} | {u['candidates_under_limit']} "
                         f"| {u['latency_ms']:.4f}, {_pct(u['holdout_top1'])} / {_pct(u['test_top1'])} "
                         f"| {w['latency_ms']:.4f} |")
    if all("holdout_test_kendall_tau" in r["random"] for r in report["budgets"]):
        lines += ["", "Does the hold-out order carry over to test? The random archs of each budget, hold-out "
                  "against test top-1:", "", "| budget (ms) | archs | hold-out range | test range | Kendall tau "
                  "| Spearman |", "|---|---|---|---|---|---|"]
        for r in report["budgets"]:
            q = r["random"]
            (hl, hh), (tl, th) = q["holdout_top1_range"], q["test_top1_range"]
            lines.append(f"| {r['budget_ms']:.4g} | {q['archs']} | {_pct(hl)}–{_pct(hh)} | {_pct(tl)}–{_pct(th)} "
                         f"| {q['holdout_test_kendall_tau']:+.2f} | {q['holdout_test_spearman']:+.2f} |")
    for key, what in (("paired_vs_uniform", "best uniform"),
                      ("paired_vs_uniform_at_limit", "the best uniform arch under the search's own limit"),
                      ("paired_vs_random", "the random arch of median test top-1"),
                      ("paired_vs_macs", "the MACs-constrained pick")):
        if not all(key in r for r in report["budgets"]):
            continue
        lines += ["", f"Search minus {what}, paired over the same images (points; 95% interval of the mean "
                  "paired difference; images only the searched / only the other arch gets right):", "",
                  "| budget (ms) | hold-out | test |", "|---|---|---|"]
        for r in report["budgets"]:
            cells = []
            for split in ("holdout", "test"):
                p = r[key][split]
                lo, hi = p["ci95"]
                cells.append(f"{100 * p['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] "
                             f"({p['only_first_right']} / {p['only_second_right']})")
            lines.append(f"| {r['budget_ms']:.4g} | {cells[0]} | {cells[1]} |")
    if all(k in r for r in report["budgets"] for k in ("paired_vs_uniform", "paired_vs_random")):
        lines += ["", "On test, against the issue's targets: " + "; ".join(_verdicts(report["budgets"])) + "."]
    if all("macs_search" in r for r in report["budgets"]):
        timed = all("measured_ms" in r["macs_search"] for r in report["budgets"])
        lines += ["", "The paper's constraint: the same search under a MACs cap equal to the best uniform arch's MACs "
                  "and no latency limit" + (f" (latencies measured end to end, {report['measured']['runs']} runs, the "
                                            "table's protocol and statistic; the table's drift check at that time: "
                                            f"{report['measured']['drift_ratio']:.3f}x)" if timed
                                            else " (predicted latencies)")
                  + ":", "", "| budget (ms) | MACs cap | MACs pick: MACs, ms, hold-out / test | searched: ms, test "
                  "| best uniform: ms | best uniform at the search's limit: ms | MACs pick over the budget or lower on "
                  "test |", "|---|---|---|---|---|---|---|"]
        for r in report["budgets"]:
            m, s, u = r["macs_search"], r["search"], r["uniform"]
            ms = "measured_ms" if timed else "latency_ms"
            limited = r.get("uniform_at_limit", {}).get(ms)
            lines.append(f"| {r['budget_ms']:.4g} | {m['max_macs'] / 1e6:.2f}M | {m['macs'] / 1e6:.2f}M, "
                         f"{m[ms]:.4f}, {_pct(m['holdout_top1'])} / {_pct(m['test_top1'])} | {s[ms]:.4f}, "
                         f"{_pct(s['test_top1'])} | {u[ms]:.4f} | {'' if limited is None else f'{limited:.4f}'} | "
                         f"{'yes' if r['macs_pick_over_budget_or_lower'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", default="fmnist-demo", help="Checkpoint file or fmnist-demo.")
    parser.add_argument("--profile", required=True, type=Path, help="Latency table of the supernet's space.")
    parser.add_argument("--data", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
    parser.add_argument("--out", required=True, type=Path, help="Directory for the search and the report.")
    parser.add_argument("--fractions", default="0.25,0.5,0.75",
                        help="Budgets as fractions of the table's fastest..slowest range.")
    parser.add_argument("--budgets-ms", default=None, help="Explicit budgets in ms (overrides --fractions).")
    parser.add_argument("--preset", default="demo", choices=list(PRESETS), help="Evolution preset of the search.")
    for name in ("population", "iterations", "parents", "mutations", "crossovers"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"Override the preset's {name}.")
    parser.add_argument("--alpha", type=float, default=0.9, help="Latency window [alpha*B, B] of the search.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the search and of the random baseline.")
    parser.add_argument("--random-archs", type=int, default=50, help="Random archs per budget.")
    parser.add_argument("--uniform-candidates", type=int, default=24,
                        help="Stage-uniform archs under each budget evaluated (those with the most MACs).")
    parser.add_argument("--eval-limit", type=int, default=None, help="First N images of each split (smoke runs).")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (more can be slower when shared).")
    parser.add_argument("--resume", action="store_true", help="Continue the search in OUT/search.")
    parser.add_argument("--paired-only", action="store_true",
                        help="Only (re)compute the paired differences of OUT/report.json.")
    parser.add_argument("--measure", action="store_true",
                        help="Only time the chosen archs of OUT/report.json end to end (one process, idle machine).")
    parser.add_argument("--measure-runs", type=int, default=2, help="Independent timing runs of --measure.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.paired_only or args.measure:
        report = json.loads((args.out / "report.json").read_text())
        if args.measure:
            add_measured(report, LatencyTable.load(args.profile), args.measure_runs)
        else:
            checkpoint = load_checkpoint(args.supernet)
            add_paired(report, checkpoint.supernet, open_checkpoint_data(checkpoint, args.data), report["eval_limit"])
        atomic_write_json(args.out / "report.json", report)
        atomic_write_text(args.out / "report.md", markdown(report))
        print(markdown(report))
        return 0 if report["search_beats_both_everywhere"] else 1
    try:
        with join_ranks("cpu") as ranks:
            report = compare(args, ranks)
    except VitresError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if not ranks.main:
        return 0
    atomic_write_json(args.out / "report.json", report)
    atomic_write_text(args.out / "report.md", markdown(report))
    print_table("search vs baselines (top-1 %)", ["budget ms", "search ho/test", "uniform ho/test",
                                                  "random median ho/test", "beats both"],
                [(f"{r['budget_ms']:.4g}", f"{_pct(r['search']['holdout_top1'])}/{_pct(r['search']['test_top1'])}",
                  f"{_pct(r['uniform']['holdout_top1'])}/{_pct(r['uniform']['test_top1'])}",
                  f"{_pct(r['random']['median_holdout_top1'])}/{_pct(r['random']['median_test_top1'])}",
                  "yes" if r["search_beats_both"] else "NO") for r in report["budgets"]])
    print(f"report: {args.out / 'report.md'} ({report['seconds']:.0f} s)")
    return 0 if report["search_beats_both_everywhere"] else 1


if __name__ == "__main__":
    sys.exit(main())
