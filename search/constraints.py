"""What a candidate must satisfy: predicted latency in ``[alpha*L, L]`` plus optional MAC and parameter caps.

``L = B / (1 + margin)`` is the budget ``B`` less the table's validated under-prediction ``margin``
(:attr:`~vitres_deploy.latency.report.ValidationReport.margin`): networks the table under-predicts by up
to that much still measure within ``B``.

Latency comes from the latency table (:func:`vitres_deploy.latency.predict`), MACs and parameters
from the closed form (:func:`vitres_deploy.macs.arch_cost`); both are memoised per arch. Budgets the
space cannot meet are refused before any evaluation, naming the achievable range; candidates that
break a constraint are repaired by a bounded hill climb (:func:`repair`), so the search never hangs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..arch import Arch, MixedArch, min_arch
from ..errors import BudgetError, ProfileError
from ..latency import LatencyRange, LatencyTable, latency_range, predict
from ..latency.mixed import MixedTables
from ..macs import arch_cost
from ..space import SearchSpace, space_difference
from .genome import GeneLayout, perturb


@dataclass(frozen=True)
class Metrics:
    """What the constraints look at: predicted latency, MACs and parameters of one arch."""

    latency_ms: float
    macs: int
    params: int


class CostModel:
    """Predicted latency (from a latency table) and closed-form MACs/parameters of archs, memoised.

    With ``mixed`` (an fp32 and an int8 table and the measured boundary cost; ``table`` is then its int8 table),
    the archs are :class:`~vitres_deploy.arch.MixedArch` networks with a precision per stage, predicted by
    :meth:`~vitres_deploy.latency.mixed.MixedTables.predict`.
    """

    def __init__(self, table: LatencyTable, space: SearchSpace, mixed: MixedTables | None = None) -> None:
        for t in (mixed.fp32, mixed.int8) if mixed is not None else (table,):
            diff = space_difference(t.space, space)
            if diff:
                where = f" {t.path}" if t.path else ""
                raise ProfileError(f"latency table{where} was profiled for another space than the supernet's "
                                   f"({diff}): profile the supernet's space with `vitres-deploy profile --space ...`")
            t.require_complete()
        self.table, self.space, self.mixed = table, space, mixed
        self._memo: dict[Arch, Metrics] = {}

    def __call__(self, arch: Arch) -> Metrics:
        """The metrics of ``arch``."""
        m = self._memo.get(arch)
        if m is None:
            cost = arch_cost(arch, self.space)
            m = self._memo[arch] = Metrics(self.latency_ms(arch), cost.macs, cost.params)
        return m

    def latency_ms(self, arch: Arch) -> float:
        """The predicted latency of ``arch`` (a :class:`MixedArch` with ``mixed``)."""
        if self.mixed is None:
            return predict(self.table, arch).latency_ms
        if not isinstance(arch, MixedArch):
            raise TypeError("a cost model of mixed precision predicts MixedArch networks only")
        return self.mixed.predict(arch)

    def achievable(self) -> LatencyRange:
        """The exact fastest and slowest predicted arch of the space (mixed: of every mixed plan)."""
        return self.mixed.latency_range() if self.mixed is not None else latency_range(self.table)


@dataclass(frozen=True)
class Constraint:
    """Predicted latency within ``[alpha * limit_ms, limit_ms]`` (``limit_ms = budget_ms / (1 + margin)``),
    MACs <= ``max_macs``, params <= ``max_params``."""

    budget_ms: float
    alpha: float = 0.9
    max_macs: int | None = None
    max_params: int | None = None
    margin: float = 0.0

    @property
    def limit_ms(self) -> float:
        """Upper end of the latency window: the budget less the margin."""
        return self.budget_ms / (1 + self.margin)

    @property
    def low_ms(self) -> float:
        """Lower end of the latency window."""
        return self.alpha * self.limit_ms

    def violation(self, m: Metrics) -> float:
        """How far ``m`` is from satisfying the constraint (relative excesses summed); 0 exactly when satisfied."""
        v = max(0.0, self.low_ms - m.latency_ms, m.latency_ms - self.limit_ms) / self.budget_ms
        if self.max_macs is not None:
            v += max(0, m.macs - self.max_macs) / self.max_macs
        if self.max_params is not None:
            v += max(0, m.params - self.max_params) / self.max_params
        return v

    def satisfied(self, m: Metrics) -> bool:
        """True when ``m`` is in the latency window and under the caps."""
        return self.violation(m) == 0.0

    def describe(self) -> str:
        """E.g. ``latency in [0.9, 1] ms, MACs <= 12,000,000``."""
        parts = [f"latency in [{self.low_ms:.4g}, {self.limit_ms:.4g}] ms"]
        if self.max_macs is not None:
            parts.append(f"MACs <= {self.max_macs:,}")
        if self.max_params is not None:
            parts.append(f"params <= {self.max_params:,}")
        return ", ".join(parts)


#: Relative slack of the range check for floating-point sums taken in another order.
_SUM_ORDER_ROUNDING = 1e-9


def check_budgets(constraints: Sequence[Constraint], cost: CostModel) -> LatencyRange:
    """Refuse, before any evaluation, budgets and caps that no arch of the space can meet.

    Returns the table's achievable latency range. A budget below the fastest or above the slowest
    predicted arch, or a cap below the smallest arch's MACs/parameters, is a :class:`BudgetError`.
    """
    achievable = cost.achievable()
    # an arch's own prediction (its entries summed in arch order) may differ from the extremes' (summed stage by
    # stage) in the last bits: the budget of exactly the fastest or slowest arch is in range
    fast, slow = achievable.fastest_ms * (1 - _SUM_ORDER_ROUNDING), achievable.slowest_ms * (1 + _SUM_ORDER_ROUNDING)
    where = f" (table {cost.table.path})" if cost.table.path else ""
    for c in constraints:
        if not c.budget_ms > 0:
            raise BudgetError(f"budget {c.budget_ms:g} ms must be positive")
        if c.limit_ms < fast or c.budget_ms > slow * (1 + c.margin):
            side = "below the fastest" if c.limit_ms < fast else "above the slowest"
            kept = f" with the table's {c.margin:.1%} margin" if c.margin and c.limit_ms < fast else ""
            raise BudgetError(f"budget {c.budget_ms:g} ms is {side} architecture of space {cost.space.name!r}{kept}: "
                              f"the achievable range is {achievable.fastest_ms:.4g} .. "
                              f"{achievable.slowest_ms:.4g} ms{where}")
        if not 0.0 < c.alpha <= 1.0:
            raise BudgetError(f"alpha {c.alpha:g} must be in (0, 1]: the window is [alpha*B, B]", field="alpha")
    smallest = arch_cost(min_arch(cost.space), cost.space)
    for c in constraints:
        if c.max_macs is not None and c.max_macs < smallest.macs:
            raise BudgetError(f"max_macs {c.max_macs:,} is below the smallest architecture of space "
                              f"{cost.space.name!r} ({smallest.macs:,} MACs): raise it", field="max_macs")
        if c.max_params is not None and c.max_params < smallest.params:
            raise BudgetError(f"max_params {c.max_params:,} is below the smallest architecture of space "
                              f"{cost.space.name!r} ({smallest.params:,} parameters): raise it", field="max_params")
    return achievable


def repair(arch: Arch, constraint: Constraint, cost: CostModel, layout: GeneLayout, rng: random.Random,
           steps: int) -> Arch | None:
    """Move ``arch`` into the constraint by at most ``steps`` single-gene changes that reduce its violation.

    Returns the repaired arch, or None when ``steps`` were not enough (the caller re-samples).
    """
    genome = layout.encode(arch)
    violation = constraint.violation(cost(arch))
    for _ in range(steps):
        if violation == 0.0:
            return arch
        candidate = perturb(genome, layout, rng)
        moved = layout.decode(candidate)
        v = constraint.violation(cost(moved))
        if v < violation:
            genome, arch, violation = candidate, moved, v
    return arch if violation == 0.0 else None
