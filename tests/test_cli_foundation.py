"""The foundation commands: ``spaces`` and ``info``, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitres_deploy.arch import max_arch, min_arch, random_arch
from vitres_deploy.cli import main
from vitres_deploy.macs import arch_cost
from vitres_deploy.space import PRESETS, load_space

CONSOLE_SCRIPT = Path(sys.executable).with_name("vitres-deploy")


def run(*args: str):
    """Invoke the CLI in-process; exceptions other than SystemExit are left in ``result.exception``."""
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_foundation_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "spaces" in result.stdout and "info" in result.stdout


def test_spaces_table_lists_every_preset() -> None:
    result = run("spaces")
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert name in result.stdout
    assert "257 -> 65 -> 17" in result.stdout and "50 -> 17 -> 5" in result.stdout


def test_spaces_json_gives_size_and_mac_range() -> None:
    result = run("spaces", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert list(rows) == list(PRESETS)
    for name, space in PRESETS.items():
        row = rows[name]
        assert row["tokens"] == list(space.tokens)
        assert row["subnets"] == space.num_subnets()
        assert row["macs_min"] == arch_cost(min_arch(space), space).macs
        assert row["macs_max"] == arch_cost(max_arch(space), space).macs
        assert row["macs_min"] < row["macs_max"]


def test_info_json_for_max(fmnist) -> None:
    result = run("info", "--space", "fmnist", "--arch", "max", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cost = arch_cost(max_arch(fmnist), fmnist)
    assert type(data["macs"]) is int and type(data["params"]) is int
    assert (data["macs"], data["params"]) == (cost.macs, cost.params)
    assert data["hash"] == max_arch(fmnist).hash
    assert data["arch"] == max_arch(fmnist).to_dict()
    assert [s["depth"] for s in data["stages"]] == [3, 3, 3]
    assert [s["tokens"] for s in data["stages"]] == [50, 17, 5]


@pytest.mark.parametrize("spec", ["min", "random:7", "FILE"])
def test_info_accepts_every_form_of_arch(tmp_path, fmnist, spec: str) -> None:
    expected = {"min": min_arch(fmnist), "random:7": random_arch(fmnist, 7), "FILE": random_arch(fmnist, 9)}[spec]
    if spec == "FILE":
        spec = str(tmp_path / "arch.json")
        Path(spec).write_text(json.dumps(expected.to_dict()))
    result = run("info", "--space", "fmnist", "--arch", spec, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hash"] == expected.hash and data["macs"] == arch_cost(expected, fmnist).macs


def test_info_table_and_reduced_resolution() -> None:
    result = run("info", "--space", "vit-resnas-tiny@56", "--arch", "random:3")
    assert result.exit_code == 0, result.output
    space = load_space("vit-resnas-tiny@56")
    assert random_arch(space, 3).hash in result.stdout
    assert "vit-resnas-tiny@56" in result.stdout


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "malformed.json").write_text('{"space": "fmnist", "stages": [')
    (tmp_path / "space.json").write_text('{"name": "x",')
    outside = max_arch(PRESETS["fmnist"]).to_dict()
    outside["stages"][1]["blocks"][2]["heads"] = 9
    (tmp_path / "outside.json").write_text(json.dumps(outside))
    return {
        "malformed arch JSON": (["info", "--space", "fmnist", "--arch", str(tmp_path / "malformed.json")],
                                "is not valid JSON"),
        "malformed space JSON": (["info", "--space", str(tmp_path / "space.json"), "--arch", "max"],
                                 "space.json is not valid JSON"),
        "unknown space": (["info", "--space", "imagenet-huge", "--arch", "max"], "unknown search space"),
        "arch outside its space": (["info", "--space", "fmnist", "--arch", str(tmp_path / "outside.json")],
                                   "stage 2 block 3: heads=9 not in {1, 2, 4}"),
        "arch of another space": (["info", "--space", "vit-resnas-tiny", "--arch", str(tmp_path / "outside.json")],
                                  "arch is of space 'fmnist', expected 'vit-resnas-tiny'"),
        "random:abc": (["info", "--space", "fmnist", "--arch", "random:abc"], "seed of random:SEED must be an integer"),
        "missing arch file": (["info", "--space", "fmnist", "--arch", "nope.json"], "neither max, min, random:SEED"),
    }


BAD = ["malformed arch JSON", "malformed space JSON", "unknown space", "arch outside its space",
       "arch of another space", "random:abc", "missing arch file"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_error_line(tmp_path, case: str) -> None:
    args, fragment = _bad_inputs(tmp_path)[case]
    result = run(*args)
    assert result.exit_code not in (0, None)
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert result.stdout == ""


def test_console_script_error_has_no_traceback(tmp_path) -> None:
    args, fragment = _bad_inputs(tmp_path)["arch outside its space"]
    proc = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {fragment}"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


HOSTILE_JSON = {"huge int": "1" * 5000, "deep nesting": "[" * 100_000 + "]" * 100_000}
SHIPPED_TABLE = "profiles/amd-epyc/fmnist-ort-cpu-fp32-b1.json"


def _hostile_inputs(tmp_path: Path, text: str) -> dict[str, list[str]]:
    """One command per kind of JSON file the tool reads, each reading ``text``."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "arch.json").write_text(text)
    (tmp_path / "space.json").write_text(text)
    (tmp_path / "table.json").write_text(text)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text(text)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "ckpt.safetensors"), metadata={"vitres_deploy": text})
    return {
        "arch": ["info", "--space", "fmnist", "--arch", str(tmp_path / "arch.json")],
        "space": ["info", "--space", str(tmp_path / "space.json"), "--arch", "max"],
        "table": ["predict", "--profile", str(tmp_path / "table.json"), "--arch", "max"],
        "manifest": ["verify", str(tmp_path / "bundle")],
        "checkpoint": ["evaluate", "--supernet", str(tmp_path / "ckpt.safetensors"), "--arch", "max"],
    }


@pytest.mark.parametrize("payload", list(HOSTILE_JSON))
def test_hostile_json_in_any_file_read_is_one_error_line(tmp_path, payload: str) -> None:
    """A JSON integer of 5,000 digits or 100,000 levels of nesting: one `error:` line, never a traceback."""
    for what, args in _hostile_inputs(tmp_path, HOSTILE_JSON[payload]).items():
        result = run(*args)
        assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), (what, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (what, result.output)


@pytest.mark.parametrize("payload", list(HOSTILE_JSON))
def test_hostile_json_in_run_logs_is_one_error(tmp_path, payload: str) -> None:
    """``evaluated.jsonl`` and ``search.json`` of a search folder, read on resume."""
    from vitres_deploy.errors import RunDirError
    from vitres_deploy.search.records import read_records, read_settings

    (tmp_path / "evaluated.jsonl").write_text(HOSTILE_JSON[payload] + "\n{}\n")
    with pytest.raises(RunDirError, match="line 1 is corrupt"):
        read_records(tmp_path / "evaluated.jsonl")
    (tmp_path / "search.json").write_text(HOSTILE_JSON[payload])
    with pytest.raises(RunDirError, match="is not valid JSON"):
        read_settings(tmp_path / "search.json")


BAD_VALUES = {
    "train batch-size 0": (["train", "--batch-size", "0"], "--batch-size 0 must be"),
    "train batch-size -5": (["train", "--batch-size", "-5"], "--batch-size -5 must be"),
    "train lr nan": (["train", "--lr", "nan"], "--lr nan must be a finite number > 0"),
    "train drop-path 5": (["train", "--drop-path", "5"], "--drop-path 5.0 must be a finite number >= 0 and < 1"),
    "train label-smoothing 2": (["train", "--label-smoothing", "2"], "--label-smoothing 2.0 must be"),
    "train steps-per-epoch 0": (["train", "--steps-per-epoch", "0"], "--steps-per-epoch 0 must be"),
    "train epochs 0": (["train", "--epochs", "0"], "--epochs 0 must be"),
    "train eval-limit 0": (["train", "--eval-limit", "0"], "--eval-limit 0 must be"),
    "train holdout-fraction nan": (["train", "--holdout-fraction", "nan"],
                                   "--holdout-fraction nan must be a finite number > 0 and < 1"),
    "evaluate batch-size 0": (["evaluate", "--supernet", "fmnist-demo", "--arch", "min", "--batch-size", "0"],
                              "--batch-size 0 must be at least 1"),
    "evaluate batch-size -5": (["evaluate", "--supernet", "fmnist-demo", "--arch", "min", "--batch-size", "-5"],
                               "--batch-size -5 must be at least 1"),
    "show plot x.xyz": (["profile", "show", SHIPPED_TABLE, "--plot", "{tmp}/x.xyz"],
                        "--plot {tmp}/x.xyz: unknown image"),
    "show plot no folder": (["profile", "show", SHIPPED_TABLE, "--plot", "{tmp}/no/dir/x.png"], "does not exist"),
    "export opset 99": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--opset", "99"],
                        "--opset 99: the installed onnx knows opsets up to"),
    "export atol nan": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--atol", "nan"], "--atol nan"),
    "export latency-tolerance nan": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--latency-tolerance",
                                      "nan", "--profile", SHIPPED_TABLE], "--latency-tolerance nan"),
    "export latency-retries -1": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--latency-retries", "-1",
                                   "--profile", SHIPPED_TABLE], "--latency-retries -1: must be 0 or more"),
    "export budget nan": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--budget-ms", "nan", "--profile",
                           SHIPPED_TABLE], "--budget-ms nan"),
    "export budget without profile": (["export", "--supernet", "fmnist-demo", "--arch", "min", "--budget-ms", "1"],
                                      "--profile is needed with a latency budget (1.0 ms)"),
    "usage: unknown option": (["search", "--foo"], "No such option '--foo'"),
    "demo validate-samples 3": (["demo", "--validate-samples", "3", "--out", "{tmp}/demo"],
                                "--validate-samples 3 must be at least 4"),
    "usage: missing option": (["predict", "--arch", "max"], "Missing option '--profile'"),
    "profile warmup nan": (["profile", "--space", "fmnist", "--backend", "ort-cpu", "--warmup", "nan", "--out",
                            "{tmp}/t.json"], "--warmup nan must be a finite number >= 0"),
    "profile min-seconds nan": (["profile", "--space", "fmnist", "--backend", "ort-cpu", "--min-seconds", "nan",
                                 "--out", "{tmp}/t.json"], "--min-seconds nan must be a finite number >= 0"),
    "check tolerance nan": (["profile", "check", "--profile", SHIPPED_TABLE, "--tolerance", "nan",
                             "--allow-other-device"], "--tolerance nan must be a finite number > 0"),
    "verify atol nan": (["verify", "{tmp}/bundle", "--atol", "nan"], "--atol nan must be a finite number >= 0"),
    "verify rtol nan": (["verify", "{tmp}/bundle", "--rtol", "nan"], "--rtol nan must be a finite number >= 0"),
    "verify atol -1": (["verify", "{tmp}/bundle", "--atol", "-1"], "--atol -1.0 must be a finite number >= 0"),
    "verify max-accuracy-drop nan": (["verify", "{tmp}/bundle", "--max-accuracy-drop", "nan"],
                                     "--max-accuracy-drop nan must be a finite number >= 0"),
    "demo budget nan": (["demo", "--budget-ms", "nan", "--out", "{tmp}/demo"], "--budget-ms nan must be a finite"),
    "demo budget inf": (["demo", "--budget-ms", "inf", "--out", "{tmp}/demo"], "--budget-ms inf must be a finite"),
    "demo budget-fraction nan": (["demo", "--budget-fraction", "nan", "--out", "{tmp}/demo"],
                                 "--budget-fraction nan must be a finite number > 0 and < 1"),
    "out under a file": (["train", "--out", "{tmp}/file/run"], "file is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_one_error_line_naming_the_flag(tmp_path, case: str) -> None:
    """Values no run can use: `error:` and one line naming the flag, exit 2, nothing written."""
    args, message = BAD_VALUES[case]
    (tmp_path / "file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] in ("train", "export") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = run(*args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert lines[-1].startswith("error: ") and message.format(tmp=tmp_path) in lines[-1], result.output
    assert not any(line.startswith(("Usage", "Error", "Traceback")) for line in lines), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_error_line_naming_the_output(tmp_path, monkeypatch, code: str) -> None:
    """The file system refuses the write (injected where every output is renamed into place; tests run as
    root, so permissions cannot make a folder read-only): one `error:` line with the output's path and the
    reason, nothing written, no temporary file left."""
    import errno
    import os

    def refused(src, dst):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), src)

    monkeypatch.setattr(os, "replace", refused)
    plot = tmp_path / "plots" / "x.png"
    plot.parent.mkdir()
    result = run("profile", "show", SHIPPED_TABLE, "--plot", str(plot))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    fix = " MiB free there): free space there, or write to a larger disk" if code == "ENOSPC" else ""
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {plot}: {os.strerror(getattr(errno, code))}") and line.endswith(fix), line
    assert list((tmp_path / "plots").iterdir()) == []


def test_a_full_disk_under_the_export_cache_names_its_variable(tmp_path, monkeypatch, capsys) -> None:
    """A build that fills the disk with its exports (it happened here: a tiny table's cache is 4-5 GB) says how
    much is free where the write failed and that the export cache can move elsewhere."""
    import errno
    import os
    import shutil

    from vitres_deploy.cli.boundary import one_line_errors

    monkeypatch.setenv("VITRES_DEPLOY_CACHE", str(tmp_path / "cache"))
    export = tmp_path / "cache" / "onnx" / "block-3-768.onnx"  # its folder not made yet: the nearest one counts
    with pytest.raises(SystemExit) as exited, one_line_errors(main):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(export))
    free = shutil.disk_usage(tmp_path).free >> 20
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {export}: {os.strerror(errno.ENOSPC)} ({free} MiB free there): free space there, or point "
        "VITRES_DEPLOY_CACHE at a larger disk (the export cache)")
