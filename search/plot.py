"""``search.png``: hold-out top-1 against predicted latency for every evaluated arch, with the frontier,
the latency window of each budget and the arch chosen for it; for a precision search, each precision's archs
and the (arch, precision) chosen per budget (matplotlib, Agg, imported here only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..archfile import ArchFile
from ..files import atomic_write
from .constraints import Constraint
from .records import Record


def plot_search(path: Path, records: Sequence[Record], front: Sequence[Record], constraints: Sequence[Constraint],
                bests: Sequence[Record], title: str) -> None:
    """Draw the search into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    try:
        colors = plt.get_cmap("tab10")
        ax.scatter([r.latency_ms for r in records], [100 * r.holdout_top1 for r in records], s=9, color="0.6",
                   alpha=0.6, linewidths=0, label=f"evaluated ({len(records)})")
        right = max(r.latency_ms for r in records)  # the frontier holds its last accuracy up to the slowest arch
        ax.step([r.latency_ms for r in front] + [right], [100 * r.holdout_top1 for r in [*front, front[-1]]],
                where="post", color="black", linewidth=1.2, label="Pareto frontier")
        for i, (c, best) in enumerate(zip(constraints, bests)):
            color = colors(i % 10)
            ax.axvspan(c.low_ms, c.limit_ms, color=color, alpha=0.12, linewidth=0)
            ax.axvline(c.budget_ms, color=color, linestyle="--", linewidth=1.2, label=f"budget {c.budget_ms:g} ms")
            ax.scatter([best.latency_ms], [100 * best.holdout_top1], marker="*", s=220, color=color,
                       edgecolors="black", linewidths=0.8, zorder=5,
                       label=f"chosen: {100 * best.holdout_top1:.2f}% at {best.latency_ms:.3g} ms")
        _finish(fig, ax, path, "predicted latency (ms)", "hold-out top-1 (%)", title)
    finally:
        plt.close(fig)


def plot_precisions(path: Path, records: dict[str, Sequence[Record]], budgets_ms: Sequence[float],
                    winners: Sequence[ArchFile]) -> None:
    """Draw a precision search into ``path`` (PNG, written atomically): each precision's evaluated archs in its
    own colour (``mixed``: precision per stage), the budgets, and the (arch, precision) chosen for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    try:
        colors = dict(zip(records, plt.get_cmap("tab10").colors))
        for precision, rs in records.items():
            ax.scatter([r.latency_ms for r in rs], [100 * r.holdout_top1 for r in rs], s=10, alpha=0.6,
                       color=colors[precision], linewidths=0, label=f"{precision}: {len(rs)} evaluated")
        for budget, winner in zip(budgets_ms, winners):
            s = winner.searched
            assert s is not None  # a search's best file
            ax.axvline(budget, color="0.3", linestyle="--", linewidth=1.0)
            search = "mixed" if s.int8_stages else s.precision
            ax.scatter([s.latency_ms], [100 * s.holdout_top1], marker="*", s=240, color=colors[search],
                       edgecolors="black", linewidths=0.8, zorder=5,
                       label=f"{budget:g} ms: {s.plan}, {100 * s.holdout_top1:.2f}% at {s.latency_ms:.3g} ms")
        _finish(fig, ax, path, "predicted latency (ms), each search's own tables",
                "hold-out top-1 (%), measured in the precision",
                "architecture and precision search: dashed lines are the budgets")
    finally:
        plt.close(fig)


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label the axes, grid, legend on the right, and write the figure to ``path`` (PNG, atomically)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
