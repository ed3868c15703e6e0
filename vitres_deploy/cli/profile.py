"""``backends``, ``profile`` (with ``profile show`` and ``profile validate``) and ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..space import load_space
from .boundary import Command, Group
from .output import print_json, print_table


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


def _protocol(warmup: float | None, min_seconds: float | None, min_iterations: int | None, rounds: int) -> Any:
    from dataclasses import replace

    from ..latency import TABLE_PROTOCOL

    changes = {k: v for k, v in (("warmup_s", warmup), ("min_seconds", min_seconds),
                                  ("min_iterations", min_iterations), ("rounds", rounds)) if v is not None}
    return replace(TABLE_PROTOCOL, **changes)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--space", "space_name", help="Preset (NAME or NAME@RES for a reduced resolution) or a space file.")
@click.option("--backend", help="Runtime backend (see `vitres-deploy backends`).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch size.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--resolution", type=click.IntRange(min=1), help="Input resolution (same as --space NAME@RES).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (ONNX Runtime intra-op / torch), fixed and recorded.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes exporting ONNX files / building engines before timing.")
@click.option("--cuda-graphs", is_flag=True, help="torch-cuda: replay a captured CUDA graph.")
@click.option("--cache", "cache_state", type=click.Choice(["auto", "warm", "cold"]), default="auto", show_default=True,
              help="Time entries with caches flushed before each run (cold) or not (warm); auto: cold when the "
                   "space's networks do not fit the last-level cache.")
@click.option("--warmup", type=click.FloatRange(min=0), help="Warm-up seconds per entry (default 0.05).")
@click.option("--min-seconds", type=click.FloatRange(min=0), help="Timed seconds per entry, at least (default 0.2).")
@click.option("--min-iterations", type=click.IntRange(min=1),
              help="Timed iterations per entry, at least (default 100).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interleaved timing passes over all entries (a fresh runner each; the median of the pass "
                   "medians is kept): more rounds average out a shared machine's drift. Validation uses the same.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Table file [default: profiles/<device>/<space>-<backend>-<precision>-b<batch>.json].")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted table (at --out or the default path) with the same settings.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table.")
@click.pass_context
def profile(ctx: click.Context, space_name: str | None, backend: str | None, batch: int, precision: str,
            resolution: int | None, threads: int, workers: int, cuda_graphs: bool, cache_state: str,
            warmup: float | None,
            min_seconds: float | None, min_iterations: int | None, rounds: int, out: Path | None, resume: bool,
            as_json: bool) -> None:
    """Measure every block choice of a space into a latency table (subcommands: show, validate)."""
    if ctx.invoked_subcommand is not None:
        return
    if not space_name or not backend:
        raise click.UsageError("profile needs --space and --backend (or a subcommand: show, validate)")
    from ..latency import ProfileSettings, profile_space
    from ..latency.profiler import noisy_entries

    space = load_space(space_name)
    if resolution is not None:
        space = space.at_resolution(resolution)
    settings = ProfileSettings(backend=backend, precision=precision, batch=batch, threads=threads,
                               protocol=_protocol(warmup, min_seconds, min_iterations, rounds), cuda_graphs=cuda_graphs,
                               workers=workers, cache_state=cache_state)
    table = profile_space(space, settings, out, resume=resume, progress=True)
    noisy = noisy_entries(table)
    if noisy:
        click.echo(f"warning: {len(noisy)} of {len(table.entries)} entries had a coefficient of variation above "
                   f"{table.meta.protocol.max_cv:.0%}: is the machine busy? (medians are used)", err=True)
    _show(table, as_json)


def _summary(table: Any) -> dict[str, Any]:
    from ..latency import latency_range
    from ..latency.profiler import noisy_entries

    by_kind: dict[str, list[float]] = {}
    for e in table.entries.values():
        by_kind.setdefault(e.kind, []).append(e.latency_ms)
    summary: dict[str, Any] = {
        "path": str(table.path) if table.path else None,
        "meta": table.meta.to_dict(),
        "entries": len(table.entries),
        "expected_entries": len(table.expected_keys()),
        "complete": table.complete,
        "overhead_ms": table.overhead.median_ms if table.overhead else None,
        "noisy_entries": len(noisy_entries(table)),
        "kinds": {k: {"count": len(v), "min_ms": min(v), "max_ms": max(v)} for k, v in by_kind.items()},
        "correction": table.correction.to_dict(),
        "validation": {k: v for k, v in (table.validation or {}).items() if k != "rows"} or None,
    }
    if table.complete:
        summary["range"] = latency_range(table).to_dict()
    return summary


def _show(table: Any, as_json: bool) -> None:
    s = _summary(table)
    if as_json:
        print_json(s)
        return
    m = s["meta"]
    click.echo(f"{s['path']}\n  {m['space']} ({m['resolution']}px) on {m['device']}: {m['backend']} "
               f"{m['backend_version']}, {m['precision']}, batch {m['batch']}, {m['threads']} thread(s), {m['date']}")
    flush = m["protocol"].get("flush_cache_mb", 0)
    click.echo(f"  protocol: warm-up {m['protocol']['warmup_s']} s, >= {m['protocol']['min_iterations']} runs and >= "
               f"{m['protocol']['min_seconds']} s per entry"
               + (f" in each of {m['protocol']['rounds']} interleaved passes" if m["protocol"].get("rounds", 1) > 1
                  else "") + ", "
               + (f"caches flushed before each run ({flush} MB): cold" if flush else "warm caches"))
    click.echo(f"  {s['entries']}/{s['expected_entries']} entries" + ("" if s["complete"] else " (incomplete)")
               + (f", per-call overhead {s['overhead_ms'] * 1e3:.1f} µs" if s["overhead_ms"] is not None else "")
               + (f", {s['noisy_entries']} noisy (CV > {m['protocol']['max_cv']:.0%})" if s["noisy_entries"] else ""))
    print_table(None, ["kind", "entries", "min (ms)", "max (ms)"],
                [(k, v["count"], v["min_ms"], v["max_ms"]) for k, v in s["kinds"].items()])
    c = s["correction"]
    click.echo(f"  correction ({c['model']}): predicted = {c['scale']:.4f} * sum(entry - {c['per_call_ms']:.4g} ms)"
               f" {'-' if c['offset_ms'] < 0 else '+'} {abs(c['offset_ms']):.4g} ms")
    if "range" in s:
        click.echo(f"  achievable range: {s['range']['fastest_ms']:.4g} ms .. {s['range']['slowest_ms']:.4g} ms")
    v = s["validation"]
    if v:
        click.echo(f"  validation ({v['test_samples']} held-out of {v['samples']}): MAPE {v['mape']:.2f}%, max "
                   f"{v['max_error_pct']:.1f}%, within ±5% {v['within_5pct']:.0%}, within ±10% "
                   f"{v['within_10pct']:.0%}, Kendall τ {v['kendall_tau']:.3f}, Spearman {v['spearman']:.3f}, "
                   f"noise CV {v['noise_cv_median']:.1%}")


@profile.command("show")
@click.argument("table_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw latency per block choice to this image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(table_path: Path, plot_path: Path | None, as_json: bool) -> None:
    """Summarise a latency table (and optionally plot it)."""
    from ..latency import LatencyTable

    table = LatencyTable.load(table_path)
    _show(table, as_json)
    if plot_path is not None:
        from ..latency.plot import plot_table

        plot_table(table, plot_path)
        click.echo(f"plot written to {plot_path}", err=True)


@profile.command("validate")
@click.option("--profile", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table to validate (the correction and report are stored in it).")
@click.option("--samples", type=click.IntRange(min=4), default=40, show_default=True,
              help="Random sub-networks to measure (half fit the correction, half are reported).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sub-networks.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes exporting the networks before timing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def validate(table_path: Path, samples: int, seed: int, workers: int, as_json: bool) -> None:
    """Measure random sub-networks end to end, fit the correction on half, report on the other half."""
    from ..latency import LatencyTable, validate_table

    table = LatencyTable.load(table_path)
    report = validate_table(table, samples=samples, seed=seed, workers=workers, progress=True)
    if as_json:
        print_json(report)
        return
    print_table(f"validation of {table_path} (held-out half)", ["arch", "predicted (ms)", "measured (ms)",
                                                               "error %", "CV"],
                [(r["arch"], r["predicted_ms"], r["measured_ms"], r["error_pct"], r["cv"])
                 for r in report["rows"] if r["split"] == "test"])
    _show(table, False)


@click.command(cls=Command)
@click.option("--profile", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table of the arch's space.")
@click.option("--arch", "arch_spec", required=True, help="Architecture file, max, min or random:SEED.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(table_path: Path, arch_spec: str, as_json: bool) -> None:
    """Predicted end-to-end latency of an architecture from a latency table."""
    import json

    from ..arch import Arch
    from ..archfile import resolve_arch
    from ..errors import ArchError
    from ..latency import LatencyTable
    from ..latency import predict as predict_latency

    table = LatencyTable.load(table_path)
    if Path(arch_spec).is_file():
        try:
            arch = Arch.from_dict(json.loads(Path(arch_spec).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArchError(f"arch file {arch_spec} is not valid JSON: {e}") from None
    else:
        arch = resolve_arch(arch_spec, table.space)
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
