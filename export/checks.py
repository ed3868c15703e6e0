"""The checks of an export against PyTorch fp32, and the typed errors of a failed check.

Two kinds of checks run on every artifact (ONNX model, TensorRT engine):

* *numerics*: the artifact's outputs on a seeded batch of real images against PyTorch fp32's, with the
  comparator of :mod:`vitres_deploy.export.compare` (Polygraphy's element-wise rule, off for int8; cosine,
  top-1 agreement, NaN/Inf);
* *top-1 drop* (named ``accuracy`` in manifests and reports): the artifact's top-1 on the eval split against
  PyTorch's, failing above a maximum drop in percentage points; the share of images where both predict the
  same class (top-1 agreement) is reported beside it.

On the way to the artifacts, the static sub-network is checked against the supernet (``supernet``) and every
ONNX file written against ``onnx.checker`` (``checker``).

Each check gives a :class:`CheckResult` with its numbers and PASS/FAIL; :func:`raise_for_failures` turns
the first failure into a typed :class:`ExportCheckFailed` that names the artifact, the check and by how much.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arch import Arch
from ..checkpoint import Checkpoint
from ..errors import CheckFailed, first_line
from .compare import Comparison, Tolerances, compare

#: Maximum top-1 drop against PyTorch fp32, in percentage points, per precision.
DEFAULT_MAX_DROP = {"fp32": 0.1, "fp16": 0.5, "int8": 0.5}
#: The name of the top-1 drop check in manifests and reports.
TOP1_DROP_CHECK = "accuracy"
#: Tolerances of a transformation that must not change what the network computes (extraction from the
#: supernet, simplification): only kernel-order differences are allowed.
EXACT = Tolerances(atol=1e-5, rtol=1e-4, min_cosine=0.999999, min_top1_agreement=1.0)

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CheckResult:
    """One check of one artifact: its numbers (``values``), its limits, PASS/FAIL and, if failed, by how much."""

    artifact: str
    runtime: str
    check: str
    passed: bool
    summary: str
    values: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    failure: str = ""

    @property
    def status(self) -> str:
        """``PASS`` or ``FAIL``."""
        return "PASS" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (with ``status``)."""
        return {**asdict(self), "status": self.status}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class ExportCheckFailed(CheckFailed):
    """A check of an exported artifact failed; ``result`` holds its numbers."""

    def __init__(self, result: CheckResult, others: int = 0) -> None:
        self.result = result
        self.others = others
        more = f" (and {others} more failed check{'s' if others > 1 else ''})" if others else ""
        super().__init__(f"{result.check} check of {result.artifact} on {result.runtime} failed: "
                         f"{result.failure}{more}")


class NumericsCheckFailed(ExportCheckFailed):
    """Outputs of an artifact differ from PyTorch fp32 beyond the tolerances."""


class Top1DropCheckFailed(ExportCheckFailed):
    """Top-1 of an artifact on the eval split dropped more than allowed below PyTorch fp32's."""


class LatencyCheckFailed(ExportCheckFailed):
    """The measured latency of an artifact is above the budget and its tolerance."""


_ERRORS: dict[str, type[ExportCheckFailed]] = {"numerics": NumericsCheckFailed, "supernet": NumericsCheckFailed,
                                               "simplify": NumericsCheckFailed, TOP1_DROP_CHECK: Top1DropCheckFailed,
                                               "latency": LatencyCheckFailed}


def raise_for_failures(results: Sequence[CheckResult]) -> None:
    """Raise the typed error of the first failed check (the message counts the others); no-op if all passed."""
    failed = [r for r in results if not r.passed]
    if failed:
        first = failed[0]
        raise _ERRORS.get(first.check, ExportCheckFailed)(first, len(failed) - 1)


def numerics_check(artifact: str, runtime: str, reference: np.ndarray, actual: np.ndarray,
                   tolerances: Tolerances, check: str = "numerics") -> CheckResult:
    """Compare one artifact's outputs with the reference outputs on the same inputs."""
    c: Comparison = compare(reference, actual, tolerances)
    batch = c.shape[0] if c.shape else 1
    out = f", {c.failed_elements}/{c.elements} elements out" if tolerances.elementwise else ""
    mean = f" (mean {c.mean_cosine:.6f})" if tolerances.min_mean_cosine is not None else ""
    summary = (f"batch {batch}: max abs {c.max_abs:.3g}, max rel {c.max_rel:.3g}{out}, cosine {c.min_cosine:.6f}"
               f"{mean}, top-1 agree {c.top1_agreement:.2%}, NaN {c.nan}, Inf {c.inf}")
    values = {k: v for k, v in c.to_dict().items() if k not in ("limits", "failures", "passed")}
    values["batch"] = batch
    return CheckResult(artifact, runtime, check, c.passed, summary, values, tolerances.to_dict(),
                       "; ".join(c.failures))


#: Images a re-checked artifact may be right on beyond the drop limit above its recorded reference (see
#: :func:`top1_drop_check`).
RISE_SLACK_IMAGES = 3


def top1_drop_check(artifact: str, runtime: str, split: str, reference_top1: float, top1: float, images: int,
                    agreement: float | None, max_drop_points: float, *, two_sided: bool = False) -> CheckResult:
    """Top-1 of one artifact against PyTorch fp32's on the same ``images`` of ``split``.

    With ``two_sided`` (a reference read from a file, not measured here) a rise of more than the limit plus
    :data:`RISE_SLACK_IMAGES` images fails too: it means the recorded reference does not belong to this artifact.
    The slack is sampling noise: a model that differs from the reference (int8) may be right on a few images the
    reference gets wrong (on 320 images, 2 images are 0.62 points).
    """
    drop = (reference_top1 - top1) * 100.0
    rise_limit = max_drop_points + 100.0 * RISE_SLACK_IMAGES / max(images, 1)
    rose = two_sided and -drop > rise_limit + 1e-9
    passed = drop <= max_drop_points + 1e-9 and not rose
    agree = f", top-1 agree {agreement:.2%}" if agreement is not None else ""
    summary = (f"{split} ({images} images): top-1 {top1:.2%} vs PyTorch {reference_top1:.2%}, "
               f"drop {drop:+.2f} points{agree}")
    values = {"split": split, "images": images, "top1": top1, "reference_top1": reference_top1,
              "drop_points": drop, "top1_agreement": agreement}
    if rose:
        failure = (f"top-1 is {-drop:.2f} points above the recorded reference ({reference_top1:.2%} -> {top1:.2%}), "
                   f"beyond the {max_drop_points:g}-point limit and {RISE_SLACK_IMAGES} images: the recorded "
                   "reference_top1 does not belong to this artifact")
    else:
        failure = "" if passed else (f"top-1 dropped {drop:.2f} points ({reference_top1:.2%} -> {top1:.2%}), "
                                     f"{drop - max_drop_points:.2f} points over the {max_drop_points:g}-point limit")
    return CheckResult(artifact, runtime, TOP1_DROP_CHECK, passed, summary, values,
                       {"max_drop_points": max_drop_points}, failure)


def supernet_check(checkpoint: Checkpoint, model: torch.nn.Module, arch: Arch, x: torch.Tensor) -> CheckResult:
    """The static sub-network ``model`` against the supernet running ``arch``, on the same images ``x``."""
    supernet = checkpoint.supernet.eval()
    with torch.inference_mode():
        expected = supernet(x, archs=[arch]).numpy()
        actual = model.eval()(x).numpy()
    return numerics_check("static", "torch-cpu", expected, actual, EXACT, check="supernet")


def checker_check(path: Path, opset: int) -> CheckResult:
    """``onnx.checker.check_model(full_check=True)`` (with strict shape inference) as a check with its numbers."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return CheckResult("onnx", "onnx", "checker", False, "onnx.checker full_check", {"opset": opset},
                           failure=f"onnx.checker rejected {path.name}: {first_line(e)}")
    summary = f"full_check passed: opset {opset}, {len(model.graph.node)} nodes, IR version {model.ir_version}"
    return CheckResult("onnx", "onnx", "checker", True, summary,
                       {"opset": opset, "nodes": len(model.graph.node), "ir_version": model.ir_version})


@dataclass
class SplitEvaluation:
    """One pass over the eval split: top-1 of every predictor, agreement with the reference, a seeded sample."""

    images: int
    correct: dict[str, int]
    agree: dict[str, int]
    sample_inputs: np.ndarray
    sample_labels: np.ndarray

    def top1(self, name: str) -> float:
        """Top-1 accuracy of predictor ``name``."""
        return self.correct[name] / max(self.images, 1)

    def agreement(self, name: str) -> float | None:
        """Share of images on which ``name`` predicts the reference's class (None without a reference)."""
        return self.agree[name] / max(self.images, 1) if name in self.agree else None


def evaluate_split(predictors: Mapping[str, Predict], batches: Iterable[tuple[Any, Any]], *,
                   reference: str | None, sample_size: int, seed: int,
                   on_batch: Callable[[int], None] | None = None) -> SplitEvaluation:
    """Run every predictor on every batch, counting correct top-1 and agreement with ``reference``.

    A seeded uniform sample of ``sample_size`` images of the split is drawn on the way (reservoir sampling,
    so the split is read once) and returned in split order, for the numerics checks.
    """
    rng = np.random.default_rng(seed)
    correct = dict.fromkeys(predictors, 0)
    agree = {n: 0 for n in predictors if reference is not None and n != reference}
    reservoir: list[tuple[int, np.ndarray, int]] = []
    seen = 0
    for x, y in batches:
        x_np = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        y_np = np.asarray(y)
        preds = {name: np.asarray(predict(x_np)).argmax(axis=-1) for name, predict in predictors.items()}
        for name, p in preds.items():
            correct[name] += int((p == y_np).sum())
            if name in agree:
                agree[name] += int((p == preds[reference]).sum())
        for i in range(len(y_np)):
            index = seen + i
            if len(reservoir) < sample_size:
                reservoir.append((index, x_np[i].copy(), int(y_np[i])))
            else:
                j = int(rng.integers(0, index + 1))
                if j < sample_size:
                    reservoir[j] = (index, x_np[i].copy(), int(y_np[i]))
        seen += len(y_np)
        if on_batch:
            on_batch(len(y_np))
    reservoir.sort(key=lambda t: t[0])
    inputs = np.stack([r[1] for r in reservoir]) if reservoir else np.zeros((0,), np.float32)
    labels = np.asarray([r[2] for r in reservoir], dtype=np.int64)
    return SplitEvaluation(seen, correct, agree, inputs, labels)
