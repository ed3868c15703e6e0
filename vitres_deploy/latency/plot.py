"""Figure of a latency table: latency per block choice for each stage, the other entries, and validation.

Drawn on a bare :class:`matplotlib.figure.Figure` rendered by the Agg canvas (no pyplot, no global
backend switch); matplotlib is imported only here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SettingsError
from ..files import atomic_write
from .entries import EntrySpec
from .table import LatencyTable


def check_plot_path(out: Path) -> None:
    """Raise :class:`SettingsError` (field ``plot_path``) unless ``out`` has an image format matplotlib writes
    and its folder exists (no folder is created for a plot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if out.suffix[1:].lower() not in formats:
        raise SettingsError(f"plot_path {out}: unknown image format {out.suffix or '(none)'!r}; use one of "
                            f"{', '.join('.' + f for f in sorted(formats))}", field="plot_path")
    if not out.parent.is_dir():
        raise SettingsError(f"plot_path {out}: folder {out.parent} does not exist", field="plot_path")


def plot_table(table: LatencyTable, out: str | Path) -> Path:
    """Write a PNG (or any format matplotlib knows from the suffix) summarising ``table``; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    check_plot_path(out)
    space = table.space
    n_stages = len(space.stages)
    panels = n_stages + 1 + (table.validation is not None)
    fig = Figure(figsize=(4.4 * panels, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    specs = {k: EntrySpec.from_key(k, space) for k in table.entries}

    for i, stage in enumerate(space.stages, 1):
        ax = axes[i - 1]
        colors = {d: f"C{j}" for j, d in enumerate(stage.embed_dims)}
        styles = dict(zip(stage.heads, ("-", "--", ":", "-.") * 4))
        for d in stage.embed_dims:
            for h in stage.heads:
                xs, ys = [], []
                for m in sorted(stage.mlp_hidden):
                    e = table.entries.get(EntrySpec("block", i, (d, h, m)).key)
                    if e is not None:
                        xs.append(m)
                        ys.append(e.latency_ms * 1e3)
                if xs:
                    ax.plot(xs, ys, styles[h], color=colors[d], marker="o", ms=3, label=f"C={d} h={h}")
        ax.set_title(f"stage {i} blocks ({space.tokens[i - 1]} tokens)")
        ax.set_xlabel("MLP hidden width")
        ax.set_ylabel("latency (µs)")
        ax.legend(fontsize=6, ncol=2)

    ax = axes[n_stages]
    others = sorted((s for s in specs.values() if s.kind != "block"), key=lambda s: (s.stage, s.kind, s.dims))
    ax.barh([s.key for s in others], [table.entries[s.key].latency_ms * 1e3 for s in others], color="C7")
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title("stem, reductions, head")
    ax.set_xlabel("latency (µs)")

    report = table.validation
    if report is not None:
        ax = axes[-1]
        for split, marker in (("fit", "x"), ("test", "o")):
            pts = [(r.measured_ms, r.predicted_ms) for r in report.rows if r.split == split]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, s=14, label=split)
        if report.rows:
            lo = min(min(r.measured_ms, r.predicted_ms) for r in report.rows) * 0.9
            hi = max(max(r.measured_ms, r.predicted_ms) for r in report.rows) * 1.1
            ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
            ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="k", alpha=0.08, label="±10%")
        ax.set_title(f"validation: MAPE {report.errors.mape:.1f}%, τ {report.errors.kendall_tau:.2f}")
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
        ax.legend(fontsize=7)

    m = table.meta
    fig.suptitle(f"{m.space} · {m.backend} {m.backend_version} · {m.precision} · batch {m.batch} · "
                 f"{m.threads} thread(s) · {m.device}", fontsize=9)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110), suffix=f".tmp{out.suffix}")  # format from suffix
