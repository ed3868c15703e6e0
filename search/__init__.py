"""Latency-aware evolutionary search: the most accurate sub-network of a supernet under a latency budget.

The pieces, each in its own module::

    genome       an Arch as genes; mutation, uniform crossover
    constraints  the latency window [alpha*B, B] and MAC/parameter caps; repair; infeasible budgets
    fitness      hold-out top-1 through extracted sub-networks, cached, sharded across torchrun ranks
    evolution    the search loop (paper defaults, demo preset), resumable from evaluated.jsonl
    outputs      best.json / best-<budget>.json, pareto.json, search.png

Import as ``vitres_deploy.search``; :func:`~vitres_deploy.search.evolution.run_search` is the entry point.
"""

from __future__ import annotations

from .constraints import Constraint, CostModel, Metrics, check_budgets
from .evolution import PRESETS, EvolutionConfig, Record, SearchResult, run_search
from .fitness import Fitness

__all__ = [
    "PRESETS",
    "Constraint",
    "CostModel",
    "EvolutionConfig",
    "Fitness",
    "Metrics",
    "Record",
    "SearchResult",
    "check_budgets",
    "run_search",
]
