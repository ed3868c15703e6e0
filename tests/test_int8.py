"""Static int8: quantization of ONNX files (deterministic, recorded), int8 runners and tables on ort-cpu, refusals.

Every quantized file runs in a real ONNX Runtime CPU session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vitres_deploy.arch import max_arch
from vitres_deploy.cli import main
from vitres_deploy.convert.int8 import Int8Settings, is_quantized, quantize_onnx, quantized_share, stage_nodes
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.errors import BackendUnavailable, ConversionError, SettingsError
from vitres_deploy.files import sha256_file
from vitres_deploy.latency import ProfileSettings
from vitres_deploy.latency.entries import network_sample_shape
from vitres_deploy.runtime import ModuleLoader, OnnxFile, Protocol, RunnerOptions, get_backend, random_inputs
from vitres_deploy.runtime.cache import int8_onnx
from vitres_deploy.runtime.ort import OrtCpuRunner, OrtCudaRunner, OrtTrtRunner
from vitres_deploy.runtime.registry import BACKENDS
from vitres_deploy.space import load_space
from vitres_deploy.vit_resnas import Block, vit_resnas

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


def test_some_stages_of_a_network_quantize_alone_and_the_rest_stays_float(tmp_path: Path) -> None:
    """Mixed precision: the nodes of stage 3 (with its reduction and the head) quantized, stages 1-2 float."""
    space = load_space("fmnist")
    arch = max_arch(space)
    torch.manual_seed(0)
    path = export_onnx(vit_resnas(arch, space).eval(), network_sample_shape(space), tmp_path / "net.onnx")
    compute = {n.name: n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMul", "Conv", "Gemm")}
    stage3 = stage_nodes(path, {2}, 3)
    first_two = stage_nodes(path, {0, 1}, 3)
    assert not set(stage3) & set(first_two) and set(compute) <= set(stage3) | set(first_two)
    assert {compute[n] for n in stage3 if n in compute} == {"MatMul", "Conv", "Gemm"}  # reduction conv, head gemm
    x = np.random.default_rng(3).standard_normal((8, *network_sample_shape(space))).astype(np.float32)
    record = quantize_onnx(path, tmp_path / "mixed.onnx", x, nodes=stage3)
    whole = quantize_onnx(path, tmp_path / "int8.onnx", x)
    share = quantized_share(tmp_path / "mixed.onnx")
    assert share == pytest.approx(sum(n in compute for n in stage3) / len(compute)) and quantized_share(
        tmp_path / "int8.onnx") == 1.0
    assert record["nodes"] == sorted(stage3) and "nodes" not in whole
    fp32, mixed, int8 = _run(path, x), _run(tmp_path / "mixed.onnx", x), _run(tmp_path / "int8.onnx", x)
    assert not np.allclose(mixed, fp32, atol=1e-5)  # the model did change, less than quantized as a whole
    assert _cosine(int8, fp32) < _cosine(mixed, fp32) and _cosine(mixed, fp32) > 0.9
    quantize_onnx(path, tmp_path / "none.onnx", x, nodes=[])  # no node chosen: the model as it is, not all of it
    assert quantized_share(tmp_path / "none.onnx") == 0.0
    bare = onnx.load(str(path))
    for node in bare.graph.node:
        del node.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ConversionError, match="no module scopes"):
        stage_nodes(tmp_path / "bare.onnx", {2}, 3)


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
    for name in ("torch-cpu", "ort-cuda"):  # on any machine: a precision never run is refused before availability
        backend = get_backend(name)
        source = ModuleLoader.of(block, (50, 64)) if backend.source == "module" else OnnxFile(block_onnx)
        with pytest.raises(BackendUnavailable, match=f"backend {name} supports .*, not int8"):
            backend.runner(source, RunnerOptions(precision="int8"))
    result = CliRunner().invoke(main, ["profile", "--space", "fmnist", "--backend", "torch-cpu", "--precision", "int8",
                                       "--out", "unused.json"])
    assert result.exit_code != 0 and result.stderr.splitlines() == [
        "error: backend torch-cpu supports fp32, not int8"]


def test_ort_cuda_refuses_int8_naming_the_backends_that_run_it() -> None:
    result = CliRunner().invoke(main, ["profile", "--space", "fmnist", "--backend", "ort-cuda", "--precision", "int8",
                                       "--out", "unused.json"])
    assert result.exit_code != 0 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: backend ort-cuda supports fp32/fp16, not int8: ONNX Runtime's CUDA "
                                    "provider has no int8 MatMul or Conv kernels")
    assert result.stderr.rstrip().endswith("int8 runs on ort-cpu, ort-trt and tensorrt")
    int8_backends = sorted(name for name, b in BACKENDS.items() if "int8" in b.precisions)
    assert int8_backends == ["ort-cpu", "ort-trt", "tensorrt"]
    # the layout each int8 backend quantizes in, as the registry and the runners say it
    assert {name: BACKENDS[name].int8_layout for name in int8_backends} == {
        "ort-cpu": OrtCpuRunner.int8_layout, "ort-trt": OrtTrtRunner.int8_layout, "tensorrt": "tensorrt"}
    assert OrtTrtRunner.int8_layout == "tensorrt" and OrtCudaRunner.int8_layout is None


def _small_conv_net(path: Path) -> Path:
    """A Conv (with bias) -> Flatten -> Linear (with bias, a Gemm) network on 1x16x16 images, exported to ``path``."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 4, stride=4), torch.nn.Flatten(1), torch.nn.Linear(128, 10))
    return export_onnx(net.eval(), (1, 16, 16), path)


@pytest.mark.parametrize("net", ["block", "conv"])
def test_the_tensorrt_layout_is_symmetric_int8_qdq_with_float_biases(block_onnx: Path, tmp_path: Path,
                                                                     net: str) -> None:
    from onnx import TensorProto, numpy_helper

    src = block_onnx if net == "block" else _small_conv_net(tmp_path / "conv.onnx")
    shape = (50, 64) if net == "block" else (1, 16, 16)
    rng = np.random.default_rng(3)
    settings = Int8Settings.for_layout("tensorrt")
    assert (settings.format, settings.activations, settings.weights, settings.symmetric, settings.reduce_range,
            settings.float_bias, settings.per_channel) == ("qdq", "int8", "int8", True, False, True, True)
    record = quantize_onnx(src, tmp_path / "trt.onnx", rng.standard_normal((16, *shape)).astype(np.float32), settings)
    assert record["settings"] == settings.to_dict() and Int8Settings.from_dict(record["settings"]) == settings
    graph = onnx.load(str(tmp_path / "trt.onnx")).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and not {n.op_type for n in graph.node} & {"QLinearMatMul", "QLinearConv", "QGemm", "MatMulInteger"}
    for node in qdq:  # every zero point: int8 and 0 (TensorRT's symmetric scheme)
        zero_point = consts[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    dequantized_consts = [consts[n.input[0]] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert dequantized_consts and all(w.dtype == np.int8 for w in dequantized_consts)  # no int32 bias behind a DQ
    assert all(w.min() >= -127 for w in dequantized_consts)  # symmetric weights: [-127, 127]
    per_channel = [n for n in qdq if n.op_type == "DequantizeLinear" and consts[n.input[1]].size > 1]
    assert per_channel  # per-channel weight scales
    compute = [n for n in graph.node if n.op_type in settings.op_types]
    dequantized = {o for n in qdq if n.op_type == "DequantizeLinear" for o in n.output}
    assert all(any(i in dequantized for i in n.input) for n in compute)
    if net == "conv":  # Conv and Gemm keep their float bias as it was
        for n in compute:
            assert consts[n.input[2]].dtype == np.float32
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert set(inputs.values()) == {TensorProto.FLOAT}  # fp32 in, fp32 out
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    int8, fp32 = _run(tmp_path / "trt.onnx", x), _run(src, x)  # a real ONNX Runtime CPU session
    # close to fp32 (the untrained 10-logit conv net has fewer values to average its rounding over: 0.98)
    assert _cosine(int8, fp32) > (0.99 if net == "block" else 0.97) and not np.allclose(int8, fp32, atol=1e-4)


def test_settings_tensorrt_cannot_run_are_refused_in_one_line_naming_their_flag(tmp_path: Path) -> None:
    assert Int8Settings.for_layout("ort-cpu") == Int8Settings()  # the defaults are the ort-cpu layout
    Int8Settings().check_layout("ort-cpu")
    cases = {"int8_format": {"format": "qoperator"}, "int8_activations": {"activations": "uint8"},
             "int8_symmetric": {"symmetric": False}, "int8_float_bias": {"float_bias": False}}
    for field, given in cases.items():
        with pytest.raises(SettingsError, match=f"^{field} .*: TensorRT builds int8 engines only from") as caught:
            Int8Settings.for_layout("tensorrt", **given)
        assert caught.value.field == field and "\n" not in str(caught.value)
    with pytest.raises(SettingsError, match="int8 layout 'gpu'"):
        Int8Settings.for_layout("gpu")
    kept = Int8Settings.for_layout("tensorrt", method="entropy", per_channel=False, reduce_range=True)
    assert (kept.method, kept.per_channel, kept.reduce_range, kept.format) == ("entropy", False, True, "qdq")
    for args, flag in ((["--int8-format", "qoperator"], "--int8-format 'qoperator'"),
                       (["--int8-activations", "uint8"], "--int8-activations 'uint8'"),
                       (["--int8-asymmetric"], "--int8-symmetric False")):
        result = CliRunner().invoke(main, ["profile", "--space", "fmnist", "--backend", "tensorrt", "--precision",
                                           "int8", *args, "--out", str(tmp_path / "unused.json")])
        assert result.exit_code != 0 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: {flag}: TensorRT builds int8 engines only from"), result.stderr
    assert not (tmp_path / "unused.json").exists()


def test_int8_exports_with_a_tensorrt_engine_take_the_tensorrt_layout() -> None:
    from vitres_deploy.cli.export import _int8_layout
    from vitres_deploy.export.options import ExportOptions

    trt = Int8Settings.for_layout("tensorrt")
    assert ExportOptions(formats=("onnx", "tensorrt"), precision="int8", int8=trt).int8 == trt
    with pytest.raises(SettingsError, match=r"^int8_format 'qoperator': TensorRT builds int8 engines only from"):
        ExportOptions(formats=("onnx", "tensorrt"), precision="int8")  # the ort-cpu defaults
    ExportOptions(formats=("onnx", "tensorrt"), precision="fp16")  # int8 settings matter for int8 only
    assert _int8_layout(("onnx", "tensorrt"), None) == "tensorrt" and _int8_layout(("onnx",), None) == "ort-cpu"


def test_the_gate_needs_a_table_quantized_in_the_exports_layout() -> None:
    from vitres_deploy.errors import ProfileError
    from vitres_deploy.latency.quantization import check_int8_settings

    trt = Int8Settings.for_layout("tensorrt")
    check_int8_settings("t.json", trt, Int8Settings.for_layout("tensorrt", method="entropy"))  # scales only
    with pytest.raises(ProfileError, match="quantized with format qdq, the export quantizes with qoperator") as caught:
        check_int8_settings("t.json", trt, Int8Settings())
    assert caught.value.field == "int8_format"
    with pytest.raises(ProfileError, match="with symmetric True, the export quantizes with False"):
        check_int8_settings("t.json", trt, Int8Settings(format="qdq", activations="int8", float_bias=True))


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
