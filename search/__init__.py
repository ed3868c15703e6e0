"""Latency-aware evolutionary search: the most accurate sub-network of a supernet under a latency budget.

The pieces, each in its own module::

    genome       an Arch as genes; mutation, uniform crossover
    constraints  the latency window [alpha*B, B] and MAC/parameter caps; repair; infeasible budgets
    fitness      hold-out top-1 through extracted sub-networks, cached, sharded across torchrun ranks
    evolution    the evolution's settings (paper defaults, demo preset) and state: how candidates are drawn
    records      the search's folder: search.json (its settings) and evaluated.jsonl, for resuming
    plan         SearchOptions and the pre-flight: budgets no arch can meet are refused before any data is read
    run          the search in steps: open the folder -> evolve -> the best of each budget -> write the outputs
    outputs      best.json / best-<budget>.json (typed as vitres_deploy.archfile.ArchFile), pareto.json, search.png
    precisions   architecture and precision together: one search per table (fp32, int8), the best per budget

Import as ``vitres_deploy.search``::

    plan = plan_search(checkpoint, table, SearchOptions(budgets_ms=(1.5,), out_dir=Path("runs/search")))
    result = run_search(plan, open_checkpoint_data(checkpoint))
"""

from __future__ import annotations

from .constraints import Constraint, CostModel, Metrics, check_budgets
from .evolution import PRESETS, EvolutionConfig
from .fitness import Fitness
from .plan import SearchOptions, SearchPlan, plan_search
from .precisions import PrecisionSearchResult, search_precisions
from .records import Record
from .run import SearchResult, run_search

__all__ = [
    "PRESETS",
    "Constraint",
    "CostModel",
    "EvolutionConfig",
    "Fitness",
    "Metrics",
    "PrecisionSearchResult",
    "Record",
    "SearchOptions",
    "SearchPlan",
    "SearchResult",
    "check_budgets",
    "plan_search",
    "run_search",
    "search_precisions",
]
