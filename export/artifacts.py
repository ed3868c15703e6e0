"""Exported artifacts as things to run: which runtime checks them here, runners, and the checks of all of them.

An :class:`Artifact` (the ONNX model, the TensorRT engine) knows the backend that runs it on this machine and
builds a runner for a batch size. :func:`check_artifacts` runs every artifact, and the PyTorch fp32
reference when there is one, over the eval split in one pass, then compares them on a seeded batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageData
from ..errors import BackendUnavailable
from ..progress import progress_bar
from ..runtime.base import Runner, RunnerOptions
from ..runtime.loaders import OnnxFile
from ..runtime.registry import get_backend
from .checks import CheckResult, Predict, evaluate_split, numerics_check, top1_drop_check
from .compare import Tolerances

ONNX_RUNTIMES = ("ort-cuda", "ort-cpu")


def onnx_runtime_for(precision: str) -> str:
    """The ONNX Runtime backend that checks ONNX artifacts here: ``ort-cuda`` when usable, else ``ort-cpu``."""
    reasons = []
    for name in ONNX_RUNTIMES:
        backend = get_backend(name)
        reason = backend.unavailable_reason()
        if reason is None and precision in backend.precisions:
            return name
        reasons.append(f"{name}: {reason or 'runs ' + '/'.join(backend.precisions) + ' only'}")
    raise BackendUnavailable(f"no ONNX Runtime backend here can check an {precision} model ({'; '.join(reasons)}): "
                             "use --precision fp32 or export on a machine with onnxruntime-gpu")


def reference_runtime() -> str:
    """PyTorch fp32 reference: on the GPU when there is one (TF32 off), else on the CPU."""
    return "torch-cuda" if get_backend("torch-cuda").unavailable_reason() is None else "torch-cpu"


def predictor(runner: Runner, batch: int) -> Predict:
    """``x -> logits`` through the active ``runner`` built for ``batch`` images: smaller batches are zero-padded."""

    def predict(x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n > batch:
            raise ValueError(f"batch of {n} images for a runner of batch {batch}")
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), dtype=x.dtype)])
        out = runner.infer({runner.input_specs[0].name: x})
        return next(iter(out.values()))[:n]

    return predict


@dataclass
class Artifact:
    """An exported file, the backend that checks it, and how to build a runner (inactive) for a batch size."""

    name: str
    path: Path
    runtime: str
    make_runner: Callable[[int], Runner]


def onnx_artifact(path: Path, runtime: str, threads: int) -> Artifact:
    """The ONNX artifact, run as it is: an fp16 file is already fp16, so the runner gets no precision to apply
    (``runtime`` must support the file's precision: see :func:`onnx_runtime_for`)."""
    def make(batch: int) -> Runner:
        return get_backend(runtime).runner(OnnxFile(path), RunnerOptions(batch=batch, threads=threads))

    return Artifact("onnx", path, runtime, make)


def plan_artifact(path: Path, precision: str) -> Artifact:
    """The TensorRT engine artifact."""
    from ..runtime.tensorrt import EngineFile, TensorRTRunner

    return Artifact("tensorrt", path, "tensorrt",
                    lambda batch: TensorRTRunner(EngineFile(path), RunnerOptions(batch=batch, precision=precision)))


def check_artifacts(artifacts: list[Artifact], reference: Predict | None, ref_runtime: str, data: ImageData, *,
                    split: str, limit: int | None, min_batch: int, max_batch: int, tolerances: Tolerances,
                    max_drop: float,
                    seed: int, sample: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                    reference_top1: float | None = None, progress: bool = False,
                    ) -> tuple[list[CheckResult], dict[str, Any]]:
    """Numerics (at ``max_batch`` and ``min_batch``) and accuracy checks of ``artifacts`` against PyTorch fp32.

    With ``reference`` (a PyTorch predictor) the eval split is run through it too and a seeded sample of
    the split becomes the numerics batch; without it (``verify``), ``sample`` (inputs, labels, reference
    logits) and ``reference_top1`` come from the bundle. Returns the checks and the evaluation record.
    """

    batch = max_batch
    with contextlib.ExitStack() as active:
        runners = {a.name: active.enter_context(a.make_runner(batch)) for a in artifacts}
        predictors = {a.name: predictor(runners[a.name], batch) for a in artifacts}
        if reference is not None:
            predictors = {"pytorch": reference, **predictors}
        with progress_bar(progress) as bar:
            task = bar.add_task("checks", total=limit)
            evaluation = evaluate_split(predictors, data.eval_batches(split, batch, limit),
                                        reference="pytorch" if reference is not None else None,
                                        sample_size=batch if reference is not None else 0, seed=seed,
                                        on_batch=lambda n: bar.advance(task, n))
        if reference is not None:
            inputs, labels = evaluation.sample_inputs, evaluation.sample_labels
            ref_logits = reference(inputs)
            reference_top1 = evaluation.top1("pytorch")
        else:
            if sample is None or reference_top1 is None:
                raise ValueError("without a reference predictor, pass the stored sample and reference_top1")
            inputs, labels, ref_logits = sample
        results: list[CheckResult] = []
        for a in artifacts:
            results.append(numerics_check(a.name, a.runtime, ref_logits, predictors[a.name](inputs[:batch]),
                                          tolerances))
            if min_batch < batch and len(inputs) >= min_batch:
                with a.make_runner(min_batch) as small:
                    out = predictor(small, min_batch)(inputs[:min_batch])
                results.append(numerics_check(a.name, a.runtime, ref_logits[:min_batch], out, tolerances))
            results.append(top1_drop_check(a.name, a.runtime, split, reference_top1, evaluation.top1(a.name),
                                           evaluation.images, evaluation.agreement(a.name), max_drop,
                                           two_sided=reference is None))
    record = {"split": split, "limit": limit, "images": evaluation.images, "seed": seed,
              "reference_runtime": ref_runtime, "reference_top1": reference_top1,
              "top1": {name: evaluation.top1(name) for name in predictors}}
    return results, {"evaluation": record, "sample": (inputs, labels, ref_logits)}
