"""What a search leaves in its directory besides ``evaluated.jsonl``: best archs, the Pareto front, the plot.

* ``best.json`` (one budget) or ``best-<budget>.json`` (several): the architecture-file form (so it is
  accepted wherever an arch file is) plus predicted latency, MACs, params, hold-out top-1 with its 95%
  interval, how many other archs in the window score inside that interval, the budget and the latency
  table it was searched against (path and identity);
* ``pareto.json``: the accuracy-vs-latency frontier of everything evaluated;
* ``search.png``: every evaluated arch, the frontier, the chosen ones and the budget lines.

Every file is written atomically (temporary file in the same directory, then rename).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..arch import MixedArch
from ..archfile import ArchFile, SearchedRecord
from ..checkpoint import Checkpoint
from ..files import atomic_write_json, sha256_file
from ..latency import LatencyTable
from ..quantized import Calibration
from .constraints import Constraint
from .records import Record

BEST, PARETO, PLOT = "best.json", "pareto.json", "search.png"


def table_identity(table: LatencyTable) -> dict[str, Any]:
    """Which latency table a search used: its path, the sha256 of its file, and what it measured."""
    m = table.meta
    digest = sha256_file(table.path) if table.path else \
        hashlib.sha256(json.dumps(table.to_dict(), sort_keys=True).encode()).hexdigest()
    return {"path": str(table.path) if table.path else None, "sha256": digest, "space": m.space,
            "backend": m.backend, "backend_version": m.backend_version, "precision": m.precision, "batch": m.batch,
            "threads": m.threads, "device": m.device, "date": m.date, "correction": table.correction.model,
            "validated": table.validation is not None, "rescaled_by": table.correction.details.get("rescaled_by")}


def supernet_identity(checkpoint: Checkpoint) -> dict[str, Any]:
    """Which supernet a search used: its path, the sha256 of its file, its space and hold-out split."""
    return {"path": str(checkpoint.path), "sha256": sha256_file(checkpoint.path), "space": checkpoint.space.name,
            "holdout_sha256": checkpoint.data.get("holdout_sha256")}


def best_filename(budget_ms: float, several: bool) -> str:
    """``best.json`` for a single budget, ``best-<budget>.json`` (e.g. ``best-1.5.json``) for several."""
    return f"best-{budget_ms:g}.json" if several else BEST


def wilson_interval(fraction: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for ``z=1.96``) of an accuracy ``fraction`` measured on ``n`` images."""
    denom = 1 + z * z / n
    centre = (fraction + z * z / (2 * n)) / denom
    half = z * math.sqrt(fraction * (1 - fraction) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def best_file(record: Record, constraint: Constraint, records: Sequence[Record], table: dict[str, Any],
              supernet: dict[str, Any], calibration: Calibration | None = None) -> ArchFile:
    """The best file of ``constraint``: the arch with its metrics, the budget, the table's identity, and the
    precision it was searched in (the table's) with its calibration (int8) and, for a
    :class:`~vitres_deploy.arch.MixedArch`, the stages that run in int8.

    ``holdout_top1_ci95`` is the best's 95% interval on the hold-out images and ``within_ci95`` counts
    the other archs of ``records`` in the window whose hold-out top-1 reaches its lower end: their
    distance to the best may be sampling noise of the hold-out split rather than a real difference.
    """
    arch, int8_stages = record.arch, None
    if isinstance(arch, MixedArch):  # the file holds the architecture; its plan is the search's record
        arch, int8_stages = arch.plain, list(arch.int8_stages)
    low, high = wilson_interval(record.holdout_top1, record.images)
    within = sum(1 for r in records if r.hash != record.hash and constraint.satisfied(r.metrics)
                 and r.holdout_top1 >= low)
    searched = SearchedRecord(
        hash=arch.hash, latency_ms=record.latency_ms, macs=record.macs, params=record.params,
        holdout_top1=record.holdout_top1, holdout_top5=record.holdout_top5, holdout_images=record.images,
        holdout_top1_ci95=(low, high), within_ci95=within, alpha=constraint.alpha,
        window_ms=(constraint.low_ms, constraint.limit_ms), max_macs=constraint.max_macs,
        max_params=constraint.max_params, evaluated=len(records), table=table, supernet=supernet,
        margin=constraint.margin, precision=table["precision"],
        calibration=calibration.to_dict() if calibration else None, int8_stages=int8_stages)
    return ArchFile(arch, constraint.budget_ms, searched)


def pareto_front(records: Sequence[Record]) -> list[Record]:
    """Records no other record beats on both latency (lower) and hold-out top-1 (higher), fastest first."""
    front: list[Record] = []
    for r in sorted(records, key=lambda r: (r.latency_ms, -r.holdout_top1, r.hash)):
        if not front or r.holdout_top1 > front[-1].holdout_top1:
            front.append(r)
    return front


def write_outputs(out: Path, files: Sequence[ArchFile], records: Sequence[Record],
                  constraints: Sequence[Constraint], bests: Sequence[Record], table: dict[str, Any],
                  supernet: dict[str, Any], title: str) -> None:
    """Write ``pareto.json``, ``search.png`` and then the best file(s) (``files``, one per constraint) into
    ``out``: a best file is there only when every output is (a full disk leaves no best file; resume redoes them).
    """
    from .plot import plot_search

    front = pareto_front(records)
    atomic_write_json(out / PARETO, {"table": table, "supernet": supernet, "evaluated": len(records),
                                     "front": [{"hash": r.hash, "latency_ms": r.latency_ms,
                                                "holdout_top1": r.holdout_top1, "macs": r.macs, "params": r.params,
                                                "arch": r.arch.to_dict()} for r in front]})
    plot_search(out / PLOT, records, front, constraints, bests, title)
    several = len(constraints) > 1
    for c, f in zip(constraints, files):
        atomic_write_json(out / best_filename(c.budget_ms, several), f.to_dict())
