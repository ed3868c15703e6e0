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

With ``per_stage`` a third search, ``<out>/mixed``, searches precision per stage jointly with the architecture:
its candidates are :class:`~vitres_deploy.arch.MixedArch` networks (int8 in some stages, fp32 in the others; a
plan gene beside the arch's genes), predicted from both tables plus the float/int8 boundary cost measured first
(:mod:`vitres_deploy.latency.mixed`, kept in ``<out>/mixed/boundary.json``), each scored on hold-out with only
its int8 stages quantized. Its picks compete with the whole-precision ones; a mixed winner's best file says which
stages run in int8 (``int8_stages``: export it with ``--precision int8 --int8-stages``). A budget between the
whole precisions' ranges (int8 slower than fp32 for every arch leaves such a gap) is searched by the mixed search
alone where its networks reach it, and refused only when they do not either (after the boundary is measured).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..archfile import ArchFile
from ..checkpoint import Checkpoint
from ..data import ImageData
from ..distributed import Ranks
from ..errors import BudgetError, ProfileError, RunDirError, SettingsError, VitresError
from ..files import JSONError, atomic_write_json, loads_json
from ..latency import LatencyRange, LatencyTable, latency_range
from ..latency.mixed import BoundaryFit, MixedTables, measure_boundary
from ..rundir import check_start, hold_output
from .evolution import Evolution
from .outputs import best_filename
from .plan import SearchOptions, SearchPlan, plan_mixed_search, plan_search, search_margin
from .records import EVALUATED, SETTINGS
from .run import SearchResult, run_search

PRECISIONS_FILE = "precisions.json"
#: the sub-folder of the search of precision per stage, and the file of its measured float/int8 boundary
MIXED, BOUNDARY_FILE = "mixed", "boundary.json"


@dataclass
class PrecisionSearchResult:
    """Per budget (lowest first) the winning best file, and every precision's search (``mixed``: precision per
    stage, with the measured float/int8 ``boundary``)."""

    out_dir: Path
    budgets_ms: list[float]
    winners: list[ArchFile]
    searches: dict[str, SearchResult]
    seconds: float
    boundary: dict[str, Any] | None = None


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


def refuse_unreachable(budgets: Sequence[float], reached: Iterable[Sequence[float]],
                       ranges: Mapping[str, LatencyRange], per_stage: bool = False) -> None:
    """Raise :class:`BudgetError` for the first of ``budgets`` that none of the searches ``reached``."""
    covered = {b for searched in reached for b in searched}
    unreachable = [b for b in budgets if b not in covered]
    if unreachable:
        spans = ", ".join(f"{p} {r.fastest_ms:.4g} .. {r.slowest_ms:.4g} ms" for p, r in ranges.items())
        what = "every table and of their networks mixed per stage" if per_stage else "every table"
        raise BudgetError(f"budget {unreachable[0]:g} ms is outside the achievable range of {what} ({spans})",
                          field="budgets_ms")


def search_precisions(checkpoint: Checkpoint, tables: Sequence[LatencyTable], options: SearchOptions,
                      data: ImageData, *, ranks: Ranks | None = None, progress: bool = False
                      ) -> PrecisionSearchResult:
    """Search ``tables`` (see the module docstring) and write the choice of each budget into ``options.out_dir``."""
    t0 = time.perf_counter()
    check_tables(tables)
    ranges = {t.meta.precision: latency_range(t) for t in tables}
    budgets = absolute_budgets(list(ranges.values()), options)
    reachable = {p: [b for b in budgets if r.fastest_ms <= b <= r.slowest_ms] for p, r in ranges.items()}
    if not options.per_stage:  # refused before anything is planned
        refuse_unreachable(budgets, reachable.values(), ranges)
    plans = {t.meta.precision: plan_search(checkpoint, t, dataclasses.replace(
        options, budgets_ms=tuple(reachable[t.meta.precision]), budget_shares=(),
        out_dir=options.out_dir / t.meta.precision), ranks) for t in tables if reachable[t.meta.precision]}
    mixed = plan_mixed(plans, budgets, options, ranks, progress) if options.per_stage else None
    if mixed is not None:
        plans[MIXED] = mixed
    if options.per_stage:  # mixed networks can reach a budget between the whole precisions' ranges
        refuse_unreachable(budgets, [[c.budget_ms for c in plan.constraints] for plan in plans.values()], ranges,
                           per_stage=True)
    searches = {p: run_search(plan, data, ranks=ranks, progress=progress)
                for p, plan in leave_empty_windows(plans).items()}
    winners = [_winner(b, searches) for b in budgets]
    result = PrecisionSearchResult(options.out_dir, budgets, winners, searches, time.perf_counter() - t0,
                                   plans[MIXED].table_id["boundary"] if MIXED in plans else None)
    if ranks is None or ranks.main:
        write_choice(result)
    return result


def plan_mixed(plans: dict[str, SearchPlan], budgets: Sequence[float], options: SearchOptions,
               ranks: Ranks | None = None, progress: bool = False) -> SearchPlan | None:
    """The search of precision per stage beside the planned fp32 and int8 searches, in ``<out>/mixed``, over the
    ``budgets`` its range reaches (None when it reaches none: they are left to the whole precisions); its
    float/int8 boundary measured first on the main rank (:func:`~vitres_deploy.latency.mixed.measure_boundary`;
    a resumed search reads the one it measured) unless the options give it."""
    if "fp32" not in plans or "int8" not in plans:
        raise SettingsError("per_stage: precision per stage needs an fp32 and an int8 table, each reaching at least "
                            "one of the budgets", field="per_stage")
    ranks = ranks or Ranks()
    out = options.out_dir / MIXED
    fit = ranks.broadcast(_boundary(plans["fp32"], plans["int8"], out, options, progress) if ranks.main else None)
    if isinstance(fit, VitresError):
        raise fit
    span = MixedTables(plans["fp32"].table, plans["int8"].table, fit.boundary_ms).latency_range()
    margin = max(search_margin(plans[p].table, options) for p in ("fp32", "int8"))
    reach = tuple(b for b in budgets if span.fastest_ms <= b / (1 + margin) and b <= span.slowest_ms * (1 + margin))
    if not reach:
        return None
    return plan_mixed_search(plans["fp32"], plans["int8"], fit, dataclasses.replace(
        options, budgets_ms=reach, budget_shares=(), out_dir=out))


def _boundary(fp32: SearchPlan, int8: SearchPlan, out: Path, options: SearchOptions,
              progress: bool) -> BoundaryFit | VitresError:
    """The boundary of the mixed search in ``out``: the options' own, or read from its ``boundary.json`` when
    resuming, else measured (a folder holding another search is refused first) and written there."""
    path = out / BOUNDARY_FILE
    if options.boundary_ms is not None:
        return BoundaryFit(options.boundary_ms, given=True)
    try:
        if options.resume and path.is_file():
            try:
                return BoundaryFit.from_dict(loads_json(path.read_text()))
            except (JSONError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise RunDirError(f"{path} is corrupt: start a new search in another out_dir",
                                  field="out_dir") from None
        if not options.resume:  # refused before anything is measured
            check_start(out, False, "a search", (SETTINGS, EVALUATED))
        with hold_output(out, field="out_dir"):
            fit = measure_boundary(fp32.table, int8.table, options.boundary_networks, options.evolution.seed,
                                   progress)
            atomic_write_json(path, fit.to_dict())
        return fit
    except VitresError as e:  # raised on every rank, not only the one that measured
        return e


def leave_empty_windows(plans: dict[str, SearchPlan]) -> dict[str, SearchPlan]:
    """Each precision's plan without the budgets whose window holds no arch of its table
    (:meth:`~vitres_deploy.search.evolution.Evolution.empty_windows`) where another precision's window holds one: a
    measured table of a sparse space can leave a window inside its range empty. A budget no table can search stays
    in its plans (their search refuses it, naming it); a plan left without budgets is dropped."""
    empty = {p: {c.budget_ms for c in Evolution(plan.layout, plan.cost, plan.constraints,
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
        rows.append({"budget_ms": budget, "chosen": winner.searched.plan if winner.searched else None,
                     "picks": {p: {"hash": f.arch.hash, "latency_ms": f.searched.latency_ms,
                                   "holdout_top1": f.searched.holdout_top1, "macs": f.searched.macs,
                                   "int8_stages": f.searched.int8_stages}
                               for p, f in picks.items() if f.searched is not None}})
    return {"budgets": rows, "evaluated": {p: len(s.records) for p, s in result.searches.items()},
            "boundary": result.boundary,
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
