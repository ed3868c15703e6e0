"""``demo`` into a folder that holds a demo run: refused without ``--resume``; with it, finished steps are reused
and changed settings refused, naming the flag, but --allow-over-budget may be added after an export measured over
the budget (issue 19 item 13); bad values are refused before the folder is made. The README's runs are in
test_docs.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vitres_deploy.app import demo as demo_app
from vitres_deploy.app.demo import STATE, TABLE_NAME, DemoOptions, DemoState, run_demo, shipped_table
from vitres_deploy.cli import main
from vitres_deploy.errors import SettingsError


def one_error_line(args: list[str]) -> str:
    """Run the CLI with ``args``; it must fail with exit 2 and one ``error:`` line, which is returned."""
    result = CliRunner().invoke(main, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def started(out: Path, **settings: object) -> DemoOptions:
    """A demo folder as a run with ``settings`` leaves it after its first step (the shipped table copied)."""
    opts = DemoOptions(out=out, reuse_profile=True, **settings)  # type: ignore[arg-type]
    DemoState.open(opts).finish("profile")
    (out / "profile").mkdir()
    shutil.copyfile(shipped_table(), out / "profile" / TABLE_NAME)
    return opts


def test_a_second_run_into_the_folder_is_refused_without_resume(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    started(out, validate_samples=6)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(["demo", "--out", str(out), "--reuse-profile", "--validate-samples", "6"])
    assert line == f"error: {out} already holds a demo run: pass --resume to continue it, or choose another folder"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten


def test_resume_refuses_changed_settings_naming_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    started(out, validate_samples=6)
    line = one_error_line(["demo", "--out", str(out), "--resume", "--reuse-profile", "--validate-samples", "8"])
    assert line == (f"error: cannot resume {out}: it was run with --validate-samples=6, now validate_samples=8: use "
                    "the same settings, or start afresh elsewhere")
    line = one_error_line(["demo", "--out", str(out), "--resume", "--validate-samples", "6"])
    assert "--reuse-profile=True, now reuse_profile=False" in line


def test_resume_where_no_demo_ran_is_refused(tmp_path: Path) -> None:
    line = one_error_line(["demo", "--out", str(tmp_path / "none"), "--resume"])
    assert line == (f"error: --resume: nothing to resume in {tmp_path / 'none'} ({STATE} not found): start "
                    "without it")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--budget-ms", "-1"], "--budget-ms -1.0 must be a finite number > 0"),
    (["--budget-ms", "inf"], "--budget-ms inf must be a finite number > 0"),
    (["--eval-limit", "0"], "--eval-limit 0 must be a whole number of at least 1"),
    (["--budget-fraction", "0"], "--budget-fraction 0.0 must be a finite number > 0 and < 1"),
    (["--budget-fraction", "-0.5"], "--budget-fraction -0.5 must be a finite number > 0 and < 1"),
    (["--budget-fraction", "nan"], "--budget-fraction nan must be a finite number > 0 and < 1"),
])
def test_a_bad_value_is_refused_before_the_folder_is_made(tmp_path: Path, flags: list[str], message: str) -> None:
    """A value a later step would refuse is refused first: no folder that no second run (with or without
    --resume) could use."""
    out = tmp_path / "demo"
    assert one_error_line(["demo", "--reuse-profile", *flags, "--out", str(out)]) == f"error: {message}"
    assert not out.exists()


class SearchReached(Exception):
    """Raised in place of the search: the steps before it are what is tested."""


def test_resume_reuses_the_finished_table_and_validation(tmp_path: Path, fmnist_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The table and its validation are taken as they are (nothing measured, the file untouched), and the
    search resumes the one found in the folder."""
    out = tmp_path / "demo"
    opts = started(out, validate_samples=40)  # the shipped table carries a 40-sample validation
    state = json.loads((out / STATE).read_text())
    (out / STATE).write_text(json.dumps({**state, "finished": ["profile", "validate"]}))
    (out / "search").mkdir()
    (out / "search" / "search.json").write_text("{}")
    table_before = (out / "profile" / TABLE_NAME).read_bytes()

    def no_validation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished validation was measured again")

    def planned(checkpoint: object, table: object, options: demo_app.SearchOptions) -> None:
        raise SearchReached(options.resume)

    monkeypatch.setattr(demo_app, "validate_table", no_validation)
    monkeypatch.setattr(demo_app, "plan_search", planned)
    said: list[str] = []
    with pytest.raises(SearchReached) as reached:
        run_demo(DemoOptions(**{**opts.__dict__, "resume": True, "data_dir": str(fmnist_dir)}), say=said.append)
    assert reached.value.args == (True,)
    assert said[:2] == ["[1/5] profile (reusing the finished table)",
                        "[2/5] validate the table (reusing the finished validation)"]
    assert len(said) == 3 and said[2].startswith("[3/5] search under ")
    assert (out / "profile" / TABLE_NAME).read_bytes() == table_before


def test_the_search_evaluates_with_the_eval_threads_and_puts_the_timing_threads_back(
        tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    opts = started(out, validate_samples=40)
    state = json.loads((out / STATE).read_text())
    (out / STATE).write_text(json.dumps({**state, "finished": ["profile", "validate"]}))

    def planned(checkpoint: object, table: object, options: demo_app.SearchOptions) -> None:
        raise SearchReached(torch.get_num_threads())

    monkeypatch.setattr(demo_app, "plan_search", planned)
    with pytest.raises(SearchReached) as reached:
        run_demo(DemoOptions(**{**opts.__dict__, "resume": True, "data_dir": str(fmnist_dir), "eval_threads": 2}),
                 say=lambda _: None)
    assert reached.value.args == (2,)
    assert torch.get_num_threads() == opts.threads  # run_demo's own setting, put back after the search raised
    with pytest.raises(SettingsError, match="eval_threads 0 must be"):
        DemoOptions(out=tmp_path / "other", eval_threads=0)


@pytest.mark.parametrize(("omp", "expected"), [("3", 3), ("", None), ("0", None), ("four", None)])
def test_eval_threads_default_to_omp_num_threads_else_every_cpu(omp: str, expected: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert demo_app.default_eval_threads() == (expected or len(os.sched_getaffinity(0)))


@pytest.mark.slow  # a real export of the network (the resumed run takes its file from the export cache), two gates
def test_an_export_over_the_budget_fails_naming_the_flag_and_the_resumed_run_ships_it(
        tmp_path: Path, fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's table predicts a tenth of every latency (the shipped table with its correction scaled by 0.1,
    and a short protocol), so the searched arch is predicted under the budget and measured far over it by the
    export's real latency gate (which measures again, here without its pauses, before it fails): the run fails
    naming --allow-over-budget and ships nothing; the same run resumed with it writes the bundle and says by how
    much it is over."""
    from vitres_deploy.export import latency_gate

    monkeypatch.setattr(latency_gate, "CONFIRM_PAUSE_S", 0.0)
    out = tmp_path / "demo"
    started(out, validate_samples=40, eval_limit=50)  # the shipped table carries a 40-sample validation
    table = json.loads((out / "profile" / TABLE_NAME).read_text())
    table["correction"].update(scale=table["correction"]["scale"] * 0.1,
                               offset_ms=table["correction"]["offset_ms"] * 0.1)
    table["meta"]["protocol"].update(warmup_s=0.005, min_seconds=0.02, rounds=1, min_rounds=1, round_s=0.0)
    (out / "profile" / TABLE_NAME).write_text(json.dumps(table))
    state = json.loads((out / STATE).read_text())
    (out / STATE).write_text(json.dumps({**state, "finished": ["profile", "validate"]}))
    args = ["demo", "--out", str(out), "--resume", "--reuse-profile", "--validate-samples", "40", "--eval-limit", "50",
            "--data", str(fmnist_dir)]

    failed = CliRunner().invoke(main, args)
    assert failed.exit_code == 1, failed.output
    line = failed.output.strip().splitlines()[-1]
    assert line.startswith("error: latency check of onnx on ort-cpu failed: measured ") and "over the" in line
    assert line.endswith("pass --allow-over-budget to ship it anyway"), line
    assert not (out / "bundle").exists()

    shipped = CliRunner().invoke(main, [*args, "--allow-over-budget"])
    assert shipped.exit_code == 0, shipped.output
    over = json.loads((out / "summary.json").read_text())["summary"]["over_budget"]
    assert over > 0.05 and f"OVER the budget (+{over:.1%})" in shipped.output  # beyond the gate's 5% tolerance
    assert (out / "bundle" / "manifest.json").is_file()
