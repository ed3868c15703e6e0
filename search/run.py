"""Carrying out a planned search (:func:`~vitres_deploy.search.plan.plan_search`) in steps:

open the folder (``search.json``; with ``resume`` the saved evaluations to replay) -> evolve (evaluate
what each iteration draws, append each evaluation to ``evaluated.jsonl``) -> the best arch of every budget
-> write ``best*.json``, ``pareto.json`` and ``search.png``. Under ``torchrun`` every rank runs every step;
rank 0 alone writes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..archfile import ArchFile, SearchedRecord
from ..data import ImageData
from ..distributed import Ranks
from ..errors import BudgetError, RunDirError, VitresError
from ..latency import LatencyRange
from ..progress import progress_bar
from ..rundir import hold_output
from .constraints import Constraint
from .evolution import Candidate, Evolution
from .fitness import Fitness
from .outputs import best_file, write_outputs
from .plan import SearchPlan
from .records import EVALUATED, Record, append_record, open_run_dir


@dataclass
class SearchResult:
    """What a search found: per constraint (lowest budget first) the best record and its ``best.json``."""

    out_dir: Path
    constraints: list[Constraint]
    bests: list[Record]
    best_files: list[ArchFile]
    records: list[Record]
    new_evaluations: int
    seconds: float
    achievable: LatencyRange

    @property
    def searched(self) -> list[SearchedRecord]:
        """What the search recorded in each best file (hold-out interval, window, ...), in the same order."""
        return [f.searched for f in self.best_files if f.searched is not None]


def run_search(plan: SearchPlan, data: ImageData, *, ranks: Ranks | None = None, progress: bool = False,
               on_record: Callable[[Record], None] | None = None) -> SearchResult:
    """Search the most accurate sub-network under each budget of ``plan``; write the outputs to its folder.

    ``data`` must be the checkpoint's data (:func:`vitres_deploy.data.open_checkpoint_data`). ``on_record`` is
    called after each new evaluation is saved.
    """
    t0 = time.perf_counter()
    ranks = ranks or Ranks()
    out = plan.options.out_dir
    settings, info = search_settings(plan, data), run_info(plan)
    with contextlib.ExitStack() as held:
        def claim() -> list[Record]:
            """On the main rank: lock the folder (one process writes it), then open it."""
            held.enter_context(hold_output(out, field="out_dir"))
            return open_run_dir(out, settings, info, plan.options.resume)

        saved = _broadcast_call(ranks, claim)
        evolution, new = evolve(plan, data, saved, ranks, progress, on_record)
        bests = best_records(evolution)
        files = [best_file(b, c, evolution.records, plan.table_id, plan.supernet_id, plan.calibration)
                 for c, b in zip(plan.constraints, bests)]
        if ranks.main:
            m = plan.table.meta
            title = (f"{plan.checkpoint.space.name}: {len(evolution.records)} archs evaluated, {m.backend} "
                     f"{plan.precision} b{m.batch} on {m.device}")
            write_outputs(out, files, evolution.records, plan.constraints, bests, plan.table_id, plan.supernet_id,
                          title)
    return SearchResult(out, list(plan.constraints), bests, files, evolution.records, new, time.perf_counter() - t0,
                        plan.achievable)


def search_settings(plan: SearchPlan, data: ImageData) -> dict[str, Any]:
    """The settings that decide a search's result (``search.json``; a resumed search must have the same)."""
    o = plan.options
    return {"space": plan.checkpoint.space.name, "budgets_ms": [c.budget_ms for c in plan.constraints],
            "alpha": o.alpha, "max_macs": o.max_macs, "max_params": o.max_params,
            "evolution": dataclasses.asdict(o.evolution), "table_sha256": plan.table_id["sha256"],
            "supernet_sha256": plan.supernet_id["sha256"], "holdout_sha256": data.holdout_digest,
            "eval_limit": o.eval_limit, "precision": plan.precision,
            "calibration": plan.calibration.to_dict() if plan.calibration else None,
            **({"fp32_table_sha256": plan.table_id["fp32_table"]["sha256"],
                "boundary_ms": plan.table_id["boundary"]["boundary_ms"]} if plan.cost.mixed is not None else {})}


def run_info(plan: SearchPlan) -> dict[str, Any]:
    """What ``search.json`` records besides the settings: the table and supernet, the version, the start."""
    return {"table": plan.table_id, "supernet": plan.supernet_id, "package_version": __version__,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def evolve(plan: SearchPlan, data: ImageData, saved: Sequence[Record], ranks: Ranks, progress: bool,
           on_record: Callable[[Record], None] | None) -> tuple[Evolution, int]:
    """Run every iteration, taking ``saved`` records (a resumed search) before evaluating anything new.

    Returns the evolution's final state and how many evaluations were new.
    """
    o, config, out = plan.options, plan.options.evolution, plan.options.out_dir
    evolution = Evolution(plan.layout, plan.cost, plan.constraints, config)
    fitness = Fitness(plan.checkpoint.supernet, data, ranks, o.batch_size, o.eval_limit, plan.calibration)
    replay = collections.deque(saved)
    new = 0
    per_iteration = (config.mutations + config.crossovers) * len(plan.constraints)
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
        raise RunDirError(f"{out / EVALUATED} holds {len(replay)} more evaluations than this search makes: it does "
                          "not come from these settings; choose another out_dir", field="out_dir")
    return evolution, new


def best_records(evolution: Evolution) -> list[Record]:
    """The best record of every constraint, in the constraints' order."""
    bests = [b for b in evolution.bests if b is not None]
    if len(bests) != len(evolution.constraints):  # the initial population holds a feasible arch of every budget
        raise BudgetError("a budget ended the search without any evaluated architecture in its window")
    return bests


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
        raise RunDirError(f"{out / EVALUATED} record {saved.index} is not what this search draws there: the file "
                          "comes from other settings or was edited; choose another out_dir", field="out_dir")
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
