"""Predicted latency of an arch with a precision per stage (:class:`~vitres_deploy.arch.MixedArch`), from an fp32
and an int8 table of one device and batch, and the measured cost of its float/int8 boundaries.

``predicted = sum over entries of scale_p * (entry_p - per_call_p) + offset + boundaries * boundary_ms (+ spill)``:
every entry (the stem with stage 1, a reduction with the stage it leads into, the head with the last stage) is
taken from the table of its stage's precision and scaled by that table's correction; ``offset`` is the smaller of
the two tables' call offsets; ``boundaries`` counts adjacent stages of different precision; the spill (a cache
too small for the network's weights) is the fp32 table's, on the mixed network's weight bytes. ``boundary_ms`` is not
assumed: :func:`measure_boundary` exports seeded mixed networks, times them with the int8 table's protocol and
takes the median of what each measured beyond the composed prediction, per boundary. It carries whatever the
composition misses where float meets int8 (quantize and dequantize steps, fusions the runtime loses there).
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import statistics
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import Arch, MixedArch, sample_arch
from ..errors import ProfileError
from ..macs import weight_bytes
from .entries import EntrySpec, arch_entries
from .extremes import extreme_sum
from .predict import LatencyRange, check_arch
from .table import LatencyTable


def mixed_plans(stages: int) -> tuple[tuple[int, ...], ...]:
    """Every plan with int8 in some stages and fp32 in the others (1-based int8 stages; whole precisions left out)."""
    return tuple(plan for n in range(1, stages) for plan in itertools.combinations(range(1, stages + 1), n))


def boundaries(int8_stages: Sequence[int], stages: int) -> int:
    """How many adjacent stages of a plan run in different precisions."""
    int8 = [s in int8_stages for s in range(1, stages + 1)]
    return sum(a != b for a, b in itertools.pairwise(int8))


@dataclass(frozen=True)
class MixedTables:
    """An fp32 and an int8 table of one device and batch, and the measured cost of one float/int8 boundary."""

    fp32: LatencyTable
    int8: LatencyTable
    boundary_ms: float

    def _cost(self, key: str, stage: int, int8_stages: Sequence[int]) -> float:
        table = self.int8 if stage in int8_stages else self.fp32
        entry = table.entries.get(key)
        if entry is None:
            raise ProfileError(f"latency table {table.path} has no entry {key}: re-profile the space")
        return table.correction.scale * (entry.latency_ms - table.correction.per_call_ms)

    @property
    def offset_ms(self) -> float:
        """The call offset of a mixed network: the smaller of the two tables'."""
        return min(self.fp32.correction.offset_ms, self.int8.correction.offset_ms)

    def predict(self, arch: MixedArch) -> float:
        """Predicted latency (ms) of ``arch`` in its plan (see the module docstring)."""
        check_arch(self.fp32, arch)
        total = sum(self._cost(spec.key, spec.stage, arch.int8_stages) for spec in arch_entries(arch, self.fp32.space))
        return (total + self.offset_ms + boundaries(arch.int8_stages, len(arch.stages)) * self.boundary_ms
                + self._spill_ms(arch.plain, arch.int8_stages))

    def _spill_ms(self, arch: Arch, int8_stages: Sequence[int]) -> float:
        """The fp32 table's spill on the weights of ``arch`` with ``int8_stages`` in int8."""
        spill = self.fp32.correction
        if not spill.spill_ms_per_mib:
            return 0.0
        return spill.spill_ms(weight_bytes(arch, self.fp32.space, "fp32", tuple(int8_stages)) / 2**20)

    def latency_range(self) -> LatencyRange:
        """Fastest and slowest predicted mixed network of the space (a DP over stages per plan; a spill added for
        the archs found, as :func:`~vitres_deploy.latency.predict.latency_range` does)."""
        space = self.fp32.space
        ends = []
        for plan in mixed_plans(len(space.stages)):
            extra = self.offset_ms + boundaries(plan, len(space.stages)) * self.boundary_ms

            def cost(key: str, plan: tuple[int, ...] = plan) -> float:
                return self._cost(key, EntrySpec.from_key(key, space).stage, plan)

            for pick in (min, max):
                total, arch = extreme_sum(space, cost, pick)
                ends.append((total + extra + self._spill_ms(arch, plan), MixedArch(arch.space, arch.stages, plan)))
        fastest, slowest = min(ends, key=lambda e: e[0]), max(ends, key=lambda e: e[0])
        return LatencyRange(fastest[0], fastest[1], slowest[0], slowest[1])


@dataclass(frozen=True)
class BoundaryFit:
    """The cost of one float/int8 boundary: measured on ``networks`` (mixed networks) on ``date``, or ``given``."""

    boundary_ms: float
    networks: list[dict[str, Any]] = field(default_factory=list)
    date: str = ""
    given: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (a search's ``boundary.json``)."""
        return {"boundary_ms": self.boundary_ms, "networks": self.networks, "date": self.date, "given": self.given}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoundaryFit:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["boundary_ms"]), list(data["networks"]), str(data["date"]), bool(data["given"]))


def boundary_archs(fp32: LatencyTable, count: int, seed: int) -> list[MixedArch]:
    """``count`` seeded random archs of the table's space, each in a random mixed plan."""
    space = fp32.space
    rng = random.Random(f"boundary/{seed}")
    plans = mixed_plans(len(space.stages))
    out = []
    for _ in range(count):
        arch: Arch = sample_arch(space, rng)
        out.append(MixedArch(arch.space, arch.stages, rng.choice(plans)))
    return out


def mixed_onnx(arch: MixedArch, fp32: LatencyTable, int8: LatencyTable, workdir: Path) -> Path:
    """``arch``'s network (random weights from a fixed seed: speed only) exported into ``workdir``, only its int8
    stages' nodes quantized as the int8 table's entries were (:func:`~vitres_deploy.convert.int8.stage_nodes`,
    the timing calibration); returns the mixed ONNX file."""
    import torch

    from ..convert.int8 import TIMING_CALIBRATION, quantize_onnx, stage_nodes, timing_calibration
    from ..convert.to_onnx import export_onnx
    from ..vit_resnas import vit_resnas
    from .entries import network_sample_shape
    from .timing import ProfileSettings

    torch.manual_seed(0)
    space = fp32.space
    path = export_onnx(vit_resnas(arch.plain, space).eval(), network_sample_shape(space), workdir / f"{arch.hash}.onnx")
    mixed = workdir / f"{arch.hash}-mixed.onnx"
    nodes = stage_nodes(path, {s - 1 for s in arch.int8_stages}, len(arch.stages))
    quantize_onnx(path, mixed, timing_calibration(path), ProfileSettings.from_table(int8).int8,
                  source=TIMING_CALIBRATION, nodes=nodes)
    return mixed


def measure_boundary(fp32: LatencyTable, int8: LatencyTable, count: int = 6, seed: int = 0,
                     progress: bool = False) -> BoundaryFit:
    """Fit the cost of one float/int8 boundary on ``count`` seeded mixed networks (random weights: speed only).

    Each is exported, only its int8 stages' nodes quantized as the int8 table's entries were
    (:func:`~vitres_deploy.convert.int8.stage_nodes`, the timing calibration), and all are timed in one
    interleaved schedule with the int8 table's protocol and statistic. The boundary is the median over them of
    (measured - composed prediction without boundaries) / boundaries. ``progress`` shows the work on stderr.
    """
    from ..progress import progress_bar
    from ..runtime.base import NoisyMeasurement
    from ..runtime.loaders import ModelLoader, OnnxFile
    from ..runtime.statistics import item_latency
    from .timing import ProfileSettings, time_until_stable

    settings = ProfileSettings.from_table(int8)
    archs = boundary_archs(fp32, count, seed)
    composed = MixedTables(fp32, int8, 0.0)
    with (tempfile.TemporaryDirectory(prefix="vitres-boundary-") as tmp, warnings.catch_warnings(),
          progress_bar(progress, "boundary {task.description:<6}") as bar):
        warnings.simplefilter("ignore", NoisyMeasurement)  # the passes settle on the statistic, not the CV
        build, timing = bar.add_task("build", total=count), bar.add_task("time", total=None)
        sources: dict[str, ModelLoader] = {}
        for arch in archs:
            sources[arch.hash] = OnnxFile(mixed_onnx(arch, fp32, int8, Path(tmp)))
            bar.advance(build)
        passes = time_until_stable(sources, settings, on_pass=lambda *_: bar.advance(timing))
    networks = []
    for arch in archs:
        measured = item_latency(passes[arch.hash], settings.protocol)
        predicted = composed.predict(arch)
        networks.append({"hash": arch.hash, "short": arch.short(), "int8_stages": list(arch.int8_stages),
                         "boundaries": boundaries(arch.int8_stages, len(arch.stages)),
                         "composed_ms": predicted, "measured_ms": measured})
    per_boundary = [(n["measured_ms"] - n["composed_ms"]) / n["boundaries"] for n in networks]
    return BoundaryFit(statistics.median(per_boundary), networks,
                       dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
