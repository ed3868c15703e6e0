"""``export`` and ``verify``: a checked serving bundle of one sub-network, and re-checking a bundle."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from .boundary import Command
from .int8_options import Int8Flags, int8_options
from .output import print_json, print_table
from .table_options import trust_options

if TYPE_CHECKING:
    from ..export.checks import CheckResult


def check_rows(checks: list[CheckResult]) -> list[tuple[str, str, str, str, str, str]]:
    """Table rows of check results: artifact, runtime, check, numbers, limits, PASS/FAIL."""
    rows = []
    for c in checks:
        name = f"{c.check} b{c.values['batch']}" if c.check == "numerics" else c.check
        rows.append((c.artifact, c.runtime, name, c.summary + (f"\n-> {c.failure}" if c.failure else ""),
                     _limits(c), c.status))
    return rows


def _limits(c: CheckResult) -> str:
    lim = c.limits
    if "min_cosine" in lim:
        rule = " & ".join(f"{name} {lim[name]:g}" for name in ("atol", "rtol") if lim.get(name) is not None)
        mean = f"mean cos >= {lim['min_mean_cosine']:g}" if lim.get("min_mean_cosine") is not None else ""
        parts = [rule, mean, f"cos >= {lim['min_cosine']:g}", f"top-1 >= {lim['min_top1_agreement']:.0%}"]
        return ", ".join(part for part in parts if part)
    if "max_drop_points" in lim:
        return f"drop <= {lim['max_drop_points']:g} pt"
    if lim.get("budget_ms") is not None:
        allowed = " (over allowed)" if lim.get("allow_over_budget") else ""
        return f"<= {lim['budget_ms'] * (1 + lim['tolerance']):.4g} ms{allowed}"
    return "-"


def _int8_layout(formats: tuple[str, ...], table_path: str | None) -> str:
    """The int8 layout an export quantizes in: ``tensorrt`` for a TensorRT engine or a latency table timed by
    TensorRT (``ort-trt``, ``tensorrt``), else ``ort-cpu``."""
    from ..latency import LatencyTable
    from ..runtime import get_backend

    timed_by = get_backend(LatencyTable.load(table_path).meta.backend) if table_path is not None else None
    return "tensorrt" if "tensorrt" in formats or (timed_by and timed_by.int8_layout == "tensorrt") else "ort-cpu"


@click.command(cls=Command)
@click.option("--supernet", "ckpt", required=True,
              help="Supernet checkpoint file or fmnist-demo, or a fine-tuned checkpoint (finetune's "
                   "finetuned.safetensors, recognised by its metadata; --arch must be its arch).")
@click.option("--arch", "arch_spec", required=True,
              help="Architecture file (a search's best.json gives the latency budget too), max, min or random:SEED.")
@click.option("--formats", default="onnx", show_default=True,
              help="onnx or onnx,tensorrt (the ONNX model is always part of the bundle).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="int8: static int8 ONNX (ONNX Runtime's quantization tool), calibrated on training images; in "
                   "TensorRT's layout (explicit Q/DQ, symmetric int8) with tensorrt or a TensorRT-timed --profile.")
@int8_options
@click.option("--calibration-images", type=int, default=512, show_default=True,
              help="int8: training images (hold-out excluded, drawn with --seed) the activation ranges are "
                   "calibrated on.")
@click.option("--int8-stages", default=None,
              help="int8: quantize only these stages (1-based, comma-separated, e.g. 3), the others stay float "
                   "(mixed precision; the latency gate then measures without a prediction).")
@click.option("--batch-range", default="1:8:32", show_default=True,
              help="MIN:OPT:MAX batch sizes served (TensorRT optimization profile, Triton max_batch_size).")
@click.option("--profile", "table_path", default=None,
              help="Latency table: measure the export with its backend and protocol and gate on the budget.")
@click.option("--budget-ms", type=float, default=None, help="Latency budget (default: budget_ms of a best.json).")
@click.option("--latency-tolerance", type=float, default=0.05, show_default=True,
              help="Measured latency may exceed the budget by this fraction.")
@click.option("--latency-retries", type=int, default=2, show_default=True,
              help="A measurement over the budget is taken again once, one over its limit up to this many times, "
                   "10 s apart, and the lowest counts (a burst of a busy machine is not the network's latency); 0: "
                   "measure once.")
@click.option("--allow-over-budget", is_flag=True, help="Write the bundle even if measured latency is over budget.")
@trust_options("the latency gate (with --profile)")
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--eval-split", type=click.Choice(["holdout", "test"]), default="holdout", show_default=True,
              help="Split of the accuracy check.")
@click.option("--eval-limit", type=int, default=None, help="Check accuracy on the first N images only.")
@click.option("--atol", type=float, default=None,
              help="Numerics: absolute tolerance (fp32 1e-4, fp16 2e-2, int8 none).")
@click.option("--rtol", type=float, default=None,
              help="Numerics: relative tolerance (fp32 1e-3, fp16 2e-2, int8 none).")
@click.option("--min-cosine", type=float, default=None,
              help="Numerics: minimum cosine similarity per image (fp32 0.99999, fp16 0.999, int8 0.5).")
@click.option("--min-mean-cosine", type=float, default=None,
              help="Numerics: minimum mean cosine similarity of the batch (int8 0.99; fp32 and fp16 none).")
@click.option("--min-top1-agreement", type=float, default=None,
              help="Numerics: minimum top-1 agreement (0..1; fp32 0.99, fp16 0.97, int8 0.9).")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Maximum top-1 drop against PyTorch fp32, in points (fp32 0.1, fp16 0.5, int8 0.5).")
@click.option("--no-simplify", is_flag=True, help="Skip the onnxslim simplification.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the numerics check batch and of the int8 calibration images.")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads of the checks.")
@click.option("--name", default=None, help="Triton model name (default: <space>_<arch hash>).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--out", "out", required=True, help="Bundle directory to write.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def export(ckpt: str, arch_spec: str, formats: str, precision: str, int8: Int8Flags, calibration_images: int,
           int8_stages: str | None, batch_range: str, table_path: str | None, budget_ms: float | None,
           latency_tolerance: float, latency_retries: int, allow_over_budget: bool, data_dir: str | None,
           eval_split: str, eval_limit: int | None, atol: float | None, rtol: float | None, min_cosine: float | None,
           min_mean_cosine: float | None, min_top1_agreement: float | None, max_accuracy_drop: float | None,
           no_simplify: bool, opset: int, seed: int, threads: int, name: str | None, force: bool, out: str,
           as_json: bool, no_drift_check: bool, rescale: bool, allow_other_device: bool) -> None:
    """Export one sub-network to ONNX (and TensorRT) with accuracy checks, as a serving bundle."""
    import dataclasses

    from ..archfile import resolve_arch_file
    from ..checkpoint import load_any_checkpoint
    from ..convert.int8 import Int8Settings
    from ..data import open_checkpoint_data
    from ..export.compare import DEFAULT_TOLERANCES
    from ..export.options import BatchRange, ExportOptions, parse_stages
    from ..export.pipeline import check_setup, plan_export, run_export

    start = time.perf_counter()
    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    given = {k: v for k, v in {"atol": atol, "rtol": rtol, "min_cosine": min_cosine, "min_mean_cosine": min_mean_cosine,
                               "min_top1_agreement": min_top1_agreement}.items() if v is not None}
    options = ExportOptions(
        formats=fmts, precision=precision,
        batch_range=BatchRange.parse(batch_range), opset=opset, simplify=not no_simplify, eval_split=eval_split,
        eval_limit=eval_limit, seed=seed,
        tolerances=dataclasses.replace(DEFAULT_TOLERANCES[precision], **given) if given else None,
        max_accuracy_drop=max_accuracy_drop, threads=threads, name=name, force=force, table_path=table_path,
        budget_ms=budget_ms, latency_tolerance=latency_tolerance, latency_retries=latency_retries,
        allow_over_budget=allow_over_budget,
        drift_check=not no_drift_check, rescale=rescale, allow_other_device=allow_other_device,
        int8=int8.settings(_int8_layout(fmts, table_path)) if precision == "int8" else Int8Settings(),
        calibration_images=calibration_images, int8_stages=parse_stages(int8_stages))
    setup = check_setup(out, options)
    checkpoint = load_any_checkpoint(ckpt)
    plan = plan_export(setup, checkpoint, resolve_arch_file(arch_spec, checkpoint.space))
    data = open_checkpoint_data(checkpoint, data_dir)
    arch = plan.arch
    if not as_json:
        click.echo(f"exporting {checkpoint.space.name} arch {arch.hash} ({arch.short()}) from {checkpoint.path.name}",
                   err=True)
    report = run_export(plan, data, progress=not as_json)
    report.timings_s["total"] = round(time.perf_counter() - start, 3)
    if as_json:
        print_json(report.to_dict())
    else:
        print_table(f"checks of {arch.hash} ({precision})", ["artifact", "runtime", "check", "numbers", "limit",
                                                             "result"], check_rows(report.checks))
        for note in report.notes:
            click.echo(f"note: {note}")
        if report.bundle is not None:
            files = report.manifest.files
            size = sum((report.bundle / f).stat().st_size for f in files)
            click.echo(f"bundle written to {report.bundle} ({len(files) + 1} files, {size / 1e6:.2f} MB) in "
                       f"{report.timings_s['total']:.1f} s")
        else:
            click.echo(f"nothing written to {out}: a check failed")
    report.raise_for_failures()


@click.command(cls=Command)
@click.argument("bundle")
@click.option("--data", "data_dir", default=None, help="Data directory (default: Debian's Fashion-MNIST).")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads of the checks.")
@click.option("--atol", type=float, default=None,
              help="Numerics: absolute tolerance (fp32 1e-4, fp16 2e-2, int8 none; never the manifest's own).")
@click.option("--rtol", type=float, default=None,
              help="Numerics: relative tolerance (fp32 1e-3, fp16 2e-2, int8 none; never the manifest's own).")
@click.option("--min-mean-cosine", type=float, default=None,
              help="Numerics: minimum mean cosine similarity of the batch (int8 0.99, fp32 and fp16 none; never the "
                   "manifest's own).")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Maximum top-1 difference from the recorded PyTorch fp32 top-1, in points, either way "
                   "(fp32 0.1, fp16 0.5, int8 0.5; never the manifest's own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def verify(bundle: str, data_dir: str | None, threads: int, atol: float | None, rtol: float | None,
           min_mean_cosine: float | None, max_accuracy_drop: float | None, as_json: bool) -> None:
    """Re-check a bundle: file list and hashes, Triton configurations, then the accuracy checks on this machine,
    against limits given here (or the defaults), not the manifest's."""
    from ..export.verify import verify_bundle

    given = {k: v for k, v in {"atol": atol, "rtol": rtol, "min_mean_cosine": min_mean_cosine}.items()
             if v is not None}
    report = verify_bundle(bundle, data_dir=data_dir, threads=threads, tolerances=given,
                           max_drop=max_accuracy_drop, progress=not as_json)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(f"{bundle}: {report.files} files match the manifest; Triton configurations match the model")
        if report.checks:
            print_table(f"checks of {report.manifest.name} on this machine",
                        ["artifact", "runtime", "check", "numbers", "limit", "result"], check_rows(report.checks))
        for artifact, reason in report.skipped.items():
            click.echo(f"skipped {artifact}: {reason}")
    report.raise_for_failures()


COMMANDS = [export, verify]
