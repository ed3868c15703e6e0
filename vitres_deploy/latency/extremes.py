"""The fastest and the slowest architecture of a space under per-entry costs: an exact DP over stages.

Used by predictions (:func:`~vitres_deploy.latency.predict.latency_range`) and by the check a table gets when it
is loaded (its fastest prediction must be positive), so it depends on neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..arch import Arch, BlockArch, StageArch
from ..space import SearchSpace
from .entries import EntrySpec


def extreme_sum(space: SearchSpace, cost: Callable[[str], float], pick: Callable[..., Any]) -> tuple[float, Arch]:
    """The min (``pick=min``) or max over every arch of ``space`` of the sum of ``cost(key)`` over its entries,
    and an arch reaching it."""
    n = len(space.stages)
    # Best total up to and including stage i for each width d: (cost, [StageArch, ...]).
    best: dict[int, tuple[float, list[StageArch]]] = {}
    for i, st in enumerate(space.stages, 1):
        stage_best: dict[int, tuple[float, StageArch]] = {}
        for d in st.embed_dims:
            block_cost, block = pick(
                ((cost(EntrySpec("block", i, (d, h, m)).key), BlockArch(h, m))
                 for h in st.heads for m in st.mlp_hidden),
                key=lambda t: t[0],
            )
            depth = pick(st.depths, key=lambda k: k * block_cost)
            stage_best[d] = (depth * block_cost, StageArch(d, (block,) * depth))
        new: dict[int, tuple[float, list[StageArch]]] = {}
        for d, (stage_cost, stage) in stage_best.items():
            if i == 1:
                prev_cost, prev = cost(EntrySpec("stem", 1, (d,)).key), []
            else:
                prev_cost, prev = pick(
                    ((c + cost(EntrySpec("reduction", i, (dp, d)).key), stages)
                     for dp, (c, stages) in best.items()),
                    key=lambda t: t[0],
                )
            new[d] = (prev_cost + stage_cost, [*prev, stage])
        best = new
    total, stages = pick(
        ((c + cost(EntrySpec("head", n, (d,)).key), s) for d, (c, s) in best.items()),
        key=lambda t: t[0],
    )
    return total, Arch(space.family, tuple(stages))
