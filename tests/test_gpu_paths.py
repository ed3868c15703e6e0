"""What the GPU paths are set up with, tested where it is decided: pure functions that build provider options,
environments, schedules and version readings, and real CPU sessions. The GPU runs themselves are marked."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vitres_deploy.convert.fp16 import convert_to_fp16
from vitres_deploy.convert.int8 import Int8Settings, is_quantized
from vitres_deploy.errors import BackendUnavailable, CheckFailed, Fp16ConversionError, SettingsError
from vitres_deploy.export.latency_gate import timed_engine_profile
from vitres_deploy.latency.profiler import new_meta, note_node_share, run_builds
from vitres_deploy.latency.table import LatencyTable
from vitres_deploy.latency.timing import ProfileSettings, measure_source
from vitres_deploy.runtime import OnnxFile, Protocol, RunnerOptions, get_backend
from vitres_deploy.runtime.ort import (
    DISABLE_QDQ_FUSION,
    INT8_VIA,
    TF32_OVERRIDE,
    OrtCudaRunner,
    OrtTrtRunner,
    cuda_provider_options,
    nodes_by_provider,
    overflowing_nodes,
    tensor_peaks,
    tensorrt_environment,
    tensorrt_provider_options,
)
from vitres_deploy.runtime.registry import BACKENDS, cuda_reason, tensorrt_runtime_reason
from vitres_deploy.runtime.tensorrt import (
    EngineFromOnnx,
    cuda_device_name,
    engine_key,
    engine_profile,
    precision_record,
    typed_model,
)
from vitres_deploy.runtime.versions import nvinfer_loadable, nvinfer_major, ort_tensorrt_major

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _two_node_onnx(path: Path) -> Path:
    nodes = [helper.make_node("Relu", ["input"], ["hidden"], name="relu"),
             helper.make_node("Softmax", ["hidden"], ["output"], name="softmax")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


# ------------------------------------------------------------------------------- TF32 (item 1)


def test_the_cuda_provider_runs_fp32_without_tf32() -> None:
    fp32 = cuda_provider_options(1, 1234, "fp32")
    assert fp32 == {"device_id": "1", "user_compute_stream": "1234", "use_tf32": "0"}
    assert "use_tf32" not in cuda_provider_options(0, 1, "fp16")


def test_tensorrt_gets_tf32_off_from_the_environment_for_fp32_only(tmp_path: Path) -> None:
    assert tensorrt_environment("fp32") == {"NVIDIA_TF32_OVERRIDE": "0"}
    assert tensorrt_environment("fp16") == {}
    trt = tensorrt_provider_options(0, 7, engines=tmp_path, shapes="input:2x3", workspace_mb=64)
    assert trt["trt_fp16_enable"] == "False" and trt["trt_max_workspace_size"] == str(64 << 20)
    assert {trt[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")} == {"input:2x3"}
    assert not any("tf32" in k for k in trt)  # the provider has no TF32 option: the environment does it


def test_the_gpu_runners_hand_their_providers_these_options(tmp_path: Path) -> None:
    model = _two_node_onnx(tmp_path / "two.onnx")
    options = RunnerOptions(batch=2, cache_dir=tmp_path)
    stream = SimpleNamespace(cuda_stream=7)  # what a torch.cuda.Stream gives ONNX Runtime
    cuda = ("CUDAExecutionProvider", {"device_id": "0", "user_compute_stream": "7", "use_tf32": "0"})
    trt_runner = OrtTrtRunner(OnnxFile(model), options)
    trt_runner.stream = stream
    assert trt_runner._providers(model) == [
        ("TensorrtExecutionProvider", tensorrt_provider_options(0, 7, engines=tmp_path / "ort-trt",
                                                                shapes="input:2x3", workspace_mb=4096)), cuda]
    assert (tmp_path / "ort-trt").is_dir()
    cuda_runner = OrtCudaRunner(OnnxFile(model), options)
    cuda_runner.stream = stream
    assert cuda_runner._providers(model) == [cuda]


def test_tf32_cannot_be_turned_off_once_a_tensorrt_session_ran_with_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model = OnnxFile(_two_node_onnx(tmp_path / "two.onnx"))
    monkeypatch.setenv(TF32_OVERRIDE, "unset")  # undone at the end: the variable comes back as it was
    monkeypatch.delenv(TF32_OVERRIDE)
    monkeypatch.setattr(OrtTrtRunner, "_process_tf32", None)  # no TensorRT session in this process yet
    OrtTrtRunner(model, RunnerOptions(precision="fp16"))._prepare_process()  # fp16 first: TF32 left on
    assert TF32_OVERRIDE not in os.environ
    with pytest.raises(BackendUnavailable, match="TF32 cannot be turned off after this process ran TensorRT"):
        OrtTrtRunner(model, RunnerOptions())._prepare_process()

    monkeypatch.setattr(OrtTrtRunner, "_process_tf32", None)
    OrtTrtRunner(model, RunnerOptions())._prepare_process()  # fp32 first: off for the process
    assert os.environ[TF32_OVERRIDE] == "0"
    OrtTrtRunner(model, RunnerOptions(precision="fp16"))._prepare_process()  # fp16 does not care
    OrtTrtRunner(model, RunnerOptions())._prepare_process()


# ------------------------------------------------------ the engine the latency gate times (item 2)


def test_the_gate_times_an_engine_tuned_for_the_tables_batch(tmp_path: Path, mini) -> None:
    assert engine_profile(RunnerOptions(batch=4)) == (4, 4, 4)
    meta = replace(new_meta(mini, ProfileSettings(batch=4), get_backend("ort-cpu")), backend="tensorrt")
    table = LatencyTable(mini, meta)
    model = OnnxFile(_two_node_onnx(tmp_path / "two.onnx"))
    runner = BACKENDS["tensorrt"]._make(model, ProfileSettings.from_table(table).runner_options())
    assert isinstance(runner.engine_loader, EngineFromOnnx)  # built from the ONNX, not the bundle's model.plan
    assert runner.engine_loader.options.batch == 4 and runner.engine_loader.model == model
    assert timed_engine_profile(table) == {"min": 4, "opt": 4, "max": 4}  # what the manifest records
    assert timed_engine_profile(LatencyTable(mini, replace(meta, backend="ort-cpu"))) is None


# --------------------------------------------------------------- the TensorRT of ort-trt (item 4)


def test_the_tensorrt_a_provider_library_links_is_read_from_its_dependencies() -> None:
    assert nvinfer_major(b"\x00libcudart.so.12\x00libnvinfer.so.10\x00libnvonnxparser.so.10\x00") == 10
    assert nvinfer_major(b"\x00libnvinfer_plugin.so.11\x00libnvinfer.so.11\x00") == 11
    assert nvinfer_major(b"KERNEL32.dll\x00nvinfer_10.dll\x00") == 10
    assert nvinfer_major(b"\x00libcudart.so.12\x00") is None


def test_the_tensorrt_of_ort_trt_is_read_from_the_provider_library_in_a_capi_folder(tmp_path: Path) -> None:
    assert ort_tensorrt_major(tmp_path) is None  # no provider library
    library = tmp_path / "libonnxruntime_providers_tensorrt.so"
    library.write_bytes(b"\x7fELF\x00libcudart.so.12\x00libnvinfer.so.11\x00libnvonnxparser.so.11\x00")
    assert ort_tensorrt_major(tmp_path) == 11
    library.write_bytes(b"\x7fELF\x00libcudart.so.12\x00")
    assert ort_tensorrt_major(tmp_path) is None  # a provider library that names no libnvinfer


def test_ort_trt_fp16_runs_the_strongly_typed_fp16_onnx_without_trt_fp16_enable(tmp_path: Path) -> None:
    model = _two_node_onnx(tmp_path / "two.onnx")
    runner = OrtTrtRunner(OnnxFile(model), RunnerOptions(batch=2, precision="fp16", cache_dir=tmp_path))
    fp16 = runner._model_path(model)  # the same file whichever TensorRT the provider loads
    assert fp16.parent == tmp_path / "fp16" and fp16.name.endswith(".fp16.onnx")
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.load(str(fp16)).graph.value_info}
    assert types["hidden"] == TensorProto.FLOAT16  # fp16 in the graph itself (the provider builds it typed)
    runner.stream = SimpleNamespace(cuda_stream=7)
    (_, trt), (_, cuda) = runner._providers(fp16)
    assert trt["trt_fp16_enable"] == "False" and "use_tf32" not in cuda


def test_ort_trt_int8_runs_the_tensorrt_layout_without_int8_flag_or_calibration_table(block_onnx: Path,
                                                                                    tmp_path: Path) -> None:
    trt_layout = Int8Settings.for_layout("tensorrt")
    options = RunnerOptions(batch=2, precision="int8", cache_dir=tmp_path, extra={"int8": trt_layout})
    runner = OrtTrtRunner(OnnxFile(block_onnx), options)
    int8 = runner._model_path(block_onnx)  # quantized on the CPU, cached by content and settings
    assert int8.parent == tmp_path / "int8" and is_quantized(int8) and trt_layout.key() in int8.name
    assert runner._session_config()[DISABLE_QDQ_FUSION] == "1"  # TensorRT gets the Q/DQ nodes as written
    runner.stream = SimpleNamespace(cuda_stream=7)
    (_, trt), (_, cuda) = runner._providers(int8)
    assert trt["trt_int8_enable"] == "False" and trt["trt_fp16_enable"] == "False"
    assert not any("calibration" in key for key in trt)  # a Q/DQ model takes no calibration table
    assert "use_tf32" not in cuda
    fp32 = OrtTrtRunner(OnnxFile(block_onnx), RunnerOptions(batch=2, cache_dir=tmp_path))
    assert DISABLE_QDQ_FUSION not in fp32._session_config() and fp32._model_path(block_onnx) == block_onnx
    cpu_defaults = OrtTrtRunner(OnnxFile(block_onnx), RunnerOptions(batch=2, precision="int8", cache_dir=tmp_path))
    with pytest.raises(SettingsError, match=r"^int8_format 'qoperator': TensorRT builds int8 engines only from"):
        cpu_defaults._model_path(block_onnx)


def test_tensorrt_int8_engines_are_built_typed_from_the_qdq_model_and_keyed_by_its_settings(block_onnx: Path,
                                                                                             tmp_path: Path) -> None:
    def options(settings: Int8Settings | None) -> RunnerOptions:
        extra = {"int8": settings} if settings is not None else {}
        return RunnerOptions(batch=2, precision="int8" if settings else "fp32", cache_dir=tmp_path, extra=extra)

    per_channel = options(Int8Settings.for_layout("tensorrt"))
    per_tensor = options(Int8Settings.for_layout("tensorrt", per_channel=False))
    entropy = options(Int8Settings.for_layout("tensorrt", method="entropy"))
    models = {name: typed_model(block_onnx, o) for name, o in
              (("channel", per_channel), ("tensor", per_tensor), ("entropy", entropy))}
    assert all(is_quantized(m) for m in models.values()) and typed_model(block_onnx, options(None)) == block_onnx
    keys = {name: engine_key(models[name], o, "10.9.0", "NVIDIA H100")
            for name, o in (("channel", per_channel), ("tensor", per_tensor), ("entropy", entropy))}
    keys["fp32"] = engine_key(block_onnx, options(None), "10.9.0", "NVIDIA H100")
    assert len(set(keys.values())) == 4  # the int8 settings (and so the model) make their own engine
    assert keys["channel"] == engine_key(models["channel"], per_channel, "10.9.0", "NVIDIA H100")
    # the settings are in the key themselves, not only through the model file they made
    assert engine_key(models["channel"], per_channel, "10.9.0", "d") != engine_key(models["channel"], entropy,
                                                                                    "10.9.0", "d")
    with pytest.raises(SettingsError, match=r"^int8_format"):
        typed_model(block_onnx, options(Int8Settings()))
    assert precision_record("int8") == {"fp16_via": None, "int8_via": INT8_VIA, "tf32": None}


def test_the_lowest_tensorrt_node_share_of_the_entries_is_kept_with_its_entry(mini) -> None:
    table = LatencyTable(mini, new_meta(mini, ProfileSettings(), get_backend("ort-cpu")))
    note_node_share(table, "a", {"nodes_by_provider": {"CPUExecutionProvider": 3}})  # not ort-trt: nothing
    assert "lowest_tensorrt_node_share" not in table.meta.runner
    for key, share in (("a", 1.0), ("b", 0.5), ("c", 0.75), ("d", 0.5)):
        note_node_share(table, key, {"tensorrt_node_share": share})
    assert table.meta.runner["lowest_tensorrt_node_share"] == {"share": 0.5, "entry": "b"}


def test_sessions_record_where_each_node_runs(tmp_path: Path) -> None:
    model = _two_node_onnx(tmp_path / "two.onnx")
    with get_backend("ort-cpu").runner(OnnxFile(model), RunnerOptions(batch=2)) as runner:
        assert nodes_by_provider(runner.session) == {"CPUExecutionProvider": 2}
        assert runner.info()["nodes_by_provider"] == {"CPUExecutionProvider": 2}


@pytest.mark.gpu
def test_ort_trt_places_nodes_on_tensorrt_and_runs_fp32_without_tf32(tmp_path: Path) -> None:
    backend = get_backend("ort-trt")
    if backend.unavailable_reason():
        pytest.skip(f"ort-trt: {backend.unavailable_reason()}")
    model = _two_node_onnx(tmp_path / "two.onnx")
    with backend.runner(OnnxFile(model), RunnerOptions(batch=2, cache_dir=tmp_path)) as runner:
        info = runner.info()
    assert info["tensorrt_node_share"] > 0 and info["tf32"] is False


@pytest.mark.gpu
def test_ort_trt_runs_the_tensorrt_int8_layout_on_tensorrt(block_onnx: Path, tmp_path: Path) -> None:
    backend = get_backend("ort-trt")
    if backend.unavailable_reason():
        pytest.skip(f"ort-trt: {backend.unavailable_reason()}")
    x = np.random.default_rng(0).standard_normal((2, 50, 64)).astype(np.float32)
    with backend.runner(OnnxFile(block_onnx), _tensorrt_int8(tmp_path)) as runner:
        out = runner.infer({"input": x})["output"]
        info = runner.info()
    assert info["tensorrt_node_share"] == 1.0 and info["int8_via"] == INT8_VIA
    _assert_int8_close_to_fp32(out, block_onnx, x)


def _tensorrt_int8(cache: Path) -> RunnerOptions:
    return RunnerOptions(batch=2, precision="int8", cache_dir=cache,
                         extra={"int8": Int8Settings.for_layout("tensorrt")})


def _assert_int8_close_to_fp32(out: np.ndarray, model: Path, x: np.ndarray) -> None:
    """``out`` is not the fp32 output of ``model`` on ``x`` (int8 ran) but close to it (cosine above 0.99)."""
    with get_backend("ort-cpu").runner(OnnxFile(model), RunnerOptions(batch=2)) as cpu:
        ref = cpu.infer({"input": x})["output"]
    cos = float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos > 0.99 and not np.allclose(out, ref, atol=1e-4)


# ------------------------------------------------------------ one engine build per GPU (item 3)


def _export_marker(job: str) -> str:
    """A stand-in export (picklable, for worker processes): writes ``job`` with the pid that exported it."""
    Path(job).write_text(str(os.getpid()))
    return job


def test_workers_export_in_parallel_and_engines_build_here_one_at_a_time(tmp_path: Path) -> None:
    jobs = [str(tmp_path / f"job{i}") for i in range(4)]
    building: list[str] = []
    built: list[tuple[str, int, str]] = []
    advanced: list[int] = []

    def build(job: str) -> None:
        assert not building, "two engine builds at once"
        building.append(job)
        built.append((job, os.getpid(), Path(job).read_text()))  # the export is done before its build
        building.pop()

    run_builds(jobs, 2, _export_marker, build, lambda: advanced.append(1))
    assert sorted(job for job, _, _ in built) == jobs and len(advanced) == 4
    assert {pid for _, pid, _ in built} == {os.getpid()}  # every build in this process
    assert str(os.getpid()) not in {exporter for _, _, exporter in built}  # every export in a worker


def test_one_worker_exports_and_builds_each_job_in_order(tmp_path: Path) -> None:
    jobs = [str(tmp_path / f"job{i}") for i in range(3)]
    events: list[tuple[str, str]] = []
    run_builds(jobs, 1, lambda job: events.append(("export", job)), lambda job: events.append(("build", job)))
    assert events == [(step, job) for job in jobs for step in ("export", "build")]


# --------------------------------------------------------------------- device selection (item 5)


def test_a_device_that_does_not_exist_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="device_id must be >= 0, got -1"):
        RunnerOptions(device_id=-1)
    with pytest.raises(BackendUnavailable, match=r"^tensorrt: CUDA device 99 does not exist: torch sees \d+"):
        cuda_device_name(99)
    runner = OrtCudaRunner(OnnxFile(_two_node_onnx(tmp_path / "two.onnx")), RunnerOptions(device_id=99))
    with pytest.raises(BackendUnavailable, match=r"^ort-cuda: CUDA device 99 does not exist: torch sees \d+"):
        runner._stream()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engines_are_built_and_tuned_on_the_device_asked_for(tmp_path: Path) -> None:
    import torch

    from vitres_deploy.files import atomic_write_bytes
    from vitres_deploy.runtime.tensorrt import EngineFile, TensorRTRunner, import_tensorrt, serialize_engine
    from vitres_deploy.text import slug

    last = torch.cuda.device_count() - 1
    current = torch.cuda.current_device()
    model = _two_node_onnx(tmp_path / "two.onnx")
    plan = serialize_engine(model, RunnerOptions(device_id=last, cache_dir=tmp_path), (1, 2, 4))
    assert torch.cuda.current_device() == current  # the build's device was made current for the build only
    timing = f"timing-{import_tensorrt().__version__}-{slug(torch.cuda.get_device_name(last))}.cache"
    assert [p.name for p in (tmp_path / "tensorrt").iterdir()] == [timing]
    path = atomic_write_bytes(tmp_path / "two.plan", plan)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    with TensorRTRunner(EngineFile(path), RunnerOptions(batch=2, device_id=last)) as runner:
        out = runner.infer({"input": x})["output"]
    expected = np.exp(np.maximum(x, 0)) / np.exp(np.maximum(x, 0)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_builds_and_runs_a_strongly_typed_int8_engine(block_onnx: Path, tmp_path: Path) -> None:
    import tensorrt as trt

    backend = get_backend("tensorrt")
    if backend.unavailable_reason():
        pytest.skip(f"tensorrt: {backend.unavailable_reason()}")
    x = np.random.default_rng(0).standard_normal((2, 50, 64)).astype(np.float32)
    with backend.runner(OnnxFile(block_onnx), _tensorrt_int8(tmp_path)) as runner:
        out = runner.infer({"input": x})["output"]
        info = runner.info()
        inspector = runner.engine.create_engine_inspector()
        layers = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    assert info["int8_via"] == INT8_VIA and "Int8" in layers  # int8 layers in the engine
    _assert_int8_close_to_fp32(out, block_onnx, x)


# ------------------------------------------------------------- fp16 overflow beyond LayerNorm (item 7)


def _overflowing_onnx(path: Path) -> Path:
    """input (batch x 3) -> MatMul by 1000 ("grow": |x| ~ 1e5 on inputs ~ 100) -> Mul by 1e-3 ("shrink") -> Relu."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], [1000.0 if i == j else 0.0 for i in range(3)
                                                            for j in range(3)])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [1e-3])
    nodes = [helper.make_node("MatMul", ["input", "w"], ["grown"], name="grow"),
             helper.make_node("Mul", ["grown", "s"], ["shrunk"], name="shrink"),
             helper.make_node("Relu", ["shrunk"], ["output"], name="relu")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 3])], [w, s])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_nodes_that_read_or_write_activations_beyond_fp16_are_found_and_kept_in_fp32(tmp_path: Path) -> None:
    model = _overflowing_onnx(tmp_path / "overflow.onnx")
    images = np.full((2, 3), 100.0, dtype=np.float32)
    peaks = tensor_peaks(model, images)
    assert peaks == pytest.approx({"input": 100.0, "grown": 1e5, "shrunk": 100.0, "output": 100.0})
    # beyond 65504: its producer and its consumer stay fp32
    assert overflowing_nodes(model, images) == pytest.approx({"grow": 1e5, "shrink": 1e5})
    assert overflowing_nodes(model, images / 10) == {}  # 1e4 fits

    fp16 = convert_to_fp16(onnx.load(str(model)), keep_nodes=overflowing_nodes(model, images))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in fp16.graph.value_info}
    assert types["grown"] == TensorProto.FLOAT and types["shrunk"] == TensorProto.FLOAT
    assert {t.name: t.data_type for t in fp16.graph.initializer}["w"] == TensorProto.FLOAT
    with pytest.raises(Fp16ConversionError, match="keep_nodes: no node 'nope'"):
        convert_to_fp16(onnx.load(str(model)), keep_nodes=["nope"])


def test_no_tensor_beyond_the_fp16_range_is_cast_to_fp16(tmp_path: Path) -> None:
    """Structural: ONNX Runtime on the CPU folds cast pairs, so an Inf from such a cast would not show there."""
    model = _overflowing_onnx(tmp_path / "overflow.onnx")
    images = np.full((2, 3), 100.0, dtype=np.float32)
    beyond = {name for name, peak in tensor_peaks(model, images).items() if peak > 32752}
    assert beyond == {"grown"}
    fp16 = convert_to_fp16(onnx.load(str(model)), keep_nodes=overflowing_nodes(model, images))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in fp16.graph.value_info}
    assert all(types[name] == TensorProto.FLOAT for name in beyond)
    to_fp16 = [n for n in fp16.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16]
    assert to_fp16 and not [n.name for n in to_fp16 if n.input[0] in beyond]
    shrink = next(n for n in fp16.graph.node if n.name == "shrink")
    assert list(shrink.input) == ["grown", "s"]  # read as it was computed, in fp32


def _infinite_onnx(path: Path) -> Path:
    """input (batch x 3) -> Mul by +Inf -> output: Inf (or NaN) whatever the input."""
    inf = helper.make_tensor("inf", TensorProto.FLOAT, [], [float("inf")])
    graph = helper.make_graph([helper.make_node("Mul", ["input", "inf"], ["output"], name="blow_up")], "inf",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 3])], [inf])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_a_measurement_whose_output_is_not_finite_fails_at_any_precision(tmp_path: Path) -> None:
    settings = ProfileSettings(batch=2, protocol=Protocol(warmup_s=0.0, min_iterations=2, min_seconds=0.0,
                                                           max_cv=float("inf")))
    with pytest.raises(CheckFailed) as failed:
        measure_source(OnnxFile(_infinite_onnx(tmp_path / "inf.onnx")), settings)
    assert str(failed.value) == "ort-cpu fp32: output 'output' of inf.onnx has Inf or NaN"
    stats, info = measure_source(OnnxFile(_two_node_onnx(tmp_path / "two.onnx")), settings)  # a finite one runs
    assert stats.iterations >= 2 and info["nodes_by_provider"] == {"CPUExecutionProvider": 2}


# --------------------------------------------------------------------- install path (items 8, 10)


ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_dir(package: str, mapping: dict[str, str]) -> Path:
    """Where setuptools finds ``package``: its own mapping, else its parent's folder joined with its last name."""
    if package in mapping:
        return ROOT / mapping[package]
    parent, _, name = package.rpartition(".")
    return _package_dir(parent, mapping) / name


def test_the_package_list_and_package_data_match_the_tree() -> None:
    setup = _pyproject()["tool"]["setuptools"]
    mapping, packages = setup["package-dir"], set(setup["packages"])
    for package in packages:
        assert _package_dir(package, mapping).is_dir(), package
    for root in mapping:  # every folder of Python files under a package is itself listed (no setuptools warning)
        folder = _package_dir(root, mapping)
        for module in folder.rglob("*.py"):
            name = ".".join([root, *module.parent.relative_to(folder).parts])
            assert name in packages or name in mapping, f"{module} is in no listed package"
    for package, globs in setup["package-data"].items():
        for glob in globs:
            assert list(_package_dir(package, mapping).glob(glob)), f"{package}: {glob} names no file"


def test_no_install_brings_both_onnx_runtimes() -> None:
    project = _pyproject()["project"]
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    assert not runtimes & set(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        assert len(runtimes & set(requirements)) <= 1, extra
    pins = {line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().split()}
    for requirements in project["optional-dependencies"].values():
        assert set(requirements) <= pins  # every extra's package has its exact pin


def test_backends_name_the_package_they_miss() -> None:
    from vitres_deploy.runtime.registry import INSTALL_ORT_GPU, INSTALL_TENSORRT, backend_status

    reasons = {row["name"]: row["reason"] for row in backend_status()}
    missing = (("ort-cuda", ("onnxruntime-gpu",)), ("ort-trt", ("onnxruntime-gpu", "tensorrt-cu12-libs")),
               ("tensorrt", ("tensorrt-cu12",)))
    for name, packages in missing:
        reason = reasons[name]
        if reason and "CUDA GPU" not in reason and "torch" not in reason:  # a missing package, not a GPU
            assert any(package in reason for package in packages), reason
    readme = (ROOT / "README.md").read_text()
    for command in ("pip install -c constraints.txt -e '.[gpu]'", "pip uninstall onnxruntime"):
        assert command in readme and command in INSTALL_ORT_GPU  # the messages give the README's commands
    assert "pip install -c constraints.txt -e '.[gpu]'" in INSTALL_TENSORRT


def test_ort_trt_is_usable_only_where_the_tensorrt_of_its_provider_loads() -> None:
    assert tensorrt_runtime_reason(10, True) is None
    reason = tensorrt_runtime_reason(10, False)
    assert reason == ("onnxruntime's TensorRT provider needs TensorRT 10 (libnvinfer.so.10), which does not load: "
                      "pip install 'tensorrt-cu12-libs==10.*' (CUDA 12) or 'tensorrt-cu13-libs==10.*' (CUDA 13)")
    assert "reinstall onnxruntime-gpu" in tensorrt_runtime_reason(None, False)
    assert nvinfer_loadable(999) is False  # no TensorRT 999 anywhere


def test_torch_cuda_on_a_cpu_build_of_torch_names_a_cuda_build() -> None:
    assert cuda_reason(None, "2.13.0+cpu", False).startswith(
        "torch 2.13.0+cpu is a CPU-only build: install a CUDA build of torch 2.13.0")
    assert cuda_reason("12.8", "2.13.0+cu128", False) == "no CUDA GPU is visible to torch (no GPU or no driver)"
    assert cuda_reason("12.8", "2.13.0+cu128", True) is None
