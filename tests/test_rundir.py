"""The one home of the resume rules (vitres_deploy.rundir), and how the CLI boundary shows their fields as flags."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vitres_deploy.cli import main
from vitres_deploy.cli.boundary import Command
from vitres_deploy.errors import ProfileError, RunDirError
from vitres_deploy.rundir import check_same_settings, check_start, first_difference, hold_output


def test_a_run_is_not_started_over_and_resume_needs_one(tmp_path: Path) -> None:
    markers, where = ("search.json", "evaluated.jsonl"), re.escape(str(tmp_path))
    check_start(tmp_path / "new", False, "a search", markers)  # nothing there: fine
    (tmp_path / "evaluated.jsonl").write_text("")
    with pytest.raises(RunDirError, match=f"^{where} already holds a search: pass resume to continue it") as error:
        check_start(tmp_path, False, "a search", markers)  # any marker is a run
    assert error.value.field == "resume"
    with pytest.raises(RunDirError, match=rf"^resume: nothing to resume in {where} \(search.json not found\)"):
        check_start(tmp_path, True, "a search", markers)  # the first one is needed
    (tmp_path / "search.json").write_text("{}")
    check_start(tmp_path, True, "a search", markers)


def test_changed_settings_are_named_by_their_innermost_key(tmp_path: Path) -> None:
    stored = {"alpha": 0.9, "evolution": {"parents": 3, "seed": 1}, "eval_limit": None}
    assert first_difference(stored, dict(stored)) is None
    assert first_difference(stored, {**stored, "evolution": {"parents": 4, "seed": 1}}) == ("parents", 3, 4)
    assert first_difference(stored, {**stored, "max_macs": 5}) == ("max_macs", None, 5)
    assert first_difference(stored, {**stored, "evolution": None}) == ("evolution", {"parents": 3, "seed": 1}, None)
    check_same_settings(tmp_path, stored, dict(stored))
    with pytest.raises(ProfileError, match=r"it was made with alpha=0.9, now alpha=0.8: use the same") as error:
        check_same_settings(tmp_path, stored, {**stored, "alpha": 0.8}, error=ProfileError)
    assert error.value.field == "alpha"


def test_the_cli_boundary_shows_the_fields_as_flags(tmp_path: Path) -> None:
    @click.command(cls=Command)
    @click.option("--out", "out_dir", type=click.Path(path_type=Path))
    @click.option("--alpha", type=float)
    @click.option("--resume", is_flag=True)
    def run(out_dir: Path, alpha: float, resume: bool) -> None:
        check_start(out_dir, resume, "a run", ("settings.json",))
        check_same_settings(out_dir, {"alpha": 0.9}, {"alpha": alpha})

    (tmp_path / "settings.json").write_text("{}")
    result = CliRunner().invoke(run, ["--out", str(tmp_path), "--alpha", "0.8"])
    assert result.exit_code == 2
    assert result.output == (f"error: {tmp_path} already holds a run: pass --resume to continue it, or choose another "
                             "folder\n")
    result = CliRunner().invoke(run, ["--out", str(tmp_path / "none"), "--alpha", "0.8", "--resume"])
    assert result.output.startswith("error: --resume: nothing to resume in ")
    result = CliRunner().invoke(run, ["--out", str(tmp_path), "--alpha", "0.8", "--resume"])
    assert result.output == (f"error: cannot resume {tmp_path}: it was made with --alpha=0.9, now alpha=0.8: use the "
                             "same settings, or start afresh elsewhere\n")


HOLDER = """
import sys, time
from vitres_deploy.rundir import hold_output
with hold_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def held(tmp_path: Path):
    """Output paths whose locks another process holds (a real second process), by name."""
    holders = []

    def hold(name: str) -> Path:
        target = tmp_path / name
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return target

    yield hold
    for proc in holders:
        proc.kill()
        proc.wait()


def test_an_output_held_by_another_process_is_refused_and_freed_when_it_dies(tmp_path: Path, held) -> None:
    target = held("d")
    with pytest.raises(RunDirError, match=r"out_dir .*/d is in use by another vitres-deploy process \(pid \d+\)"):
        with hold_output(target, field="out_dir"):
            pass
    with hold_output(tmp_path / "other"):  # other outputs are free
        pass
    assert not (tmp_path / ".other.lock").exists()


# A table of another CPU than the one the suite may run on: the lock test below passes --allow-other-device.
SHIPPED = "profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json"


@pytest.mark.parametrize("args", [
    ["search", "--supernet", "fmnist-demo", "--profile", SHIPPED, "--budget-ms", "40%", "--no-drift-check",
     "--allow-other-device", "--preset", "demo", "--eval-limit", "10", "--out"],
    ["train", "--space", "fmnist", "--epochs", "1", "--out"],
    ["profile", "--space", "fmnist", "--backend", "ort-cpu", "--out"],
    ["export", "--supernet", "fmnist-demo", "--arch", "min", "--eval-limit", "10", "--out"],
], ids=["search", "train", "profile", "export"])
def test_commands_refuse_an_output_another_process_writes(held, args: list[str]) -> None:
    """Two processes in one output folder (or table, or bundle): the second gets one line, the first's files
    are untouched."""
    target = held("out.json" if args[0] == "profile" else "out")
    r = CliRunner().invoke(main, [*args, str(target)])
    assert r.exit_code == 2, r.output
    assert re.fullmatch(r"error: --out .*/out(\.json)? is in use by another vitres-deploy process \(pid \d+\): "
                        r"wait for it to end, or choose another folder", r.output.splitlines()[-1])
    assert not target.exists()
