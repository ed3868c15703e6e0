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
before it. Resuming (``resume``) therefore replays the search from the start, taking accuracies from
``evaluated.jsonl`` instead of evaluating, and continues where the file ends: the result is the same
as an uninterrupted run. Under ``torchrun`` every rank draws the same candidates and evaluation is
sharded across ranks (:class:`~vitres_deploy.search.fitness.Fitness`), again with the same result.

This module holds the settings (:class:`EvolutionConfig`) and the state of the evolution (:class:`Evolution`);
:mod:`~vitres_deploy.search.run` runs it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..arch import Arch
from ..errors import BudgetError, SettingsError
from ..seeding import stream_rng
from .constraints import Constraint, CostModel, Metrics, repair
from .genome import GeneLayout, crossover, mutate
from .records import Record


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

    def __post_init__(self) -> None:
        """Refuse a setting out of range: a :class:`SettingsError` naming the first one."""
        for name, low in (("population", 1), ("iterations", 0), ("parents", 1), ("mutations", 0),
                          ("crossovers", 0), ("repair_steps", 0), ("tries", 1)):
            if getattr(self, name) < low:
                raise SettingsError(f"{name} {getattr(self, name)} must be >= {low}", field=name)
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise SettingsError(f"mutation_prob {self.mutation_prob} must be in [0, 1]", field="mutation_prob")


#: ``paper``: the paper's settings (500 + 20 x 150 evaluations per budget). ``demo``: 20 + 3 x 16 = 68
#: evaluations, about 100 s for fmnist on this project's 2-core CPU with both cores evaluating, where one
#: evaluation (the shipped supernet's 12,000 hold-out images through one sub-network, one thread) takes about 3 s.
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


def rank_key(record: Record) -> tuple[float, float, str]:
    """Order of preference: higher hold-out top-1, then lower latency, then hash (a total order)."""
    return (-record.holdout_top1, record.latency_ms, record.hash)


class Evolution:
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
                                      "found by repairing random ones: lower alpha to widen the window, or loosen "
                                      "the MAC and parameter caps", field="alpha")
            else:
                new = self._children(c, iteration, rng, taken)
            batch += new
        return batch

    def empty_windows(self) -> list[Constraint]:
        """The constraints in whose window the initial draw (random archs repaired into it, each budget's own
        random stream) finds no arch at all: the budgets :meth:`draw` would refuse in a new search."""
        return [c for i, c in enumerate(self.constraints)
                if not self._initial(c, stream_rng(self.config.seed, 0, i), set())]

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
            arch = repair(self.layout.sample(rng), c, self.cost, self.layout, rng, cfg.repair_steps)
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
