"""The latency gate: measure the exported network the way a latency table was measured, against a budget.

The table fixes the backend, precision, batch, threads, protocol and statistic (the timing core of
:mod:`vitres_deploy.latency.timing`, the same as the table's entries); the measured latency is set beside
the table's prediction for the arch and the budget (from ``best.json``'s ``budget_ms`` or given). Measured
above ``budget * (1 + tolerance)`` fails unless over-budget exports are allowed.

The network is timed among a few of the table's own entries (:func:`~vitres_deploy.latency.drift.reference_sources`):
a lone model gives the disturbed-pass rule nothing to read the machine by, the references do (a pass of the
network timed while they read slow is timed again), and their *measured / table* ratio says how the machine
read against the table during the gate (recorded beside the result).

A measurement over the budget is confirmed (:func:`confirm_over_budget`): the network is measured again some
seconds later and the lowest measurement counts, as the validation that set the search's margin measured every
network in two runs (the verdict "at most the budget" is the same as measuring twice every time). Over the limit,
it is measured again up to ``retries`` times in all before it fails. A table's statistic is the lowest window
median of passes spread over minutes; one gate measurement spans a few seconds, and a burst of a shared machine
can cover all of it (measured: two of ten gate readings ~30% slow that re-timed a minute later within 6% of their
predictions, docs/latency.md). A network that is slow is slow in every attempt.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..arch import Arch
from ..convert.int8 import Int8Settings
from ..errors import ProfileError
from ..latency.drift import DriftReport, reference_sources, trusted_table
from ..latency.predict import predict
from ..latency.quantization import check_int8_settings, table_int8_settings
from ..latency.table import LatencyTable
from ..latency.timing import Measurement, ProfileSettings, measure_module, measure_onnx
from ..runtime.base import NoisyMeasurement
from ..runtime.loaders import ModelLoader
from ..runtime.registry import get_backend
from ..runtime.tensorrt import engine_profile
from ..space import SearchSpace
from .checks import CheckResult


@dataclass(frozen=True)
class LatencyGate:
    """A loaded table that fits the export (space, precision, batch range) and this machine, ready to gate."""

    table: LatencyTable
    predicted_ms: float | None
    drift: DriftReport | None = None
    references: Mapping[str, ModelLoader] = field(default_factory=dict)


def plan_latency_gate(table_path: str | Path, arch: Arch, space: SearchSpace, precision: str,
                      batch_range: tuple[int, int, int], formats: tuple[str, ...], *, drift_check: bool = True,
                      rescale: bool = False, allow_other_device: bool = False,
                      int8: Int8Settings | None = None, whole_network: bool = True) -> LatencyGate:
    """Load the table at ``table_path`` and check, before anything is exported, that it can gate this export here:
    its space, precision and batch, for int8 how its models were quantized (as ``int8``, the export's settings,
    in what changes the speed), its device fingerprint and (unless ``drift_check`` is off) its drift
    (:func:`~vitres_deploy.latency.drift.trusted_table`), and build the reference entries the network is timed
    among. ``whole_network`` False: only some stages are in the table's precision (mixed precision), so the gate
    measures with the table's protocol but has no prediction."""
    table = LatencyTable.load(table_path)
    meta = table.meta
    if meta.space != space.name:
        raise ProfileError(f"latency table {table_path} was profiled for space {meta.space!r}, the supernet is "
                           f"{space.name!r}: use a table of {space.name!r}")
    if meta.precision != precision:
        raise ProfileError(f"latency table {table_path} measures {meta.precision}, the export is {precision}: "
                           f"pass precision {meta.precision} or a {precision} table", field="precision")
    if precision == "int8":
        check_int8_settings(str(table_path), table_int8_settings(table), int8 or Int8Settings())
    backend = get_backend(meta.backend)
    backend.check(meta.precision)
    if meta.backend == "tensorrt" and "tensorrt" in formats and not batch_range[0] <= meta.batch <= batch_range[2]:
        raise ProfileError(f"latency table {table_path} is measured at batch {meta.batch}, outside batch_range "
                           f"{batch_range[0]}:{batch_range[1]}:{batch_range[2]} of the engine", field="batch_range")
    table, drift = trusted_table(table, drift_check=drift_check, rescale=rescale,
                                 allow_other_device=allow_other_device)
    return LatencyGate(table, predict(table, arch).latency_ms if whole_network else None, drift,
                       reference_sources(table))


def measure_export(gate: LatencyGate, *, onnx_path: Path, module: nn.Module,
                   sample_shape: tuple[int, ...]) -> tuple[str, Measurement]:
    """Time the exported network with the table's backend, protocol and statistic, among the gate's reference
    entries; returns (artifact, measurement).

    ONNX backends time ``onnx_path`` (the fp32 ONNX: the backend applies the table's precision as when
    profiling; or a quantized ONNX, which int8 runners run as it is); torch tables time the static module.
    ``tensorrt`` tables time an engine of ``onnx_path`` built the way the table's entries were, with its
    optimization profile fixed at the table's batch (:func:`timed_engine_profile`), not the bundle's
    ``model.plan``: that engine is tuned for ``batch_range.opt``, and timing it at another batch would time other
    tactics than the table's.
    """
    meta = gate.table.meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurement)  # the CV is reported beside the result instead
        if get_backend(meta.backend).source == "onnx":
            artifact = "tensorrt" if meta.backend == "tensorrt" else "onnx"
            return artifact, measure_onnx(gate.table, onnx_path, gate.references)
        return "pytorch", measure_module(gate.table, module, sample_shape, gate.references)


#: Seconds between a gate measurement over the budget and its confirmation (and between confirmations).
CONFIRM_PAUSE_S = 10.0


def confirm_over_budget(measure: Callable[[], tuple[str, Measurement]], budget_ms: float | None,
                        limit_ms: float | None, retries: int, pause_s: float | None = None,
                        on_retry: Callable[[int, float], None] | None = None) -> tuple[str, Measurement, list[float]]:
    """Measure with ``measure()``; while retries are left, wait ``pause_s`` (None: :data:`CONFIRM_PAUSE_S`) and
    measure again when the lowest measurement so far is above ``budget_ms`` after one measurement or above
    ``limit_ms`` (the failure line) after more. Returns the artifact, the lowest measurement and every measured
    latency in order. ``on_retry(attempt, lowest_ms)`` is told before each new measurement. No budget: one
    measurement."""
    pause_s = CONFIRM_PAUSE_S if pause_s is None else pause_s
    artifact, best = measure()
    attempts = [best.latency_ms]

    def unconfirmed() -> bool:
        if budget_ms is None or len(attempts) > retries:
            return False
        line = budget_ms if len(attempts) == 1 or limit_ms is None else limit_ms
        return best.latency_ms > line

    while unconfirmed():
        if on_retry is not None:
            on_retry(len(attempts), best.latency_ms)
        time.sleep(pause_s)
        artifact, again = measure()
        attempts.append(again.latency_ms)
        best = again if again.latency_ms < best.latency_ms else best
    return artifact, best, attempts


def timed_engine_profile(table: LatencyTable) -> dict[str, int] | None:
    """The batch profile (min, opt, max) of the engine the gate times for a ``tensorrt`` table, built as the
    table's entries were (:func:`~vitres_deploy.runtime.tensorrt.engine_profile`); None for other backends."""
    if table.meta.backend != "tensorrt":
        return None
    return dict(zip(("min", "opt", "max"), engine_profile(ProfileSettings.from_table(table).runner_options())))


def latency_check(gate: LatencyGate, artifact: str, measurement: Measurement, budget_ms: float | None,
                  tolerance: float, allow_over_budget: bool,
                  attempts: list[float] | None = None) -> tuple[CheckResult, dict[str, Any]]:
    """The gate's verdict and the manifest's ``latency`` record; ``attempts``: every measured latency when the gate
    measured more than once (:func:`confirm_over_budget`), ``measurement`` the lowest."""
    meta = gate.table.meta
    stats = measurement.stats
    measured = measurement.latency_ms
    statistic = measurement.statistic.replace("_", " ")
    noisy = f", CV {stats.cv:.1%}" + (" (noisy)" if stats.cv > meta.protocol.max_cv else "")
    error = None
    predicted = "no prediction (mixed precision: the table predicts whole networks)"
    if gate.predicted_ms is not None:
        error = (gate.predicted_ms - measured) / measured if measured > 0 else 0.0
        predicted = f"predicted {gate.predicted_ms:.4g} ms ({error:+.1%})"
    summary = (f"{meta.backend} {meta.precision} b{meta.batch}: measured {measured:.4g} ms ({statistic} of "
               f"{len(measurement.passes)} passes, {stats.iterations} runs{noisy}), {predicted}")
    if measurement.machine_ratio is not None:
        summary += f", reference entries {measurement.machine_ratio:.3f}x the table"
    if attempts and len(attempts) > 1:
        summary += f", lowest of {len(attempts)} measurements ({', '.join(f'{a:.4g}' for a in attempts)} ms)"
    limits: dict[str, Any] = {"budget_ms": budget_ms, "tolerance": tolerance, "allow_over_budget": allow_over_budget}
    passed, failure = True, ""
    if budget_ms is None:
        summary += ", no budget given"
    else:
        limit = budget_ms * (1 + tolerance)
        over = measured / budget_ms - 1
        summary += f", budget {budget_ms:.4g} ms ({over:+.1%})"
        if measured > limit:
            if allow_over_budget:
                summary += " over budget, allowed by --allow-over-budget"
            else:
                passed = False
                failure = (f"measured {measured:.4g} ms is {over:.1%} over the {budget_ms:.4g} ms budget "
                           f"(limit {limit:.4g} ms with {tolerance:.0%} tolerance); pass --allow-over-budget to "
                           "ship it anyway")
    record = {
        "table": str(gate.table.path), "backend": meta.backend, "backend_version": meta.backend_version,
        "precision": meta.precision, "batch": meta.batch, "threads": meta.threads, "device": meta.device,
        "protocol": meta.protocol.to_dict(), "predicted_ms": gate.predicted_ms, "measured_ms": measured,
        "prediction_error": error, "statistic": measurement.statistic, "passes": len(measurement.passes),
        "spread": measurement.to_dict()["spread"], "stats": stats.to_dict(), "budget_ms": budget_ms,
        "tolerance": tolerance, "attempts_ms": list(attempts or [measured]),
        "machine_ratio": measurement.machine_ratio, "references": dict(measurement.references),
        "allow_over_budget": allow_over_budget, "artifact": artifact,
        "engine_profile": timed_engine_profile(gate.table),
        "drift_check": gate.drift.to_dict(items=False) if gate.drift else None,
        "rescaled_by": gate.table.correction.details.get("rescaled_by"),
    }
    values = {"measured_ms": measured, "predicted_ms": gate.predicted_ms, "cv": stats.cv, "budget_ms": budget_ms}
    return CheckResult(artifact, meta.backend, "latency", passed, summary, values, limits, failure), record
