"""``backends``, ``profile`` (with ``profile show`` and ``profile validate``) and ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..space import load_space
from .boundary import Command, Group
from .int8_options import Int8Flags, int8_options
from .output import print_json, print_table

#: Share of a table's entries left unsettled above which ``profile`` warns: the fmnist tables of quiet hours
#: left 0-14% unsettled, the one profiled in a slow spell of 2026-12-03 17:03 (not validated) 39%;
#: vit-resnas-tiny's cold entries leave about half (docs/latency.md).
UNSETTLED_WARNING = 0.25

if TYPE_CHECKING:
    from ..latency import TableSummary
    from ..runtime import Protocol


@click.command(cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def backends(as_json: bool) -> None:
    """List the runtime backends, whether each is usable here, and why not."""
    from ..runtime import backend_status

    rows = backend_status()
    if as_json:
        print_json(rows)
        return
    print_table("runtime backends", ["backend", "device", "precisions", "usable", "version", "why not"], [
        (r["name"], r["device"], "/".join(r["precisions"]), "yes" if r["available"] else "no", r["version"] or "-",
         r["reason"] or "") for r in rows
    ])


def _protocol(warmup_s: float | None, min_seconds: float | None, min_iterations: int | None,
              rounds: int | None, recheck_rounds: int | None, disturbed_above: float | None,
              recheck_slowest: int | None) -> Protocol:
    from dataclasses import replace

    from ..latency import TABLE_PROTOCOL

    changes: dict[str, Any] = {k: v for k, v in (("warmup_s", warmup_s), ("min_seconds", min_seconds),
                                                  ("min_iterations", min_iterations), ("rounds", rounds),
                                                  ("recheck_rounds", recheck_rounds),
                                                  ("disturbed_above", disturbed_above),
                                                  ("recheck_slowest", recheck_slowest)) if v is not None}
    if rounds is not None:
        changes["min_rounds"] = min(rounds, TABLE_PROTOCOL.fewest_rounds)
    return replace(TABLE_PROTOCOL, **changes)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--space", help="Preset (NAME or NAME@RES for a reduced resolution) or a space file.")
@click.option("--backend", help="Runtime backend (see `vitres-deploy backends`).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16 (GPU backends) or static int8 (ort-cpu, ort-trt, tensorrt: each block quantized in the "
                   "backend's int8 layout, see --int8-*).")
@int8_options
@click.option("--resolution", type=click.IntRange(min=1), help="Input resolution (same as --space NAME@RES).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (ONNX Runtime intra-op / torch), fixed and recorded.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes exporting ONNX files before timing (engines build one at a time on the GPU).")
@click.option("--cuda-graphs", is_flag=True, help="torch-cuda: replay a captured CUDA graph.")
@click.option("--cache", "cache_state", type=click.Choice(["auto", "warm", "cold"]), default="auto", show_default=True,
              help="Time entries with caches flushed before each run (cold) or not (warm); auto: cold when the "
                   "space's networks do not fit the last-level cache.")
@click.option("--warmup", "warmup_s", type=click.FloatRange(min=0), help="Warm-up seconds per pass (default 0.01).")
@click.option("--min-seconds", type=click.FloatRange(min=0), help="Timed seconds per pass, at least (default 0.1).")
@click.option("--min-iterations", type=click.IntRange(min=1),
              help="Timed iterations per pass, at least (default 20).")
@click.option("--rounds", type=click.IntRange(min=1),
              help="Interleaved timing passes per entry, at most (default 6: at least 3, more until the two best "
                   "agree within 3%; a fresh runner each). Validation, the drift check and the export gate use the "
                   "same protocol.")
@click.option("--recheck-rounds", type=click.IntRange(min=0),
              help="Rechecks at the end (default 2): a sample of the entries is timed again, and if they read more "
                   "than 3% lower than they settled on, the machine has become quieter and every entry gets one more "
                   "pass. 0 turns it off.")
@click.option("--recheck-slowest", type=click.IntRange(min=0),
              help="Entries of the highest latency each recheck also times again (default 5: the widest entries "
                   "can be slowed on their own while the others read quiet); a lower pass lowers and reopens one.")
@click.option("--disturbed-above", type=click.FloatRange(min=0),
              help="An entry whose lowest pass was timed while the entries timed around it read more than this "
                   "fraction above their own values gets another pass, up to --rounds (default 0.1: the machine "
                   "was in a slow spell when the entry found its best level). 0 turns it off.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Table file [default: profiles/<device>/<space>-<backend>-<precision>-b<batch>.json].")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted table (at --out or the default path) with the same settings.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table.")
@click.pass_context
def profile(ctx: click.Context, space: str | None, backend: str | None, batch: int, precision: str,
            resolution: int | None, threads: int, workers: int, cuda_graphs: bool, cache_state: str,
            warmup_s: float | None, min_seconds: float | None, min_iterations: int | None, rounds: int | None,
            recheck_rounds: int | None, recheck_slowest: int | None, disturbed_above: float | None,
            out: Path | None, resume: bool,
            as_json: bool, int8: Int8Flags) -> None:
    """Measure every block choice of a space into a latency table (subcommands: show, validate, check)."""
    if ctx.invoked_subcommand is not None:
        return
    if not space or not backend:
        raise click.UsageError("profile needs --space and --backend (or a subcommand: show, validate, check)")
    from ..convert.int8 import Int8Settings
    from ..latency import ProfileSettings, TableSummary, profile_space
    from ..runtime import get_backend

    measured = load_space(space)
    if resolution is not None:
        measured = measured.at_resolution(resolution)
    settings = ProfileSettings(backend=backend, precision=precision, batch=batch, threads=threads,
                               protocol=_protocol(warmup_s, min_seconds, min_iterations, rounds, recheck_rounds,
                                                  disturbed_above, recheck_slowest),
                               cuda_graphs=cuda_graphs, workers=workers, cache_state=cache_state,
                               int8=int8.settings(get_backend(backend).int8_layout or "ort-cpu")
                               if precision == "int8" else Int8Settings())
    summary = TableSummary.of(profile_space(measured, settings, out, resume=resume, progress=True))
    if summary.unsettled_entries > UNSETTLED_WARNING * summary.entries:
        p = summary.meta.protocol
        click.echo(f"warning: {summary.unsettled_entries} of {summary.entries} entries did not settle (their two "
                   f"lowest passes more than {p.stable_within:.0%} apart after {p.rounds} passes): the machine was "
                   "noisy while they were timed; `vitres-deploy profile validate` tells whether the table still "
                   "predicts within its target", err=True)
    _show(summary, as_json)


def _show(s: TableSummary, as_json: bool) -> None:
    if as_json:
        print_json(s.to_dict())
        return
    m, p = s.meta, s.meta.protocol
    fingerprint = f" (fingerprint {m.fingerprint['id']})" if m.fingerprint.get("id") else ""
    click.echo(f"{s.path}\n  {m.space} ({m.resolution}px) on {m.device}{fingerprint}: {m.backend} "
               f"{m.backend_version}, {m.precision}, batch {m.batch}, {m.threads} thread(s), {m.date}")
    passes = (f" in {p.fewest_rounds}-{p.rounds} interleaved passes until the best two agree within "
              f"{p.stable_within:.0%}" if p.fewest_rounds < p.rounds else
              f" in each of {p.rounds} interleaved passes" if p.rounds > 1 else "")
    passes += f", up to {p.recheck_rounds} recheck(s) at the end" if p.recheck_rounds else ""
    passes += f" (each with the {p.recheck_slowest} slowest entries)" if p.recheck_rounds and p.recheck_slowest else ""
    passes += (f", another pass when the best one was timed while the others read > {p.disturbed_above:.0%} slow"
               if p.disturbed_above else "")
    statistic = (f"lowest median over {p.window_s * 1e3:g} ms windows" if p.statistic == "window_floor"
                 else "median of the pass medians")
    click.echo(f"  protocol: warm-up {p.warmup_s} s, >= {p.min_iterations} runs and >= {p.min_seconds} s per pass"
               + passes + ", " + (f"caches flushed before each run ({p.flush_cache_mb} MB): cold" if p.flush_cache_mb
                                  else "warm caches") + f"; statistic: {statistic}")
    click.echo(f"  {s.entries}/{s.expected_entries} entries" + ("" if s.complete else " (incomplete)")
               + (f", per-call overhead {s.overhead_ms * 1e3:.1f} µs" if s.overhead_ms is not None else "")
               + (f", {s.unsettled_entries} unsettled (best two passes > {p.stable_within:.0%} apart)"
                  if s.unsettled_entries else ""))
    print_table(None, ["kind", "entries", "min (ms)", "max (ms)"],
                [(k, v.count, v.min_ms, v.max_ms) for k, v in s.kinds.items()])
    c = s.correction
    click.echo(f"  correction ({c.model}): predicted = {c.scale:.4f} * sum(entry - {c.per_call_ms:.4g} ms)"
               f" {'-' if c.offset_ms < 0 else '+'} {abs(c.offset_ms):.4g} ms"
               + (f" + {c.spill_ms_per_mib:.4g} ms per MiB of weights above {c.spill_above_mib:.3g} MiB"
                  if c.spill_ms_per_mib else ""))
    if s.range is not None:
        click.echo(f"  achievable range: {s.range.fastest_ms:.4g} ms .. {s.range.slowest_ms:.4g} ms")
    v = s.validation
    if v is not None:
        e = v.errors
        click.echo(f"  validation ({v.test_samples} held-out of {v.samples}): MAPE {e.mape:.2f}%, max "
                   f"{e.max_error_pct:.1f}%, within ±5% {e.within_5pct:.0%}, within ±10% {e.within_10pct:.0%}, "
                   f"Kendall τ {e.kendall_tau:.3f}, Spearman {e.spearman:.3f}, noise CV {v.noise_cv_median:.1%}")
        if v.repeatability is not None:
            r = v.repeatability
            click.echo(f"  repeatability (the same networks measured twice): |change| median "
                       f"{r.median_change_pct:.1f}%, 90th percentile {r.p90_change_pct:.1f}%, max "
                       f"{r.max_change_pct:.1f}%"
                       + ("" if r.shift_pct is None else f"; the machine moved {r.shift_pct:+.1f}% between the runs "
                          f"(median change), the networks around that move: 90th percentile "
                          f"{r.p90_around_shift_pct:.1f}%"))
        if v.macs_linear is not None:
            b = v.macs_linear
            click.echo(f"  MACs-linear model on the same networks: MAPE {b.mape:.2f}%, within ±10% "
                       f"{b.within_10pct:.0%}, Kendall τ {b.kendall_tau:.3f}")
        verdict = ("validated" if v.validated else
                   f"NOT validated: {'measurement noise' if v.blame == 'noise' else 'the prediction'} is to blame"
                   if v.blame else "NOT validated")
        margin = f"; search margin {v.margin:.1%}" if v.margin is not None else ""
        click.echo(f"  verdict: {verdict} (target: within ±10% >= 95%, τ >= 0.9){margin}")


@profile.command("show")
@click.argument("table_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw latency per block choice to this image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(table_path: Path, plot_path: Path | None, as_json: bool) -> None:
    """Summarise a latency table (and optionally plot it)."""
    from ..latency import LatencyTable, TableSummary
    from ..latency.plot import check_plot_path, plot_table

    if plot_path is not None:
        check_plot_path(plot_path)
    table = LatencyTable.load(table_path)
    _show(TableSummary.of(table), as_json)
    if plot_path is not None:

        plot_table(table, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)


@profile.command("validate")
@click.option("--profile", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table to validate (the correction and report are stored in it).")
@click.option("--samples", type=click.IntRange(min=4), default=40, show_default=True,
              help="Sub-networks to measure, spread over the latency range (half fit the correction, half are "
                   "reported).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sub-networks drawn over the latency range.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes exporting the networks before timing.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the validated table here instead [default: the table itself; a shipped table, which is "
                   "read-only, is copied to profiles/<device>/<file> in the current folder].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(table_path: Path, samples: int, seed: int, workers: int, out: Path | None, as_json: bool) -> None:
    """Measure sub-networks spread over the latency range end to end, fit the correction on half, report on the
    other half."""
    from ..latency import LatencyTable, TableSummary, validate_table

    table = LatencyTable.load(table_path)
    report = validate_table(table, samples=samples, seed=seed, workers=workers, progress=True, out=out)
    click.echo(f"validated table written to {table.path}", err=True)
    if as_json:
        print_json(report.to_dict())
        return
    print_table(f"validation of {table_path} (held-out half)", ["arch", "predicted (ms)", "measured (ms)",
                                                               "error %", "CV"],
                [(r.arch, r.predicted_ms, r.measured_ms, r.error_pct, r.cv) for r in report.test_rows])
    _show(TableSummary.of(table), False)


@profile.command("check")
@click.option("--profile", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table to check against this machine.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="The table drifted when the median measured/table ratio is outside 1 ± this.")
@click.option("--allow-other-device", is_flag=True, help="Check a table measured on other hardware anyway.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes exporting the checked models before timing.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=25.0, show_default=True,
              help="Beyond the three passes every item gets, a round of passes starts only when it is expected "
                   "to end within this many seconds of the check's start (items left unsettled are counted).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(table_path: Path, tolerance: float, allow_other_device: bool, workers: int, seconds: float,
          as_json: bool) -> None:
    """Re-time a stratified handful of entries and networks: does the table still describe this machine?"""
    from ..errors import ProfileError
    from ..latency import LatencyTable
    from ..latency.drift import check_drift, check_fingerprint

    table = LatencyTable.load(table_path)
    differences = check_fingerprint(table, allow_other_device)
    report = check_drift(table, tolerance=tolerance, workers=workers, seconds=seconds)
    if as_json:
        print_json(report.to_dict())
    else:
        for difference in differences:
            click.echo(f"note: other hardware: {difference}", err=True)
        print_table(f"drift check of {table_path} ({report.seconds:.1f} s)",
                    ["item", "kind", "table (ms)", "measured (ms)", "ratio"],
                    [(i.name, i.kind, i.table_ms, i.measured_ms, round(i.ratio, 3)) for i in report.items])
        click.echo(f"{report.describe()}: " + ("DRIFTED" if report.drifted else "ok")
                   + f" (tolerance ±{tolerance:.0%})")
    if report.drifted:
        raise ProfileError(f"{table_path} no longer describes this machine: {report.describe()}; re-profile it, "
                           "or let search and export rescale it (--rescale)")


@click.command(cls=Command)
@click.option("--profile", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table of the arch's space.")
@click.option("--arch", "arch_spec", required=True, help="Architecture file, max, min or random:SEED.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(table_path: Path, arch_spec: str, as_json: bool) -> None:
    """Predicted end-to-end latency of an architecture from a latency table."""
    from ..archfile import read_arch_file, resolve_arch
    from ..latency import LatencyTable
    from ..latency import predict as predict_latency

    table = LatencyTable.load(table_path)
    # a file's arch is taken as it is: the table's own check names an arch of another space
    arch = read_arch_file(arch_spec).arch if Path(arch_spec).is_file() else resolve_arch(arch_spec, table.space)
    p = predict_latency(table, arch)
    m = table.meta
    result = {**p.to_dict(), "space": table.space.name, "backend": m.backend, "precision": m.precision,
              "batch": m.batch, "device": m.device, "arch": arch.to_dict(), "hash": arch.hash,
              "validated": table.validation is not None}
    if as_json:
        print_json(result)
        return
    if table.validation is None:
        click.echo("note: this table is not validated yet (`vitres-deploy profile validate`)", err=True)
    click.echo(f"{p.latency_ms:.4g} ms  ({arch.short()} on {m.device}, {m.backend}, {m.precision}, batch {m.batch})")
    print_table(None, ["part", "ms"], list(p.parts_ms.items()))


COMMANDS = [backends, profile, predict]
