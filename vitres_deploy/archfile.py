"""Architecture files (``arch.json``, ``best.json``) and architecture specs (``max``, ``min``, ``random:SEED``, a file).

One typed document, :class:`ArchFile`, is written by ``search`` and ``export`` and read by ``export``,
``demo`` and every command that takes ``--arch FILE``; :func:`read_arch_file` is the one reader. The file
form is the architecture's own form (``space``, ``stages``) with the search's fields beside it at the top
level, so a ``best.json`` is accepted wherever an architecture file is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .arch import Arch, max_arch, min_arch, random_arch
from .errors import ArchError
from .files import JSONError, loads_json
from .space import SearchSpace

#: Fields of a search's record that files written by earlier versions lack (their defaults apply).
OPTIONAL = ("margin", "precision", "calibration", "int8_stages")


@dataclass(frozen=True)
class SearchedRecord:
    """What a search recorded about the architecture it picked under a budget (``best.json``'s other fields).

    ``holdout_top1_ci95`` is the Wilson 95% interval of ``holdout_top1`` on ``holdout_images`` images;
    ``within_ci95`` counts the other archs of the budget's window that score inside it. ``table`` and
    ``supernet`` identify the latency table and the supernet (path, sha256, what they hold, the drift check);
    ``margin`` is how far below the budget the window ended (the table's validated under-prediction);
    ``precision`` is the precision the arch was searched (and its accuracy measured) in, ``calibration`` how its
    int8 network was calibrated (None in float); ``int8_stages`` the 1-based stages that run in int8 when only
    some do (a search of precision per stage; export it with ``--precision int8 --int8-stages ...``), else None.
    """

    hash: str
    latency_ms: float
    macs: int
    params: int
    holdout_top1: float
    holdout_top5: float
    holdout_images: int
    holdout_top1_ci95: tuple[float, float]
    within_ci95: int
    alpha: float
    window_ms: tuple[float, float]
    max_macs: int | None
    max_params: int | None
    evaluated: int
    table: dict[str, Any]
    supernet: dict[str, Any]
    margin: float = 0.0
    precision: str = "fp32"
    calibration: dict[str, Any] | None = None
    int8_stages: list[int] | None = None

    @property
    def plan(self) -> str:
        """The precision it runs in, e.g. ``fp32``, ``int8`` or ``int8:3`` (int8 in stage 3 only)."""
        return f"int8:{','.join(map(str, self.int8_stages))}" if self.int8_stages else self.precision

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the fields beside ``space`` and ``stages`` in ``best.json``)."""
        data = asdict(self)
        data["holdout_top1_ci95"] = list(self.holdout_top1_ci95)
        data["window_ms"] = list(self.window_ms)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchedRecord:
        """Inverse of :meth:`to_dict`; a missing or mistyped field is an :class:`ArchError`."""
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in OPTIONAL]
        if missing:
            raise ArchError(f"a search's architecture file needs {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        try:
            values["holdout_top1_ci95"] = tuple(float(v) for v in values["holdout_top1_ci95"])
            values["window_ms"] = tuple(float(v) for v in values["window_ms"])
            for name in ("latency_ms", "holdout_top1", "holdout_top5", "alpha"):
                values[name] = float(values[name])
        except (TypeError, ValueError):
            raise ArchError("a search's architecture file has a non-numeric latency, accuracy or window") from None
        return cls(**values)


@dataclass(frozen=True)
class ArchFile:
    """An architecture, the latency budget it is meant for (if the file names one), and a search's record of it.

    ``budget_ms`` is read from any architecture file that has it (a user may write it by hand); ``searched``
    only from a search's ``best.json`` (recognised by its ``evaluated`` field). Other keys are ignored.
    """

    arch: Arch
    budget_ms: float | None = None
    searched: SearchedRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file form: the architecture's keys, then the search's fields with the budget among them."""
        out = self.arch.to_dict()
        extra = self.searched.to_dict() if self.searched else {}
        for key, value in extra.items():
            if key == "alpha" and self.budget_ms is not None:
                out["budget_ms"] = self.budget_ms
            out[key] = value
        if self.budget_ms is not None:
            out.setdefault("budget_ms", self.budget_ms)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ArchFile:
        """Parse the file form (see the class docstring)."""
        arch = Arch.from_dict(data)
        budget = data.get("budget_ms")
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (
                    math.isfinite(budget) and budget > 0):
                raise ArchError(f"the arch file's budget_ms {budget!r} is not a positive number")
            budget = float(budget)
        return cls(arch, budget, SearchedRecord.from_dict(data) if "evaluated" in data else None)


def read_arch_file(path: str | Path) -> ArchFile:
    """Read an architecture file (``arch.json`` or ``best.json``); bad JSON is an :class:`ArchError`."""
    path = Path(path)
    try:
        data = loads_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ArchError(f"cannot read arch file {path}: {e}") from None
    except JSONError as e:
        raise ArchError(f"arch file {path} is not valid JSON: {e}") from None
    return ArchFile.from_dict(data)


def resolve_arch(spec: str | Path, space: SearchSpace) -> Arch:
    """Turn ``max``, ``min``, ``random:SEED`` or a path to an architecture file into a validated arch."""
    return resolve_arch_file(spec, space).arch


def resolve_arch_file(spec: str | Path, space: SearchSpace) -> ArchFile:
    """:func:`resolve_arch`, keeping what a file says beside the architecture (its budget, a search's record)."""
    text = str(spec)
    if text == "max":
        return ArchFile(max_arch(space))
    if text == "min":
        return ArchFile(min_arch(space))
    if text.startswith("random:"):
        try:
            seed = int(text.split(":", 1)[1])
        except ValueError:
            raise ArchError(f"{text!r}: the seed of random:SEED must be an integer") from None
        return ArchFile(random_arch(space, seed))
    if not Path(text).is_file():
        raise ArchError(f"arch {text!r} is neither max, min, random:SEED nor an existing file")
    found = read_arch_file(text)
    found.arch.validate(space)
    return found
