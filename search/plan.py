"""The settings of a search and its pre-flight: everything checked before the data is read or anything written.

:func:`plan_search` turns a checkpoint, a latency table and :class:`SearchOptions` into a
:class:`SearchPlan`: the constraints of every budget, the cost model (the table must be of the supernet's
space and complete), the achievable latency range (budgets and caps no arch can meet are refused here,
naming the range) and the identities of the table and supernet that the outputs record.
:func:`~vitres_deploy.search.run.run_search` carries a plan out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..distributed import Ranks
from ..errors import SettingsError, VitresError
from ..latency import LatencyRange, LatencyTable, latency_range
from ..latency.drift import DriftReport, trusted_table
from ..latency.mixed import BoundaryFit, MixedTables, mixed_plans
from ..latency.quantization import check_int8_settings, table_int8_settings
from ..quantized import Calibration
from .constraints import Constraint, CostModel, check_budgets
from .evolution import EvolutionConfig
from .genome import GeneLayout
from .outputs import supernet_identity, table_identity


@dataclass(frozen=True)
class SearchOptions:
    """Every setting of a search; field names are those of the ``search`` command's parameters.

    ``budgets_ms``: one or several latency budgets, searched together (sharing their evaluations);
    ``budget_shares``: more budgets, each a share of the way from the fastest to the slowest arch the
    (drift-checked) table predicts;
    ``alpha``: the latency window is ``[alpha*L, L]`` with ``L = B / (1 + margin)``; ``margin``: None for
    the table's validated under-prediction (:attr:`ValidationReport.search_margin`, 0 for a table not
    validated); ``max_macs``/``max_params``: optional caps; ``resume``: continue the search in ``out_dir``;
    ``eval_limit``: evaluate on the first N hold-out images only (quick runs); ``drift_check``: re-time a
    handful of the table's entries and networks first and stop if the table no longer describes this
    machine, unless ``rescale`` (apply the measured ratio); ``allow_other_device``: use a table of another
    device fingerprint; ``calibration``: how int8 candidates are calibrated (a table of int8 precision: each
    candidate's hold-out top-1 is measured on its int8 network); ``per_stage`` (an fp32 and an int8 table): also
    search precision per stage (:func:`plan_mixed_search`), the float/int8 boundary measured first on
    ``boundary_networks`` mixed networks unless ``boundary_ms`` gives it. Out-of-range settings raise
    :class:`SettingsError` naming the field.
    """

    budgets_ms: tuple[float, ...]
    out_dir: Path
    budget_shares: tuple[float, ...] = ()
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    alpha: float = 0.9
    max_macs: int | None = None
    max_params: int | None = None
    resume: bool = False
    eval_limit: int | None = None
    batch_size: int = 500
    margin: float | None = None
    drift_check: bool = True
    rescale: bool = False
    allow_other_device: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    per_stage: bool = False
    boundary_networks: int = 6
    boundary_ms: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets_ms", tuple(float(b) for b in self.budgets_ms))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "budget_shares", tuple(float(f) for f in self.budget_shares))
        if not self.budgets_ms and not self.budget_shares:
            raise SettingsError("budgets_ms: give at least one latency budget", field="budgets_ms")
        if any(not 0 <= f <= 1 for f in self.budget_shares):
            raise SettingsError(f"budget_shares {self.budget_shares}: each in [0, 1]", field="budgets_ms")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SettingsError(f"eval_limit {self.eval_limit} must be >= 1", field="eval_limit")
        if self.batch_size < 1:
            raise SettingsError(f"batch_size {self.batch_size} must be >= 1", field="batch_size")
        if self.boundary_ms is not None and not math.isfinite(self.boundary_ms):
            raise SettingsError(f"boundary_ms {self.boundary_ms}: give a finite time", field="boundary_ms")
        if self.boundary_networks < 1:
            raise SettingsError(f"boundary_networks {self.boundary_networks} must be >= 1", field="boundary_networks")
        if self.margin is not None and not 0 <= self.margin < 1:
            raise SettingsError(f"margin {self.margin} must be in [0, 1)", field="margin")


@dataclass(frozen=True)
class SearchPlan:
    """A search ready to run: its options, one constraint per budget (lowest first) and what they are met on."""

    checkpoint: Checkpoint
    table: LatencyTable
    options: SearchOptions
    constraints: tuple[Constraint, ...]
    cost: CostModel
    achievable: LatencyRange
    table_id: dict[str, Any]
    supernet_id: dict[str, Any]
    drift: DriftReport | None = None

    @property
    def calibration(self) -> Calibration | None:
        """How candidates are calibrated: the options' calibration for an int8 table (and a search of precision
        per stage, whose table is its int8 one), else None (float)."""
        return self.options.calibration if self.table.meta.precision == "int8" else None

    @property
    def precision(self) -> str:
        """What the search's candidates run in: the table's precision, or ``mixed`` (precision per stage)."""
        return "mixed" if self.cost.mixed is not None else self.table.meta.precision

    @property
    def layout(self) -> GeneLayout:
        """The genome of the search's candidates (with the plan gene for precision per stage)."""
        space = self.checkpoint.space
        return GeneLayout.of(space, mixed_plans(len(space.stages)) if self.cost.mixed is not None else ())


def plan_search(checkpoint: Checkpoint, table: LatencyTable, options: SearchOptions,
                ranks: Ranks | None = None) -> SearchPlan:
    """Check ``options`` against the supernet's space and the latency table, before any data is read.

    A table of another space or an incomplete one is a :class:`~vitres_deploy.errors.ProfileError`; a budget
    or cap that no arch of the space can meet is a :class:`~vitres_deploy.errors.BudgetError`. The table's
    fingerprint and drift are checked (:func:`~vitres_deploy.latency.drift.trusted_table`) on rank 0 alone,
    so that no other rank's work disturbs the timing, and the outcome is shared with every rank.
    """
    ranks = ranks or Ranks()
    # what can be refused without timing anything first: a table of another space, budgets out of range
    check_budgets([Constraint(b, options.alpha, options.max_macs, options.max_params) for b in options.budgets_ms],
                  CostModel(table, checkpoint.space))
    if table.meta.precision == "int8":  # candidates are scored on int8 networks quantized as the table's were timed
        check_int8_settings(str(table.path), table_int8_settings(table), options.calibration.int8, "the search")
    trusted = ranks.broadcast(_trust(table, options) if ranks.main else None)
    if isinstance(trusted, VitresError):
        raise trusted
    table, drift = trusted
    margin = search_margin(table, options)
    span = latency_range(table)
    shared = (round(span.fastest_ms + f * (span.slowest_ms - span.fastest_ms), 4) for f in options.budget_shares)
    constraints = tuple(Constraint(b, options.alpha, options.max_macs, options.max_params, margin)
                        for b in sorted({*options.budgets_ms, *shared}))
    cost = CostModel(table, checkpoint.space)
    achievable = check_budgets(constraints, cost)
    table_id = {**table_identity(table), "drift_check": drift.to_dict(items=False) if drift else None}
    return SearchPlan(checkpoint, table, options, constraints, cost, achievable, table_id,
                      supernet_identity(checkpoint), drift)


def plan_mixed_search(fp32: SearchPlan, int8: SearchPlan, boundary: BoundaryFit, options: SearchOptions
                      ) -> SearchPlan:
    """The search of precision per stage from the planned (drift-checked) fp32 and int8 searches of one supernet:
    every mixed plan of every arch, predicted from the two tables and the measured ``boundary``
    (:class:`~vitres_deploy.latency.mixed.MixedTables`), under ``options``' budgets (in ms, those of the two plans),
    with the larger of the two tables' margins. A budget outside the mixed networks' range is a
    :class:`~vitres_deploy.errors.BudgetError` naming the range."""
    margin = max(search_margin(t, options) for t in (fp32.table, int8.table))
    constraints = tuple(Constraint(b, options.alpha, options.max_macs, options.max_params, margin)
                        for b in options.budgets_ms)
    cost = CostModel(int8.table, int8.checkpoint.space, MixedTables(fp32.table, int8.table, boundary.boundary_ms))
    achievable = check_budgets(constraints, cost)
    table_id = {**int8.table_id, "fp32_table": fp32.table_id, "boundary": boundary.to_dict()}
    return SearchPlan(int8.checkpoint, int8.table, options, constraints, cost, achievable, table_id,
                      int8.supernet_id, int8.drift)


def search_margin(table: LatencyTable, options: SearchOptions) -> float:
    """The margin a search keeps below its budgets: the options' one, or the table's validated under-prediction
    (:attr:`~vitres_deploy.latency.report.ValidationReport.search_margin`; 0 for a table not validated)."""
    if options.margin is not None:
        return options.margin
    return table.validation.search_margin if table.validation is not None else 0.0


def _trust(table: LatencyTable, options: SearchOptions) -> tuple[LatencyTable, DriftReport | None] | VitresError:
    try:
        return trusted_table(table, drift_check=options.drift_check, rescale=options.rescale,
                             allow_other_device=options.allow_other_device)
    except VitresError as e:  # raised on every rank, not only the one that checked
        return e
