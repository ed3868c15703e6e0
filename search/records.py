"""The on-disk state of a search: ``search.json`` (its settings) and ``evaluated.jsonl`` (one line per evaluation).

Lines are appended and flushed to disk one by one, so an interrupted search loses at most the line
being written; a torn last line is dropped when the search is resumed. ``search.json`` records every
setting that decides the result, and ``resume`` refuses a directory searched with other settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import Arch, parse_arch
from ..errors import ArchError, RunDirError
from ..files import JSONError, append_json_line, atomic_write_json, atomic_write_text, loads_json
from ..rundir import check_same_settings, check_start
from .constraints import Metrics

EVALUATED, SETTINGS = "evaluated.jsonl", "search.json"
FORMAT = "vitres-deploy/search"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One evaluated arch: its metrics, its hold-out accuracy, and where in the search it came from."""

    index: int
    arch: Arch
    latency_ms: float
    macs: int
    params: int
    holdout_top1: float
    holdout_top5: float
    images: int
    iteration: int
    origin: str
    budget_ms: float

    @property
    def hash(self) -> str:
        """The arch's canonical hash."""
        return self.arch.hash

    @property
    def metrics(self) -> Metrics:
        """What the constraints look at."""
        return Metrics(self.latency_ms, self.macs, self.params)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line of this record."""
        return {"index": self.index, "hash": self.hash, "latency_ms": self.latency_ms, "macs": self.macs,
                "params": self.params, "holdout_top1": self.holdout_top1, "holdout_top5": self.holdout_top5,
                "images": self.images, "iteration": self.iteration, "origin": self.origin,
                "budget_ms": self.budget_ms, "arch": self.arch.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_dict` (the stored hash must match the arch)."""
        arch = parse_arch(d["arch"])
        if arch.hash != d["hash"]:
            raise ArchError(f"record {d['index']}: hash {d['hash']} does not match its arch ({arch.hash})")
        return cls(int(d["index"]), arch, float(d["latency_ms"]), int(d["macs"]), int(d["params"]),
                   float(d["holdout_top1"]), float(d["holdout_top5"]), int(d["images"]), int(d["iteration"]),
                   str(d["origin"]), float(d["budget_ms"]))


def append_record(path: Path, record: Record) -> None:
    """Append ``record`` as one line and flush it to disk."""
    append_json_line(path, record.to_dict())


def read_records(path: Path) -> list[Record]:
    """The records of ``evaluated.jsonl``; a torn last line (an interrupted write) is dropped from the file."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_dict(loads_json(line)))
        except (KeyError, TypeError, ValueError, ArchError) as e:
            if n < len(lines):
                raise RunDirError(f"{path} line {n} is corrupt ({type(e).__name__}): remove that line or start a "
                                  "new search in another out_dir", field="out_dir") from None
    if not text.endswith("\n") and text:  # the last write was interrupted: keep only whole lines
        kept = "".join(json.dumps(r.to_dict(), separators=(",", ":")) + "\n" for r in records)
        atomic_write_text(path, kept)
    return records


def open_run_dir(out: Path, settings: dict[str, Any], info: dict[str, Any], resume: bool) -> list[Record]:
    """Prepare ``out`` for a search with ``settings``; returns the records to replay (``resume``) or [].

    ``settings`` decide the result and are compared on resume; ``info`` (paths, dates) is only recorded.
    The rules are those of every run folder (:mod:`vitres_deploy.rundir`): without ``resume`` a folder that
    already holds a search is refused; with it, the stored settings must equal ``settings``.
    """
    check_start(out, resume, "a search", (SETTINGS, EVALUATED))
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out / SETTINGS, settings, info)
        return []
    check_same_settings(out, read_settings(out / SETTINGS), settings, made="searched")
    return read_records(out / EVALUATED)


def read_settings(path: Path) -> dict[str, Any]:
    """The settings stored in ``search.json``."""
    try:
        stored = loads_json(path.read_text())
    except (JSONError, UnicodeDecodeError):
        raise RunDirError(f"{path} is not valid JSON: start a new search in another out_dir", field="out_dir") from None
    return stored.get("settings", {}) if isinstance(stored, dict) else {}


def write_settings(path: Path, settings: dict[str, Any], info: dict[str, Any]) -> None:
    """Write ``search.json`` atomically."""
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings, **info}
    atomic_write_json(path, doc)
