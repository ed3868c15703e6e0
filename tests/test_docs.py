"""The docs cannot rot: the CLI reference matches the commands' help, every link between the docs finds its file and
heading, and the README's commands run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(heading: str) -> list[str]:
    """Command lines of the first fenced block under a README heading (comments and prompts stripped)."""
    section = README.split(f"\n## {heading}\n", 1)[1]
    body = re.search(r"```(?:sh|console|bash)\n(.*?)```", section, re.S).group(1)
    lines, current = [], ""
    for raw in body.splitlines():
        line = raw.split("  #", 1)[0].rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (outside fenced blocks): lower case, punctuation but
    ``-`` and ``_`` dropped, spaces as ``-``; a repeated one gets ``-1``, ``-2``, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        fenced ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.+)$", line)
        if heading and not fenced:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_between_the_docs_finds_its_file_and_heading():
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()  # inline links, then reference definitions ("[r6]: #heading")
        for target in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]: (\S+)", text, re.M):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path) if path else doc
            if not linked.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert "measured-2026-12-0304-ninth-round-the-disturbed-pass-rule-2319-0019-nothing-else-running" in _anchors(
        (ROOT / "docs" / "latency.md").read_text())  # "2026-12-03/04": the slash dropped, nothing else


def test_cli_reference_is_generated_from_the_current_help():
    proc = subprocess.run([sys.executable, "docs/make_cli_reference.py", "--check"], cwd=ROOT)
    assert proc.returncode == 0, "docs/cli.md is out of date: run `python docs/make_cli_reference.py`"


def test_every_command_is_in_the_cli_reference():
    from vitres_deploy.cli import main

    reference = (ROOT / "docs" / "cli.md").read_text()
    for name in main.commands:
        assert f"## `{name}`" in reference


def test_quick_start_is_the_two_commands():
    assert _block("Quick start")[:2] == ["make demo", "make test"]


def test_step_by_step_says_how_to_reach_the_command():
    """`make demo` installs into .venv, which is not on PATH: the step by step says how to run vitres-deploy."""
    section = README.split("\n## Step by step\n", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/vitres-deploy" in section or "source .venv/bin/activate" in section


def test_export_doc_says_what_verify_can_and_cannot_prove():
    """A hash list in the bundle under test proves consistency, not origin: docs/export.md says so plainly."""
    text = (ROOT / "docs" / "export.md").read_text()
    assert "What verify can and cannot prove" in text and "not a signature" in text


# The two end-to-end runs are classes of their own so that parallel workers (`make test`) take them apart.
class TestStepByStep:
    @pytest.mark.slow
    def test_readme_step_by_step_commands_run_as_written(self, tmp_path):
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "OMP_NUM_THREADS": "1"}
        commands = _block("Step by step")
        assert len(commands) >= 5
        for command in commands:
            argv = shlex.split(command)
            assert argv[0] == "vitres-deploy", command
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        assert (tmp_path / "runs" / "bundle" / "manifest.json").is_file()


class TestQuickDemo:
    @pytest.mark.slow
    def test_quick_demo_from_the_readme_runs_as_written(self, tmp_path):
        quick = re.search(r"^`(make demo DEMO_ARGS=\"[^\"`]*\")`$", README, re.M)
        assert quick, "README.md shows the one-minute demo as a line of its own: `make demo DEMO_ARGS=\"...\"`"
        argv = shlex.split(quick.group(1))
        argv = [a + f" --out {tmp_path / 'demo'}" if a.startswith("DEMO_ARGS=") else a for a in argv]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "test top-1" in proc.stdout and "hold-out 95% interval" in proc.stdout
        assert re.search(r"measured latency \(ONNX Runtime\) +│ [0-9.]+ ms: (within|OVER) the budget", proc.stdout)
        for name in ("summary.json", "search/best.json", "search/search.png", "bundle/manifest.json",
                     "profile/latency.png"):
            assert (tmp_path / "demo" / name).is_file(), name
