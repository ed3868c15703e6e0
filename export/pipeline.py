"""The export pipeline: a supernet's sub-network to a checked serving bundle.

1. extract the static sub-network and check it against the supernet on real images;
2. ``torch.onnx.export(dynamo=True)`` (opset >= 18, dynamic batch), ``onnx.checker`` with ``full_check``;
3. optional onnxslim simplification, kept only if ONNX Runtime outputs still match the unsimplified model;
4. fp16: a strongly typed fp16 ONNX (LayerNorm and softmax in fp32, fp32 inputs/outputs);
5. TensorRT engine when asked for and available, profiled over ``--batch-range``, with a timing cache;
6. checks of every artifact against PyTorch fp32 (numerics on a seeded batch, accuracy on the eval split);
7. with a latency table, the latency gate;
8. the bundle (artifacts, ``arch.json``, ``reference.npz``, Triton repository, ``manifest.json``) is renamed
   into place only if every check passed.

Everything a user can get wrong (backend, precision, table, target directory) is checked before the
export starts, so a bad flag costs no export time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
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
from ..checkpoint import Checkpoint, package_versions
from ..convert.to_onnx import DEFAULT_OPSET, export_onnx
from ..data import SPLITS, ImageData
from ..errors import BackendUnavailable, DataError, VitresError
from ..files import atomic_write_json, sha256_file
from ..latency.entries import network_sample_shape
from ..macs import arch_cost
from ..runtime.base import RunnerOptions
from ..runtime.loaders import ModuleLoader, OnnxFile
from ..runtime.registry import get_backend
from .artifacts import check_artifacts, onnx_artifact, onnx_runtime_for, plan_artifact, predictor, reference_runtime
from .bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REFERENCE,
    file_hashes,
    staging,
    write_reference,
)
from .checks import (
    DEFAULT_MAX_DROP,
    CheckResult,
    numerics_check,
    raise_for_failures,
)
from .compare import DEFAULT_TOLERANCES, Tolerances
from .triton import TensorConfig, model_config

FORMATS = ("onnx", "tensorrt")
#: The static network must compute what the supernet computes: only kernel-order differences are allowed.
EXACT = Tolerances(atol=1e-5, rtol=1e-4, min_cosine=0.999999, min_top1_agreement=1.0)


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes the served network takes: ``min`` <= ``opt`` <= ``max`` (TensorRT's optimization profile)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise VitresError(f"--batch-range {self}: needs 1 <= MIN <= OPT <= MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1:8:32"`` -> BatchRange(1, 8, 32)."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise VitresError(f"--batch-range {text!r}: expected MIN:OPT:MAX, e.g. 1:8:32")
        return cls(*values)

    def as_tuple(self) -> tuple[int, int, int]:
        """``(min, opt, max)``."""
        return self.min, self.opt, self.max


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of an export. Tolerances and the accuracy-drop limit default per precision."""

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
    profile: str | Path | None = None
    budget_ms: float | None = None
    latency_tolerance: float = 0.1
    allow_over_budget: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise VitresError(f"--formats: unknown format {unknown[0]!r}; use onnx or onnx,tensorrt")
        if self.precision not in DEFAULT_TOLERANCES:
            raise BackendUnavailable(f"--precision {self.precision}: use fp32 or fp16")
        if self.opset < 18:
            raise VitresError(f"--opset {self.opset}: the dynamo exporter needs opset 18 or newer")
        if self.eval_split not in SPLITS:
            raise DataError(f"--eval-split {self.eval_split!r}: use one of {', '.join(SPLITS)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise DataError(f"--eval-limit {self.eval_limit}: must be at least 1")
        if self.threads < 1:
            raise VitresError(f"--threads {self.threads}: must be at least 1")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise VitresError(f"budget {self.budget_ms} ms: must be positive")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise VitresError(f"--name {self.name!r}: use letters, digits, '-' and '_' (a Triton model name)")
        if self.latency_tolerance < 0:
            raise VitresError(f"--latency-tolerance {self.latency_tolerance}: must be >= 0")

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


@dataclass
class ExportReport:
    """What an export did: its checks, the manifest, the bundle (None when a check failed), timings."""

    checks: list[CheckResult]
    manifest: dict[str, Any]
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
        return {"passed": self.passed, "bundle": str(self.bundle) if self.bundle else None,
                "checks": [c.to_dict() for c in self.checks], "latency": self.manifest.get("latency"),
                "artifacts": self.manifest.get("artifacts"), "timings_s": self.timings_s, "notes": self.notes,
                "manifest": self.manifest}


def check_backends(options: ExportOptions) -> str:
    """Raise :class:`BackendUnavailable` unless every artifact asked for can be built and checked here.

    Returns the ONNX Runtime backend that will check the ONNX model.
    """
    runtime = onnx_runtime_for(options.precision)
    if "tensorrt" in options.all_formats:
        get_backend("tensorrt").check(options.precision)
    return runtime


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


def supernet_check(checkpoint: Checkpoint, model: torch.nn.Module, arch: Arch, x: torch.Tensor) -> CheckResult:
    """The static sub-network against the supernet running ``arch``, on the same images."""
    supernet = checkpoint.supernet.eval()
    with torch.inference_mode():
        expected = supernet(x, archs=[arch]).numpy()
        actual = model.eval()(x).numpy()
    return numerics_check("static", "torch-cpu", expected, actual, EXACT, check="supernet")


# ----------------------------------------------------------------------------------------- export


def checker_check(path: Path, opset: int) -> CheckResult:
    """``onnx.checker.check_model(full_check=True)`` (with strict shape inference) as a check with its numbers."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return CheckResult("onnx", "onnx", "checker", False, "onnx.checker full_check", {"opset": opset},
                           failure=f"onnx.checker rejected {path.name}: {first}")
    summary = f"full_check passed: opset {opset}, {len(model.graph.node)} nodes, IR version {model.ir_version}"
    return CheckResult("onnx", "onnx", "checker", True, summary,
                       {"opset": opset, "nodes": len(model.graph.node), "ir_version": model.ir_version})


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
            with get_backend("ort-cpu").runner(OnnxFile(path), RunnerOptions(batch=len(x))) as runner:
                outputs.append(predictor(runner, len(x))(x))
    except Exception as e:  # a graph onnxslim or ORT cannot handle is a reason not to simplify, not to fail
        return None, {**record, "reason": f"onnxslim failed: {type(e).__name__}: {e}".splitlines()[0]}
    result = numerics_check("onnx", "ort-cpu", outputs[0], outputs[1], EXACT, check="simplify")
    record.update(nodes_after=len(slim.graph.node), max_abs_change=result.values["max_abs"], applied=result.passed)
    if not result.passed:
        record["reason"] = f"outputs changed: {result.failure}"
        return None, record
    result = CheckResult(result.artifact, result.runtime, result.check, True,
                         f"onnxslim {before} -> {record['nodes_after']} nodes; unsimplified vs simplified "
                         f"{result.summary}", result.values, result.limits)
    return result, record


def default_name(arch: Arch) -> str:
    """Triton model name: ``<space>_<arch hash>`` with only letters, digits, ``-`` and ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{arch.space}_{arch.hash}")


def export_bundle(checkpoint: Checkpoint, arch: Arch, data: ImageData, out: str | Path,
                  options: ExportOptions | None = None, *, arch_file: dict[str, Any] | None = None,
                  progress: bool = False) -> ExportReport:
    """Export ``arch`` of ``checkpoint`` to a checked bundle at ``out`` (written only if every check passed).

    ``arch_file`` is the parsed architecture file when one was given (a ``best.json`` carries ``budget_ms``).
    Bad input raises before any export work; failed checks are in the report (see
    :meth:`ExportReport.raise_for_failures`) and leave nothing at ``out``.
    """
    from ..latency.device import device_info

    opts = options or ExportOptions()
    space = checkpoint.space
    arch.validate(space)
    formats = opts.all_formats
    onnx_runtime = check_backends(opts)
    budget = opts.budget_ms if opts.budget_ms is not None else _budget_of(arch_file)
    gate = None
    if opts.profile is not None:
        from .latency_gate import plan_latency_gate

        gate = plan_latency_gate(opts.profile, arch, space, opts.precision, opts.batch_range.as_tuple(), formats)
    sample_shape = network_sample_shape(space)
    batch = opts.batch_range.max
    timings: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    with staging(out, force=opts.force) as stage, tempfile.TemporaryDirectory(prefix="vitres-export-") as tmp, \
            torch_fp32(opts.threads):
        scratch, root = Path(tmp), stage.path
        model = checkpoint.supernet.extract(arch).eval()
        try:
            x_first, _ = next(iter(data.eval_batches(opts.eval_split, batch, batch)))
        except StopIteration:
            raise DataError(f"the {opts.eval_split} split is empty: nothing to check the export on") from None
        checks = [supernet_check(checkpoint, model, arch, x_first)]
        lap("extract")

        fp32_path = export_onnx(model, sample_shape, scratch / "model.fp32.onnx", opset=opts.opset)
        checks.append(checker_check(fp32_path, opts.opset))
        raise_for_failures(checks)  # nothing below makes sense for an invalid model
        lap("onnx_export")
        simplification: dict[str, Any] = {"applied": False, "reason": "disabled (--no-simplify)"}
        if opts.simplify:
            recheck, simplification = simplify(fp32_path, scratch / "model.slim.onnx", x_first.numpy())
            if recheck is not None:
                checks.append(recheck)
                fp32_path = scratch / "model.slim.onnx"
            else:
                notes.append(f"simplification not applied: {simplification['reason']}")
            lap("simplify")
        onnx_path = root / "model.onnx"
        if opts.precision == "fp16":
            from ..convert.fp16 import convert_file

            convert_file(fp32_path, onnx_path)
            checks.append(checker_check(onnx_path, opts.opset))
            raise_for_failures(checks)
        else:
            shutil.copyfile(fp32_path, onnx_path)
        artifacts = [onnx_artifact(onnx_path, onnx_runtime, opts.threads)]
        engine: dict[str, Any] | None = None
        if "tensorrt" in formats:
            from .tensorrt_plan import build_plan

            plan_path = root / "model.plan"
            plan, engine = build_plan(fp32_path, onnx_path if opts.precision == "fp16" else None, opts.precision,
                                      opts.batch_range.as_tuple())
            plan_path.write_bytes(plan)
            artifacts.append(plan_artifact(plan_path, opts.precision))
            lap("tensorrt_build")

        ref_runtime = reference_runtime()
        with get_backend(ref_runtime).runner(ModuleLoader.of(model, sample_shape),
                                             RunnerOptions(batch=batch, threads=opts.threads)) as ref_runner:
            results, evaluation = check_artifacts(
                artifacts, predictor(ref_runner, batch), ref_runtime, data, split=opts.eval_split,
                limit=opts.eval_limit, min_batch=opts.batch_range.min, max_batch=batch, tolerances=opts.numerics,
                max_drop=opts.max_drop, seed=opts.seed, progress=progress)
        checks += results
        lap("checks")

        latency = None
        if gate is not None:
            from .latency_gate import latency_check, measure_export

            artifact, stats = measure_export(gate, onnx_path=fp32_path, plan_path=root / "model.plan"
                                             if engine else None, module=model, sample_shape=sample_shape)
            result, latency = latency_check(gate, artifact, stats, budget, opts.latency_tolerance,
                                            opts.allow_over_budget)
            checks.append(result)
            lap("latency")

        name = opts.name or default_name(arch)
        inputs, labels, ref_logits = evaluation["sample"]
        write_reference(root / REFERENCE, inputs, labels, ref_logits)
        atomic_write_json(root / "arch.json", arch.to_dict())
        _write_triton(root, name, formats, opts.batch_range, sample_shape, space.num_classes)
        cost = arch_cost(arch, space)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "vitres_deploy": __version__,
            "space": {"name": space.name, "family": space.family, "image_size": space.image_size,
                      "in_chans": space.in_chans, "num_classes": space.num_classes},
            "arch": {"hash": arch.hash, "short": arch.short(), "macs": cost.macs, "params": cost.params},
            "supernet": {"file": checkpoint.path.name, "sha256": sha256_file(checkpoint.path),
                         "metrics": checkpoint.meta.get("metrics")},
            "precision": opts.precision, "opset": opts.opset, "formats": list(formats),
            "batch_range": {"min": opts.batch_range.min, "opt": opts.batch_range.opt, "max": batch},
            "input": {"name": "input", "shape": ["batch", *sample_shape], "dtype": "float32", "layout": "NCHW",
                      "preprocessing": "pixels / 255, then (x - mean) / std per channel"},
            "output": {"name": "output", "shape": ["batch", space.num_classes], "dtype": "float32",
                       "meaning": "class logits"},
            "normalization": {"mean": list(data.mean), "std": list(data.std), "pixel_scale": 1 / 255},
            "class_names": list(data.class_names),
            "data": {"kind": data.kind, "holdout": data.holdout.to_dict(), "holdout_sha256": data.holdout_digest},
            "versions": package_versions(("onnxslim", "onnxscript")),
            "device": device_info("cuda" if engine or onnx_runtime == "ort-cuda" else "cpu"),
            "artifacts": {
                "model.onnx": {"format": "onnx", "precision": opts.precision, "checked_on": onnx_runtime,
                               "simplification": simplification},
                **({"model.plan": {"format": "tensorrt", "precision": opts.precision, "checked_on": "tensorrt",
                                   **engine}} if engine else {}),
            },
            "tolerances": opts.numerics.to_dict(), "max_accuracy_drop_points": opts.max_drop,
            "evaluation": evaluation["evaluation"],
            "checks": [c.to_dict() for c in checks],
            "latency": latency,
            "timings_s": timings,
        }
        manifest["files"] = file_hashes(root)
        for rel, info in manifest["artifacts"].items():
            info["sha256"] = manifest["files"][rel]
            info["bytes"] = (root / rel).stat().st_size
        atomic_write_json(root / MANIFEST, manifest)
        report = ExportReport(checks, manifest, None, timings, notes)
        if report.passed:
            report.bundle = stage.commit()
        return report


def _budget_of(arch_file: dict[str, Any] | None) -> float | None:
    if not arch_file or arch_file.get("budget_ms") is None:
        return None
    value = arch_file["budget_ms"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise VitresError(f"the arch file's budget_ms {value!r} is not a positive number")
    return float(value)


def _write_triton(root: Path, name: str, formats: tuple[str, ...], batch_range: BatchRange,
                  sample_shape: tuple[int, ...], num_classes: int) -> None:
    inputs = [TensorConfig("input", "float32", sample_shape)]
    outputs = [TensorConfig("output", "float32", (num_classes,))]
    for fmt in formats:
        model = name if fmt == "onnx" else f"{name}_trt"
        filename = "model.onnx" if fmt == "onnx" else "model.plan"
        version = root / "triton" / model / "1"
        version.mkdir(parents=True)
        shutil.copyfile(root / filename, version / filename)
        text = model_config(model, fmt, batch_range.max, (batch_range.opt, batch_range.max), inputs, outputs)
        (root / "triton" / model / "config.pbtxt").write_text(text)

