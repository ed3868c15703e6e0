"""Static int8: quantization of ONNX files (deterministic, recorded), int8 runners and tables on ort-cpu, refusals.

Every quantized file runs in a real ONNX Runtime CPU session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vitres_deploy.cli import main
from vitres_deploy.convert.int8 import Int8Settings, is_quantized, quantize_onnx, quantized_share
from vitres_deploy.errors import BackendUnavailable, SettingsError
from vitres_deploy.files import sha256_file
from vitres_deploy.latency import ProfileSettings
from vitres_deploy.runtime import ModuleLoader, OnnxFile, Protocol, RunnerOptions, get_backend, random_inputs
from vitres_deploy.runtime.cache import int8_onnx
from vitres_deploy.vit_resnas import Block

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.mark.parametrize("fmt,ops", [("qoperator", {"QLinearMatMul"}), ("qdq", {"QuantizeLinear", "DequantizeLinear"})])
def test_quantized_block_runs_close_to_fp32_and_is_recorded(block: Block, block_onnx: Path, tmp_path: Path,
                                                            fmt: str, ops: set[str]) -> None:
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((32, 50, 64)).astype(np.float32)
    record = quantize_onnx(block_onnx, tmp_path / "q.onnx", calibration, Int8Settings(format=fmt))
    graph_ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert ops <= graph_ops and is_quantized(tmp_path / "q.onnx") and not is_quantized(block_onnx)
    assert quantized_share(tmp_path / "q.onnx") == 1.0 and quantized_share(block_onnx) == 0.0
    assert {"LayerNormalization", "Softmax"} <= set(record["float_ops"]) and "MatMul" not in record["float_ops"]
    assert record["settings"]["format"] == fmt and record["calibration"]["images"] == 32
    x = rng.standard_normal((4, 50, 64)).astype(np.float32)  # new inputs from the calibration's distribution
    int8, fp32 = _run(tmp_path / "q.onnx", x), _run(block_onnx, x)
    assert _cosine(int8, fp32) > 0.99
    assert not np.allclose(int8, fp32, atol=1e-4)  # the model did change


def test_quantization_is_deterministic_and_the_calibration_matters(block_onnx: Path, tmp_path: Path) -> None:
    calibration = np.random.default_rng(2).standard_normal((16, 50, 64)).astype(np.float32)
    a = quantize_onnx(block_onnx, tmp_path / "a.onnx", calibration)
    b = quantize_onnx(block_onnx, tmp_path / "b.onnx", calibration)
    assert sha256_file(tmp_path / "a.onnx") == sha256_file(tmp_path / "b.onnx") and a == b
    c = quantize_onnx(block_onnx, tmp_path / "c.onnx", calibration * 3)
    assert c["calibration"]["digest"] != a["calibration"]["digest"]
    assert sha256_file(tmp_path / "c.onnx") != sha256_file(tmp_path / "a.onnx")
    for method in ("entropy", "percentile"):
        record = quantize_onnx(block_onnx, tmp_path / f"{method}.onnx", calibration, Int8Settings(method=method))
        assert record["settings"]["method"] == method and is_quantized(tmp_path / f"{method}.onnx")


def test_ort_cpu_runs_int8_from_an_fp32_file_or_a_quantized_one(block_onnx: Path, tmp_path: Path) -> None:
    options = RunnerOptions(batch=2, precision="int8", cache_dir=tmp_path,
                            extra={"int8": Int8Settings(format="qoperator")})
    with get_backend("ort-cpu").runner(OnnxFile(block_onnx), options) as runner:
        out = runner.infer(random_inputs(runner.input_specs, seed=0))["output"]
        quantized_file = tmp_path / "int8" / runner.info()["model_file"]
    assert out.shape == (2, 50, 64) and np.isfinite(out).all()
    assert is_quantized(quantized_file)
    assert int8_onnx(block_onnx, Int8Settings(format="qoperator"), tmp_path) == quantized_file  # cached
    assert int8_onnx(quantized_file, Int8Settings(), tmp_path) == quantized_file  # quantized already: as it is
    with get_backend("ort-cpu").runner(OnnxFile(quantized_file), options) as runner:
        assert runner.info()["model_file"] == quantized_file.name


def test_int8_is_refused_where_it_cannot_run(block: Block, block_onnx: Path) -> None:
    for name in ("torch-cpu", "ort-cuda", "tensorrt"):
        backend = get_backend(name)
        if backend.unavailable_reason() is None or name == "torch-cpu":
            source = ModuleLoader.of(block, (50, 64)) if backend.source == "module" else OnnxFile(block_onnx)
            with pytest.raises(BackendUnavailable, match=f"backend {name} supports .*, not int8"):
                backend.runner(source, RunnerOptions(precision="int8"))
    result = CliRunner().invoke(main, ["profile", "--space", "fmnist", "--backend", "torch-cpu", "--precision", "int8",
                                       "--out", "unused.json"])
    assert result.exit_code != 0 and result.stderr.splitlines() == [
        "error: backend torch-cpu supports fp32, not int8"]


def test_bad_int8_settings_name_their_flag() -> None:
    with pytest.raises(SettingsError, match="int8_method 'mse'"):
        Int8Settings(method="mse")
    with pytest.raises(SettingsError, match="int8_ops: name at least one"):
        Int8Settings(op_types=())
    assert Int8Settings.from_dict(Int8Settings(format="qdq").to_dict()) == Int8Settings(format="qdq")
    result = CliRunner().invoke(main, ["profile", "--space", "fmnist", "--backend", "ort-cpu", "--precision", "int8",
                                       "--int8-ops", " , ", "--out", "unused.json"])
    assert result.exit_code != 0 and result.stderr.splitlines() == [
        "error: --int8-ops: name at least one op type to quantize"]


def test_an_int8_table_records_its_quantization_and_is_timed_on_int8_models(mini, tmp_path: Path) -> None:
    from vitres_deploy.latency import LatencyTable, profile_space

    quick = Protocol(warmup_s=0.0, min_iterations=3, min_seconds=0.0, rounds=1, min_rounds=1)
    settings = ProfileSettings(backend="ort-cpu", precision="int8", protocol=quick, workers=1, cache_dir=tmp_path,
                               int8=Int8Settings(format="qdq"))
    table = profile_space(mini, settings, tmp_path / "t.json", progress=False)
    meta = json.loads((tmp_path / "t.json").read_text())["meta"]
    assert meta["precision"] == "int8" and meta["options"]["int8"]["format"] == "qdq"
    assert "seeded" in meta["options"]["int8"]["calibration"]
    assert ProfileSettings.from_table(LatencyTable.load(tmp_path / "t.json")).int8 == settings.int8
    quantized = list((tmp_path / "int8").glob("*.int8.onnx"))
    assert len(quantized) == len(table.entries) + 1  # each block, and the overhead's empty model
    assert sum(map(is_quantized, quantized)) == len(table.entries)
