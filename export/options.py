"""The settings of an export: the batch range served, and every other option, checked when they are made.

Errors name the settings' fields (``batch_range``, ``opset``); the command line shows its flags for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..convert.int8 import Int8Settings
from ..convert.to_onnx import DEFAULT_OPSET, max_opset
from ..data import SPLITS
from ..errors import SettingsError
from .checks import DEFAULT_MAX_DROP
from .compare import DEFAULT_TOLERANCES, Tolerances

FORMATS = ("onnx", "tensorrt")


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes the served network takes: ``min`` <= ``opt`` <= ``max`` (TensorRT's optimization profile)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise SettingsError(f"batch_range {self}: needs 1 <= MIN <= OPT <= MAX", field="batch_range")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1:8:32"`` -> BatchRange(1, 8, 32)."""
        try:
            values = [int(p) for p in text.split(":")]
        except ValueError:
            values = []
        if len(values) != 3:
            raise SettingsError(f"batch_range {text!r}: expected MIN:OPT:MAX, e.g. 1:8:32", field="batch_range")
        return cls(*values)

    def as_tuple(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return self.min, self.opt, self.max

    def to_dict(self) -> dict[str, int]:
        """JSON form: ``{"min", "opt", "max"}``."""
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> BatchRange:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["min"]), int(data["opt"]), int(data["max"]))


def format_stages(stages: tuple[int, ...]) -> str:
    """``(2, 3)`` -> ``"2,3"``, as the stages were given."""
    return ",".join(map(str, stages))


def parse_stages(text: str | None) -> tuple[int, ...]:
    """``"2,3"`` -> ``(2, 3)``: stage numbers (1-based) as given on a command line; None or empty -> ``()``."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise SettingsError(f"int8_stages {text!r}: expected stage numbers from 1, comma-separated, e.g. 3 or 2,3",
                            field="int8_stages")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of an export. Tolerances and the top-1 drop limit default per precision.

    ``table_path`` is a latency table: with it the export is timed the table's way and gated on
    ``budget_ms`` (given, or the architecture file's). ``int8`` and ``calibration_images`` say how an int8
    export is quantized: calibrated on that many training images drawn with ``seed``; with a TensorRT engine in
    the ``tensorrt`` int8 layout (:meth:`~vitres_deploy.convert.int8.Int8Settings.check_layout`).
    ``int8_stages`` (1-based; empty: all) quantizes only those stages, the others stay float (mixed precision,
    :func:`~vitres_deploy.convert.int8.stage_nodes`).
    """

    formats: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    batch_range: BatchRange = field(default_factory=BatchRange)
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    eval_split: str = "holdout"
    eval_limit: int | None = None
    seed: int = 0
    tolerances: Tolerances | None = None
    max_accuracy_drop: float | None = None
    threads: int = 1
    name: str | None = None
    force: bool = False
    table_path: str | Path | None = None
    budget_ms: float | None = None
    latency_tolerance: float = 0.05
    latency_retries: int = 2
    allow_over_budget: bool = False
    drift_check: bool = True
    rescale: bool = False
    allow_other_device: bool = False
    int8: Int8Settings = field(default_factory=Int8Settings)
    calibration_images: int = 512
    int8_stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise SettingsError(f"formats: unknown format {unknown[0]!r}; use onnx or onnx,tensorrt", field="formats")
        if self.precision not in DEFAULT_TOLERANCES:
            raise SettingsError(f"precision {self.precision!r}: use {', '.join(DEFAULT_TOLERANCES)}", field="precision")
        if self.precision == "int8" and "tensorrt" in self.formats:  # the engine is built from the bundle's ONNX
            self.int8.check_layout("tensorrt")
        if self.int8_stages and self.precision != "int8":
            raise SettingsError(f"int8_stages {format_stages(self.int8_stages)}: quantizing some stages needs "
                                "precision int8", field="int8_stages")
        if self.int8_stages and (min(self.int8_stages) < 1 or len(set(self.int8_stages)) < len(self.int8_stages)):
            raise SettingsError(f"int8_stages {format_stages(self.int8_stages)}: give distinct stage numbers from 1",
                                field="int8_stages")
        if self.calibration_images < 1:
            raise SettingsError(f"calibration_images {self.calibration_images}: must be at least 1",
                                field="calibration_images")
        if self.opset < 18:
            raise SettingsError(f"opset {self.opset}: the dynamo exporter needs opset 18 or newer", field="opset")
        if self.opset > max_opset():
            raise SettingsError(f"opset {self.opset}: the installed onnx knows opsets up to {max_opset()}",
                                field="opset")
        if "tensorrt" in self.formats and self.batch_range.min > 1:
            raise SettingsError(f"batch_range {self.batch_range}: Triton's dynamic batcher sends the engine batches "
                                f"from 1 up, below its MIN {self.batch_range.min}: use MIN 1 with tensorrt",
                                field="batch_range")
        if self.eval_split not in SPLITS:
            raise SettingsError(f"eval_split {self.eval_split!r}: use one of {', '.join(SPLITS)}", field="eval_split")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SettingsError(f"eval_limit {self.eval_limit}: must be at least 1", field="eval_limit")
        if self.threads < 1:
            raise SettingsError(f"threads {self.threads}: must be at least 1", field="threads")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise SettingsError(f"budget_ms {self.budget_ms}: must be a finite positive number", field="budget_ms")
        if self.budget_ms is not None and self.table_path is None:
            raise SettingsError(f"table_path is needed with a latency budget ({self.budget_ms} ms): the gate holds "
                                "the bundle to the budget with the table's protocol", field="table_path")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise SettingsError(f"name {self.name!r}: use letters, digits, '-' and '_' (a Triton model name)",
                                field="name")
        if self.latency_retries < 0:
            raise SettingsError(f"latency_retries {self.latency_retries}: must be 0 or more", field="latency_retries")
        if not (math.isfinite(self.latency_tolerance) and self.latency_tolerance >= 0):
            raise SettingsError(f"latency_tolerance {self.latency_tolerance}: must be a finite number >= 0",
                                field="latency_tolerance")
        if self.max_accuracy_drop is not None and not (math.isfinite(self.max_accuracy_drop)
                                                       and self.max_accuracy_drop >= 0):
            raise SettingsError(f"max_accuracy_drop {self.max_accuracy_drop}: must be a finite number >= 0",
                                field="max_accuracy_drop")
        for name, value in (self.tolerances.to_dict() if self.tolerances else {}).items():
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise SettingsError(f"{name} {value}: must be a finite number >= 0", field=name)

    @property
    def all_formats(self) -> tuple[str, ...]:
        """The formats to build: the ONNX model always, TensorRT when asked for."""
        return tuple(dict.fromkeys(("onnx", *self.formats)))

    @property
    def numerics(self) -> Tolerances:
        """Tolerances of the numerics checks (given, or the precision's defaults)."""
        return self.tolerances or DEFAULT_TOLERANCES[self.precision]

    @property
    def max_drop(self) -> float:
        """Maximum top-1 drop in points (given, or the precision's default)."""
        return DEFAULT_MAX_DROP[self.precision] if self.max_accuracy_drop is None else self.max_accuracy_drop
