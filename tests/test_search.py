"""Latency-aware evolutionary search: genome, constraints, determinism, resume, several budgets, torchrun, outputs.

Everything runs on a small 28x28 space of its own (24 table entries, a few thousand archs): a real
latency table profiled with the torch-cpu backend and a quick protocol, a real supernet of that space
trained for two steps, and real hold-out evaluations on the first 100 hold-out images.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vitres_deploy.arch import Arch, sample_arch
from vitres_deploy.archfile import resolve_arch
from vitres_deploy.checkpoint import Checkpoint, load_checkpoint
from vitres_deploy.cli import main
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.errors import BudgetError, RunDirError, SettingsError, VitresError
from vitres_deploy.latency import LatencyTable, ProfileSettings, latency_range, predict, profile_space
from vitres_deploy.latency.report import PredictionErrors, ValidationReport, ValidationRow
from vitres_deploy.macs import arch_cost
from vitres_deploy.runtime import Protocol
from vitres_deploy.search import Constraint, CostModel, EvolutionConfig, SearchOptions, plan_search, run_search
from vitres_deploy.search.constraints import Metrics, repair
from vitres_deploy.search.genome import GeneLayout, crossover, mutate, perturb
from vitres_deploy.search.outputs import pareto_front, wilson_interval
from vitres_deploy.search.records import read_records
from vitres_deploy.space import SearchSpace

pytestmark = [pytest.mark.usefixtures("fmnist_dir", "torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]

SPACE = {
    "name": "search-mini", "image_size": 28, "in_chans": 1, "num_classes": 10, "patch_size": 4, "stem_channels": 8,
    "stages": [
        {"embed_dims": [24, 16], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [32, 16], "depths": [3, 2, 1]},
        {"embed_dims": [40, 32], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [64, 32], "depths": [2, 1]},
    ],
}
TINY = EvolutionConfig(population=6, iterations=2, parents=3, mutations=3, crossovers=3, seed=1)
LIMIT = 100
TINY_FLAGS = ["--population", "6", "--iterations", "2", "--parents", "3", "--mutations", "3", "--crossovers", "3",
              "--seed", "1", "--eval-limit", str(LIMIT), "--no-drift-check"]


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "search-mini.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.fixture(scope="module")
def table(space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    """A real torch-cpu latency table of the small space, measured with a quick protocol."""
    root = tmp_path_factory.mktemp("table")
    settings = ProfileSettings(backend="torch-cpu", protocol=Protocol(warmup_s=0.005, min_iterations=20,
                                                                      min_seconds=0.01), workers=1, cache_dir=root)
    return profile_space(SearchSpace.from_dict(SPACE), settings, root / "search-mini-torch-cpu.json", progress=False)


@pytest.fixture(scope="module")
def checkpoint(space_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    """A real supernet of the small space (two training steps)."""
    from vitres_deploy.train import TrainConfig, train

    out = tmp_path_factory.mktemp("supernet")
    path = train(TrainConfig(space=str(space_file), epochs=1, steps_per_epoch=2, batch_size=32, eval_limit=200), out,
                 progress=False)
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def data(checkpoint: Checkpoint) -> Any:
    return open_checkpoint_data(checkpoint)


def budget_at(table: LatencyTable, fraction: float) -> float:
    """A budget at ``fraction`` of the table's achievable range."""
    r = latency_range(table)
    return r.fastest_ms + fraction * (r.slowest_ms - r.fastest_ms)


def busiest_budget(latencies: list[float]) -> float:
    """The budget whose window [0.9 B, B] holds the most of ``latencies``.

    The table is measured, so which archs a fixed fraction of its range admits varies from run to run (a window
    can hold too few archs on a busy day); this budget always has archs around it.
    """
    return max(latencies, key=lambda x: sum(0.9 * x <= y <= x for y in latencies))


def search(checkpoint: Checkpoint, data: Any, table: LatencyTable, budgets: list[float], out: Path,
           on_record: Any = None, **options: Any) -> Any:
    options.setdefault("evolution", TINY)
    options.setdefault("drift_check", False)  # the drift check has tests of its own (test_drift.py)
    plan = plan_search(checkpoint, table, SearchOptions(budgets_ms=tuple(budgets), out_dir=out, eval_limit=LIMIT,
                                                        **options))
    return run_search(plan, data, on_record=on_record)


@pytest.fixture(scope="module")
def reference(checkpoint: Checkpoint, data: Any, table: LatencyTable, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One uninterrupted single-budget search, the reference of the determinism, resume and torchrun tests."""
    return search(checkpoint, data, table, [budget_at(table, 0.5)], tmp_path_factory.mktemp("reference"))


def _without_paths(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "table": {**doc["table"], "path": None}, "supernet": {**doc["supernet"], "path": None}}


# ------------------------------------------------------------------------------------------ genome


def test_genome_round_trip_and_operators(fmnist: SearchSpace) -> None:
    layout = GeneLayout.of(fmnist)
    assert len(layout) == 3 * (2 + 2 * 3)
    rng = random.Random(0)
    for _ in range(50):
        arch = sample_arch(fmnist, rng)
        genome = layout.encode(arch)
        assert layout.decode(genome) == arch and layout.encode(layout.decode(genome)) == genome
        assert mutate(genome, layout, rng, 0.0) == genome
        child = layout.decode(mutate(genome, layout, rng, 1.0))
        assert child.validate(fmnist) == child
        other = layout.encode(sample_arch(fmnist, rng))
        mixed = crossover(genome, other, rng)
        assert all(g in (a, b) for g, a, b in zip(mixed, genome, other))
        moved = perturb(genome, layout, rng)
        changed = [i for i, (a, b) in enumerate(zip(genome, moved)) if a != b]
        assert len(changed) == 1 and changed[0] in layout.active(genome)
        assert layout.decode(moved) != arch


def test_repair_moves_archs_into_the_window(table: LatencyTable, checkpoint: Checkpoint) -> None:
    cost = CostModel(table, checkpoint.space)
    layout, rng = GeneLayout.of(checkpoint.space), random.Random(0)
    c = Constraint(busiest_budget([predict(table, sample_arch(checkpoint.space, rng)).latency_ms
                                   for _ in range(200)]), 0.9)
    repaired = [repair(sample_arch(checkpoint.space, rng), c, cost, layout, rng, 100) for _ in range(20)]
    assert sum(a is not None for a in repaired) >= 15
    assert all(c.satisfied(cost(a)) for a in repaired if a is not None)


# -------------------------------------------------------------------------------------- the search


def test_same_seed_same_search(reference: Any, checkpoint: Checkpoint, data: Any, table: LatencyTable,
                               tmp_path: Path) -> None:
    again = search(checkpoint, data, table, [r.budget_ms for r in reference.bests[:1]], tmp_path)
    assert (tmp_path / "evaluated.jsonl").read_bytes() == (reference.out_dir / "evaluated.jsonl").read_bytes()
    assert _without_paths(json.loads((tmp_path / "best.json").read_text())) == \
        _without_paths(json.loads((reference.out_dir / "best.json").read_text()))
    assert again.new_evaluations == len(again.records) > TINY.population
    hashes = [r.hash for r in again.records]
    assert len(hashes) == len(set(hashes))  # no arch is evaluated twice
    other = search(checkpoint, data, table, [reference.bests[0].budget_ms], tmp_path / "seed2",
                   evolution=dataclasses.replace(TINY, seed=2))
    assert [r.hash for r in other.records] != hashes


def test_every_evaluation_satisfies_the_window_and_caps(checkpoint: Checkpoint, data: Any, table: LatencyTable,
                                                        tmp_path: Path) -> None:
    space, rng = checkpoint.space, random.Random(0)
    archs = [sample_arch(space, rng) for _ in range(50)]
    costs = [arch_cost(a, space) for a in archs]
    max_macs = sorted(c.macs for c in costs)[25]
    max_params = sorted(c.params for c in costs)[30]
    budget = busiest_budget([predict(table, a).latency_ms for a, c in zip(archs, costs)
                             if c.macs <= max_macs and c.params <= max_params])
    result = search(checkpoint, data, table, [budget], tmp_path, max_macs=max_macs, max_params=max_params)
    records = read_records(tmp_path / "evaluated.jsonl")
    assert records == result.records and len(records) > TINY.population
    for r in records:
        assert 0.9 * budget <= r.latency_ms <= budget and r.macs <= max_macs and r.params <= max_params
        cost = arch_cost(r.arch, space)
        assert (r.macs, r.params) == (cost.macs, cost.params)
        assert r.images == LIMIT and 0.0 <= r.holdout_top1 <= r.holdout_top5 <= 1.0
    best = json.loads((tmp_path / "best.json").read_text())
    # most accurate, then fastest, then the smaller hash: archs with the same blocks in another order tie
    assert best["hash"] == min(records, key=lambda r: (-r.holdout_top1, r.latency_ms, r.hash)).hash
    assert best["max_macs"] == max_macs and best["max_params"] == max_params


def test_the_validated_margin_keeps_searched_archs_under_the_budget(checkpoint: Checkpoint, data: Any,
                                                                   table: LatencyTable, tmp_path: Path) -> None:
    """A table known to under-predict by 8% (its validation's held-out networks measured 1.08x their prediction):
    the search keeps predicted latency 8% below the budget, so every arch it evaluates in the window, the best
    among them, measures within the budget at the table's known error; without the margin the best would not."""
    error = 1.08
    predicted = [0.2 + 0.01 * i for i in range(10)]
    rows = tuple(ValidationRow(index=i, split="test", hash=f"{i}", arch="-", entries=1, sum_ms=p, predicted_ms=p,
                               measured_ms=p * error, error_pct=100 * (1 / error - 1), cv=0.01, pass_medians_ms=None,
                               parts_ms={}) for i, p in enumerate(predicted))
    measured = [p * error for p in predicted]
    report = ValidationReport(
        errors=PredictionErrors.of(predicted, measured), samples=10, seed=0, fit_samples=0, test_samples=10,
        noise_cv_median=0.01, noise_cv_max=0.01, entry_cv_median=0.01,
        uncalibrated=PredictionErrors.of(predicted, measured), correction=table.correction, date="-",
        protocol=table.meta.protocol, rows=rows)
    known = dataclasses.replace(table, validation=report)
    assert report.search_margin == pytest.approx(error - 1)
    budget = budget_at(table, 0.6)
    result = search(checkpoint, data, known, [budget], tmp_path / "margin")
    constraint = result.constraints[0]
    assert constraint.margin == pytest.approx(error - 1)
    in_window = [r for r in result.records if constraint.satisfied(r.metrics)]
    assert in_window and all(r.latency_ms * error <= budget * (1 + 1e-9) for r in in_window)
    best = json.loads((tmp_path / "margin" / "best.json").read_text())
    assert best["margin"] == pytest.approx(error - 1) and best["latency_ms"] * error <= budget * (1 + 1e-9)
    assert best["window_ms"][1] == pytest.approx(budget / error)
    near_budget = Metrics(0.99 * budget, 0, 0)  # 0.99 B predicted, 1.07 B in fact: over the budget
    assert Constraint(budget, margin=0.0).satisfied(near_budget) and not constraint.satisfied(near_budget)


def test_infeasible_budgets_fail_at_once_with_the_range(table: LatencyTable, checkpoint: Checkpoint,
                                                        tmp_path: Path) -> None:
    r = latency_range(table)
    base = ["search", "--supernet", str(checkpoint.path), "--profile", str(table.path), "--out", str(tmp_path)]
    for budget in (r.fastest_ms / 2, r.slowest_ms * 2):
        result = CliRunner().invoke(main, [*base, "--budget-ms", f"{budget:.6g}"])
        assert result.exit_code == 2
        line = result.output.strip()
        assert "\n" not in line and line.startswith("error: budget ")
        assert f"the achievable range is {r.fastest_ms:.4g} .. {r.slowest_ms:.4g} ms" in line
    result = CliRunner().invoke(main, [*base, "--budget-ms", f"{budget_at(table, 0.5):.6g}", "--max-macs", "1k"])
    assert result.exit_code == 2 and "--max-macs 1,000 is below the smallest architecture" in result.output
    result = CliRunner().invoke(main, [*base, "--budget-ms", "1,x"])
    assert result.exit_code == 2 and result.output.startswith("error: --budget-ms '1,x'")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # refused before anything was written


def test_interrupted_search_resumes_to_the_same_result(reference: Any, checkpoint: Checkpoint, data: Any,
                                                       table: LatencyTable, tmp_path: Path) -> None:
    budget = reference.bests[0].budget_ms
    seen: list[str] = []

    def interrupt(record: Any) -> None:
        seen.append(record.hash)
        if len(seen) == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(checkpoint, data, table, [budget], tmp_path, on_record=interrupt)
    log = tmp_path / "evaluated.jsonl"
    assert len(log.read_text().splitlines()) == 9 and not (tmp_path / "best.json").exists()
    with open(log, "a") as f:  # a write torn by the interruption
        f.write('{"index": 9, "hash": "0123')
    with pytest.raises(VitresError, match="already holds a search: pass resume"):
        search(checkpoint, data, table, [budget], tmp_path)
    with pytest.raises(VitresError, match="searched with budgets_ms="):
        search(checkpoint, data, table, [budget * 0.99], tmp_path, resume=True)
    resumed = search(checkpoint, data, table, [budget], tmp_path, resume=True)
    assert resumed.new_evaluations == len(reference.records) - 9
    assert log.read_bytes() == (reference.out_dir / "evaluated.jsonl").read_bytes()
    assert _without_paths(resumed.best_files[0].to_dict()) == _without_paths(reference.best_files[0].to_dict())
    with pytest.raises(VitresError, match="nothing to resume"):
        search(checkpoint, data, table, [budget], tmp_path / "empty", resume=True)


def test_several_budgets_share_one_search(checkpoint: Checkpoint, data: Any, table: LatencyTable,
                                          tmp_path: Path) -> None:
    budgets = [budget_at(table, 0.45), budget_at(table, 0.5)]
    low, high = budgets[0], budgets[1]
    assert 0.9 * high < low  # overlapping windows: evaluations count for both budgets
    result = search(checkpoint, data, table, [high, low], tmp_path)
    assert [c.budget_ms for c in result.constraints] == [low, high]
    assert not (tmp_path / "best.json").exists()
    records = read_records(tmp_path / "evaluated.jsonl")
    assert len({r.hash for r in records}) == len(records)
    assert {r.budget_ms for r in records} == {low, high}
    shared = [r for r in records if 0.9 * high <= r.latency_ms <= low]
    assert shared, "no evaluation fell in both windows"
    for b, best in zip(budgets, result.bests):
        doc = json.loads((tmp_path / f"best-{b:g}.json").read_text())
        window = [r for r in records if 0.9 * b <= r.latency_ms <= b]
        assert doc["hash"] == best.hash == min(window, key=lambda r: (-r.holdout_top1, r.latency_ms, r.hash)).hash
        assert doc["budget_ms"] == b and doc["window_ms"] == [0.9 * b, b]


def test_wilson_interval() -> None:
    low, high = wilson_interval(0.5, 100)  # textbook value: 0.4038 .. 0.5962
    assert abs(low - 0.4038) < 1e-4 and abs(high - 0.5962) < 1e-4
    low, high = wilson_interval(1.0, 50)  # never past 1, and not empty at the edge
    assert high == 1.0 and 0.92 < low < 0.93
    assert wilson_interval(0.92, 60_000)[1] - wilson_interval(0.92, 60_000)[0] < \
        wilson_interval(0.92, 6_000)[1] - wilson_interval(0.92, 6_000)[0]


def test_outputs_and_json(reference: Any, table: LatencyTable, checkpoint: Checkpoint) -> None:
    out = reference.out_dir
    best = json.loads((out / "best.json").read_text())
    assert {"space", "stages", "hash", "latency_ms", "macs", "params", "holdout_top1", "budget_ms", "window_ms",
            "table", "supernet"} <= set(best)
    assert resolve_arch(out / "best.json", checkpoint.space) == Arch.from_dict(best)  # an architecture file
    assert best["table"]["path"] == str(table.path) and best["table"]["backend"] == "torch-cpu"
    assert len(best["table"]["sha256"]) == 64 and best["supernet"]["path"] == str(checkpoint.path)
    assert best["latency_ms"] <= best["budget_ms"] and best["evaluated"] == len(reference.records)
    low, high = best["holdout_top1_ci95"]
    assert low < best["holdout_top1"] < high or best["holdout_top1"] in (0.0, 1.0)
    window = [r for r in reference.records if best["window_ms"][0] <= r.latency_ms <= best["budget_ms"]]
    assert best["within_ci95"] == sum(r.hash != best["hash"] and r.holdout_top1 >= low for r in window)
    pareto = json.loads((out / "pareto.json").read_text())
    front = pareto["front"]
    assert [p["hash"] for p in front] == [r.hash for r in pareto_front(reference.records)]
    assert all(a["latency_ms"] <= b["latency_ms"] and a["holdout_top1"] < b["holdout_top1"]
               for a, b in itertools.pairwise(front))
    png = (out / "search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    settings = json.loads((out / "search.json").read_text())
    assert settings["settings"]["evolution"]["population"] == TINY.population
    assert not list(out.glob(".*.tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_process_result(reference: Any, checkpoint: Checkpoint, table: LatencyTable,
                                                        tmp_path: Path) -> None:
    budget = reference.bests[0].budget_ms
    args = ["search", "--supernet", str(checkpoint.path), "--profile", str(table.path),
            "--budget-ms", repr(budget), "--out", str(tmp_path / "ddp"), "--device", "cpu", "--json", *TINY_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "vitres_deploy.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = json.loads(proc.stdout)  # rank 0 prints best.json, the other rank nothing
    assert _without_paths(printed) == _without_paths(reference.best_files[0].to_dict())
    assert (tmp_path / "ddp" / "evaluated.jsonl").read_bytes() == \
        (reference.out_dir / "evaluated.jsonl").read_bytes()


def test_cli_prints_a_summary_and_json(reference: Any, checkpoint: Checkpoint, table: LatencyTable,
                                       tmp_path: Path) -> None:
    budget = reference.bests[0].budget_ms
    args = ["search", "--supernet", str(checkpoint.path), "--profile", str(table.path), "--budget-ms", repr(budget),
            "--out", str(tmp_path), *TINY_FLAGS]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert reference.bests[0].hash in result.output and "hold-out top-1" in result.output
    assert f"{len(reference.records)} archs evaluated" in result.output
    within = reference.searched[0].within_ci95
    assert f"{within} other archs of the window score inside it" in result.output
    assert ("may be as good as it" in result.output) == (within > 0)
    result = CliRunner().invoke(main, [*args, "--resume", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc == json.loads((tmp_path / "best.json").read_text())
    assert _without_paths(doc) == _without_paths(reference.best_files[0].to_dict())


def test_bad_settings_are_one_line_errors(table: LatencyTable, checkpoint: Checkpoint, tmp_path: Path) -> None:
    base = ["search", "--supernet", str(checkpoint.path), "--profile", str(table.path), "--out", str(tmp_path),
            "--budget-ms", f"{budget_at(table, 0.5):.6g}", "--no-drift-check"]
    result = CliRunner().invoke(main, [*base, "--parents", "0"])
    assert result.exit_code == 2 and result.output.strip() == "error: --parents 0 must be >= 1"
    result = CliRunner().invoke(main, [*base, "--mutation-prob", "1.5"])
    assert result.exit_code == 2 and "--mutation-prob 1.5 must be in [0, 1]" in result.output
    other = SearchSpace.from_dict({**SPACE, "name": "other", "stem_channels": 16})
    with pytest.raises(VitresError, match="profiled for another space"):
        CostModel(table, other)
    with pytest.raises(BudgetError, match="alpha 0 must be in"):
        from vitres_deploy.search import check_budgets

        check_budgets([Constraint(budget_at(table, 0.5), 0.0)], CostModel(table, checkpoint.space))


def test_the_extremes_own_predictions_are_budgets_in_range(table: LatencyTable, checkpoint: Checkpoint) -> None:
    """A budget of exactly the slowest (fastest) arch's prediction is in range, though its entries summed in
    another order may land an ulp beyond the extremes' sum; a budget a little further out is refused."""
    from vitres_deploy.search import check_budgets

    cost = CostModel(table, checkpoint.space)
    span = latency_range(table)
    for budget in (span.slowest_ms, predict(table, span.slowest).latency_ms, span.slowest_ms * (1 + 1e-12),
                   span.fastest_ms, predict(table, span.fastest).latency_ms, span.fastest_ms * (1 - 1e-12)):
        assert check_budgets([Constraint(budget, alpha=0.5)], cost) == span
    with pytest.raises(BudgetError, match="above the slowest architecture"):
        check_budgets([Constraint(span.slowest_ms * 1.001)], cost)
    with pytest.raises(BudgetError, match="below the fastest architecture"):
        check_budgets([Constraint(span.fastest_ms * 0.999)], cost)


def test_library_errors_name_fields(table: LatencyTable, checkpoint: Checkpoint, tmp_path: Path) -> None:
    """From Python a bad setting is named by its field (the CLI puts the flag in its place, tested above)."""
    with pytest.raises(SettingsError, match=r"^parents 0 must be >= 1$") as error:
        EvolutionConfig(parents=0)
    assert error.value.field == "parents"
    with pytest.raises(SettingsError, match=r"^mutation_prob 1.5 must be in \[0, 1\]$") as error:
        dataclasses.replace(TINY, mutation_prob=1.5)
    assert error.value.field == "mutation_prob"
    with pytest.raises(SettingsError, match="give at least one latency budget") as error:
        SearchOptions(budgets_ms=(), out_dir=tmp_path)
    assert error.value.field == "budgets_ms"
    options = SearchOptions(budgets_ms=(budget_at(table, 0.5),), out_dir=tmp_path, max_macs=1000)
    with pytest.raises(BudgetError, match=r"^max_macs 1,000 is below the smallest architecture") as error:
        plan_search(checkpoint, table, options)
    assert error.value.field == "max_macs"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_resume_rules_name_the_field_and_the_flag(reference: Any, checkpoint: Checkpoint, data: Any,
                                                  table: LatencyTable, tmp_path: Path) -> None:
    """The run-folder rules (vitres_deploy.rundir): refusals name ``resume`` or the setting that changed."""
    budget, out = reference.bests[0].budget_ms, reference.out_dir
    before = (out / "evaluated.jsonl").read_bytes()
    with pytest.raises(RunDirError, match="already holds a search: pass resume to continue it") as error:
        search(checkpoint, data, table, [budget], out)
    assert error.value.field == "resume"
    with pytest.raises(RunDirError, match=r"^resume: nothing to resume in ") as error:
        search(checkpoint, data, table, [budget], tmp_path / "none", resume=True)
    assert error.value.field == "resume"
    with pytest.raises(RunDirError, match="searched with parents=3, now parents=4") as error:
        search(checkpoint, data, table, [budget], out, resume=True, evolution=dataclasses.replace(TINY, parents=4))
    assert error.value.field == "parents"

    base = ["search", "--supernet", str(checkpoint.path), "--profile", str(table.path), "--budget-ms", repr(budget),
            *TINY_FLAGS]
    runs = {
        "--out": (["--out", str(out)], f"error: {out} already holds a search: pass --resume to continue it, or "
                                       "choose another folder"),
        "--resume": (["--out", str(tmp_path / "none"), "--resume"],
                     f"error: --resume: nothing to resume in {tmp_path / 'none'} (search.json not found): start "
                     "without it"),
        "--parents": (["--out", str(out), "--resume", "--parents", "4"],
                      f"error: cannot resume {out}: it was searched with --parents=3, now parents=4: use the same "
                      "settings, or start afresh elsewhere"),
    }
    for name, (args, line) in runs.items():
        result = CliRunner().invoke(main, [*base, *args])
        assert result.exit_code == 2, name
        assert result.output.strip() == line, name
    assert (out / "evaluated.jsonl").read_bytes() == before  # every refusal came before anything was written
    assert not (tmp_path / "none").exists()


def test_a_failed_output_write_leaves_no_best_file(checkpoint: Checkpoint, data: Any, table: LatencyTable,
                                                  tmp_path: Path) -> None:
    """The outputs are written best file last: when one cannot be written (here search.png is a folder; on a
    full disk any of them), there is no best.json that looks like a finished search."""
    (tmp_path / "search.png").mkdir(parents=True)
    with pytest.raises(OSError):
        search(checkpoint, data, table, [budget_at(table, 0.5)], tmp_path)
    assert not (tmp_path / "best.json").exists() and (tmp_path / "evaluated.jsonl").is_file()


def test_a_full_disk_at_the_plot_leaves_no_best_file(checkpoint: Checkpoint, data: Any, table: LatencyTable,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while search.png is written: the error names search.png, and neither best.json nor a
    temporary file is left."""
    import errno
    import os

    replace = os.replace

    def full_at_plot(src: Any, dst: Any) -> None:
        if Path(dst).name == "search.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full_at_plot)
    with pytest.raises(OSError, match="No space left on device") as failed:
        search(checkpoint, data, table, [budget_at(table, 0.5)], tmp_path)
    assert failed.value.filename == str(tmp_path / "search.png")
    assert not (tmp_path / "best.json").exists() and not list(tmp_path.glob(".*.tmp*"))


def test_budgets_as_a_share_of_the_range(table: LatencyTable, checkpoint: Checkpoint, tmp_path: Path) -> None:
    """``--budget-ms 40%`` is 40% of the way from the fastest to the slowest arch the table predicts."""
    from vitres_deploy.cli.search import parse_budgets

    assert parse_budgets("1.5,40%, 10%") == ((1.5,), (0.4, 0.1))
    with pytest.raises(SettingsError, match="a share of the range is 0% to 100%"):
        parse_budgets("140%")
    r = latency_range(table)
    plan = plan_search(checkpoint, table, SearchOptions(budgets_ms=(), budget_shares=(0.4,), out_dir=tmp_path,
                                                        drift_check=False))
    assert [c.budget_ms for c in plan.constraints] == [round(r.fastest_ms + 0.4 * (r.slowest_ms - r.fastest_ms), 4)]
