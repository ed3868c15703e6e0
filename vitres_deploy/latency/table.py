"""The latency table: one measured entry per distinct choice of a space, with everything needed to trust it.

On disk it is one JSON file, rewritten atomically (temporary file in the same directory, then
``os.replace``) after every entry, so an interrupted profile loses at most the entry being timed and
``profile --resume`` picks up where it stopped. Layout::

    {"format": "vitres-deploy/latency-table", "format_version": 1,
     "meta": {space, backend, backend_version, precision, batch, resolution, device, threads, protocol, ...},
     "space": {...the space's plain form...},
     "overhead": {...per-call overhead of the backend: timing of an empty model...},
     "entries": {"block/1/64/4/192": {"kind", "stage", "dims", "sample_shape", "latency_ms", "stats",
                                      "passes" (with several rounds)}, ...},
     "correction": {"scale", "offset_ms", "per_call_ms", "model", ...},
     "validation": {...report of ``profile validate``, or null...}}
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ProfileError, VitresError, first_line
from ..files import JSONError, atomic_write_json, loads_json
from ..rundir import check_same_settings
from ..runtime.statistics import Protocol, Settled, TimingStats, needs_pass
from ..space import SearchSpace
from .correction import Correction
from .entries import EntrySpec, enumerate_entries
from .extremes import extreme_sum
from .fingerprint import device_fingerprint, fingerprint_device, fingerprint_difference
from .report import ValidationReport

FORMAT = "vitres-deploy/latency-table"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """The measured latency of one choice: ``latency_ms`` is the table protocol's statistic over its passes.

    With a protocol of several ``rounds``, ``passes`` holds each pass's statistics and ``stats`` their
    combination (:meth:`TimingStats.combine`); an entry the protocol wants another pass of is unfinished
    (``profile --resume`` completes it). With one pass ``passes`` is empty.
    """

    key: str
    kind: str
    stage: int
    dims: tuple[int, ...]
    sample_shape: tuple[int, ...]
    stats: TimingStats
    passes: tuple[TimingStats, ...] = ()
    latency_ms: float = 0.0

    @property
    def passes_done(self) -> int:
        """How many timing passes the entry holds."""
        return len(self.passes) or 1

    def pass_stats(self) -> list[TimingStats]:
        """The statistics of each pass (the entry's own for a single pass)."""
        return list(self.passes) or [self.stats]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = {"kind": self.kind, "stage": self.stage, "dims": list(self.dims),
               "sample_shape": list(self.sample_shape), "latency_ms": self.latency_ms, "stats": self.stats.to_dict()}
        if self.passes:
            out["passes"] = [p.to_dict() for p in self.passes]
        return out

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> Entry:
        """Inverse of :meth:`to_dict`."""
        stats = TimingStats.from_dict(data["stats"])
        return cls(key, data["kind"], int(data["stage"]), tuple(data["dims"]), tuple(data["sample_shape"]), stats,
                   tuple(TimingStats.from_dict(p) for p in data.get("passes", ())),
                   data.get("latency_ms", stats.median_ms))

    @classmethod
    def measured(cls, spec: EntrySpec, space: SearchSpace, passes: Sequence[TimingStats], protocol: Protocol
                 ) -> Entry:
        """The entry of ``spec`` with its passes, its latency the ``protocol``'s statistic over them."""
        passes = list(passes)
        return cls(spec.key, spec.kind, spec.stage, spec.dims, spec.sample_shape(space), TimingStats.combine(passes),
                   tuple(passes) if len(passes) > 1 else (), Settled.of(passes, protocol).value_ms)


@dataclass(frozen=True)
class TableMeta:
    """What was measured, where, with what and how. Two tables are resumable into each other only if
    every field in :data:`RESUME_FIELDS` agrees."""

    space: str
    family: str
    resolution: int
    backend: str
    backend_version: str | None
    precision: str
    batch: int
    threads: int
    device: str
    device_slug: str
    cpu_model: str
    cpu_count: int | None
    driver: str | None
    cuda: str | None
    date: str
    package_version: str
    torch_version: str
    opset: int
    dynamic_batch: bool
    protocol: Protocol
    runner: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        d = asdict(self)
        d["protocol"] = self.protocol.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableMeta:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in names - set(data) if n not in ("runner", "options", "fingerprint"))
        if missing:
            raise ProfileError(f"latency table metadata is missing {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["protocol"] = Protocol.from_dict(data["protocol"])
        return cls(**kwargs)


RESUME_FIELDS = ("space", "backend", "backend_version", "precision", "batch", "threads", "device", "opset",
                 "dynamic_batch", "protocol", "options", "fingerprint")


@dataclass
class LatencyTable:
    """A (possibly partial) latency table of ``space`` measured as described by ``meta``."""

    space: SearchSpace
    meta: TableMeta
    entries: dict[str, Entry] = field(default_factory=dict)
    overhead: TimingStats | None = None
    correction: Correction = field(default_factory=Correction)
    validation: ValidationReport | None = None
    path: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ coverage

    def expected_keys(self) -> list[str]:
        """Keys of every distinct choice of the space, in profiling order."""
        return [s.key for s in enumerate_entries(self.space)]

    def missing(self) -> list[str]:
        """Keys not measured yet, or that the protocol wants another timing pass of."""
        protocol = self.meta.protocol
        return [k for k in self.expected_keys()
                if k not in self.entries or needs_pass(self.entries[k].pass_stats(), protocol)]

    @property
    def complete(self) -> bool:
        """True when every choice and the per-call overhead are measured."""
        return self.overhead is not None and not self.missing()

    def require_complete(self) -> None:
        """Raise :class:`ProfileError` naming how much is missing and how to finish it."""
        missing = self.missing()
        if missing or self.overhead is None:
            where = f" {self.path}" if self.path else ""
            overhead = "" if self.overhead is not None else (", and the per-call overhead not measured" if missing
                                                             else "; only the per-call overhead is not measured")
            raise ProfileError(
                f"latency table{where} is incomplete ({len(self.expected_keys()) - len(missing)} of "
                f"{len(self.expected_keys())} entries finished{overhead}): "
                "finish it with `vitres-deploy profile ... --resume`"
            )

    # ------------------------------------------------------------------- JSON I/O

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (see the module docstring)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": self.meta.to_dict(),
            "space": self.space.to_dict(),
            "overhead": self.overhead.to_dict() if self.overhead else None,
            "entries": {k: e.to_dict() for k, e in self.entries.items()},
            "correction": self.correction.to_dict(),
            "validation": self.validation.to_dict() if self.validation else None,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> LatencyTable:
        """Build a table from its JSON form; malformed input is a one-line :class:`ProfileError`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProfileError(f"{source} is not a vitres-deploy latency table (no \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ProfileError(f"{source} has format version {data.get('format_version')}, this vitres-deploy reads "
                               f"{FORMAT_VERSION}: re-profile")
        try:
            space = SearchSpace.from_dict(data["space"])
            table = cls(
                space=space,
                meta=TableMeta.from_dict(data["meta"]),
                entries={k: Entry.from_dict(k, v) for k, v in data.get("entries", {}).items()},
                overhead=TimingStats.from_dict(data["overhead"]) if data.get("overhead") else None,
                correction=Correction.from_dict(data.get("correction") or {}),
                validation=ValidationReport.from_dict(data["validation"]) if data.get("validation") else None,
            )
        except VitresError as e:  # the space's, the protocol's own checks: about the file, not a flag
            raise ProfileError(f"{source} is malformed: {first_line(e)}") from None
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{source} is malformed: {type(e).__name__}: {e}") from None
        check_values(table, source)
        return table

    def save(self, path: str | Path | None = None) -> Path:
        """Write the table atomically to ``path`` (default: where it was loaded from); returns the path.

        A table shipped with the package is a read-only input: saving over it is refused.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ProfileError("latency table has no path to save to")
        if is_shipped(target):
            raise ProfileError(f"latency table {target} is shipped with vitres-deploy and is read-only: write a "
                               "copy elsewhere")
        atomic_write_json(target, self.to_dict(), indent=1, fsync=True)
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save` (``profiles/...`` paths fall back to the shipped tables)."""
        path = resolve_table_path(path)
        try:
            data = loads_json(path.read_text())
        except (JSONError, UnicodeDecodeError) as e:
            raise ProfileError(f"latency table {path} is not valid JSON: {e}") from None
        table = cls.from_dict(data, source=f"latency table {path}")
        table.path = path
        return table


POSITIVE_STATS = ("median_ms", "mean_ms", "min_ms", "p90_ms", "p99_ms")
NON_NEGATIVE_STATS = ("std_ms", "cv", "seconds")
#: No latency, statistic or correction term of a table is this large (a thousand seconds): such a value is not a
#: measurement, and predictions summing hundreds of them stay far from a float's overflow.
MAX_MS = 1e6
#: The correction's scale is at most this: a fit that multiplies the entries' sum by more is not a correction.
MAX_SCALE = 100.0
INT_META = ("resolution", "batch", "threads", "opset")
TEXT_META = ("space", "family", "backend", "precision", "device", "device_slug", "date")


def check_number(value: Any, where: str, *, low: float = 0.0, strict: bool = True, high: float = MAX_MS) -> None:
    """Raise :class:`ProfileError` unless ``value`` is a finite number above ``low`` (or at it, without ``strict``)
    and at most ``high``."""
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if not math.isfinite(number) or number < low or (strict and number == low) or number > high:
        bound = f"{'above' if strict else 'at least'} {low:g} and at most {high:g}"
        raise ProfileError(f"{where} is {reprlib.repr(value)}: it must be a finite number {bound}")


def check_stats(stats: TimingStats, where: str, *, strict: bool = True) -> None:
    """Check every number of ``stats``: latencies finite and positive (non-negative without ``strict``)."""
    for name in POSITIVE_STATS:
        check_number(getattr(stats, name), f"{where} {name}", strict=strict)
    for name in NON_NEGATIVE_STATS:
        check_number(getattr(stats, name), f"{where} {name}", strict=False)
    if stats.floor_ms is not None:
        check_number(stats.floor_ms, f"{where} floor_ms", strict=strict)
    if isinstance(stats.iterations, bool) or not isinstance(stats.iterations, int) or stats.iterations < 1:
        raise ProfileError(f"{where} iterations is {stats.iterations!r}: it must be a whole number of at least 1")


def check_values(table: LatencyTable, source: str = "latency table") -> None:
    """Raise :class:`ProfileError` on a value no measurement gives: NaN, infinite, negative, of the wrong type,
    or an entry the space does not have."""
    expected = set(table.expected_keys())
    for key, entry in table.entries.items():
        where = f"{source} entry {key}"
        if key not in expected:
            raise ProfileError(f"{where} is not a choice of space {table.space.name!r}")
        check_number(entry.latency_ms, f"{where} latency_ms")
        for i, stats in enumerate(entry.pass_stats()):
            check_stats(stats, f"{where} pass {i + 1}" if entry.passes else where)
        if entry.passes:
            check_stats(entry.stats, where)
    if table.overhead is not None:
        check_stats(table.overhead, f"{source} overhead", strict=False)
    correction = table.correction
    check_number(correction.scale, f"{source} correction scale", high=MAX_SCALE)
    check_number(correction.offset_ms, f"{source} correction offset_ms", low=-MAX_MS, strict=False)
    check_number(correction.per_call_ms, f"{source} correction per_call_ms", strict=False)
    check_number(correction.spill_ms_per_mib, f"{source} correction spill_ms_per_mib", strict=False)
    check_number(correction.spill_above_mib, f"{source} correction spill_above_mib", strict=False)
    check_meta(table.meta, source)
    if table.complete:
        check_fastest(table, source)


def check_meta(meta: TableMeta, source: str) -> None:
    """Raise :class:`ProfileError` on metadata of the wrong type: the sizes whole numbers of at least 1, the names
    text, ``dynamic_batch`` true or false."""
    for name in INT_META:
        value = getattr(meta, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProfileError(f"{source} {name} is {reprlib.repr(value)}: it must be a whole number of at least 1")
    for name in TEXT_META:
        if not isinstance(getattr(meta, name), str):
            raise ProfileError(f"{source} {name} is {reprlib.repr(getattr(meta, name))}: it must be text")
    if not isinstance(meta.dynamic_batch, bool):
        raise ProfileError(f"{source} dynamic_batch is {reprlib.repr(meta.dynamic_batch)}: it must be true or false")


def check_fastest(table: LatencyTable, source: str) -> None:
    """Raise :class:`ProfileError` when the complete ``table`` predicts 0 ms or less for the fastest arch of its
    space: every value may be in range while the correction's offset or per-call term is not."""
    c = table.correction
    if not c.scale > 0:
        raise ProfileError(f"{source} correction has a non-positive scale {c.scale:g}: re-validate the table")
    lowest, _ = extreme_sum(table.space, lambda key: table.entries[key].latency_ms - c.per_call_ms, min)
    fastest = c.apply(lowest)
    if not fastest > 0:
        raise ProfileError(f"{source} predicts {fastest:.4g} ms for the fastest arch of its space: its correction "
                           f"(scale {c.scale:g}, offset_ms {c.offset_ms:g}, per_call_ms {c.per_call_ms:g}) does not "
                           "fit its entries; re-validate the table")


def shipped_profiles() -> Path:
    """Folder of the latency tables shipped with the package (the repository's ``profiles/``): one table of a
    name per measured machine, ``<device>/<fingerprint id>/<space>-<backend>-<precision>-b<batch>.json``."""
    from importlib import resources

    return Path(str(resources.files("vitres_deploy.profiles")))


def shipped_tables(name: str, device: str = "*") -> list[Path]:
    """The shipped tables called ``name``, one per measured machine (of the ``device`` folder; any by default)."""
    return sorted(shipped_profiles().glob(f"{device}/*/{name}"))


def table_for_this_machine(candidates: Sequence[Path]) -> Path:
    """Of tables of one name measured on several machines, the one whose recorded fingerprint is this machine's,
    else the most recently measured (its fingerprint check then names how this machine differs); ``candidates``
    is not empty."""
    metas = {path: _recorded_meta(path) for path in candidates}
    here: dict[str, dict[str, Any]] = {}
    for path, meta in metas.items():
        recorded = meta.get("fingerprint")
        if isinstance(recorded, dict) and recorded:
            device = fingerprint_device(recorded)
            if device not in here:
                here[device] = device_fingerprint(device)
            if not fingerprint_difference(recorded, here[device]):
                return path
    return max(candidates, key=lambda path: str(metas[path].get("date") or ""))


def _recorded_meta(path: Path) -> dict[str, Any]:
    """The ``meta`` of a shipped table file (empty when it cannot be read: it is then never this machine's)."""
    try:
        meta = loads_json(path.read_text()).get("meta")
    except (OSError, JSONError, UnicodeDecodeError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def resolve_table_path(path: str | Path) -> Path:
    """``path`` if it exists; else, for ``[profiles/]<device>/<file>.json``, the shipped table of that name measured
    on this machine (:func:`table_for_this_machine`), or ``[profiles/]<device>/<id>/<file>.json`` exactly."""
    path = Path(path)
    if path.is_file():
        return path
    relative = path.relative_to("profiles") if path.parts[:1] == ("profiles",) else path
    if not path.is_absolute():
        shipped = shipped_profiles() / relative
        if shipped.is_file():
            return shipped
        if len(relative.parts) == 2:
            candidates = shipped_tables(relative.name, relative.parts[0])
            if candidates:
                return table_for_this_machine(candidates)
    raise ProfileError(f"latency table {path} does not exist: build it with `vitres-deploy profile`")


def is_shipped(path: str | Path) -> bool:
    """True when ``path`` is (or would be) a file in the package's folder of shipped tables."""
    return Path(path).resolve().is_relative_to(shipped_profiles().resolve())


def user_copy_path(path: str | Path, root: str | Path = "profiles") -> Path:
    """Where a changed table read from ``path`` is written: ``path`` itself, or for a shipped table its copy
    ``<root>/<device>/<file>`` in the current folder (refused when that is a shipped file itself)."""
    path = Path(path)
    if not is_shipped(path):
        return path
    relative = path.resolve().relative_to(shipped_profiles().resolve())
    copy = Path(root) / relative.parts[0] / relative.name
    if is_shipped(copy):
        raise ProfileError(f"latency table {path} is shipped with vitres-deploy and is read-only, and {copy} is in "
                           "the shipped folder here: pass out to write the changed table elsewhere", field="out")
    return copy


def default_table_path(space: SearchSpace, backend: str, precision: str, batch: int, device_slug: str,
                       root: str | Path = "profiles") -> Path:
    """``profiles/<device>/<space>-<backend>-<precision>-b<batch>.json``."""
    return Path(root) / device_slug / f"{space.name}-{backend}-{precision}-b{batch}.json"


def check_resumable(old: TableMeta, new: TableMeta, path: Path) -> None:
    """Raise :class:`ProfileError` when ``old`` (on disk) and ``new`` (asked for) measure different things."""
    a, b = old.to_dict(), new.to_dict()
    check_same_settings(path, {k: a.get(k) for k in RESUME_FIELDS}, {k: b.get(k) for k in RESUME_FIELDS},
                        error=ProfileError)
