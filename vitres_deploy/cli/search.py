"""``search``: the most accurate sub-network of a supernet under one or several latency budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import SettingsError
from ..search.evolution import PRESETS
from .boundary import Command
from .output import human, print_json, print_table
from .table_options import trust_options

_SCALES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_budgets(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"1.0,1.5,40%"`` -> ``((1.0, 1.5), (0.4,))``: budgets in ms, and budgets as a share of the table's
    achievable range (``40%``: 40% of the way from the fastest to the slowest arch). Anything else is a
    one-line :class:`SettingsError`."""
    parts = [part.strip() for part in text.split(",")]
    try:
        budgets = tuple(float(p) for p in parts if not p.endswith("%"))
        shares = tuple(float(p[:-1]) / 100 for p in parts if p.endswith("%"))
    except ValueError:
        raise SettingsError(f"budgets_ms {text!r}: give a latency in ms, a share of the table's range (40%), or a "
                            "comma-separated list (1.0,1.5,2)", field="budgets_ms") from None
    if any(not b > 0 or b == float("inf") for b in budgets):
        raise SettingsError(f"budgets_ms {text!r}: budgets must be positive finite milliseconds", field="budgets_ms")
    if any(not 0 <= f <= 1 for f in shares):
        raise SettingsError(f"budgets_ms {text!r}: a share of the range is 0% to 100%", field="budgets_ms")
    return budgets, shares


def parse_count(text: str | None, field: str) -> int | None:
    """``"12M"`` -> 12000000 (suffixes k, M, G); None stays None. Errors name ``field``."""
    if text is None:
        return None
    number, suffix = (text[:-1], text[-1].lower()) if text[-1:].isalpha() else (text, "")
    try:
        value = float(number) * _SCALES[suffix]
    except (ValueError, KeyError):
        raise SettingsError(f"{field} {text!r}: give a count such as 12000000, 12M, 500k or 1.5G",
                            field=field) from None
    if value <= 0:
        raise SettingsError(f"{field} {text!r} must be positive", field=field)
    return int(value)


def _preset_help() -> str:
    paper, demo = PRESETS["paper"], PRESETS["demo"]
    return (f"Evolution settings: paper ({paper.population} + {paper.iterations} x "
            f"({paper.mutations}+{paper.crossovers}) evaluations per budget) or demo ({demo.population} + "
            f"{demo.iterations} x ({demo.mutations}+{demo.crossovers}), sized for a CPU). Flags below override it.")


@click.command(cls=Command)
@click.option("--supernet", "ckpt", required=True, help="Supernet checkpoint file or fmnist-demo.")
@click.option("--profile", "table_paths", required=True,
              help="Latency table of the target device (`vitres-deploy profile`); several of one device and batch in "
                   "different precisions (fp32.json,int8.json) search the architecture and the precision together.")
@click.option("--budget-ms", "budgets_ms", required=True,
              help="Latency budget B in ms, or several (1.0,1.5,2.0): one search sharing its evaluations. NN% is "
                   "NN% of the way from the fastest to the slowest arch the table predicts (after the drift check).")
@click.option("--max-macs", help="Also cap MACs (e.g. 12M).")
@click.option("--max-params", help="Also cap parameters (e.g. 1.5M).")
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Search directory (evaluated.jsonl, best*.json, pareto.json, search.png).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and inputs, same result.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="paper", show_default=True, help=_preset_help())
@click.option("--population", type=int, help="Initial random population per budget.")
@click.option("--iterations", type=int, help="Evolution iterations after the initial population.")
@click.option("--parents", type=int, help="Top archs (of everything evaluated) that parent each iteration.")
@click.option("--mutations", type=int, help="Mutants per iteration and budget.")
@click.option("--crossovers", type=int, help="Uniform crossovers per iteration and budget.")
@click.option("--mutation-prob", type=float, help="Per-gene mutation probability.")
@click.option("--alpha", type=float, default=0.9, show_default=True,
              help="Latency window [alpha*L, L] with L = B / (1 + margin): candidates faster than alpha*L are left "
                   "out.")
@click.option("--margin", type=float,
              help="Keep predicted latency this fraction below the budget (default: the table's validated "
                   "under-prediction, 90th percentile of its held-out networks; 0 for a table not validated).")
@trust_options("searching")
@click.option("--eval-limit", type=click.IntRange(min=1), help="Evaluate on the first N hold-out images (quick runs).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True, help="Evaluation batch.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=512, show_default=True,
              help="int8 tables: training images (hold-out excluded, drawn by --seed) each candidate's int8 network is "
                   "calibrated on, quantized with the table's int8 settings.")
@click.option("--per-stage", is_flag=True,
              help="With an fp32 and an int8 table: also search precision per stage (int8 in some stages, fp32 in the "
                   "others) jointly with the architecture, in OUT/mixed; the float/int8 boundary is measured first.")
@click.option("--boundary-networks", type=click.IntRange(min=1), default=6, show_default=True,
              help="--per-stage: seeded mixed networks timed to measure the float/int8 boundary (idle machine).")
@click.option("--boundary-us", type=float,
              help="--per-stage: the cost of one float/int8 boundary in microseconds, instead of measuring it (e.g. "
                   "from an earlier search's mixed/boundary.json on this device).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch CPU threads per process. More can be many times slower on a shared machine; to use N "
                   "cores run N processes: torchrun --nproc_per_node N -m vitres_deploy.cli search ...")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Evaluation device (default: cuda if available).")
@click.option("--resume", is_flag=True, help="Continue the search in --out (same flags) from its evaluated.jsonl.")
@click.option("--json", "as_json", is_flag=True, help="Print best.json (a list for several budgets).")
def search(ckpt: str, table_paths: str, budgets_ms: str, max_macs: str | None, max_params: str | None,
           data_dir: str | None, out_dir: Path, seed: int, preset: str, alpha: float, eval_limit: int | None,
           batch_size: int, calibration_images: int, threads: int, device: str | None, resume: bool, as_json: bool,
           margin: float | None, no_drift_check: bool, rescale: bool, allow_other_device: bool, per_stage: bool,
           boundary_networks: int, boundary_us: float | None, **overrides: float | None) -> None:
    """Evolutionary search for the most accurate sub-network under a latency budget (works under torchrun)."""
    import dataclasses

    import torch

    from ..checkpoint import load_checkpoint
    from ..data import open_checkpoint_data
    from ..distributed import join_ranks
    from ..latency import LatencyTable
    from ..latency.quantization import table_int8_settings
    from ..quantized import Calibration
    from ..search import SearchOptions, plan_search, run_search

    budgets, shares = parse_budgets(budgets_ms)
    caps = parse_count(max_macs, "max_macs"), parse_count(max_params, "max_params")
    evolution = dataclasses.replace(PRESETS[preset], seed=seed, **{k: v for k, v in overrides.items() if v is not None})
    options = SearchOptions(budgets_ms=budgets, budget_shares=shares, out_dir=out_dir, evolution=evolution,
                            alpha=alpha, max_macs=caps[0],
                            max_params=caps[1], resume=resume, eval_limit=eval_limit, batch_size=batch_size,
                            margin=margin, drift_check=not no_drift_check, rescale=rescale,
                            allow_other_device=allow_other_device, per_stage=per_stage,
                            boundary_networks=boundary_networks,
                            boundary_ms=None if boundary_us is None else boundary_us / 1e3)
    torch.set_num_threads(threads)
    tables = [LatencyTable.load(Path(p.strip())) for p in table_paths.split(",") if p.strip()]
    if not tables:
        raise SettingsError("table_paths: give a latency table file", field="table_paths")
    int8 = [t for t in tables if t.meta.precision == "int8"]
    if int8:
        options = dataclasses.replace(options, calibration=Calibration(
            calibration_images, seed, table_int8_settings(int8[0])))
    if boundary_us is not None and not per_stage:
        raise SettingsError("boundary_us: the float/int8 boundary is a setting of --per-stage: add --per-stage, or "
                            "leave the boundary out", field="boundary_us")
    if per_stage and sorted(t.meta.precision for t in tables) != ["fp32", "int8"]:
        raise SettingsError("per_stage: precision per stage needs one fp32 and one int8 table of one device and batch "
                            "(--profile fp32.json,int8.json)", field="per_stage")
    if len(tables) > 1:
        _search_precisions(ckpt, tables, options, data_dir, device, as_json)
        return
    table, table_path = tables[0], tables[0].path
    with join_ranks(device) as ranks:
        plan = plan_search(load_checkpoint(ckpt, map_location=ranks.device), table, options, ranks)
        result = run_search(plan, open_checkpoint_data(plan.checkpoint, data_dir), ranks=ranks, progress=not as_json)
        if not ranks.main:
            return
    if as_json:
        files = [f.to_dict() for f in result.best_files]
        print_json(files[0] if len(files) == 1 else files)
        return
    if table.validation is None:
        click.echo(f"note: {table_path} is not validated yet (`vitres-deploy profile validate`): no margin is "
                   "kept below the budget", err=True)
    if plan.drift is not None:
        scaled = " (predictions rescaled by it)" if plan.drift.drifted else ""
        click.echo(f"drift check: {plan.drift.describe()}{scaled} in {plan.drift.seconds:.1f} s", err=True)
    rows = []
    for c, best in zip(result.constraints, result.bests):
        feasible = sum(c.satisfied(r.metrics) for r in result.records)
        rows.append((f"{c.budget_ms:g}", f"{c.low_ms:.4g}-{c.limit_ms:.4g}", best.hash, f"{best.latency_ms:.4g}",
                     f"{100 * best.holdout_top1:.2f}%", human(best.macs), human(best.params), feasible))
    print_table(f"search on {table.meta.device} ({table.meta.backend}, {table.meta.precision}, batch "
                f"{table.meta.batch})", ["budget (ms)", "window (ms)", "arch", "latency (ms)", "hold-out top-1",
                                         "MACs", "params", "in window"], rows)
    click.echo(f"  margin kept below each budget: {result.constraints[0].margin:.1%} of predicted latency")
    for best, s in zip(result.bests, result.searched):
        low, high = s.holdout_top1_ci95
        click.echo(f"  {best.hash}: {best.arch.short()}\n    hold-out top-1 95% interval {100 * low:.2f}-"
                   f"{100 * high:.2f}% on {s.holdout_images} images; {s.within_ci95} other archs of the window "
                   "score inside it")
    if any(s.within_ci95 for s in result.searched):
        click.echo("note: archs inside the best's interval may be as good as it, their distance sampling noise of "
                   "the hold-out split; before deploying, compare a few (evaluated.jsonl) on more data of your own",
                   err=True)
    click.echo(f"{len(result.records)} archs evaluated ({result.new_evaluations} new) in {result.seconds:.1f} s; "
               f"achievable {result.achievable.fastest_ms:.4g} .. {result.achievable.slowest_ms:.4g} ms; "
               f"results in {out_dir}")


def _search_precisions(ckpt: str, tables: list[Any], options: Any, data_dir: str | None, device: str | None,
                       as_json: bool) -> None:
    """``search`` with several tables: architecture and precision searched together, the choice printed."""
    from ..checkpoint import load_checkpoint
    from ..data import open_checkpoint_data
    from ..distributed import join_ranks
    from ..search import search_precisions
    from ..search.precisions import choice_record

    with join_ranks(device) as ranks:
        checkpoint = load_checkpoint(ckpt, map_location=ranks.device)
        result = search_precisions(checkpoint, tables, options, open_checkpoint_data(checkpoint, data_dir),
                                   ranks=ranks, progress=not as_json)
        if not ranks.main:
            return
    if as_json:
        files = [f.to_dict() for f in result.winners]
        print_json(files[0] if len(files) == 1 else files)
        return
    record = choice_record(result)
    precisions = list(result.searches)
    rows = []
    for row, winner in zip(record["budgets"], result.winners):
        cells = [f"{row['budget_ms']:g}", row["chosen"], winner.arch.hash]
        for p in precisions:
            pick = row["picks"].get(p)
            cells.append(f"{100 * pick['holdout_top1']:.2f}% @ {pick['latency_ms']:.4g} ms" if pick else "-")
        rows.append(tuple(cells))
    m = tables[0].meta
    print_table(f"architecture and precision search on {m.device} ({m.backend}, batch {m.batch})",
                ["budget (ms)", "chosen", "arch", *(f"best {p} (hold-out @ predicted)" for p in precisions)], rows)
    boundary = record["boundary"]
    if boundary is not None:
        how = "given" if boundary["given"] else f"measured on {len(boundary['networks'])} mixed networks"
        click.echo(f"  float/int8 boundary {how}: {1e3 * boundary['boundary_ms']:+.1f} us each")
    for row, winner in zip(record["budgets"], result.winners):
        stages = winner.searched.int8_stages if winner.searched else None
        if stages:
            click.echo(f"  {row['budget_ms']:g} ms: export with --precision int8 --int8-stages "
                       f"{','.join(map(str, stages))}")
    spent = ", ".join(f"{p}: {record['evaluated'][p]} archs in {record['seconds'][p]:.0f} s" for p in precisions)
    click.echo(f"{spent}; results in {result.out_dir} (one search folder per precision inside)")


COMMANDS = [search]
