"""The export's small parts on hand-made inputs: comparator, check verdicts, Triton config text, staging."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from vitres_deploy.archfile import resolve_arch_file
from vitres_deploy.cli import main
from vitres_deploy.errors import BackendUnavailable, BundleError, CheckFailed, SettingsError, VitresError
from vitres_deploy.export.artifacts import onnx_runtime_for
from vitres_deploy.export.bundle import BundleCorrupt, check_target, read_manifest, staging, verify_hashes
from vitres_deploy.export.checks import (
    NumericsCheckFailed,
    Top1DropCheckFailed,
    evaluate_split,
    numerics_check,
    raise_for_failures,
    top1_drop_check,
)
from vitres_deploy.export.compare import DEFAULT_TOLERANCES, Tolerances, compare, cosine_per_sample
from vitres_deploy.export.manifest import FORMAT, FORMAT_VERSION, ArtifactRecord
from vitres_deploy.export.options import BatchRange, ExportOptions
from vitres_deploy.export.triton import (
    PbtxtError,
    TensorConfig,
    int8_parameters,
    model_config,
    parameters_of,
    parse_pbtxt,
    tensors_of,
)
from vitres_deploy.files import atomic_write_json

LOOSE = Tolerances(atol=1e-3, rtol=1e-2, min_cosine=0.0, min_top1_agreement=0.0)


def test_element_fails_only_when_both_absolute_and_relative_errors_are_too_large():
    ref = np.array([[1000.0, 0.001, 1.0]])
    # 1000 -> 1000.5: abs 0.5 > atol but rel 5e-4 < rtol -> passes (large values).
    # 0.001 -> 0.0015: rel 0.5 > rtol but abs 5e-4 < atol -> passes (tiny values).
    # 1 -> 1.1: abs 0.1 > atol and rel 0.1 > rtol -> the only failure.
    got = np.array([[1000.5, 0.0015, 1.1]])
    c = compare(ref, got, LOOSE)
    assert c.failed_elements == 1 and not c.passed
    assert c.max_abs == pytest.approx(0.5) and c.max_rel == pytest.approx(0.5)
    assert "1 of 3 elements beyond atol 0.001 and rtol 0.01" in c.failures[0]
    assert compare(ref, np.array([[1000.5, 0.0015, 1.0]]), LOOSE).passed


def test_nan_and_inf_always_fail_and_are_counted():
    ref = np.ones((2, 3))
    got = ref.copy()
    got[0, 1], got[1, 2] = np.nan, np.inf
    c = compare(ref, got, Tolerances(atol=1e9, rtol=1e9, min_cosine=-1, min_top1_agreement=0))
    assert (c.nan, c.inf) == (1, 1) and not c.passed and "1 NaN and 1 Inf values" in c.failures[0]
    assert np.isfinite(c.max_abs)


def test_zero_reference_gives_a_finite_relative_error():
    c = compare(np.zeros((1, 2)), np.array([[0.0, 1e-3]]), Tolerances(1e-2, 1e-2, 0.0, 0.0))
    assert c.passed and np.isfinite(c.max_rel) and c.max_rel > 1e30


def test_cosine_and_top1_agreement():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    got = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(cosine_per_sample(ref, got), [1.0, 0.0, 1.0])
    c = compare(ref, got, Tolerances(atol=10, rtol=10, min_cosine=0.5, min_top1_agreement=0.9))
    assert c.min_cosine == 0.0 and c.top1_agreement == pytest.approx(2 / 3)
    assert [f.split()[0] for f in c.failures] == ["cosine", "top-1"]


def test_int8_has_no_elementwise_rule_and_is_held_to_the_mean_cosine():
    """Every logit moved by a few quantization steps passes; one output turned around fails on the mean cosine
    (and on the per-image floor); a limit that is on alone (atol) is the whole element-wise rule."""
    int8 = DEFAULT_TOLERANCES["int8"]
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((32, 10)) * 4
    moved = ref + rng.uniform(-0.05, 0.05, ref.shape)
    c = compare(ref, moved, int8)
    assert c.passed and c.failed_elements == 0 and c.mean_cosine > 0.999
    turned = moved.copy()
    turned[3] = -turned[3]
    c = compare(ref, turned, int8)
    assert c.failures[0] == f"mean cosine similarity {c.mean_cosine:.6f} below 0.99"
    assert c.failures[1].startswith("cosine similarity -0.99") and c.failed_elements == 0
    nan = moved.copy()
    nan[0, 0] = np.nan
    assert compare(ref, nan, int8).failures[0] == "1 NaN and 0 Inf values"
    c = compare(ref, moved, Tolerances(atol=0.01, rtol=None, min_cosine=0, min_top1_agreement=0))
    assert c.failed_elements > 0 and "elements beyond atol 0.01 (max abs" in c.failures[0]
    summary = numerics_check("onnx", "ort-cpu", ref, moved, int8).summary
    assert "elements out" not in summary and f"(mean {compare(ref, moved, int8).mean_cosine:.6f})" in summary


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)), LOOSE)


def test_numerics_and_accuracy_checks_name_artifact_check_and_amount():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]])
    ok = numerics_check("onnx", "ort-cpu", ref, ref + 1e-6, LOOSE)
    bad = numerics_check("onnx", "ort-cpu", ref, ref * 1.5, LOOSE)
    assert ok.passed and ok.values["batch"] == 2 and "batch 2: max abs" in ok.summary
    assert not bad.passed and "4 of 4 elements" in bad.failure
    with pytest.raises(NumericsCheckFailed, match=r"^numerics check of onnx on ort-cpu failed: 4 of 4") as e:
        raise_for_failures([ok, bad])
    assert isinstance(e.value, CheckFailed) and e.value.exit_code == 1

    drop = top1_drop_check("tensorrt", "tensorrt", "test", 0.90, 0.896, 1000, 0.99, 0.5)
    assert drop.passed and drop.values["drop_points"] == pytest.approx(0.4)
    assert "top-1 89.60% vs PyTorch 90.00%, drop +0.40 points, top-1 agree 99.00%" in drop.summary
    big = top1_drop_check("tensorrt", "tensorrt", "test", 0.90, 0.88, 1000, 0.97, 0.5)
    assert not big.passed
    with pytest.raises(Top1DropCheckFailed, match=r"top-1 dropped 2.00 points .* 1.50 points over the 0.5-point limit"
                       r" \(and 1 more failed check\)"):
        raise_for_failures([ok, big, bad])
    raise_for_failures([ok, drop])  # all passed: no error


def test_accuracy_drop_limit_is_inclusive():
    assert top1_drop_check("onnx", "ort-cpu", "holdout", 0.5, 0.499, 1000, None, 0.1).passed
    assert not top1_drop_check("onnx", "ort-cpu", "holdout", 0.5, 0.4985, 1000, None, 0.1).passed


def test_evaluate_split_counts_agreement_and_draws_a_seeded_sample():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((50, 4)).astype(np.float32)
    ys = rng.integers(0, 4, 50)
    batches = [(xs[i: i + 8], ys[i: i + 8]) for i in range(0, 50, 8)]
    models = {"ref": lambda x: x, "flip": lambda x: -x}
    a = evaluate_split(models, batches, reference="ref", sample_size=6, seed=1)
    b = evaluate_split(models, batches, reference="ref", sample_size=6, seed=1)
    c = evaluate_split(models, batches, reference="ref", sample_size=6, seed=2)
    assert a.images == 50 and a.correct["ref"] == int((xs.argmax(1) == ys).sum())
    assert a.agreement("flip") == pytest.approx((xs.argmax(1) == (-xs).argmax(1)).mean())
    assert a.agreement("ref") is None
    np.testing.assert_array_equal(a.sample_inputs, b.sample_inputs)
    assert not np.array_equal(a.sample_inputs, c.sample_inputs)
    rows = [int(np.flatnonzero((xs == row).all(1))[0]) for row in a.sample_inputs]
    assert rows == sorted(rows) and len(set(rows)) == 6  # distinct images of the split, in split order
    np.testing.assert_array_equal(a.sample_labels, ys[rows])


def test_triton_config_round_trips_through_the_parser():
    text = model_config("m_trt", "tensorrt", 32, (8, 32, 64), [TensorConfig("input", "float32", (3, 224, 224))],
                        [TensorConfig("output", "float32", (1000,))])
    config = parse_pbtxt(text + "# trailing comment\nparameters: { key: \"k\" value: { string_value: \"a b\" } }\n")
    assert config["platform"] == ["tensorrt_plan"] and config["max_batch_size"] == [32]
    assert config["dynamic_batching"][0]["preferred_batch_size"] == [8, 32]  # 64 > max_batch_size is dropped
    assert config["instance_group"][0]["kind"] == ["KIND_GPU"]
    assert tensors_of(config, "input") == [TensorConfig("input", "float32", (3, 224, 224))]
    assert config["parameters"][0]["value"][0]["string_value"] == ["a b"]


def test_an_int8_models_config_states_its_quantization_in_parameters_that_read_back():
    record = {"settings": {"method": "entropy", "format": "qdq", "per_channel": False, "op_types": ["MatMul"],
                           "activations": "uint8", "weights": "int8"},
              "calibration": {"source": 'training images "quoted"', "images": 8, "digest": "abc"}}
    parameters = int8_parameters(record)
    assert parameters["vitres_deploy.precision"] == "int8"
    assert parameters["vitres_deploy.int8"] == ("static qdq, uint8 activations, per-tensor int8 weights of MatMul; "
                                                'entropy calibration on 8 training images "quoted" (sha256 abc)')
    text = model_config("m", "onnx", 8, (8,), [TensorConfig("input", "float32", (1, 28, 28))],
                        [TensorConfig("output", "float32", (10,))], parameters=parameters)
    config = parse_pbtxt(text)
    assert parameters_of(config) == parameters and tensors_of(config, "input")[0].dtype == "float32"
    assert int8_parameters(None) == {} and parameters_of(parse_pbtxt(model_config(
        "m", "onnx", 8, (8,), [], []))) == {}


@pytest.mark.parametrize("bad", ['name: "x" {', "input [ { name: } ]", "max_batch_size: 4 }", '"x": 3'])
def test_malformed_pbtxt_is_a_pbtxt_error(bad):
    with pytest.raises(PbtxtError):
        parse_pbtxt(bad)


@pytest.mark.parametrize(("text", "ok"), [("1:8:32", True), ("4:4:4", True), ("8:4:32", False), ("0:1:2", False),
                                          ("1:8", False), ("a:b:c", False)])
def test_batch_range_parsing(text, ok):
    if ok:
        assert str(BatchRange.parse(text)) == text
    else:
        with pytest.raises(VitresError, match="batch_range"):
            BatchRange.parse(text)


def _files_of(bundle) -> dict[str, str]:
    return json.loads((bundle / "manifest.json").read_text())["files"]


def _bundle_in(stage_dir, payload: bytes) -> None:
    (stage_dir / "model.onnx").write_bytes(payload)
    atomic_write_json(stage_dir / "manifest.json", {"format": "vitres-deploy/bundle", "format_version": 1,
                                                    "files": {"model.onnx": hashlib.sha256(payload).hexdigest()}})


def test_staging_commits_atomically_and_cleans_up_failures(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError), staging(target) as stage:
        _bundle_in(stage.path, b"first")
        raise RuntimeError("export failed half way")
    assert not target.exists() and list(tmp_path.iterdir()) == []

    with staging(target) as stage:
        _bundle_in(stage.path, b"first")
        stage.commit()
    verify_hashes(target, _files_of(target))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700

    with staging(target, force=True) as stage:  # not committed (a check failed): the old bundle stays
        _bundle_in(stage.path, b"second")
    assert (target / "model.onnx").read_bytes() == b"first"

    with pytest.raises(VitresError, match="already exists: pass force"), staging(target):
        pass
    with staging(target, force=True) as stage:
        _bundle_in(stage.path, b"second")
        stage.commit()
    assert (target / "model.onnx").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]

    (target / "model.onnx").write_bytes(b"secomd")
    with pytest.raises(BundleCorrupt, match=r"model\.onnx: sha256"):
        verify_hashes(target, _files_of(target))


# ---------------------------------------------------------------- errors name fields, the CLI names flags


@pytest.mark.parametrize(("setting", "field", "flag", "value"), [
    ({"opset": 17}, "opset", "--opset", "17"),
    ({"threads": 0}, "threads", "--threads", "0"),
    ({"name": "a b"}, "name", "--name", "a b"),
    ({"latency_tolerance": -0.5}, "latency_tolerance", "--latency-tolerance", "-0.5"),
    ({"formats": ("onnx", "tflite")}, "formats", "--formats", "onnx,tflite"),
    ({"calibration_images": 0}, "calibration_images", "--calibration-images", "0"),
])
def test_bad_export_setting_names_its_field_in_python_and_its_flag_on_the_command_line(setting, field, flag, value):
    with pytest.raises(SettingsError) as e:
        ExportOptions(**setting)
    assert e.value.field == field and str(e.value).startswith(field)

    result = CliRunner().invoke(main, ["export", "--supernet", "unused.safetensors", "--arch", "max",
                                       "--out", "unused", flag, value])
    assert result.exit_code == 2  # refused before the checkpoint is read
    assert result.stderr.splitlines() == [f"error: {flag}{str(e.value)[len(field):]}"]


def test_an_engine_with_a_minimum_batch_above_1_is_refused_as_triton_sends_smaller_batches():
    ExportOptions(formats=("onnx",), batch_range=BatchRange(2, 4, 8))  # ONNX Runtime takes any batch
    with pytest.raises(SettingsError, match=r"^batch_range 2:4:8: Triton's dynamic batcher") as e:
        ExportOptions(formats=("onnx", "tensorrt"), batch_range=BatchRange(2, 4, 8))
    assert e.value.field == "batch_range"
    result = CliRunner().invoke(main, ["export", "--supernet", "unused", "--arch", "max", "--out", "unused",
                                       "--formats", "onnx,tensorrt", "--batch-range", "2:4:8"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: --batch-range{str(e.value)[len('batch_range'):]}"]


def test_bad_batch_range_names_the_field_and_the_flag():
    with pytest.raises(SettingsError, match=r"^batch_range '1:8': expected MIN:OPT:MAX") as e:
        BatchRange.parse("1:8")
    assert e.value.field == "batch_range"
    result = CliRunner().invoke(main, ["export", "--supernet", "unused", "--arch", "max", "--out", "unused",
                                       "--batch-range", "1:8"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --batch-range '1:8': expected MIN:OPT:MAX, e.g. 1:8:32"]


def test_target_errors_name_out_and_force(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SettingsError, match=r"^out .* is an existing file") as e:
        check_target(a_file, force=True)
    assert e.value.field == "out"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_text("x")
    with pytest.raises(SettingsError, match=r"already exists: pass force to replace it") as e:
        check_target(bundle, force=False)
    assert e.value.field == "force"
    check_target(bundle, force=True)  # replacing is allowed with force


def test_target_and_backends_are_checked_before_the_checkpoint_is_read(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    missing = tmp_path / "missing.safetensors"  # reading it would be an error of its own

    def error(*args: str) -> list[str]:
        result = CliRunner().invoke(main, ["export", "--supernet", str(missing), "--arch", "max", *args])
        assert result.exit_code == 2
        return result.stderr.splitlines()

    assert error("--out", str(a_file)) == [f"error: --out {a_file} is an existing file: choose a directory path "
                                           "for the bundle"]
    try:
        onnx_runtime_for("fp16")
    except BackendUnavailable as e:  # no GPU build of ONNX Runtime here
        assert error("--out", str(tmp_path / "b"), "--precision", "fp16") == [f"error: {e}"]


def test_verify_of_a_missing_bundle_is_one_bundle_error_line(tmp_path):
    with pytest.raises(BundleError) as e:
        read_manifest(tmp_path / "nowhere")
    assert not isinstance(e.value, CheckFailed)
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: bundle {tmp_path / 'nowhere'} is not a directory: pass the "
                                          "directory an export wrote"]


def test_manifest_of_another_format_version_is_a_bundle_error_and_a_damaged_one_is_corrupt(tmp_path):
    envelope = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {"model.onnx": "0" * 64}}
    (tmp_path / "manifest.json").write_text(json.dumps({**envelope, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(BundleError, match=f"bundle format version {FORMAT_VERSION + 1}, this vitres-deploy reads"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(envelope))  # the envelope only: every other key missing
    with pytest.raises(BundleCorrupt, match=r"manifest.json lacks or garbles 'name': the manifest is corrupt"):
        read_manifest(tmp_path)
    assert BundleCorrupt.exit_code == 1 and issubclass(BundleCorrupt, BundleError)


def test_an_arch_file_brings_its_budget_and_a_generated_arch_none(tmp_path, fmnist):
    from vitres_deploy.arch import max_arch

    path = tmp_path / "best.json"
    path.write_text(json.dumps({**max_arch(fmnist).to_dict(), "budget_ms": 0.25}))
    chosen = resolve_arch_file(path, fmnist)
    assert chosen.arch == max_arch(fmnist) and chosen.budget_ms == 0.25
    assert resolve_arch_file("max", fmnist).budget_ms is None


def test_an_engine_record_reads_back_to_the_same_keys_in_the_same_order():
    engine = {"format": "tensorrt", "precision": "fp16", "checked_on": "tensorrt", "tensorrt": "10.9.0",
              "device": "NVIDIA H200", "profile": {"min": 1, "opt": 8, "max": 32}, "fp16_via": "BuilderFlag.FP16",
              "tf32": None, "sha256": "ab" * 32, "bytes": 1234}
    record = ArtifactRecord.from_dict(engine)
    assert record.details == {k: engine[k] for k in ("tensorrt", "device", "profile", "fp16_via", "tf32")}
    assert list(record.to_dict().items()) == list(engine.items())


def test_the_next_export_removes_what_a_killed_one_left(tmp_path):
    """Staging, replaced and scratch folders of a killed export (beside the target, never in the system temp
    folder) are removed by the next export to that target, once it holds the target's lock."""
    target = tmp_path / "bundle"
    stale = [tmp_path / ".bundle.tmp-abc", tmp_path / ".bundle.old-def", tmp_path / ".bundle.work-ghi"]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.onnx").write_bytes(b"x" * 10)
    other = tmp_path / ".other.tmp-abc"
    other.mkdir()
    with staging(target) as stage:
        assert not any(p.exists() for p in stale) and other.is_dir()
        (stage.path / "manifest.json").write_text("{}")
        stage.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-abc", "bundle"]
