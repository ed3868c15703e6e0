"""``export --precision int8`` end to end on CPU: a real quantized bundle of the shipped demo supernet, checked
against PyTorch fp32, gated on an int8 latency table, verified; a failing check; refusals before any work.

Two exports of one small arch (the second one fails a check, and its report still names the model it built),
so the module stays within about half a minute.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vitres_deploy.cli import main
from vitres_deploy.convert.int8 import Int8Settings, is_quantized
from vitres_deploy.errors import SettingsError
from vitres_deploy.export.bundle import MANIFEST, REFERENCE, read_manifest
from vitres_deploy.export.options import ExportOptions
from vitres_deploy.export.triton import parameters_of, parse_pbtxt, tensors_of
from vitres_deploy.files import sha256_file

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]

#: The export's settings, shared by both exports: the default int8 settings (uint8 activations, 7-bit weights,
#: which do not saturate on x86 CPUs without VNNI). The accuracy check runs on 4,000 hold-out images: on a few
#: hundred one image is a third of a point, and the default 0.5-point limit would rest on one or two images (the
#: smallest sub-network of the shipped supernet loses 0.14 points in int8 on the whole hold-out split, 0.94 on the
#: first 320 images).
ARGS = ("--supernet", "fmnist-demo", "--arch", "min", "--precision", "int8",
        "--calibration-images", "64", "--batch-range", "1:4:16", "--eval-limit", "4000")


def _invoke(*args: object):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def _error_line(result) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _table(tmp_path_factory, fmnist, precision: str, int8: Int8Settings) -> Path:
    """A complete ort-cpu fmnist table of ``precision`` (short protocol, synthetic 1 µs entries)."""
    from vitres_deploy.latency.entries import enumerate_entries
    from vitres_deploy.latency.profiler import ProfileSettings, new_meta
    from vitres_deploy.latency.table import Entry, LatencyTable
    from vitres_deploy.runtime import Protocol, TimingStats, get_backend

    settings = ProfileSettings(precision=precision, int8=int8,
                               protocol=Protocol(warmup_s=0.02, min_iterations=5, min_seconds=0.1))
    stats = TimingStats.from_samples([0.001] * 5, 0.001)
    entries = {s.key: Entry.measured(s, fmnist, [stats], settings.protocol) for s in enumerate_entries(fmnist)}
    table = LatencyTable(fmnist, new_meta(fmnist, settings, get_backend("ort-cpu")), entries, overhead=stats)
    return table.save(tmp_path_factory.mktemp("profiles") / f"fmnist-ort-cpu-{precision}-b1.json")


@pytest.fixture(scope="module")
def int8_table(tmp_path_factory, fmnist) -> Path:
    return _table(tmp_path_factory, fmnist, "int8", Int8Settings())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fmnist_dir, int8_table):
    """The int8 bundle, gated on the int8 table (over its tiny budget, allowed), and the int8 cache it used."""
    root = tmp_path_factory.mktemp("int8-export")
    out = root / "bundle"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VITRES_DEPLOY_CACHE", str(root / "cache"))
        result = _invoke("export", *ARGS, "--profile", int8_table, "--budget-ms", 1e-4, "--no-drift-check",
                         "--allow-over-budget", "--out", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return out, json.loads(result.stdout), root / "cache"


def test_the_bundle_holds_a_quantized_model_that_runs_in_onnxruntime_close_to_pytorch(exported):
    import onnxruntime as ort

    out, report, _ = exported
    model = out / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    assert is_quantized(model) and {"QLinearConv", "QLinearMatMul"} <= ops
    reference = np.load(out / REFERENCE)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = reference["inputs"][:5]  # a batch size no check used
    logits = session.run(None, {"input": x})[0]
    assert logits.dtype == np.float32 and np.isfinite(logits).all()  # fp32 in, fp32 out
    cosine = (logits * reference["logits"][:5]).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(
        reference["logits"][:5], axis=1)
    assert cosine.mean() > 0.99 and not np.allclose(logits, reference["logits"][:5], atol=1e-4)
    assert report["passed"] and report["bundle"] == str(out)


def test_the_manifest_and_the_triton_config_record_the_quantization(exported):
    out, _, _ = exported
    manifest = read_manifest(out).to_dict()
    assert manifest["precision"] == "int8" and manifest["input"]["dtype"] == "float32"
    quantization = manifest["quantization"]
    assert manifest["artifacts"]["model.onnx"]["quantization"] == quantization
    assert quantization["settings"] == Int8Settings().to_dict()
    assert quantization["calibration"]["images"] == 64
    assert quantization["calibration"]["source"] == "fmnist training images (hold-out excluded), seed 0"
    assert {"LayerNormalization", "Softmax"} <= set(quantization["float_ops"]) and quantization["quantized_share"] == 1
    assert manifest["tolerances"] == {"atol": None, "rtol": None, "min_cosine": 0.5, "min_top1_agreement": 0.9,
                                      "min_mean_cosine": 0.99}
    assert manifest["max_accuracy_drop_points"] == 0.5 and "quantize" in manifest["timings_s"]

    config = parse_pbtxt((out / "triton" / manifest["name"] / "config.pbtxt").read_text())
    assert config["platform"] == ["onnxruntime_onnx"]
    assert [(t.name, t.dtype) for t in tensors_of(config, "input")] == [("input", "float32")]
    parameters = parameters_of(config)
    assert parameters["vitres_deploy.precision"] == "int8"
    assert "minmax calibration on 64 fmnist training images" in parameters["vitres_deploy.int8"]
    assert quantization["calibration"]["digest"] in parameters["vitres_deploy.int8"]


def test_int8_is_checked_for_cosine_nan_inf_agreement_and_top1_drop_against_pytorch_fp32(exported):
    out, _, _ = exported
    checks = {(c["artifact"], c["check"], c["values"].get("batch")): c for c in read_manifest(out).to_dict()["checks"]}
    for batch in (16, 1):
        numerics = checks[("onnx", "numerics", batch)]
        assert numerics["status"] == "PASS" and numerics["values"]["nan"] == numerics["values"]["inf"] == 0
        assert numerics["values"]["mean_cosine"] >= 0.99 and "elements out" not in numerics["summary"]
    accuracy = checks[("onnx", "accuracy", None)]
    assert accuracy["values"]["images"] == 4000 and accuracy["values"]["drop_points"] <= 0.5
    assert accuracy["values"]["top1_agreement"] >= 0.9 and "top-1 agree" in accuracy["summary"]


def test_the_latency_gate_times_the_bundled_int8_model_itself(exported, int8_table):
    out, _, cache = exported
    latency = read_manifest(out).latency
    assert latency is not None and latency["precision"] == "int8" and latency["table"] == str(int8_table)
    assert latency["measured_ms"] > 0 and latency["artifact"] == "onnx"
    # nothing but the gate's reference entries (the table's own int8 entries) was quantized for timing
    references = {key.replace("/", "-") for key in latency["references"]}
    quantized = {"-".join(path.name.split("-")[:-3]) for path in cache.glob("int8/*.onnx")}  # key-digests.int8.onnx
    assert quantized == references and len(references) == 4 and latency["machine_ratio"] > 0


def test_verify_rechecks_the_int8_bundle_and_its_triton_parameters(exported, tmp_path):
    out, _, _ = exported
    result = _invoke("verify", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["precision"] == "int8"
    assert {c["limits"].get("min_mean_cosine") for c in report["checks"] if c["check"] == "numerics"} == {0.99}

    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    manifest = read_manifest(copy).to_dict()
    rel = f"triton/{manifest['name']}/config.pbtxt"
    (copy / rel).write_text((copy / rel).read_text().replace("minmax calibration", "entropy calibration"))
    manifest["files"][rel] = sha256_file(copy / rel)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    result = _invoke("verify", copy)
    assert result.exit_code == 1
    assert _error_line(result) == (f"error: {rel}: parameters differ from the manifest's quantization: re-export "
                                   "the bundle")


def test_a_failed_int8_check_names_check_and_amount_leaves_nothing_and_the_model_is_deterministic(exported,
                                                                                                  tmp_path):
    """The same export held to a mean cosine int8 cannot reach: a real check of the real quantized model fails.
    Its report still names the model it built: the same file as the first export's (calibration is seeded)."""
    _, first, _ = exported
    out = tmp_path / "bundle"
    result = _invoke("export", *ARGS, "--min-mean-cosine", 0.99999, "--out", out, "--json")
    assert result.exit_code == 1
    line = _error_line(result)
    assert line.startswith("error: numerics check of onnx on ort-cpu failed: mean cosine similarity 0.99")
    assert line.split("failed: mean cosine similarity ")[1].split()[1:3] == ["below", "0.99999"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]
    report = json.loads(result.stdout)
    assert not report["passed"] and report["bundle"] is None
    digest = first["manifest"]["artifacts"]["model.onnx"]["sha256"]
    assert report["manifest"]["artifacts"]["model.onnx"]["sha256"] == digest
    assert report["manifest"]["quantization"]["calibration"] == first["manifest"]["quantization"]["calibration"]


def test_a_table_of_another_precision_or_other_int8_settings_is_refused_before_any_work(tmp_path_factory, fmnist,
                                                                                      int8_table, tmp_path):
    fp32_table = _table(tmp_path_factory, fmnist, "fp32", Int8Settings())

    def refused(*args: object) -> str:
        result = _invoke("export", "--supernet", "fmnist-demo", "--arch", "min", *args, "--out", tmp_path / "b")
        assert result.exit_code == 2 and not (tmp_path / "b").exists()
        return _error_line(result)

    assert refused("--precision", "int8", "--profile", fp32_table) == (
        f"error: latency table {fp32_table} measures fp32, the export is int8: pass --precision fp32 or a int8 table")
    assert refused("--precision", "fp32", "--profile", int8_table) == (
        f"error: latency table {int8_table} measures int8, the export is fp32: pass --precision int8 or a fp32 table")
    assert refused("--precision", "int8", "--int8-activations", "int8", "--int8-format", "qdq",
                   "--profile", int8_table) == (
        f"error: latency table {int8_table} times int8 models quantized with format qoperator, the export quantizes "
        "with qdq: quantize like the table (--int8-format) or pass a table of these settings")


def test_int8_stages_quantize_those_stages_only_and_the_gate_measures_without_a_prediction(tmp_path_factory,
                                                                                          fmnist_dir, int8_table):
    """Mixed precision: stage 3 (its reduction and the head with it) in int8, stages 1-2 float; checked like any
    int8 export, recorded in the manifest and Triton's parameters, verified; timed by the gate, not predicted."""
    root = tmp_path_factory.mktemp("mixed-export")
    out = root / "bundle"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VITRES_DEPLOY_CACHE", str(root / "cache"))
        result = _invoke("export", *ARGS, "--int8-stages", "3", "--profile", int8_table, "--budget-ms", 1e-4,
                         "--no-drift-check", "--allow-over-budget", "--out", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    manifest = read_manifest(out).to_dict()
    quantization = manifest["quantization"]
    assert quantization["stages"] == [3] and 0 < quantization["quantized_share"] < 1
    model = onnx.load(str(out / "model.onnx"))
    fused = [n for n in model.graph.node if n.op_type.startswith("QLinear")]
    assert fused and len([n for n in model.graph.node if n.op_type in ("MatMul", "Conv", "Gemm")]) > 0
    assert all(n.name in quantization["nodes"] or n.name.endswith("_quant") for n in fused)
    latency = manifest["latency"]
    assert latency["predicted_ms"] is None and latency["prediction_error"] is None and latency["measured_ms"] > 0
    gate = next(c for c in manifest["checks"] if c["check"] == "latency")
    assert "no prediction (mixed precision" in gate["summary"]
    parameters = parameters_of(parse_pbtxt((out / "triton" / manifest["name"] / "config.pbtxt").read_text()))
    assert parameters["vitres_deploy.precision"] == "int8 (mixed)"
    assert "in stage 3, the others float" in parameters["vitres_deploy.int8"]
    assert all(c["status"] == "PASS" for c in manifest["checks"] if c["check"] in ("numerics", "accuracy"))
    assert _invoke("verify", out).exit_code == 0


def test_int8_stages_that_cannot_be_exported_are_refused_before_any_work(tmp_path):
    def refused(*args: object) -> str:
        result = _invoke("export", "--supernet", "fmnist-demo", "--arch", "min", *args, "--out", tmp_path / "b")
        assert result.exit_code == 2 and not (tmp_path / "b").exists()
        return _error_line(result)

    assert refused("--int8-stages", "3") == "error: --int8-stages 3: quantizing some stages needs precision int8"
    assert refused("--precision", "int8", "--int8-stages", "2,4") == (
        "error: --int8-stages 2,4: space 'fmnist' has 3 stages")
    assert refused("--precision", "int8", "--int8-stages", "3,3") == (
        "error: --int8-stages 3,3: give distinct stage numbers from 1")
    assert refused("--precision", "int8", "--int8-stages", "last") == (
        "error: --int8-stages 'last': expected stage numbers from 1, comma-separated, e.g. 3 or 2,3")


def test_int8_settings_that_cannot_be_exported_name_their_flag():
    """An engine is built from the bundle's int8 ONNX: settings TensorRT cannot build from are refused up front."""
    with pytest.raises(SettingsError, match="TensorRT builds int8 engines only from explicit") as e:
        ExportOptions(precision="int8", formats=("onnx", "tensorrt"))  # the ort-cpu layout: fused ops
    assert e.value.field == "int8_format"
    result = _invoke("export", "--supernet", "unused", "--arch", "min", "--out", "unused", "--precision", "int8",
                     "--formats", "onnx,tensorrt", "--int8-activations", "uint8")
    assert result.exit_code == 2 and _error_line(result) == (
        "error: --int8-activations 'uint8': TensorRT builds int8 engines only from signed int8 activations: use "
        "'int8' (the tensorrt layout's default)")


def test_an_arch_file_searched_in_another_precision_plan_gets_a_note_naming_the_flags() -> None:
    """A ``best.json`` of a search of precision per stage records ``int8_stages``: exporting it otherwise says how
    to export what was searched; exporting it as searched says nothing."""
    from vitres_deploy.arch import min_arch
    from vitres_deploy.archfile import ArchFile, SearchedRecord
    from vitres_deploy.export.pipeline import searched_plan_notes
    from vitres_deploy.space import load_space

    arch = min_arch(load_space("fmnist"))
    searched = SearchedRecord(hash=arch.hash, latency_ms=0.7, macs=1, params=1, holdout_top1=0.9, holdout_top5=1.0,
                              holdout_images=6000, holdout_top1_ci95=(0.89, 0.91), within_ci95=0, alpha=0.9,
                              window_ms=(0.6, 0.7), max_macs=None, max_params=None, evaluated=72, table={},
                              supernet={}, precision="int8", int8_stages=[3])
    best = ArchFile.from_dict(json.loads(json.dumps(ArchFile(arch, 0.78, searched).to_dict())))
    assert best.searched.int8_stages == [3] and best.arch == arch
    assert searched_plan_notes(best, ExportOptions()) == (
        "the arch file was searched as int8:3, this export is fp32: --precision int8 --int8-stages 3 exports what was "
        "searched",)
    assert searched_plan_notes(best, ExportOptions(precision="int8")) == (
        "the arch file was searched as int8:3, this export is int8: --precision int8 --int8-stages 3 exports what was "
        "searched",)
    assert searched_plan_notes(best, ExportOptions(precision="int8", int8_stages=(3,))) == ()
    assert searched_plan_notes(ArchFile(arch), ExportOptions()) == ()  # a plain arch file was not searched
