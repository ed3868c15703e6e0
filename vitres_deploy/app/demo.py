"""The main job, end to end on the embedded default: CPU, ONNX Runtime, ``fmnist-demo``, Fashion-MNIST.

profile the ``fmnist`` space with ``ort-cpu`` (or reuse the shipped table) -> validate the table ->
search under a budget taken from the table's range -> export ONNX with every check -> one summary.
Everything is written under one output folder, which follows the rules of every run folder
(:mod:`vitres_deploy.rundir`): ``demo.json`` records the settings and the finished steps; a second run
into the folder is refused without ``resume``; with it, finished steps are reused (the table, its
validation, the bundle), an unfinished one is resumed by its own rules (a search replays its evaluations),
and changed settings are refused, naming the first. ``allow_over_budget`` may change: it is what a user
passes after an export measured over the budget.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arch import Arch
from ..checkpoint import Checkpoint, load_checkpoint
from ..data import ImageData, open_checkpoint_data
from ..errors import BundleError, ProfileError, RunDirError, SettingsError
from ..export.artifacts import onnx_artifact, predictor
from ..export.bundle import read_manifest, verify_hashes
from ..export.pipeline import ExportOptions, ExportReport, export_bundle
from ..files import atomic_write_bytes, atomic_write_json, loads_json
from ..latency import (
    LatencyTable,
    PredictionErrors,
    ProfileSettings,
    latency_range,
    predict,
    profile_space,
    validate_table,
)
from ..latency.fingerprint import usable_cpus
from ..latency.plot import plot_table
from ..latency.table import shipped_tables, table_for_this_machine
from ..latency.validate import MIN_SAMPLES
from ..macs import arch_cost
from ..rundir import check_same_settings, check_start, hold_output
from ..search import PRESETS as SEARCH_PRESETS
from ..search import SearchOptions, plan_search, run_search
from ..search.records import SETTINGS as SEARCH_SETTINGS
from ..space import PRESETS
from ..values import check_count, check_real

SPACE, BACKEND, SUPERNET = "fmnist", "ort-cpu", "fmnist-demo"
TABLE_NAME = f"{SPACE}-{BACKEND}-fp32-b1.json"
STATE = "demo.json"
OUTPUTS = ("profile", "search", "bundle", "summary.json")


@dataclass
class DemoOptions:
    """Settings of the demo run. ``threads``: CPU threads of everything timed (the table, validation, the export's
    gate) and of the export's checks; ``eval_threads``: torch threads of the search's accuracy evaluations and of
    the test-split accuracy, where nothing is timed (None: :func:`default_eval_threads`)."""

    out: Path
    reuse_profile: bool = False
    budget_ms: float | None = None
    budget_fraction: float = 0.35
    validate_samples: int = 20
    search_preset: str = "demo"
    supernet: str = SUPERNET
    eval_limit: int | None = None
    data_dir: str | None = None
    threads: int = 1
    eval_threads: int | None = None
    seed: int = 0
    allow_over_budget: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        """Refuse settings a step would refuse later, naming the demo's own field, before anything is written (a
        folder whose first steps finished under a bad value could not be resumed with a good one)."""
        if self.validate_samples < MIN_SAMPLES:
            raise SettingsError(f"validate_samples {self.validate_samples} must be at least {MIN_SAMPLES}: half fit "
                                "the correction, half are reported", field="validate_samples")
        if self.budget_ms is not None:
            check_real("budget_ms", self.budget_ms, low_open=0.0)
        check_real("budget_fraction", self.budget_fraction, low_open=0.0, high_open=1.0)
        check_count("threads", self.threads)
        if self.eval_threads is not None:
            check_count("eval_threads", self.eval_threads)
        if self.eval_limit is not None:
            check_count("eval_limit", self.eval_limit)


@dataclass(frozen=True)
class DemoSummary:
    """The figures of a demo run: budget, predicted and measured latency, cost, the chosen arch, hold-out and
    test top-1 of PyTorch and ONNX Runtime, the table's validation and the search's hold-out interval."""

    budget_ms: float
    achievable_ms: tuple[float, float]
    predicted_ms: float
    measured_ms: float | None
    macs: int
    params: int
    arch: str
    arch_hash: str
    holdout_top1_pytorch: float
    holdout_top1_onnxruntime: float
    test_top1_pytorch: float
    test_top1_onnxruntime: float
    validation_samples: int
    validation: PredictionErrors
    search_evaluations: int
    holdout_top1_ci95: tuple[float, float]
    within_ci95: int
    eval_limit: int | None
    margin: float = 0.0
    validated: bool = False
    repeat_p90_change_pct: float | None = None

    @property
    def over_budget(self) -> float | None:
        """How far the measured latency is above the budget (a fraction; negative below it)."""
        return None if self.measured_ms is None else self.measured_ms / self.budget_ms - 1

    def to_dict(self) -> dict[str, Any]:
        """The ``summary`` of ``summary.json`` (the validation's sample count inside its ``validation``)."""
        return {
            "budget_ms": self.budget_ms, "achievable_ms": list(self.achievable_ms), "predicted_ms": self.predicted_ms,
            "measured_ms": self.measured_ms, "macs": self.macs, "params": self.params, "arch": self.arch,
            "arch_hash": self.arch_hash, "holdout_top1_pytorch": self.holdout_top1_pytorch,
            "holdout_top1_onnxruntime": self.holdout_top1_onnxruntime, "test_top1_pytorch": self.test_top1_pytorch,
            "test_top1_onnxruntime": self.test_top1_onnxruntime,
            "validation": {"samples": self.validation_samples, **self.validation.to_dict()},
            "search_evaluations": self.search_evaluations, "holdout_top1_ci95": list(self.holdout_top1_ci95),
            "within_ci95": self.within_ci95, "eval_limit": self.eval_limit, "margin": self.margin,
            "validated": self.validated, "repeat_p90_change_pct": self.repeat_p90_change_pct,
            "over_budget": self.over_budget,
        }


@dataclass
class DemoResult:
    """What the demo produced: the summary's figures, the paths of every output and the seconds of each step."""

    summary: DemoSummary
    paths: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (also written as ``summary.json``)."""
        return {"summary": self.summary.to_dict(), "paths": self.paths, "seconds": self.seconds}


def shipped_table() -> Path:
    """The shipped ``fmnist`` ``ort-cpu`` table measured on this machine, else the most recently measured one."""
    found = shipped_tables(TABLE_NAME)
    if not found:
        raise ProfileError(f"no shipped {TABLE_NAME} in the package: run the demo without reuse_profile",
                           field="reuse_profile")
    return table_for_this_machine(found)


def demo_settings(opts: DemoOptions) -> dict[str, Any]:
    """The settings that decide a demo's result (``demo.json``; a resumed demo must have the same)."""
    return {"reuse_profile": opts.reuse_profile, "budget_ms": opts.budget_ms, "budget_fraction": opts.budget_fraction,
            "validate_samples": opts.validate_samples, "search_preset": opts.search_preset,
            "supernet": opts.supernet, "eval_limit": opts.eval_limit, "threads": opts.threads, "seed": opts.seed}


class DemoState:
    """``demo.json`` of a demo folder: the settings and the steps finished so far, rewritten after each step."""

    def __init__(self, out: Path, settings: dict[str, Any], finished: list[str]) -> None:
        self.path, self.settings, self.finished = out / STATE, settings, finished

    @classmethod
    def open(cls, opts: DemoOptions) -> DemoState:
        """Start a demo in ``opts.out`` (refused where one already is, unless ``resume``), or with ``resume``
        continue the one there if it was run with the same settings."""
        out, settings = opts.out, demo_settings(opts)
        check_start(out, opts.resume, "a demo run", (STATE, *OUTPUTS))
        if not opts.resume:
            state = cls(out, settings, [])
            state.save()
            return state
        path = out / STATE
        try:
            stored = loads_json(path.read_text())
            state = cls(out, dict(stored["settings"]), [str(step) for step in stored["finished"]])
        except (KeyError, TypeError, ValueError) as e:  # ValueError: a JSONError too
            raise RunDirError(f"{path} is corrupt ({e}): start the demo afresh in another folder",
                              field="out") from None
        check_same_settings(out, state.settings, settings, made="run")
        return state

    def save(self) -> None:
        """Write ``demo.json`` (atomically)."""
        atomic_write_json(self.path, {"settings": self.settings, "finished": self.finished})

    def done(self, step: str) -> bool:
        """Whether ``step`` finished in this folder."""
        return step in self.finished

    def finish(self, step: str) -> None:
        """Record that ``step`` finished."""
        if step not in self.finished:
            self.finished.append(step)
            self.save()


def run_demo(opts: DemoOptions, say: Callable[[str], None] = print) -> DemoResult:
    """Run every step of the demo into ``opts.out``; each step's own checks raise on failure. With
    ``opts.resume``, continue the demo in that folder (see the module docstring)."""
    with hold_output(opts.out):  # one process writes the demo folder
        torch.set_num_threads(opts.threads)  # small CPU kernels: one thread is faster and steadier on a shared machine
        return _run_steps(opts, DemoState.open(opts), say)


def _run_steps(opts: DemoOptions, state: DemoState, say: Callable[[str], None]) -> DemoResult:
    """The steps of :func:`run_demo`, each skipped when ``state`` says it finished."""
    out, seconds, paths = opts.out, {}, {}
    table_path = out / "profile" / TABLE_NAME

    def step(name: str, fn: Callable[[], Any]) -> Any:
        say(f"[{len(seconds) + 1}/5] {name}")
        t0 = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        return value

    if opts.reuse_profile:
        paths["shipped_table"] = str(shipped_table())
    if state.done("profile"):
        table = step("profile (reusing the finished table)", lambda: LatencyTable.load(table_path))
    elif opts.reuse_profile:
        atomic_write_bytes(table_path, shipped_table().read_bytes())
        table = step("profile (reusing the shipped table)", lambda: LatencyTable.load(table_path))
    else:
        settings = ProfileSettings(backend=BACKEND, threads=opts.threads)
        table = step("profile fmnist with ort-cpu",
                     lambda: profile_space(PRESETS[SPACE], settings, table_path, resume=opts.resume))
    state.finish("profile")
    if state.done("validate") and table.validation is not None:
        validation = step("validate the table (reusing the finished validation)", lambda: table.validation)
    else:
        validation = step("validate the table", lambda: validate_table(table_path, samples=opts.validate_samples,
                                                                         seed=opts.seed))
        table = LatencyTable.load(table_path)  # reload: validation stored the fitted correction in it
    state.finish("validate")

    checkpoint = load_checkpoint(opts.supernet, expect_space=PRESETS[SPACE])
    data = open_checkpoint_data(checkpoint, opts.data_dir)
    span = latency_range(table)
    budget = opts.budget_ms or round(span.fastest_ms + opts.budget_fraction * (span.slowest_ms - span.fastest_ms), 4)
    # the table was validated a moment ago: its correction is fitted to this machine as it is now, so the
    # search and the export skip their drift checks (and a reused shipped table may be of another device)
    search_options = SearchOptions(budgets_ms=(budget,), out_dir=out / "search",
                                   evolution=SEARCH_PRESETS[opts.search_preset], eval_limit=opts.eval_limit,
                                   drift_check=False, allow_other_device=opts.reuse_profile,
                                   resume=opts.resume and (out / "search" / SEARCH_SETTINGS).is_file())
    eval_threads = opts.eval_threads or default_eval_threads()
    with torch_threads(eval_threads):
        search = step(f"search under {budget:.4f} ms",
                      lambda: run_search(plan_search(checkpoint, table, search_options), data))
    arch, searched = search.best_files[0].arch.validate(checkpoint.space), search.searched[0]
    finished = _finished_export(out / "bundle", arch) if state.done("export") else None
    if finished is not None:
        export = step("export (reusing the finished bundle)", lambda: finished)
    else:
        export = step("export ONNX with every check", lambda: export_bundle(
            checkpoint, arch, data, out / "bundle",
            ExportOptions(table_path=table_path, budget_ms=budget, threads=opts.threads, eval_limit=opts.eval_limit,
                          drift_check=False, allow_other_device=opts.reuse_profile,
                          allow_over_budget=opts.allow_over_budget, force=opts.resume)))
    export.raise_for_failures()
    state.finish("export")
    with torch_threads(eval_threads):
        test = step("test-split accuracy of PyTorch and ONNX Runtime",
                    lambda: _test_accuracy(checkpoint, arch, data, out / "bundle" / "model.onnx", eval_threads,
                                           opts.eval_limit))

    latency = export.manifest.latency or {}
    holdout = next(c.values for c in export.checks if c.check == "accuracy" and c.artifact == "onnx")
    cost = arch_cost(arch, checkpoint.space)
    summary = DemoSummary(
        budget_ms=budget, achievable_ms=(span.fastest_ms, span.slowest_ms),
        predicted_ms=predict(table, arch).latency_ms, measured_ms=latency.get("measured_ms"),
        macs=cost.macs, params=cost.params, arch=arch.short(), arch_hash=arch.hash,
        holdout_top1_pytorch=holdout["reference_top1"], holdout_top1_onnxruntime=holdout["top1"],
        test_top1_pytorch=test["pytorch"], test_top1_onnxruntime=test["onnxruntime"],
        validation_samples=validation.samples, validation=validation.errors,
        search_evaluations=len(search.records), holdout_top1_ci95=searched.holdout_top1_ci95,
        within_ci95=searched.within_ci95, eval_limit=opts.eval_limit, margin=searched.margin,
        validated=validation.validated,
        repeat_p90_change_pct=validation.repeatability.p90_change_pct if validation.repeatability else None,
    )
    paths.update({
        "out": str(out), "table": str(table_path), "table_plot": str(out / "profile" / "latency.png"),
        "search": str(out / "search"), "best": str(out / "search" / "best.json"),
        "search_plot": str(out / "search" / "search.png"), "bundle": str(export.bundle),
    })
    plot_table(table, out / "profile" / "latency.png")
    result = DemoResult(summary, paths, seconds)
    atomic_write_json(out / "summary.json", result.to_dict())
    return result


def default_eval_threads() -> int:
    """The torch threads of the demo's evaluations when none are given: ``OMP_NUM_THREADS`` when it is set to a
    whole number (the user limited the process), else every CPU this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else usable_cpus()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` torch CPU threads, then put the previous number back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finished_export(bundle: Path, arch: Arch) -> ExportReport | None:
    """The report of the bundle a previous run of the demo wrote, if it is intact and holds ``arch`` (else the
    export is redone)."""
    try:
        manifest = read_manifest(bundle)
        verify_hashes(bundle, manifest.files)
    except BundleError:  # gone or changed since: export again
        return None
    if manifest.arch.hash != arch.hash:
        return None
    return ExportReport(list(manifest.checks), manifest, bundle, dict(manifest.timings_s))


@torch.inference_mode()
def _test_accuracy(checkpoint: Checkpoint, arch: Arch, data: ImageData, onnx_path: Path, threads: int,
                   limit: int | None) -> dict[str, float]:
    """Top-1 on the t10k test split of the static PyTorch network and of the exported ONNX model."""
    model = checkpoint.supernet.extract(arch).eval()
    correct = {"pytorch": 0, "onnxruntime": 0}
    n = 0
    with onnx_artifact(onnx_path, BACKEND, threads).make_runner(500) as runner:
        run_onnx = predictor(runner, 500)
        for x, y in data.eval_batches("test", 500, limit):
            labels = y.numpy()
            correct["pytorch"] += int((model(x).argmax(1).numpy() == labels).sum())
            correct["onnxruntime"] += int((run_onnx(np.ascontiguousarray(x.numpy())).argmax(1) == labels).sum())
            n += len(labels)
    return {k: v / n for k, v in correct.items()}
