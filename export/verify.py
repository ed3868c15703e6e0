"""Re-check an existing bundle: file hashes, Triton configurations, then the numerics and top-1 drop checks here.

The reference needs no checkpoint: the bundle stores PyTorch fp32's logits on the seeded check batch
(``reference.npz``) and its top-1 on the eval split (manifest), so each artifact is run again with this
machine's runtimes and held to the tolerances and top-1 drop limit recorded at export. Artifacts no
runtime here can run (an fp16 model without a GPU, an engine of another GPU or TensorRT version) are
skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data import open_data
from ..errors import BackendUnavailable, DataError, VitresError, first_line
from ..runtime.registry import get_backend
from ..values import check_real
from .artifacts import Artifact, check_artifacts, onnx_artifact, onnx_runtime_for, plan_artifact
from .bundle import MANIFEST, REFERENCE, check_listing, read_manifest, read_reference, verify_hashes
from .checks import DEFAULT_MAX_DROP, CheckResult, raise_for_failures
from .compare import DEFAULT_TOLERANCES
from .manifest import BundleCorrupt, Manifest
from .triton import PLATFORMS, PbtxtError, TensorConfig, int8_parameters, parameters_of, parse_pbtxt, tensors_of


@dataclass
class VerifyReport:
    """Result of :func:`verify_bundle`: hash and config checks passed, the runtime checks, what was skipped."""

    bundle: Path
    manifest: Manifest
    files: int
    checks: list[CheckResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every runtime check passed."""
        return all(c.passed for c in self.checks)

    def raise_for_failures(self) -> None:
        """Raise the first failed check, or :class:`BackendUnavailable` when no artifact could be run here."""
        raise_for_failures(self.checks)
        if not self.checks:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            raise BackendUnavailable(f"hashes match, but no runtime here can run the bundle's artifacts ({reasons})")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form for ``--json``."""
        return {"bundle": str(self.bundle), "passed": self.passed and bool(self.checks), "files_verified": self.files,
                "checks": [c.to_dict() for c in self.checks], "skipped": self.skipped,
                "name": self.manifest.name, "precision": self.manifest.precision}


def check_triton(bundle: Path, manifest: Manifest) -> int:
    """Every Triton configuration must parse and match the manifest's I/O, batch range and int8 quantization
    (stated by the ONNX model and by an engine built from it); returns their count."""
    want_in = [TensorConfig(manifest.input.name, manifest.input.dtype, manifest.space.sample_shape)]
    want_out = [TensorConfig(manifest.output.name, manifest.output.dtype, (manifest.space.num_classes,))]
    configs = sorted(rel for rel in manifest.files if rel.startswith("triton/") and rel.endswith("/config.pbtxt"))
    if not configs:
        raise BundleCorrupt(f"{bundle} has no Triton configuration in its manifest: re-export the bundle")
    max_batch = manifest.batch_range.max
    for rel in configs:
        try:
            config = parse_pbtxt((bundle / rel).read_text())
            platform = config.get("platform", [None])[0]
            fmt = next((f for f, (p, _) in PLATFORMS.items() if p == platform), None)
            problems = []
            if fmt is None:
                problems.append(f"unknown platform {platform!r}")
            elif f"{rel.rsplit('/', 1)[0]}/1/{PLATFORMS[fmt][1]}" not in manifest.files:
                problems.append(f"no {PLATFORMS[fmt][1]} beside it")
            if config.get("max_batch_size", [None])[0] != max_batch:
                problems.append(f"max_batch_size {config.get('max_batch_size')} != {max_batch}")
            if tensors_of(config, "input") != want_in or tensors_of(config, "output") != want_out:
                problems.append("inputs/outputs differ from the model's")
            if "dynamic_batching" not in config:
                problems.append("dynamic batching is off")
            if parameters_of(config) != int8_parameters(manifest.quantization):
                problems.append("parameters differ from the manifest's quantization")
        except PbtxtError as e:
            problems = [first_line(e)]
        if problems:
            raise BundleCorrupt(f"{rel}: {'; '.join(problems)}: re-export the bundle")
    return len(configs)


def _check_onnx_io(path: Path, manifest: Manifest) -> None:
    from ..runtime.ort import onnx_input_specs

    specs = onnx_input_specs(path, 1)
    want = (manifest.input.name, (1, *manifest.space.sample_shape), "float32")
    if [(s.name, s.shape, s.dtype) for s in specs] != [want]:
        raise BundleCorrupt(f"{path.name} takes {[(s.name, s.shape, s.dtype) for s in specs]}, the manifest says "
                            f"{want}: re-export the bundle")


def _artifacts_here(bundle: Path, manifest: Manifest, threads: int) -> tuple[list[Artifact], dict[str, str]]:
    artifacts, skipped = [], {}
    precision = manifest.precision
    try:
        artifacts.append(onnx_artifact(bundle / "model.onnx", onnx_runtime_for(precision), threads))
    except BackendUnavailable as e:
        skipped["onnx"] = first_line(e)
    plan = manifest.artifacts.get("model.plan")
    if plan is not None:
        built_with, built_for = plan.details["tensorrt"], plan.details["device"]
        backend = get_backend("tensorrt")
        reason = backend.unavailable_reason()
        if reason is None and backend.version() != built_with:
            reason = f"engine built with TensorRT {built_with}, this machine has {backend.version()}"
        if reason is None:
            from ..runtime.tensorrt import cuda_device_name

            if cuda_device_name(0) != built_for:
                reason = f"engine built for {built_for}, this machine has {cuda_device_name(0)}"
        if reason is None:
            artifacts.append(plan_artifact(bundle / "model.plan", precision))
        else:
            skipped["tensorrt"] = reason
    return artifacts, skipped


def model_files(manifest: Manifest) -> list[str]:
    """The files a bundle's behaviour depends on, each of which must have a hash in its manifest."""
    return ["model.onnx", REFERENCE, *manifest.artifacts]


def check_limits(tolerances: Mapping[str, float], max_drop: float | None) -> None:
    """Refuse limits no check can hold a bundle to: a tolerance (or the top-1 drop) that is not a finite number
    >= 0 (with NaN every comparison is false: an element could never fail), naming it (the drop as
    ``max_accuracy_drop``, the setting's name in export and on the command line)."""
    for name, value in tolerances.items():
        check_real(name, value, low=0.0)
    if max_drop is not None:
        check_real("max_accuracy_drop", max_drop, low=0.0)


def verify_bundle(bundle: str | Path, *, data_dir: str | Path | None = None, threads: int = 1,
                  tolerances: Mapping[str, float] | None = None, max_drop: float | None = None,
                  progress: bool = False) -> VerifyReport:
    """Verify ``bundle``: listing, hashes and configurations (raising :class:`BundleCorrupt`), then the runtime
    checks.

    The limits come from the caller, never from the manifest under test: the precision's default
    tolerances with ``tolerances`` (e.g. ``{"atol": 1e-3}``) in place of some, and ``max_drop`` (top-1 points,
    either way: the recorded reference top-1 is checked too; default: the precision's). A limit that is not a
    finite number >= 0 is a :class:`~vitres_deploy.errors.SettingsError` naming it, before the bundle is read.
    Runtime check failures are in the report (:meth:`VerifyReport.raise_for_failures`).
    """
    check_limits(tolerances or {}, max_drop)
    root = Path(bundle)
    manifest = read_manifest(root)
    try:
        if manifest.precision not in DEFAULT_TOLERANCES:
            raise KeyError(f"precision {manifest.precision!r}")
        check_listing(root, manifest.files, model_files(manifest))
        files = verify_hashes(root, manifest.files)
        check_triton(root, manifest)
        _check_onnx_io(root / "model.onnx", manifest)
        artifacts, skipped = _artifacts_here(root, manifest, threads)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleCorrupt(f"{root / MANIFEST} lacks or garbles {first_line(e)}: the manifest is corrupt; "
                            "re-export the bundle") from None
    except VitresError as e:
        if isinstance(e, BundleCorrupt):
            raise
        raise BundleCorrupt(f"{root}: {first_line(e)}") from None
    report = VerifyReport(root, manifest, len(files), skipped=skipped)
    if not artifacts:
        return report
    data = open_data(manifest.data.kind, data_dir, manifest.space.image_size, manifest.data.holdout)
    if data.holdout_digest != manifest.data.holdout_sha256:
        raise DataError(f"the data in {data_dir or 'the default directory'} gives another hold-out split than the "
                        "bundle was checked on: pass the same data_dir as at export", field="data_dir")
    evaluation = manifest.evaluation
    report.checks, _ = check_artifacts(
        artifacts, None, evaluation.reference_runtime, data, split=evaluation.split, limit=evaluation.limit,
        min_batch=manifest.batch_range.min, max_batch=manifest.batch_range.max,
        tolerances=replace(DEFAULT_TOLERANCES[manifest.precision], **(tolerances or {})),
        max_drop=DEFAULT_MAX_DROP[manifest.precision] if max_drop is None else max_drop, seed=evaluation.seed,
        sample=read_reference(root / REFERENCE),
        reference_top1=evaluation.reference_top1, progress=progress)
    return report
