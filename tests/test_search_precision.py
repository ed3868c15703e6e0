"""Architecture and precision searched together: one search per table (fp32, int8 on ort-cpu, both measured),
every int8 candidate scored on its calibrated int8 network, the best (arch, precision) per budget recorded."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vitres_deploy.arch import Arch, sample_arch
from vitres_deploy.checkpoint import Checkpoint, load_checkpoint
from vitres_deploy.cli import main
from vitres_deploy.convert.int8 import Int8Settings
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.errors import BudgetError
from vitres_deploy.latency import LatencyTable, ProfileSettings, latency_range, predict, profile_space
from vitres_deploy.quantized import Calibration, evaluate_arch_int8
from vitres_deploy.runtime import Protocol
from vitres_deploy.search import EvolutionConfig, SearchOptions, search_precisions
from vitres_deploy.search.evolution import Evolution
from vitres_deploy.search.genome import GeneLayout
from vitres_deploy.search.plan import SearchPlan, plan_search
from vitres_deploy.search.precisions import leave_empty_windows
from vitres_deploy.space import SearchSpace

pytestmark = [pytest.mark.usefixtures("fmnist_dir", "torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]

SPACE = {
    "name": "precision-mini", "image_size": 28, "in_chans": 1, "num_classes": 10, "patch_size": 4, "stem_channels": 8,
    "stages": [
        {"embed_dims": [24, 16], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [32], "depths": [2, 1]},
        {"embed_dims": [32], "heads": [2], "head_dim": 8, "mlp_hidden": [64, 32], "depths": [1]},
    ],
}
SMALL = EvolutionConfig(population=3, iterations=1, parents=2, mutations=1, crossovers=1, seed=0)
LIMIT, CALIBRATION = 40, Calibration(images=8, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-step supernet of the small space, its data, and real ort-cpu tables of it in fp32 and int8."""
    from vitres_deploy.train import TrainConfig, train

    root = tmp_path_factory.mktemp("precision")
    (root / "space.json").write_text(json.dumps(SPACE))
    checkpoint = load_checkpoint(train(TrainConfig(space=str(root / "space.json"), epochs=1, steps_per_epoch=2,
                                                   batch_size=32, eval_limit=100), root / "supernet", progress=False))
    quick = Protocol(warmup_s=0.0, min_iterations=5, min_seconds=0.005, rounds=1, min_rounds=1)
    space = SearchSpace.from_dict(SPACE)
    tables = [profile_space(space, ProfileSettings(backend="ort-cpu", precision=p, protocol=quick, workers=1,
                                                   cache_dir=root / "cache"), root / f"{p}.json", progress=False)
              for p in ("fp32", "int8")]
    return {"root": root, "checkpoint": checkpoint, "data": open_checkpoint_data(checkpoint), "tables": tables}


def _budgets(tables: list[LatencyTable]) -> tuple[float, ...]:
    """For each table, the budget whose window [0.9 B, B] holds the most of 40 seeded archs (the two tables' ranges
    may or may not overlap: int8 is slower on this CPU), among the budgets that every other table either cannot
    reach (outside its range: left to this one) or can search (at least 3 of the archs in its own window; the
    tables are measured, so in a space this small a budget inside a table's range may have an empty window)."""
    space = tables[0].space
    rng = random.Random(0)
    archs = [sample_arch(space, rng) for _ in range(40)]
    latencies = [[predict(t, a).latency_ms for a in archs] for t in tables]
    ranges = [latency_range(t) for t in tables]

    def held(i: int, budget: float) -> int:
        return sum(0.9 * budget <= y <= budget for y in latencies[i])

    def searchable(budget: float) -> bool:
        return all(not r.fastest_ms <= budget <= r.slowest_ms or held(i, budget) >= 3 for i, r in enumerate(ranges))

    budgets = []
    for i, own in enumerate(ranges):  # rounded first: the slowest arch's latency rounded up would leave its range
        candidates = [b for b in (round(x, 6) for x in latencies[i])
                      if own.fastest_ms <= b <= own.slowest_ms and searchable(b)]
        budgets.append(max(candidates, key=lambda b: held(i, b)))
    return tuple(budgets)


def _mixed_budget(tables: Any, space: SearchSpace) -> float:
    """The budget whose window [0.9 B, B] holds the most of 40 seeded archs in every mixed plan, as predicted by the
    mixed ``tables`` (a measured table of a space this small can leave a window inside the range empty)."""
    from vitres_deploy.arch import MixedArch
    from vitres_deploy.latency.mixed import mixed_plans

    rng = random.Random(1)
    archs = [sample_arch(space, rng) for _ in range(40)]
    latencies = [tables.predict(MixedArch(a.space, a.stages, plan))
                 for a in archs for plan in mixed_plans(len(space.stages))]
    span = tables.latency_range()  # rounded first: the slowest network's latency rounded up would leave the range
    candidates = [b for b in (round(y, 6) for y in latencies) if span.fastest_ms <= b <= span.slowest_ms]
    best = max(candidates, key=lambda b: sum(0.9 * b <= y <= b for y in latencies))
    assert sum(0.9 * best <= y <= best for y in latencies) >= 3
    return best


def test_each_precision_is_searched_in_its_own_precision_and_the_best_is_chosen(setup: dict[str, Any]) -> None:
    checkpoint: Checkpoint = setup["checkpoint"]
    out = setup["root"] / "search"
    budgets = _budgets(setup["tables"])
    options = SearchOptions(budgets_ms=budgets, out_dir=out, evolution=SMALL, eval_limit=LIMIT, drift_check=False,
                            calibration=CALIBRATION)
    result = search_precisions(checkpoint, setup["tables"], options, setup["data"])
    assert set(result.searches) == {"fp32", "int8"} and result.budgets_ms == sorted(set(budgets))
    ranges = {t.meta.precision: latency_range(t) for t in setup["tables"]}
    record = json.loads((out / "precisions.json").read_text())
    for budget, row in zip(result.budgets_ms, record["budgets"]):
        covering = {p for p, r in ranges.items() if r.fastest_ms <= budget <= r.slowest_ms}
        assert set(row["picks"]) == covering  # a budget outside a table's range is left to the other
        chosen = json.loads((out / f"best-{budget:g}.json").read_text())
        best = max(row["picks"].items(), key=lambda kv: (kv[1]["holdout_top1"], -kv[1]["latency_ms"]))
        assert row["chosen"] == chosen["precision"] == best[0] and chosen["hash"] == best[1]["hash"]
    for precision, search in result.searches.items():  # best.json, or best-<B>.json when it took both budgets
        for f in search.best_files:
            names = {f"best-{f.budget_ms:g}.json", "best.json"}
            assert any((out / precision / name).is_file() for name in names)
            assert f.searched.precision == precision
            assert f.searched.calibration == (CALIBRATION.to_dict() if precision == "int8" else None)
    assert (out / "search.png").stat().st_size > 10_000
    # an int8 record's accuracy is its int8 network's, calibrated as recorded
    int8 = result.searches["int8"].records[0]
    again = evaluate_arch_int8(checkpoint.supernet, int8.arch, setup["data"], CALIBRATION, limit=LIMIT)
    assert again.top1 == int8.holdout_top1


def test_each_network_is_exported_once_for_its_int8_evaluations(setup: dict[str, Any], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The float export an int8 evaluation quantizes is cached by the network's structure and weights: the arch
    scored again, or with another precision plan, exports nothing and scores the same; other weights export
    anew."""
    import copy

    import torch

    import vitres_deploy.convert.to_onnx as to_onnx
    from vitres_deploy.arch import MixedArch

    monkeypatch.setenv("VITRES_DEPLOY_CACHE", str(tmp_path))
    supernet, data = setup["checkpoint"].supernet, setup["data"]
    arch = sample_arch(supernet.space, random.Random(3))
    exported: list[Path] = []
    real = to_onnx.export_onnx

    def counted(*args: Any, **kwargs: Any) -> Path:
        exported.append(real(*args, **kwargs))
        return exported[-1]

    monkeypatch.setattr(to_onnx, "export_onnx", counted)
    first = evaluate_arch_int8(supernet, arch, data, CALIBRATION, limit=LIMIT)
    assert evaluate_arch_int8(supernet, arch, data, CALIBRATION, limit=LIMIT) == first
    evaluate_arch_int8(supernet, MixedArch(arch.space, arch.stages, (2,)), data, CALIBRATION, limit=LIMIT)
    assert len(exported) == 1
    assert [f.name.split("-")[0] for f in (tmp_path / "networks").iterdir()] == [arch.hash]

    class Exported(Exception):
        pass

    def tripwire(*args: Any, **kwargs: Any) -> Path:
        raise Exported

    other = copy.deepcopy(supernet)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    monkeypatch.setattr(to_onnx, "export_onnx", tripwire)
    with pytest.raises(Exported):
        evaluate_arch_int8(other, arch, data, CALIBRATION, limit=LIMIT)


def test_a_budget_in_an_empty_window_of_one_table_is_left_to_another(
        setup: dict[str, Any], every_arch: Callable[[SearchSpace], list[Arch]]) -> None:
    """Between two neighbouring archs of a measured table a narrow window holds nothing: the plan leaves that
    budget to another plan whose window holds an arch, and keeps it when none can take it."""
    checkpoint: Checkpoint = setup["checkpoint"]
    table = setup["tables"][0]
    ms = sorted({predict(table, a).latency_ms for a in every_arch(table.space)})
    lo, hi = max(itertools.pairwise(ms), key=lambda pair: pair[1] / pair[0])  # the widest gap
    gap = (lo + hi) / 2
    narrow_alpha = (lo / gap + 1) / 2  # the window [alpha * gap, gap] lies inside (lo, hi)

    def plan(alpha: float, budgets: tuple[float, ...], name: str) -> SearchPlan:
        return plan_search(checkpoint, table, SearchOptions(
            budgets_ms=budgets, alpha=alpha, out_dir=setup["root"] / name, evolution=SMALL, drift_check=False))

    narrow, wide = plan(narrow_alpha, (gap, ms[-1]), "narrow"), plan(0.01, (gap,), "wide")
    evolution = Evolution(GeneLayout.of(table.space), narrow.cost, narrow.constraints, SMALL)
    assert [c.budget_ms for c in evolution.empty_windows()] == [gap]
    kept = leave_empty_windows({"narrow": narrow, "wide": wide})
    assert [c.budget_ms for c in kept["narrow"].constraints] == [ms[-1]]
    assert [c.budget_ms for c in kept["wide"].constraints] == [gap]
    alone = leave_empty_windows({"narrow": narrow})  # nobody else can take it: its search will refuse it
    assert [c.budget_ms for c in alone["narrow"].constraints] == [gap, ms[-1]]
    with pytest.raises(BudgetError, match="no architecture of space 'precision-mini' with latency in"):
        evolution.draw(0)


def test_tables_that_cannot_be_searched_together_are_one_line_errors(setup: dict[str, Any], tmp_path: Path) -> None:
    fp32, int8 = setup["tables"]
    base = ["search", "--supernet", str(setup["checkpoint"].path), "--budget-ms", f"{_budgets(setup['tables'])[0]:.6g}",
            "--out", str(tmp_path / "s"), "--no-drift-check"]
    result = CliRunner().invoke(main, [*base, "--profile", f"{fp32.path},{fp32.path}"])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        "error: --profile: two tables of one precision (fp32, fp32): give one per precision"]
    doc = json.loads(Path(int8.path).read_text())
    doc["meta"]["batch"] = 4
    (tmp_path / "b4.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(main, [*base, "--profile", f"{fp32.path},{tmp_path / 'b4.json'}"])
    assert result.exit_code != 0 and len(result.stderr.splitlines()) == 1
    assert "differ in batch (1 vs 4)" in result.stderr
    assert Int8Settings.from_dict(int8.meta.options["int8"]) == Int8Settings()


def test_int8_candidates_quantized_unlike_the_table_are_refused_before_the_search(setup: dict[str, Any],
                                                                                 tmp_path: Path) -> None:
    """The int8 table times fused-op models: a search whose candidates would be scored as Q/DQ models is refused,
    naming the setting and its flag, before anything is evaluated."""
    from vitres_deploy.errors import ProfileError
    from vitres_deploy.search import plan_search

    int8 = setup["tables"][1]
    options = SearchOptions(budgets_ms=(_budgets(setup["tables"])[1],), out_dir=tmp_path / "s", drift_check=False,
                            calibration=Calibration(8, 0, Int8Settings(format="qdq")))
    with pytest.raises(ProfileError, match="int8 models quantized with format qoperator, the search quantizes "
                                           "with qdq") as e:
        plan_search(setup["checkpoint"], int8, options)
    assert e.value.field == "int8_format" and not (tmp_path / "s").exists()
    plan_search(setup["checkpoint"], int8, dataclasses.replace(options, calibration=CALIBRATION))  # the table's


# precision per stage: MixedArch networks, their prediction from both tables, the measured boundary, the search


def test_a_mixed_arch_round_trips_and_refuses_bad_plans() -> None:
    from vitres_deploy.arch import MixedArch, parse_arch
    from vitres_deploy.errors import ArchError
    from vitres_deploy.search.genome import GeneLayout
    from vitres_deploy.search.records import Record

    space = SearchSpace.from_dict(SPACE)
    plain = sample_arch(space, random.Random(3))
    mixed = MixedArch(plain.space, plain.stages, (2,))
    assert parse_arch(mixed.to_dict()) == mixed and parse_arch(plain.to_dict()) == plain
    assert mixed.hash != plain.hash != MixedArch(plain.space, plain.stages, (1,)).hash and mixed.plain == plain
    assert mixed.short().endswith(" int8:2")
    record = Record(0, mixed, 0.2, 1, 2, 0.5, 0.9, 40, 0, "random", 0.2)
    assert Record.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    for bad, says in (([], "non-empty list"), ([3], "from 1 to 2"), ([1, 1], "distinct"), (["2"], "not an integer")):
        with pytest.raises(ArchError, match=says):
            parse_arch({**plain.to_dict(), "int8_stages": bad})
    layout = GeneLayout.of(space, ((1,), (2,)))  # the plan is one more gene, decoded back
    assert layout.decode(layout.encode(mixed)) == mixed and layout.names[-1] == "int8_stages"
    assert len(layout.active(layout.encode(mixed))) == len(GeneLayout.of(space).active(layout.encode(mixed))) + 1
    rng = random.Random(0)
    assert {layout.sample(rng).int8_stages for _ in range(20)} == {(1,), (2,)}  # type: ignore[attr-defined]


def test_a_mixed_prediction_takes_each_stage_from_its_precision_s_table(
        setup: dict[str, Any], every_arch: Callable[[SearchSpace], list[Arch]]) -> None:
    """Each stage's part (stem with stage 1, head with the last) from its own precision's prediction, the smaller
    offset, and the boundary per change of precision; the range is exact over every arch and plan."""
    from vitres_deploy.arch import MixedArch
    from vitres_deploy.latency.mixed import MixedTables, boundaries, mixed_plans

    fp32, int8 = setup["tables"]
    tables = MixedTables(fp32, int8, boundary_ms=0.007)
    assert mixed_plans(2) == ((1,), (2,)) and mixed_plans(3) == ((1,), (2,), (3,), (1, 2), (1, 3), (2, 3))
    assert boundaries((1, 3), 3) == 2 and boundaries((2, 3), 3) == 1
    arch = sample_arch(fp32.space, random.Random(5))
    parts = {"fp32": predict(fp32, arch).parts_ms, "int8": predict(int8, arch).parts_ms}
    offset = min(fp32.correction.offset_ms, int8.correction.offset_ms)
    in_stage_1 = MixedArch(arch.space, arch.stages, (1,))
    expected = (parts["int8"]["stem"] + parts["int8"]["stage1"] + parts["fp32"]["stage2"] + parts["fp32"]["head"]
                + offset + 0.007)
    assert tables.predict(in_stage_1) == pytest.approx(expected, rel=1e-12)
    everything = [tables.predict(MixedArch(a.space, a.stages, p)) for a in every_arch(fp32.space) for p in ((1,), (2,))]
    span = tables.latency_range()
    assert span.fastest_ms == pytest.approx(min(everything)) and span.slowest_ms == pytest.approx(max(everything))
    assert tables.predict(span.fastest) == pytest.approx(span.fastest_ms)  # type: ignore[arg-type]


def test_the_boundary_is_measured_on_mixed_networks_in_onnx_runtime(setup: dict[str, Any]) -> None:
    from vitres_deploy.latency.mixed import MixedTables, boundary_archs, measure_boundary

    fp32, int8 = setup["tables"]
    fit = measure_boundary(fp32, int8, count=3, seed=1)
    archs = boundary_archs(fp32, 3, 1)
    assert [n["hash"] for n in fit.networks] == [a.hash for a in archs]  # seeded: the same networks
    assert all(n["int8_stages"] in ([1], [2]) and n["boundaries"] == 1 and n["measured_ms"] > 0 for n in fit.networks)
    composed = MixedTables(fp32, int8, 0.0)
    assert [n["composed_ms"] for n in fit.networks] == [composed.predict(a) for a in archs]
    residuals = sorted(n["measured_ms"] - n["composed_ms"] for n in fit.networks)
    assert fit.boundary_ms == residuals[1]  # the median, one boundary each


def test_precision_per_stage_is_searched_with_the_architecture_and_resumes(setup: dict[str, Any]) -> None:
    """``per_stage``: a third search of MixedArch networks, predicted with the boundary, each scored with only its
    int8 stages quantized, over the budgets its range reaches; the winners compete with the whole precisions; a
    resumed search evaluates nothing again."""
    from vitres_deploy.arch import MixedArch
    from vitres_deploy.latency.mixed import MixedTables

    checkpoint: Checkpoint = setup["checkpoint"]
    fp32, int8 = setup["tables"]
    out = setup["root"] / "per-stage"
    tables = MixedTables(fp32, int8, 0.004)  # a boundary given: the measurement is timed in the test above
    span = tables.latency_range()
    mixed_budget = _mixed_budget(tables, fp32.space)  # one budget whose mixed window holds archs
    budgets = (*_budgets(setup["tables"]), mixed_budget)
    options = SearchOptions(budgets_ms=budgets, out_dir=out, evolution=SMALL, eval_limit=LIMIT, drift_check=False,
                            calibration=CALIBRATION, per_stage=True, boundary_ms=0.004)
    result = search_precisions(checkpoint, setup["tables"], options, setup["data"])
    assert set(result.searches) == {"fp32", "int8", "mixed"}
    boundary = {"boundary_ms": 0.004, "networks": [], "date": "", "given": True}
    assert result.boundary == boundary
    # the budgets outside its range are left to the whole precisions (and those whose mixed window is empty)
    assert mixed_budget in {c.budget_ms for c in result.searches["mixed"].constraints} <= {
        b for b in budgets if span.fastest_ms <= b <= span.slowest_ms}
    mixed = result.searches["mixed"].records
    assert mixed and all(isinstance(r.arch, MixedArch) and r.arch.int8_stages in ((1,), (2,)) for r in mixed)
    assert all(r.latency_ms == tables.predict(r.arch) for r in mixed)  # type: ignore[arg-type]
    again = evaluate_arch_int8(checkpoint.supernet, mixed[0].arch, setup["data"], CALIBRATION, limit=LIMIT)
    assert again.top1 == mixed[0].holdout_top1
    for f, r in zip(result.searches["mixed"].best_files, result.searches["mixed"].bests):
        assert f.searched.int8_stages == list(r.arch.int8_stages) and f.arch == r.arch.plain  # type: ignore[attr-defined]
        assert f.searched.hash == f.arch.hash and f.searched.plan == f"int8:{r.arch.int8_stages[0]}"  # type: ignore[attr-defined]
    record = json.loads((out / "precisions.json").read_text())
    assert record["boundary"] == boundary and set(record["evaluated"]) == {"fp32", "int8", "mixed"}
    for row in record["budgets"]:
        best = max(row["picks"].values(), key=lambda p: (p["holdout_top1"], -p["latency_ms"]))
        chosen = json.loads((out / f"best-{row['budget_ms']:g}.json").read_text())
        assert chosen["hash"] == best["hash"] and chosen.get("int8_stages") == best["int8_stages"]
    resumed = search_precisions(checkpoint, setup["tables"], dataclasses.replace(options, resume=True), setup["data"])
    assert resumed.boundary == boundary and resumed.searches["mixed"].new_evaluations == 0
    assert [r.hash for r in resumed.searches["mixed"].records] == [r.hash for r in mixed]


def test_a_budget_between_the_whole_precisions_ranges_is_left_to_the_mixed_networks(setup: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    """An int8 table slower than fp32 for every network (as on a CPU whose int8 kernels do not pay for a space this
    small) leaves a gap between the two ranges. A budget in it is refused before anything is planned when only
    whole precisions are searched; with ``per_stage`` the mixed networks reach it, so the refusal after planning
    names only a budget nothing reaches (it named the gap's budget too, on such a CPU, before)."""
    from vitres_deploy.arch import MixedArch
    from vitres_deploy.latency.mixed import MixedTables, mixed_plans

    fp32, int8 = setup["tables"]
    factor = 2 * latency_range(fp32).slowest_ms / latency_range(int8).fastest_ms
    data = int8.to_dict()
    for entry in data["entries"].values():
        entry["latency_ms"] *= factor
    for key in ("offset_ms", "per_call_ms"):
        data["correction"][key] *= factor
    (tmp_path / "int8.json").write_text(json.dumps(data))
    slower = LatencyTable.load(tmp_path / "int8.json")
    low, high = latency_range(fp32).slowest_ms, latency_range(slower).fastest_ms
    mixed = MixedTables(fp32, slower, 0.004)
    rng = random.Random(2)
    between = [y for a in (sample_arch(fp32.space, rng) for _ in range(40)) for plan in mixed_plans(3)
               if 1.2 * low < (y := mixed.predict(MixedArch(a.space, a.stages, plan))) < high / 1.2]
    assert between, "no mixed network between the two ranges"
    gap, beyond = round(max(between), 6), round(10 * latency_range(slower).slowest_ms, 6)
    options = SearchOptions(budgets_ms=(*_budgets([fp32, slower]), gap), out_dir=tmp_path / "whole", evolution=SMALL,
                            eval_limit=LIMIT, drift_check=False, calibration=CALIBRATION)
    with pytest.raises(BudgetError, match=rf"^budget {gap:g} ms is outside the achievable range of every table \("):
        search_precisions(setup["checkpoint"], [fp32, slower], options, setup["data"])
    per_stage = dataclasses.replace(options, budgets_ms=(*options.budgets_ms, beyond), out_dir=tmp_path / "mixed",
                                    per_stage=True, boundary_ms=0.004)
    with pytest.raises(BudgetError, match=rf"^budget {beyond:g} ms is outside the achievable range of every table "
                                          "and of their networks mixed per stage"):
        search_precisions(setup["checkpoint"], [fp32, slower], per_stage, setup["data"])


def test_per_stage_without_an_fp32_and_an_int8_table_is_a_one_line_error(setup: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    fp32 = setup["tables"][0]
    result = CliRunner().invoke(main, ["search", "--supernet", str(setup["checkpoint"].path), "--profile",
                                       str(fp32.path), "--budget-ms", "1", "--out", str(tmp_path / "s"),
                                       "--no-drift-check", "--per-stage"])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        "error: --per-stage: precision per stage needs one fp32 and one int8 table of one device and batch "
        "(--profile fp32.json,int8.json)"]
    result = CliRunner().invoke(main, ["search", "--supernet", str(setup["checkpoint"].path), "--profile",
                                       str(fp32.path), "--budget-ms", "1", "--out", str(tmp_path / "s"),
                                       "--no-drift-check", "--boundary-us", "20"])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        "error: --boundary-us: the float/int8 boundary is a setting of --per-stage: add --per-stage, or leave the "
        "boundary out"]
    assert not (tmp_path / "s").exists()


def test_a_measured_boundary_is_kept_for_the_resumed_search(setup: dict[str, Any]) -> None:
    """The boundary is measured once, written to ``mixed/boundary.json`` and read back by ``resume`` (timing it
    again would change the settings the resumed search must match); a corrupt file is a one-line refusal."""
    from vitres_deploy.errors import RunDirError

    out = setup["root"] / "per-stage-measured"
    options = SearchOptions(budgets_ms=_budgets(setup["tables"]), out_dir=out, evolution=SMALL, eval_limit=LIMIT,
                            drift_check=False, calibration=CALIBRATION, per_stage=True, boundary_networks=2)
    first = search_precisions(setup["checkpoint"], setup["tables"], options, setup["data"])
    stored = json.loads((out / "mixed" / "boundary.json").read_text())
    assert len(stored["networks"]) == 2 and not stored["given"] and stored["date"]
    assert first.boundary == stored or "mixed" not in first.searches  # its range may reach no budget
    resumed = search_precisions(setup["checkpoint"], setup["tables"], dataclasses.replace(options, resume=True),
                                setup["data"])
    assert json.loads((out / "mixed" / "boundary.json").read_text()) == stored
    assert sum(s.new_evaluations for s in resumed.searches.values()) == 0
    (out / "mixed" / "boundary.json").write_text("{")
    with pytest.raises(RunDirError, match=r"boundary\.json is corrupt: start a new search in another out_dir"):
        search_precisions(setup["checkpoint"], setup["tables"], dataclasses.replace(options, resume=True),
                          setup["data"])
