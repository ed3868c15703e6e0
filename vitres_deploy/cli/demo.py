"""``demo``: the whole pipeline on the embedded default (CPU, ONNX Runtime, fmnist-demo, Fashion-MNIST)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from .boundary import Command
from .output import print_json, print_table


@click.command(cls=Command)
@click.option("--out", "out", default=None, help="Output folder (default: runs/demo-<timestamp>).")
@click.option("--resume", is_flag=True,
              help="Continue the demo run in --out: reuse its finished steps, resume an unfinished one, with the "
                   "same settings (--allow-over-budget may be added).")
@click.option("--reuse-profile", is_flag=True,
              help="Take the shipped fmnist ort-cpu table (the one measured on this machine's hardware, if any) "
                   "instead of measuring one.")
@click.option("--budget-ms", type=float, default=None, help="Latency budget (default: from the table's range).")
@click.option("--budget-fraction", type=float, default=0.35, show_default=True,
              help="Budget = fastest + FRACTION x (slowest - fastest) predicted latency of the space.")
@click.option("--validate-samples", type=int, default=20, show_default=True,
              help="Sub-networks measured end to end to validate the table.")
@click.option("--supernet", default="fmnist-demo", show_default=True, help="Checkpoint of the fmnist space.")
@click.option("--data", "data_dir", default=None, help="Fashion-MNIST directory (default: Debian's package).")
@click.option("--eval-limit", type=int, default=None,
              help="Evaluate on the first N images of each split only (a quick run; default: all).")
@click.option("--eval-threads", type=click.IntRange(min=1), default=None,
              help="torch threads of the search's accuracy evaluations and of the test-split accuracy, where nothing "
                   "is timed [default: OMP_NUM_THREADS if set, else every CPU this process may use].")
@click.option("--allow-over-budget", is_flag=True,
              help="Write the bundle even if the export measures over the budget (the summary says by how much).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(out: str | None, resume: bool, reuse_profile: bool, budget_ms: float | None, budget_fraction: float,
         validate_samples: int, supernet: str, data_dir: str | None, eval_limit: int | None,
         eval_threads: int | None, allow_over_budget: bool, as_json: bool) -> None:
    """Profile -> validate -> search -> export -> one summary, all under one output folder."""
    from ..app.demo import DemoOptions, run_demo

    opts = DemoOptions(out=Path(out or f"runs/demo-{dt.datetime.now():%Y%m%d-%H%M%S}"), resume=resume,
                       reuse_profile=reuse_profile, budget_ms=budget_ms, budget_fraction=budget_fraction,
                       validate_samples=validate_samples, supernet=supernet, data_dir=data_dir, eval_limit=eval_limit,
                       eval_threads=eval_threads, allow_over_budget=allow_over_budget)
    result = run_demo(opts, say=lambda line: click.echo(line, err=as_json))
    if as_json:
        print_json(result.to_dict())
        return
    s, v = result.summary, result.summary.validation
    print_table(f"vitres-deploy demo: {supernet} on ort-cpu", ["", "value"], [
        ("latency budget", f"{s.budget_ms:.4f} ms (space: {s.achievable_ms[0]:.4f}-{s.achievable_ms[1]:.4f})"),
        ("predicted latency", f"{s.predicted_ms:.4f} ms (window kept {s.margin:.1%} below the budget)"),
        ("measured latency (ONNX Runtime)",
         f"{s.measured_ms:.4f} ms: {'within' if s.over_budget <= 0 else 'OVER'} the budget ({s.over_budget:+.1%})"
         if s.measured_ms is not None and s.over_budget is not None else "n/a"),
        ("MACs / params", f"{s.macs / 1e6:.2f}M / {s.params / 1e6:.3f}M"),
        ("arch", s.arch),
        ("hold-out top-1 PyTorch / ONNX Runtime", f"{s.holdout_top1_pytorch:.2%} / {s.holdout_top1_onnxruntime:.2%}"),
        ("test top-1 PyTorch / ONNX Runtime", f"{s.test_top1_pytorch:.2%} / {s.test_top1_onnxruntime:.2%}"),
        ("table validation", f"MAPE {v.mape:.2f}%, within ±10% {v.within_10pct:.0%}, "
                             f"Kendall τ {v.kendall_tau:.3f} ({s.validation_samples} sub-networks, "
                             + ("validated" if s.validated else "NOT validated")
                             + (f"; repeatability p90 {s.repeat_p90_change_pct:.1f}%)"
                                if s.repeat_p90_change_pct is not None else ")")),
        ("search", f"{s.search_evaluations} sub-networks evaluated"),
        ("hold-out 95% interval of the best", f"{s.holdout_top1_ci95[0]:.2%}-{s.holdout_top1_ci95[1]:.2%}, "
                                              f"{s.within_ci95} other archs score inside it"),
    ])
    print_table("outputs", ["", "path"], sorted(result.paths.items()))
    click.echo("seconds per step: " + ", ".join(f"{k.split(' (')[0]}: {v}" for k, v in result.seconds.items()))


COMMANDS = [demo]
