"""Searching architecture and precision together: the most accurate (arch, precision) under each budget.

Given latency tables of one device, backend and batch in several precisions (fp32 and int8), one search runs per
table, in a sub-folder named after its precision (``<out>/fp32``, ``<out>/int8``: each a complete, resumable search
folder), every candidate measured in its own precision (int8: its calibrated int8 network in ONNX Runtime,
:mod:`vitres_deploy.quantized`). Each budget then takes the best of the precisions' picks by hold-out top-1 (the
faster on a tie). A budget only some tables can search is searched in those; one that none can is refused before
anything runs. The choice is written to ``<out>``: the best file(s) of the winners (their
``precision`` field says which), ``precisions.json`` (every precision's pick per budget) and ``search.png``.
A budget outside a table's achievable range (below its fastest arch, or above its slowest: no window there) is
left to the other tables, and so is a budget inside it whose window holds no arch of that table (a measured table
of a sparse space can have such gaps).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..archfile import ArchFile
from ..checkpoint import Checkpoint
from ..data import ImageData
from ..distributed import Ranks
from ..errors import BudgetError, ProfileError, SettingsError
from ..files import atomic_write_json
from ..latency import LatencyRange, LatencyTable, latency_range
from .evolution import Evolution
from .genome import GeneLayout
from .outputs import best_filename
from .plan import SearchOptions, SearchPlan, plan_search
from .run import SearchResult, run_search

PRECISIONS_FILE = "precisions.json"


@dataclass
class PrecisionSearchResult:
    """Per budget (lowest first) the winning best file, and every precision's search."""

    out_dir: Path
    budgets_ms: list[float]
    winners: list[ArchFile]
    searches: dict[str, SearchResult]
    seconds: float


def check_tables(tables: Sequence[LatencyTable]) -> None:
    """Refuse tables that cannot be searched together: they must be of one space, device, backend and batch,
    each of another precision (:class:`ProfileError` naming the first difference)."""
    first = tables[0].meta
    for table in tables[1:]:
        m = table.meta
        for name in ("space", "backend", "batch", "threads", "device"):
            if getattr(m, name) != getattr(first, name):
                raise ProfileError(f"tables {tables[0].path} and {table.path} differ in {name} ({getattr(first, name)} "
                                   f"vs {getattr(m, name)}): a precision search compares precisions of one device, "
                                   "backend and batch")
        if m.fingerprint != first.fingerprint:
            raise ProfileError(f"tables {tables[0].path} and {table.path} were measured on different machines "
                               "(device fingerprints differ): profile both here")
    precisions = [t.meta.precision for t in tables]
    if len(set(precisions)) != len(precisions):
        raise SettingsError(f"table_paths: two tables of one precision ({', '.join(precisions)}): give one per "
                            "precision", field="table_paths")


def absolute_budgets(ranges: Sequence[LatencyRange], options: SearchOptions) -> list[float]:
    """The options' budgets in ms: given ones, and shares of the span from the fastest arch of any of the tables'
    ``ranges`` to the slowest of any."""
    fastest, slowest = min(r.fastest_ms for r in ranges), max(r.slowest_ms for r in ranges)
    shared = (round(fastest + f * (slowest - fastest), 4) for f in options.budget_shares)
    return sorted({*options.budgets_ms, *shared})


def search_precisions(checkpoint: Checkpoint, tables: Sequence[LatencyTable], options: SearchOptions,
                      data: ImageData, *, ranks: Ranks | None = None, progress: bool = False
                      ) -> PrecisionSearchResult:
    """Search ``tables`` (see the module docstring) and write the choice of each budget into ``options.out_dir``."""
    t0 = time.perf_counter()
    check_tables(tables)
    ranges = {t.meta.precision: latency_range(t) for t in tables}
    budgets = absolute_budgets(list(ranges.values()), options)
    reachable = {p: [b for b in budgets if r.fastest_ms <= b <= r.slowest_ms] for p, r in ranges.items()}
    unreachable = [b for b in budgets if not any(b in r for r in reachable.values())]
    if unreachable:
        spans = ", ".join(f"{p} {r.fastest_ms:.4g} .. {r.slowest_ms:.4g} ms" for p, r in ranges.items())
        raise BudgetError(f"budget {unreachable[0]:g} ms is outside the achievable range of every table ({spans})",
                          field="budgets_ms")
    plans = {t.meta.precision: plan_search(checkpoint, t, dataclasses.replace(
        options, budgets_ms=tuple(reachable[t.meta.precision]), budget_shares=(),
        out_dir=options.out_dir / t.meta.precision), ranks) for t in tables if reachable[t.meta.precision]}
    searches = {p: run_search(plan, data, ranks=ranks, progress=progress)
                for p, plan in leave_empty_windows(plans).items()}
    winners = [_winner(b, searches) for b in budgets]
    result = PrecisionSearchResult(options.out_dir, budgets, winners, searches, time.perf_counter() - t0)
    if ranks is None or ranks.main:
        write_choice(result)
    return result


def leave_empty_windows(plans: dict[str, SearchPlan]) -> dict[str, SearchPlan]:
    """Each precision's plan without the budgets whose window holds no arch of its table
    (:meth:`~vitres_deploy.search.evolution.Evolution.empty_windows`) where another precision's window holds one: a
    measured table of a sparse space can leave a window inside its range empty. A budget no table can search stays
    in its plans (their search refuses it, naming it); a plan left without budgets is dropped."""
    empty = {p: {c.budget_ms for c in Evolution(GeneLayout.of(plan.checkpoint.space), plan.cost, plan.constraints,
                                                plan.options.evolution).empty_windows()}
             for p, plan in plans.items()}
    searchable = {p: {c.budget_ms for c in plan.constraints} - empty[p] for p, plan in plans.items()}
    kept: dict[str, SearchPlan] = {}
    for p, plan in plans.items():
        left = {b for b in empty[p] if any(b in searchable[q] for q in plans if q != p)}
        constraints = tuple(c for c in plan.constraints if c.budget_ms not in left)
        if constraints:
            kept[p] = dataclasses.replace(plan, constraints=constraints)
    return kept


def _picks(budget: float, searches: dict[str, SearchResult]) -> dict[str, ArchFile]:
    """Each precision's best file for ``budget`` (precisions whose table cannot meet it left out)."""
    return {p: f for p, s in searches.items() for c, f in zip(s.constraints, s.best_files) if c.budget_ms == budget}


def _winner(budget: float, searches: dict[str, SearchResult]) -> ArchFile:
    """The most accurate pick on hold-out of ``budget`` (the faster on a tie)."""
    picks = list(_picks(budget, searches).values())
    return max(picks, key=lambda f: (f.searched.holdout_top1, -f.searched.latency_ms))  # type: ignore[union-attr]


def choice_record(result: PrecisionSearchResult) -> dict[str, Any]:
    """``precisions.json``: per budget, every precision's pick and the one chosen; the time the search took."""
    rows = []
    for budget, winner in zip(result.budgets_ms, result.winners):
        picks = _picks(budget, result.searches)
        rows.append({"budget_ms": budget, "chosen": winner.searched.precision if winner.searched else None,
                     "picks": {p: {"hash": f.arch.hash, "latency_ms": f.searched.latency_ms,
                                   "holdout_top1": f.searched.holdout_top1, "macs": f.searched.macs}
                               for p, f in picks.items() if f.searched is not None}})
    return {"budgets": rows, "evaluated": {p: len(s.records) for p, s in result.searches.items()},
            "seconds": {p: round(s.seconds, 1) for p, s in result.searches.items()}}


def write_choice(result: PrecisionSearchResult) -> None:
    """Write ``search.png`` and ``precisions.json``, then the winners' best file(s), into ``result.out_dir``."""
    from .plot import plot_precisions

    plot_precisions(result.out_dir / "search.png", {p: s.records for p, s in result.searches.items()},
                    result.budgets_ms, result.winners)
    atomic_write_json(result.out_dir / PRECISIONS_FILE, choice_record(result))
    several = len(result.budgets_ms) > 1
    for budget, winner in zip(result.budgets_ms, result.winners):
        atomic_write_json(result.out_dir / best_filename(budget, several), winner.to_dict())
