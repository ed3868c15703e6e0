"""The export pipeline: a supernet's sub-network to a checked serving bundle, in four steps.

**plan**: everything a user can get wrong is checked before any export work, so a bad setting costs no export
time: the target folder and the backends before a checkpoint is even read (:func:`check_setup`), then the
architecture, the latency table and the budget (:func:`plan_export`);

**build** (:func:`build`), in a staging directory beside the target:

1. extract the static sub-network and check it against the supernet on real images (a fine-tuned checkpoint's
   network is taken as it is: its arch must be the one asked for);
2. ``torch.onnx.export(dynamo=True)`` (opset >= 18, dynamic batch), or the same network's file from the export
   cache (:func:`~vitres_deploy.runtime.cache.network_onnx`: the same structure, weights, opset and exporter
   versions), ``onnx.checker`` with ``full_check``;
3. optional onnxslim simplification, kept only if ONNX Runtime outputs still match the unsimplified model;
4. fp16: a strongly typed fp16 ONNX (LayerNorm and softmax in fp32, and every node whose activations on the
   first batch exceed half the fp16 range, named in the manifest; fp32 inputs/outputs); int8: the static int8
   ONNX (:func:`quantize`), calibrated on seeded training images, its record in the manifest;
5. TensorRT engine when asked for and available, profiled over the batch range, with a timing cache (fp16 and
   int8 parsed strongly typed from the bundle's ONNX: an int8 export with an engine is quantized in the
   ``tensorrt`` int8 layout, explicit Q/DQ);

**check** (:func:`check`): every artifact against PyTorch fp32 (numerics on a seeded batch, top-1 drop on the
eval split) and, with a latency table, the latency gate (:func:`gate_latency`: the served int8 model itself
for int8);

**write** (:func:`write`): ``arch.json``, ``reference.npz``, the Triton repository and ``manifest.json``; the
bundle is renamed into place only if every check passed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..arch import Arch
from ..archfile import ArchFile
from ..checkpoint import Checkpoint, FinetunedCheckpoint, package_versions
from ..convert.fp16 import convert_file
from ..convert.int8 import node_stages, quantized_share, uint8_may_saturate
from ..data import ImageData
from ..errors import ConversionError, DataError, SettingsError, first_line
from ..files import atomic_write_json, sha256_file
from ..latency.device import device_info
from ..latency.entries import network_sample_shape
from ..macs import arch_cost
from ..quantized import Calibration, quantize_file
from ..runtime.base import RunnerOptions
from ..runtime.cache import network_onnx
from ..runtime.loaders import ModuleLoader
from ..runtime.ort import FP16_SAFE_LIMIT, overflowing_nodes
from ..runtime.registry import get_backend
from .artifacts import Artifact, check_artifacts, onnx_artifact, onnx_runtime_for, plan_artifact, predictor
from .artifacts import reference_runtime as pytorch_runtime
from .bundle import ARCH, REFERENCE, check_target, file_hashes, staging, write_manifest, write_reference
from .checks import EXACT, CheckResult, checker_check, numerics_check, raise_for_failures, supernet_check
from .latency_gate import (
    CONFIRM_PAUSE_S,
    LatencyGate,
    confirm_over_budget,
    latency_check,
    measure_export,
    plan_latency_gate,
)
from .manifest import (
    ArchRecord,
    ArtifactRecord,
    DataRecord,
    EvaluationRecord,
    Manifest,
    ModelInput,
    ModelOutput,
    Normalization,
    SpaceRecord,
    SupernetRecord,
)
from .options import ExportOptions, format_stages
from .tensorrt_plan import build_plan
from .triton import TensorConfig, int8_parameters, write_repository

ONNX_FILE, ENGINE_FILE = "model.onnx", "model.plan"


@dataclass
class ExportReport:
    """What an export did: its checks, the manifest, the bundle (None when a check failed), timings."""

    checks: list[CheckResult]
    manifest: Manifest
    bundle: Path | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed (and so the bundle was written)."""
        return all(c.passed for c in self.checks)

    def raise_for_failures(self) -> None:
        """Raise the typed error of the first failed check."""
        raise_for_failures(self.checks)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for ``--json``."""
        manifest = self.manifest.to_dict()
        return {"passed": self.passed, "bundle": str(self.bundle) if self.bundle else None,
                "checks": [c.to_dict() for c in self.checks], "latency": manifest["latency"],
                "artifacts": manifest["artifacts"], "timings_s": self.timings_s, "notes": self.notes,
                "manifest": manifest}


# --------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ExportSetup:
    """Where an export goes and how, checked before any checkpoint is read: the target folder is free (or
    ``force``) and every artifact asked for can be built and checked here (``onnx_runtime`` checks the ONNX)."""

    target: Path
    options: ExportOptions
    onnx_runtime: str


@dataclass(frozen=True)
class ExportPlan:
    """An export that passed every pre-flight check: what to export, where, how, and how it will be checked.

    ``checkpoint`` is a supernet (the arch is extracted from it) or a fine-tuned checkpoint of the arch.
    """

    checkpoint: Checkpoint | FinetunedCheckpoint
    arch: Arch
    target: Path
    options: ExportOptions
    onnx_runtime: str
    budget_ms: float | None
    gate: LatencyGate | None
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The Triton model name: given, or ``<space>_<arch hash>``."""
        return self.options.name or default_name(self.arch)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One input image's shape."""
        return network_sample_shape(self.checkpoint.space)


def check_backends(options: ExportOptions) -> str:
    """Raise :class:`BackendUnavailable` unless every artifact asked for can be built and checked here.

    Returns the ONNX Runtime backend that will check the ONNX model.
    """
    runtime = onnx_runtime_for(options.precision)
    if "tensorrt" in options.all_formats:
        get_backend("tensorrt").check(options.precision)
    return runtime


def default_name(arch: Arch) -> str:
    """Triton model name: ``<space>_<arch hash>`` with only letters, digits, ``-`` and ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{arch.space}_{arch.hash}")


def check_setup(out: str | Path, options: ExportOptions | None = None) -> ExportSetup:
    """Pre-flight, part 1 (no checkpoint needed): raise unless ``out`` can take a bundle and the backends exist."""
    opts = options or ExportOptions()
    target = Path(out)
    check_target(target, opts.force)
    return ExportSetup(target, opts, check_backends(opts))


def plan_export(setup: ExportSetup, checkpoint: Checkpoint | FinetunedCheckpoint, arch: Arch | ArchFile) -> ExportPlan:
    """Pre-flight, part 2: raise unless ``arch`` belongs to the checkpoint's space and the latency table (if
    any) can gate this export here.

    ``arch`` may be the architecture file it was read from: its ``budget_ms`` (a search's ``best.json``) is
    the latency budget unless the options give one.
    A fine-tuned checkpoint holds one arch: ``arch`` must be that arch.
    """
    opts = setup.options
    arch_file = arch if isinstance(arch, ArchFile) else ArchFile(arch)
    space = checkpoint.space
    chosen = arch_file.arch.validate(space)
    if opts.int8_stages and max(opts.int8_stages) > len(space.stages):
        raise SettingsError(f"int8_stages {format_stages(opts.int8_stages)}: space {space.name!r} has "
                            f"{len(space.stages)} stages", field="int8_stages")
    if isinstance(checkpoint, FinetunedCheckpoint):
        checkpoint.check_arch(chosen)
    budget = opts.budget_ms if opts.budget_ms is not None else arch_file.budget_ms
    gate = None
    if opts.table_path is not None:
        gate = plan_latency_gate(opts.table_path, chosen, space, opts.precision, opts.batch_range.as_tuple(),
                                 opts.all_formats, drift_check=opts.drift_check, rescale=opts.rescale,
                                 allow_other_device=opts.allow_other_device, int8=opts.int8,
                                 whole_network=not opts.int8_stages)
    return ExportPlan(checkpoint, chosen, setup.target, opts, setup.onnx_runtime, budget, gate,
                      searched_plan_notes(arch_file, opts))


def searched_plan_notes(arch_file: ArchFile, opts: ExportOptions) -> tuple[str, ...]:
    """A note when the arch file was searched (and its accuracy and latency judged) in another precision plan than
    this export's, naming the flags that export what was searched."""
    searched = arch_file.searched
    if searched is None:
        return ()
    stages = tuple(searched.int8_stages or ())
    if (searched.precision, stages) == (opts.precision, opts.int8_stages):
        return ()
    flags = f"--precision {searched.precision}" + (f" --int8-stages {format_stages(stages)}" if stages else "")
    this = opts.precision + (f" in stages {format_stages(opts.int8_stages)}" if opts.int8_stages else "")
    return (f"the arch file was searched as {searched.plan}, this export is {this}: {flags} exports what was "
            "searched",)


# -------------------------------------------------------------------------------------------- build


class Stopwatch:
    """Seconds per step, each measured from the end of the previous one."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the time since the last lap as step ``name``."""
        now = time.perf_counter()
        self.laps[name] = round(now - self._clock, 3)
        self._clock = now


@dataclass
class Build:
    """What the build step made, and the checks it ran on the way.

    ``fp32_onnx`` is the (simplified) fp32 ONNX in the scratch directory, the source of the engine and of
    the latency measurement (but for int8); ``artifacts`` are the bundle's served files, ready to be checked;
    ``quantization`` is the record of an int8 model (:func:`quantize`), None for other precisions.
    """

    model: torch.nn.Module
    fp32_onnx: Path
    simplification: dict[str, Any]
    artifacts: list[Artifact]
    engine: dict[str, Any] | None
    checks: list[CheckResult]
    notes: list[str] = field(default_factory=list)
    fp32_nodes: dict[str, float] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    @property
    def onnx(self) -> Path:
        """The bundle's ONNX model (the first artifact)."""
        return self.artifacts[0].path


@contextlib.contextmanager
def torch_fp32(threads: int) -> Iterator[None]:
    """PyTorch as the fp32 reference: ``threads`` CPU threads (oversubscribing a busy machine slows it down a
    lot) and no TF32 on the GPU; everything is restored on exit."""
    before = (torch.get_num_threads(), torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.set_num_threads(threads)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[1:]


def simplify(src: Path, dst: Path, x: np.ndarray) -> tuple[CheckResult | None, dict[str, Any]]:
    """onnxslim ``src`` into ``dst``, kept only if ONNX Runtime gives the same outputs on ``x`` as before.

    Returns the re-check (None when onnxslim itself failed) and the manifest record; ``record["applied"]``
    says whether ``dst`` is to be used.
    """
    import onnx
    import onnxslim

    before = len(onnx.load(str(src), load_external_data=False).graph.node)
    record: dict[str, Any] = {"applied": False, "nodes_before": before,
                              "onnxslim": importlib_metadata.version("onnxslim")}
    try:
        slim = onnxslim.slim(str(src))
        onnx.save(slim, str(dst))
        onnx.checker.check_model(str(dst), full_check=True)
        outputs = []
        for path in (src, dst):
            with onnx_artifact(path, "ort-cpu", threads=1).make_runner(len(x)) as runner:
                outputs.append(predictor(runner, len(x))(x))
    except Exception as e:  # a graph onnxslim or ORT cannot handle is a reason not to simplify, not to fail
        return None, {**record, "reason": f"onnxslim failed: {type(e).__name__}: {first_line(e)}"}
    result = numerics_check("onnx", "ort-cpu", outputs[0], outputs[1], EXACT, check="simplify")
    record.update(nodes_after=len(slim.graph.node), max_abs_change=result.values["max_abs"], applied=result.passed)
    if not result.passed:
        record["reason"] = f"outputs changed: {result.failure}"
        return None, record
    result = CheckResult(result.artifact, result.runtime, result.check, True,
                         f"onnxslim {before} -> {record['nodes_after']} nodes; unsimplified vs simplified "
                         f"{result.summary}", result.values, result.limits)
    return result, record


def _network(plan: ExportPlan, x: torch.Tensor) -> tuple[torch.nn.Module, list[CheckResult], list[str]]:
    """The static network to export, the checks of its weights and notes: extracted from a supernet and checked
    against it on ``x``, or a fine-tuned checkpoint's own network (no supernet to check it against)."""
    checkpoint = plan.checkpoint
    if isinstance(checkpoint, FinetunedCheckpoint):
        source = checkpoint.meta["supernet"]["file"]
        return checkpoint.model.eval(), [], [f"weights fine-tuned in {checkpoint.path.name} for "
                                             f"{checkpoint.meta['epoch']} epochs from {source}: no supernet check"]
    model = checkpoint.supernet.extract(plan.arch).eval()
    return model, [supernet_check(checkpoint, model, plan.arch, x)], []


def quantize(plan: ExportPlan, data: ImageData, fp32_onnx: Path, dst: Path, exported: Path) -> dict[str, Any]:
    """Write the static int8 version of ``fp32_onnx`` to ``dst``, calibrated on the options' number of training
    images (hold-out excluded) drawn with the options' seed; returns its record (settings, calibration source,
    image count and digest, the op types left in float, the share of compute ops quantized; with ``int8_stages``
    only those stages' nodes are quantized, and the record names the stages and the nodes).

    ``exported`` is the exporter's own file, whose nodes carry the module scopes that tell their stage
    (:func:`~vitres_deploy.convert.int8.stage_nodes`): onnxslim drops them but keeps the names of the ops it
    quantizes; an op it renamed has no known stage and is a :class:`ConversionError`.
    """
    import onnx

    opts = plan.options
    stages = {s - 1 for s in opts.int8_stages}
    nodes = None
    if stages:
        known = node_stages(exported, len(plan.checkpoint.space.stages))
        nodes = [name for name, stage in known.items() if stage in stages]
        lost = [n.name for n in onnx.load(str(fp32_onnx), load_external_data=False).graph.node
                if n.op_type in opts.int8.op_types and n.name not in known]
        if lost:
            raise ConversionError(f"int8 stages: node {lost[0]} of {fp32_onnx.name} has no known stage (renamed "
                                  "by onnxslim): export with --no-simplify")
    record = quantize_file(fp32_onnx, dst, data, Calibration(opts.calibration_images, opts.seed, opts.int8), nodes)
    if stages:
        record["stages"] = sorted(opts.int8_stages)
    return {**record, "quantized_share": quantized_share(dst, opts.int8.op_types)}


def _first_batch(plan: ExportPlan, data: ImageData) -> torch.Tensor:
    batch, split = plan.options.batch_range.max, plan.options.eval_split
    try:
        x, _ = next(iter(data.eval_batches(split, batch, batch)))
    except StopIteration:
        raise DataError(f"the {split} split is empty: nothing to check the export on") from None
    return x


def build(plan: ExportPlan, data: ImageData, scratch: Path, root: Path, clock: Stopwatch) -> Build:
    """Steps 1-5 of the module docstring: the served files into ``root``, intermediate ones into ``scratch``.

    A failed supernet or simplification check is recorded; a model the ONNX checker rejects stops the export
    (raised), since nothing after it would make sense.
    """
    opts = plan.options
    x = _first_batch(plan, data)
    model, checks, notes = _network(plan, x)
    clock.lap("extract")

    # the exporter's file, taken from the export cache when this network (its structure and weights) was exported
    # before: by an export that failed a later check, by an export in another precision, by a search's int8 scoring
    fp32_onnx = exported = scratch / "model.fp32.onnx"
    shutil.copyfile(network_onnx(model, plan.sample_shape, plan.arch.hash, opset=opts.opset), exported)
    checks.append(checker_check(fp32_onnx, opts.opset))
    raise_for_failures(checks)
    clock.lap("onnx_export")

    simplification: dict[str, Any] = {"applied": False, "reason": "disabled (--no-simplify)"}
    if opts.simplify:
        recheck, simplification = simplify(fp32_onnx, scratch / "model.slim.onnx", x.numpy())
        if recheck is None:
            notes.append(f"simplification not applied: {simplification['reason']}")
        else:
            checks.append(recheck)
            fp32_onnx = scratch / "model.slim.onnx"
        clock.lap("simplify")

    onnx_path = root / ONNX_FILE
    fp32_nodes: dict[str, float] = {}
    quantization = None
    if opts.precision == "int8":
        quantization = quantize(plan, data, fp32_onnx, onnx_path, exported)
        if opts.int8.activations == "uint8" and not opts.int8.reduce_range and uint8_may_saturate():
            notes.append("uint8 activations and full-range weights on an x86 CPU without VNNI: ONNX Runtime's "
                         "uint8 x int8 products can saturate here; if a check fails, drop --int8-full-range")
        checks.append(checker_check(onnx_path, opts.opset))
        raise_for_failures(checks)
        clock.lap("quantize")
    elif opts.precision == "fp16":
        fp32_nodes = overflowing_nodes(fp32_onnx, x.numpy())
        convert_file(fp32_onnx, onnx_path, keep_nodes=fp32_nodes)
        if fp32_nodes:
            notes.append(f"kept in fp32, activations beyond {FP16_SAFE_LIMIT:g} on the first batch: "
                         + ", ".join(f"{n} ({peak:.3g})" for n, peak in fp32_nodes.items()))
        checks.append(checker_check(onnx_path, opts.opset))
        raise_for_failures(checks)
    else:
        shutil.copyfile(fp32_onnx, onnx_path)
    artifacts = [onnx_artifact(onnx_path, plan.onnx_runtime, opts.threads)]

    engine = None
    if "tensorrt" in opts.all_formats:
        plan_bytes, engine = build_plan(fp32_onnx, onnx_path if opts.precision != "fp32" else None, opts.precision,
                                        opts.batch_range.as_tuple())
        (root / ENGINE_FILE).write_bytes(plan_bytes)
        artifacts.append(plan_artifact(root / ENGINE_FILE, opts.precision))
        clock.lap("tensorrt_build")
    return Build(model, fp32_onnx, simplification, artifacts, engine, checks, notes, fp32_nodes, quantization)


# -------------------------------------------------------------------------------------------- check


@dataclass(frozen=True)
class Evaluation:
    """The check step's record of the eval split, and the seeded check batch with PyTorch fp32's logits."""

    record: EvaluationRecord
    inputs: np.ndarray
    labels: np.ndarray
    logits: np.ndarray


def check(plan: ExportPlan, built: Build, data: ImageData, *, progress: bool = False
          ) -> tuple[list[CheckResult], Evaluation]:
    """Numerics and top-1 drop checks of every built artifact against PyTorch fp32 on the eval split."""
    opts = plan.options
    runtime = pytorch_runtime()
    with get_backend(runtime).runner(ModuleLoader.of(built.model, plan.sample_shape),
                                     RunnerOptions(batch=opts.batch_range.max, threads=opts.threads)) as runner:
        results, evaluation = check_artifacts(
            built.artifacts, predictor(runner, opts.batch_range.max), runtime, data, split=opts.eval_split,
            limit=opts.eval_limit, min_batch=opts.batch_range.min, max_batch=opts.batch_range.max,
            tolerances=opts.numerics, max_drop=opts.max_drop, seed=opts.seed, progress=progress)
    inputs, labels, logits = evaluation["sample"]
    return results, Evaluation(EvaluationRecord.from_dict(evaluation["evaluation"]), inputs, labels, logits)


def gate_latency(gate: LatencyGate, plan: ExportPlan, built: Build, *,
                 progress: bool = False) -> tuple[CheckResult, dict[str, Any]]:
    """Time the export the way ``gate``'s latency table was measured and judge it against the budget: the fp32
    ONNX, which the table's backend converts as it did when profiling, or for int8 the bundle's quantized
    model itself (a quantized file is run as it is), not the fp32 one quantized again. A measurement over the
    budget is confirmed by measuring again, and one over its limit up to ``latency_retries`` times before it fails
    (:func:`confirm_over_budget`; not when over-budget bundles are allowed); with ``progress`` each new attempt is
    announced on stderr."""
    opts = plan.options
    onnx_path = built.onnx if opts.precision == "int8" else built.fp32_onnx
    gated = plan.budget_ms is not None and not opts.allow_over_budget
    budget = plan.budget_ms if gated else None
    limit = plan.budget_ms * (1 + opts.latency_tolerance) if gated else None

    def told(attempt: int, lowest_ms: float) -> None:
        over = f"the {limit:.4g} ms limit" if limit is not None and lowest_ms > limit else f"the {budget:.4g} ms budget"
        print(f"latency: measured {lowest_ms:.4g} ms, over {over}; measuring again in {CONFIRM_PAUSE_S:.0f} s "
              f"({attempt} of {opts.latency_retries}) to tell the network from a busy machine", file=sys.stderr)

    artifact, stats, attempts = confirm_over_budget(
        lambda: measure_export(gate, onnx_path=onnx_path, module=built.model, sample_shape=plan.sample_shape),
        budget, limit, opts.latency_retries, on_retry=told if progress else None)
    return latency_check(gate, artifact, stats, plan.budget_ms, opts.latency_tolerance, opts.allow_over_budget,
                         attempts)


# -------------------------------------------------------------------------------------------- write


def _model_io(plan: ExportPlan) -> tuple[ModelInput, ModelOutput]:
    classes = plan.checkpoint.space.num_classes
    return (ModelInput("input", ["batch", *plan.sample_shape], "float32", "NCHW",
                       "pixels / 255, then (x - mean) / std per channel"),
            ModelOutput("output", ["batch", classes], "float32", "class logits"))


def _artifact_records(plan: ExportPlan, built: Build, root: Path, files: dict[str, str]) -> dict[str, ArtifactRecord]:
    precision = plan.options.precision

    def record(rel: str, fmt: str, checked_on: str, details: dict[str, Any]) -> ArtifactRecord:
        return ArtifactRecord(fmt, precision, checked_on, details, files[rel], (root / rel).stat().st_size)

    records = {ONNX_FILE: record(ONNX_FILE, "onnx", plan.onnx_runtime, {"simplification": built.simplification,
                                                                     "fp32_nodes": built.fp32_nodes,
                                                                     "quantization": built.quantization})}
    if built.engine is not None:
        records[ENGINE_FILE] = record(ENGINE_FILE, "tensorrt", "tensorrt", built.engine)
    return records


def _weights_record(checkpoint: Checkpoint | FinetunedCheckpoint) -> SupernetRecord:
    """Where the exported weights come from: the supernet (file, sha256, its metrics) and, for a fine-tuned
    checkpoint, that checkpoint too (file, sha256, epochs, settings, metrics)."""
    if not isinstance(checkpoint, FinetunedCheckpoint):
        return SupernetRecord(checkpoint.path.name, sha256_file(checkpoint.path), checkpoint.meta.get("metrics"))
    meta = checkpoint.meta
    source = meta["supernet"]
    return SupernetRecord(source["file"], source["sha256"], source.get("metrics"), finetuned={
        "file": checkpoint.path.name, "sha256": sha256_file(checkpoint.path), "epochs": meta["epoch"],
        "finetune_config": meta["finetune_config"], "metrics": meta.get("metrics")})


def _manifest(plan: ExportPlan, built: Build, data: ImageData, evaluation: Evaluation, checks: list[CheckResult],
              latency: dict[str, Any] | None, timings: dict[str, float], root: Path) -> Manifest:
    opts, checkpoint, arch = plan.options, plan.checkpoint, plan.arch
    space = checkpoint.space
    cost = arch_cost(arch, space)
    model_input, model_output = _model_io(plan)
    files = file_hashes(root)
    uses_gpu = built.engine is not None or plan.onnx_runtime == "ort-cuda"
    return Manifest(
        name=plan.name, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        vitres_deploy=__version__,
        space=SpaceRecord(space.name, space.family, space.image_size, space.in_chans, space.num_classes),
        arch=ArchRecord(arch.hash, arch.short(), cost.macs, cost.params),
        supernet=_weights_record(checkpoint),
        precision=opts.precision, quantization=built.quantization, opset=opts.opset, formats=list(opts.all_formats),
        batch_range=opts.batch_range,
        input=model_input, output=model_output,
        normalization=Normalization(list(data.mean), list(data.std), 1 / 255), class_names=list(data.class_names),
        data=DataRecord(data.kind, data.holdout, data.holdout_digest),
        versions=package_versions(("onnxslim", "onnxscript")), device=device_info("cuda" if uses_gpu else "cpu"),
        artifacts=_artifact_records(plan, built, root, files), tolerances=opts.numerics,
        max_accuracy_drop_points=opts.max_drop, evaluation=evaluation.record, checks=checks, latency=latency,
        timings_s=timings, files=files)


def write(plan: ExportPlan, built: Build, data: ImageData, evaluation: Evaluation, checks: list[CheckResult],
          latency: dict[str, Any] | None, timings: dict[str, float], root: Path) -> Manifest:
    """Write the check batch, ``arch.json``, the Triton repository and, last, the manifest into ``root``."""
    write_reference(root / REFERENCE, evaluation.inputs, evaluation.labels, evaluation.logits)
    atomic_write_json(root / ARCH, plan.arch.to_dict())
    model_input, model_output = _model_io(plan)
    write_repository(root, plan.name, plan.options.all_formats, plan.options.batch_range,
                     [TensorConfig(model_input.name, model_input.dtype, plan.sample_shape)],
                     [TensorConfig(model_output.name, model_output.dtype, (plan.checkpoint.space.num_classes,))],
                     int8_parameters(built.quantization))
    manifest = _manifest(plan, built, data, evaluation, checks, latency, timings, root)
    write_manifest(root, manifest)
    return manifest


# ---------------------------------------------------------------------------------------- the export


def run_export(plan: ExportPlan, data: ImageData, *, progress: bool = False) -> ExportReport:
    """Build, check and write the bundle of ``plan``; it is renamed into place only if every check passed.

    Failed checks are in the report (see :meth:`ExportReport.raise_for_failures`) and leave nothing at the
    target; a failure that stops the export (the ONNX checker, the data) is raised. The staging directory
    refuses a target that was taken since :func:`check_setup`.
    """
    clock = Stopwatch()
    with staging(plan.target, force=plan.options.force) as stage, \
            tempfile.TemporaryDirectory(prefix=f".{plan.target.name}.work-", dir=plan.target.parent) as tmp, \
            torch_fp32(plan.options.threads):
        root = stage.path
        built = build(plan, data, Path(tmp), root, clock)
        results, evaluation = check(plan, built, data, progress=progress)
        checks = built.checks + results
        clock.lap("checks")
        latency = None
        if plan.gate is not None:
            verdict, latency = gate_latency(plan.gate, plan, built, progress=progress)
            checks.append(verdict)
            clock.lap("latency")
        manifest = write(plan, built, data, evaluation, checks, latency, clock.laps, root)
        report = ExportReport(checks, manifest, None, clock.laps, [*plan.notes, *built.notes])
        if report.passed:
            report.bundle = stage.commit()
        return report


def export_bundle(checkpoint: Checkpoint | FinetunedCheckpoint, arch: Arch | ArchFile, data: ImageData, out: str | Path,
                  options: ExportOptions | None = None, *, progress: bool = False) -> ExportReport:
    """Export ``arch`` of ``checkpoint`` to a checked bundle at ``out`` (written only if every check passed).

    ``arch`` may be the architecture file it was read from (a ``best.json`` carries the budget). Bad input
    raises before any export work (:func:`check_setup`, :func:`plan_export`); failed checks are in the report
    (see :meth:`ExportReport.raise_for_failures`) and leave nothing at ``out``.
    """
    return run_export(plan_export(check_setup(out, options), checkpoint, arch), data, progress=progress)
