"""What ``profile show`` reports about a latency table: coverage, noise, latency per kind of entry, the
correction, the validation figures and the achievable range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .correction import Correction
from .predict import LatencyRange, latency_range
from .profiler import unsettled_entries
from .report import ValidationReport
from .table import LatencyTable, TableMeta


@dataclass(frozen=True)
class KindSpan:
    """How many entries of one kind (stem, block, reduction, head) a table holds, and their latency span."""

    count: int
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"count": self.count, "min_ms": self.min_ms, "max_ms": self.max_ms}


@dataclass(frozen=True)
class TableSummary:
    """The figures of a table; ``range`` only for a complete table, ``validation`` once it is validated."""

    path: str | None
    meta: TableMeta
    entries: int
    expected_entries: int
    complete: bool
    overhead_ms: float | None
    unsettled_entries: int
    kinds: dict[str, KindSpan]
    correction: Correction
    validation: ValidationReport | None
    range: LatencyRange | None

    @classmethod
    def of(cls, table: LatencyTable) -> TableSummary:
        """Summarise ``table``."""
        by_kind: dict[str, list[float]] = {}
        for e in table.entries.values():
            by_kind.setdefault(e.kind, []).append(e.latency_ms)
        return cls(
            path=str(table.path) if table.path else None, meta=table.meta, entries=len(table.entries),
            expected_entries=len(table.expected_keys()), complete=table.complete,
            overhead_ms=table.overhead.median_ms if table.overhead else None,
            unsettled_entries=len(unsettled_entries(table)),
            kinds={k: KindSpan(len(v), min(v), max(v)) for k, v in by_kind.items()},
            correction=table.correction, validation=table.validation,
            range=latency_range(table) if table.complete else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``profile show --json``): the validation without its per-network rows."""
        out: dict[str, Any] = {
            "path": self.path, "meta": self.meta.to_dict(), "entries": self.entries,
            "expected_entries": self.expected_entries, "complete": self.complete, "overhead_ms": self.overhead_ms,
            "unsettled_entries": self.unsettled_entries, "kinds": {k: v.to_dict() for k, v in self.kinds.items()},
            "correction": self.correction.to_dict(),
            "validation": self.validation.to_dict(rows=False) if self.validation else None,
        }
        if self.range is not None:
            out["range"] = self.range.to_dict()
        return out
