"""The evolutionary search of ViT-ResNAS (Liao et al., 2021) under one or several latency budgets.

Per budget B the search keeps to archs whose predicted latency is in ``[alpha*B, B]`` (and under the
optional MAC/parameter caps). It starts from a random population, then each iteration takes the top
``parents`` archs (hold-out top-1) among *everything evaluated so far* that satisfy the budget and
makes ``mutations`` mutants (per-gene probability ``mutation_prob``) and ``crossovers`` uniform
crossovers of them; children that break the constraint or repeat an evaluated arch are re-drawn a
bounded number of times. Defaults are the paper's; ``PRESETS["demo"]`` is sized for a CPU.

Several budgets run as one search: each budget draws its own candidates, every evaluation is shared
(an arch evaluated for one budget is a parent candidate of every budget whose window holds it).

Determinism and resuming: the random stream of each (iteration, budget) is seeded from
``(seed, iteration, budget index)``, and what an iteration draws depends only on the archs evaluated
before it. ``--resume`` therefore replays the search from the start, taking accuracies from
``evaluated.jsonl`` instead of evaluating, and continues where the file ends: the result is the same
as an uninterrupted run. Under ``torchrun`` every rank draws the same candidates and evaluation is
sharded across ranks (:class:`~vitres_deploy.search.fitness.Fitness`), again with the same result.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..arch import Arch, sample_arch
from ..checkpoint import Checkpoint
from ..data import ImageData
from ..distributed import Ranks
from ..errors import BudgetError, VitresError
from ..latency import LatencyRange, LatencyTable
from ..progress import progress_bar
from ..seeding import stream_rng
from .constraints import Constraint, CostModel, Metrics, check_budgets, repair
from .fitness import Fitness
from .genome import GeneLayout, crossover, mutate
from .outputs import best_document, supernet_identity, table_identity, write_outputs
from .records import EVALUATED, Record, append_record, open_run_dir


@dataclass(frozen=True)
class EvolutionConfig:
    """Settings of the evolution; every one is a command-line flag."""

    population: int = 500
    iterations: int = 20
    parents: int = 75
    mutations: int = 75
    crossovers: int = 75
    mutation_prob: float = 0.3
    seed: int = 0
    repair_steps: int = 100
    tries: int = 20

    def check(self) -> None:
        """Raise :class:`VitresError` naming the first setting out of range."""
        for name, low in (("population", 1), ("iterations", 0), ("parents", 1), ("mutations", 0),
                          ("crossovers", 0), ("repair_steps", 0), ("tries", 1)):
            if getattr(self, name) < low:
                raise VitresError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= {low}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise VitresError(f"--mutation-prob {self.mutation_prob} must be in [0, 1]")


#: ``paper``: the paper's settings (500 + 20 x 150 evaluations per budget). ``demo``: 20 + 3 x 16 = 68
#: evaluations, under 3 minutes for fmnist on one core of this project's 2-core CPU, where one evaluation
#: (the 6000 hold-out images through one sub-network, one thread) takes about 2.2 s.
PRESETS: dict[str, EvolutionConfig] = {
    "paper": EvolutionConfig(),
    "demo": EvolutionConfig(population=20, iterations=3, parents=8, mutations=8, crossovers=8),
}


@dataclass(frozen=True)
class Candidate:
    """An arch drawn for a budget, before evaluation."""

    arch: Arch
    metrics: Metrics
    iteration: int
    origin: str
    budget_ms: float


@dataclass
class SearchResult:
    """What a search found: per constraint the best record and its best-file document."""

    out_dir: Path
    constraints: list[Constraint]
    bests: list[Record]
    documents: list[dict[str, Any]]
    records: list[Record]
    new_evaluations: int
    seconds: float
    achievable: LatencyRange


def rank_key(record: Record) -> tuple[float, float, str]:
    """Order of preference: higher hold-out top-1, then lower latency, then hash (a total order)."""
    return (-record.holdout_top1, record.latency_ms, record.hash)


class _Evolution:
    """One search's state: the evaluated records in order, and how candidates are drawn."""

    def __init__(self, layout: GeneLayout, cost: CostModel, constraints: Sequence[Constraint],
                 config: EvolutionConfig) -> None:
        self.layout, self.cost, self.constraints, self.config = layout, cost, list(constraints), config
        self.records: list[Record] = []
        self.bests: list[Record | None] = [None] * len(self.constraints)

    def add(self, record: Record) -> None:
        """Take ``record`` into the state and the best-so-far of every constraint it satisfies."""
        self.records.append(record)
        for i, c in enumerate(self.constraints):
            best = self.bests[i]
            if c.satisfied(record.metrics) and (best is None or rank_key(record) < rank_key(best)):
                self.bests[i] = record

    def parents(self, c: Constraint) -> list[Record]:
        """The top ``parents`` records satisfying ``c`` among everything evaluated so far."""
        feasible = sorted((r for r in self.records if c.satisfied(r.metrics)), key=rank_key)
        return feasible[: self.config.parents]

    def draw(self, iteration: int) -> list[Candidate]:
        """The candidates of one iteration (0: the initial population), for every budget in turn."""
        taken = {r.hash for r in self.records}
        batch: list[Candidate] = []
        for i, c in enumerate(self.constraints):
            rng = stream_rng(self.config.seed, iteration, i)
            if iteration == 0:
                new = self._initial(c, rng, taken)
                if not new and not any(c.satisfied(x.metrics) for x in [*self.records, *batch]):
                    raise BudgetError(f"no architecture of space {self.cost.space.name!r} with {c.describe()} was "
                                      "found by repairing random ones: widen the window (--alpha) or loosen "
                                      "--max-macs/--max-params")
            else:
                new = self._children(c, iteration, rng, taken)
            batch += new
        return batch

    def _candidate(self, arch: Arch, c: Constraint, taken: set[str], iteration: int, origin: str) -> Candidate | None:
        metrics = self.cost(arch)
        if not c.satisfied(metrics) or arch.hash in taken:
            return None
        taken.add(arch.hash)
        return Candidate(arch, metrics, iteration, origin, c.budget_ms)

    def _initial(self, c: Constraint, rng: random.Random, taken: set[str]) -> list[Candidate]:
        """Random archs repaired into ``c``; gives up after ``10 * tries`` attempts in a row without a new one
        (a window holding fewer archs than the population) or ``population * tries`` in all."""
        cfg, out, last_new = self.config, [], -1
        for attempt in range(cfg.population * cfg.tries):
            if len(out) == cfg.population or attempt - last_new > 10 * cfg.tries:
                break
            arch = repair(sample_arch(self.cost.space, rng), c, self.cost, self.layout, rng, cfg.repair_steps)
            cand = None if arch is None else self._candidate(arch, c, taken, 0, "random")
            if cand is not None:
                out.append(cand)
                last_new = attempt
        return out

    def _children(self, c: Constraint, iteration: int, rng: random.Random, taken: set[str]) -> list[Candidate]:
        cfg, layout = self.config, self.layout
        genomes = [layout.encode(p.arch) for p in self.parents(c)]
        out: list[Candidate] = []
        for origin, wanted in (("mutation", cfg.mutations), ("crossover", cfg.crossovers)):
            if not genomes or (origin == "crossover" and len(genomes) < 2):
                continue
            made = 0
            for _ in range(wanted * cfg.tries):
                if made == wanted:
                    break
                if origin == "mutation":
                    genome = mutate(rng.choice(genomes), layout, rng, cfg.mutation_prob)
                else:
                    a, b = rng.sample(genomes, 2)
                    genome = crossover(a, b, rng)
                cand = self._candidate(layout.decode(genome), c, taken, iteration, origin)
                if cand is not None:
                    out.append(cand)
                    made += 1
        return out


def run_search(checkpoint: Checkpoint, data: ImageData, table: LatencyTable, budgets_ms: Sequence[float],
               out_dir: str | Path, *, config: EvolutionConfig | None = None, alpha: float = 0.9,
               max_macs: int | None = None, max_params: int | None = None, resume: bool = False,
               eval_limit: int | None = None, batch_size: int = 500, ranks: Ranks | None = None,
               progress: bool = False, on_record: Callable[[Record], None] | None = None) -> SearchResult:
    """Search the most accurate sub-network of ``checkpoint`` under each budget; write the outputs to ``out_dir``.

    ``data`` must be the checkpoint's data (:func:`vitres_deploy.data.open_checkpoint_data`);
    ``eval_limit`` evaluates on the first N hold-out images only (quick runs). ``on_record`` is called
    after each new evaluation is saved. Bad budgets or caps raise :class:`BudgetError` before anything
    is evaluated.
    """
    t0 = time.perf_counter()
    config = config or EvolutionConfig()
    config.check()
    ranks = ranks or Ranks()
    out = Path(out_dir)
    space = checkpoint.space
    constraints = [Constraint(b, alpha, max_macs, max_params) for b in sorted(set(budgets_ms))]
    if not constraints:
        raise BudgetError("give at least one budget (--budget-ms B[,B2,...])")
    cost = CostModel(table, space)
    achievable = check_budgets(constraints, cost)
    table_id, supernet_id = table_identity(table), supernet_identity(checkpoint)
    settings = {"space": space.name, "budgets_ms": [c.budget_ms for c in constraints], "alpha": alpha,
                "max_macs": max_macs, "max_params": max_params, "evolution": dataclasses.asdict(config),
                "table_sha256": table_id["sha256"], "supernet_sha256": supernet_id["sha256"],
                "holdout_sha256": data.holdout_digest, "eval_limit": eval_limit}
    info = {"table": table_id, "supernet": supernet_id, "package_version": __version__,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    saved = _broadcast_call(ranks, lambda: open_run_dir(out, settings, info, resume))

    evolution = _Evolution(GeneLayout.of(space), cost, constraints, config)
    fitness = Fitness(checkpoint.supernet, data, ranks, batch_size, eval_limit)
    replay = collections.deque(saved)
    new = 0
    per_iteration = (config.mutations + config.crossovers) * len(constraints)
    with _Bar(progress and ranks.main, per_iteration, config.iterations) as bar:
        for iteration in range(config.iterations + 1):
            batch = evolution.draw(iteration)
            bar.plan(iteration, len(batch))
            for start in range(0, len(batch), ranks.world):
                chunk = batch[start: start + ranks.world]
                done = [_replayed(replay, cand, out) for cand in chunk[: min(len(replay), len(chunk))]]
                fresh = chunk[len(done):]
                for cand, acc in zip(fresh, fitness.evaluate([c.arch for c in fresh])):
                    done.append(Record(len(evolution.records) + len(done), cand.arch, cand.metrics.latency_ms,
                                       cand.metrics.macs, cand.metrics.params, acc.top1, acc.top5, acc.images,
                                       cand.iteration, cand.origin, cand.budget_ms))
                for record in done:
                    evolution.add(record)
                for record in done[len(done) - len(fresh):]:
                    new += 1
                    if ranks.main:
                        append_record(out / EVALUATED, record)
                    if on_record is not None:
                        on_record(record)
                bar.advance(len(chunk), evolution.bests)
    if replay:
        raise VitresError(f"{out / EVALUATED} holds {len(replay)} more evaluations than this search makes: it does "
                          "not come from these settings; choose another --out")

    bests = [b for b in evolution.bests if b is not None]
    if len(bests) != len(constraints):  # the initial population holds a feasible arch of every budget
        raise BudgetError("a budget ended the search without any evaluated architecture in its window")
    docs = [best_document(b, c, evolution.records, table_id, supernet_id) for c, b in zip(constraints, bests)]
    if ranks.main:
        title = (f"{space.name}: {len(evolution.records)} archs evaluated, {table.meta.backend} "
                 f"{table.meta.precision} b{table.meta.batch} on {table.meta.device}")
        write_outputs(out, docs, evolution.records, constraints, bests, table_id, supernet_id, title)
    return SearchResult(out, constraints, bests, docs, evolution.records, new, time.perf_counter() - t0, achievable)


def _broadcast_call(ranks: Ranks, call: Callable[[], Any]) -> Any:
    """Run ``call`` on rank 0 and hand its result (or its error, raised on every rank) to every rank."""
    result: tuple[Any, VitresError | None] = (None, None)
    if ranks.main:
        try:
            result = (call(), None)
        except VitresError as e:
            result = (None, e)
    value, error = ranks.broadcast(result)
    if error is not None:
        raise error
    return value


def _replayed(replay: collections.deque[Record], cand: Candidate, out: Path) -> Record:
    """The saved record of ``cand`` (the next one of the file), checked to be the same arch and latency."""
    saved = replay.popleft()
    if saved.hash != cand.arch.hash or saved.latency_ms != cand.metrics.latency_ms:
        raise VitresError(f"{out / EVALUATED} record {saved.index} is not what this search draws there: the file "
                          "comes from other settings or was edited; choose another --out")
    return saved


class _Bar:
    """The progress bar on stderr: evaluations done of those planned, the iteration, each budget's best so far."""

    def __init__(self, enabled: bool, per_iteration: int, iterations: int) -> None:
        self.per_iteration, self.iterations = per_iteration, iterations
        self.bar = progress_bar(enabled, "search {task.fields[stage]:<10}", after="best {task.fields[best]}")
        self.task = self.bar.add_task("search", total=None, stage="init", best="-")

    def plan(self, iteration: int, batch: int) -> None:
        """Iteration ``iteration`` draws ``batch`` candidates; later ones at most ``per_iteration`` each."""
        done = self.bar.tasks[0].completed
        total = done + batch + (self.iterations - iteration) * self.per_iteration
        stage = "init" if iteration == 0 else f"iter {iteration}/{self.iterations}"
        self.bar.update(self.task, total=total, stage=stage)

    def advance(self, n: int, bests: Sequence[Record | None]) -> None:
        """``n`` more evaluations are done (or replayed)."""
        best = "  ".join(f"{100 * b.holdout_top1:.2f}% @ {b.latency_ms:.3g} ms" if b else "-" for b in bests)
        self.bar.update(self.task, advance=n, best=best)

    def __enter__(self) -> _Bar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
