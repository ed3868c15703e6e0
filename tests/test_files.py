"""Atomic writes and file hashing (vitres_deploy.files) on real files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from vitres_deploy.files import (
    append_json_line,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    sha256_file,
)


def test_writes_replace_the_target_with_normal_permissions_and_leave_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "doc.json"  # the directory is created
    atomic_write_json(target, {"a": [1, 2]}, fsync=True)
    assert target.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    assert atomic_write_json(target, {"b": 1}, indent=1) == target
    assert json.loads(target.read_text()) == {"b": 1}
    atomic_write_text(tmp_path / "t.txt", "x\ny\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.txt").read_text() == "x\ny\n" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    for path in (target, tmp_path / "t.txt", tmp_path / "b.bin"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    target.write_text("old")
    seen: list[Path] = []

    def fail(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail, suffix=".tmp.png")
    assert target.read_text() == "old"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".table.json.") and seen[0].name.endswith(".tmp.png")
    assert not seen[0].exists() and sorted(os.listdir(tmp_path)) == ["table.json"]


def test_sha256_file_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 123)  # more than one 1 MiB read
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_json_writes_are_strict_and_write_nothing_on_nan(tmp_path: Path, value: float) -> None:
    """NaN and infinity are not JSON: refused before a file or a line is written."""
    target, log = tmp_path / "best.json", tmp_path / "evaluated.jsonl"
    atomic_write_json(target, {"latency_ms": 1.0})
    append_json_line(log, {"latency_ms": 1.0})
    with pytest.raises(ValueError, match="JSON compliant"):
        atomic_write_json(target, {"latency_ms": value})
    with pytest.raises(ValueError, match="JSON compliant"):
        append_json_line(log, {"latency_ms": value})
    assert json.loads(target.read_text()) == {"latency_ms": 1.0}
    assert log.read_text() == '{"latency_ms":1.0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "evaluated.jsonl"]
