"""Runtime backends: the registry, real ONNX Runtime and torch runners, the protocol, fp16 ONNX conversion.

CPU tests run real ONNX Runtime sessions on small exported fmnist modules; GPU and TensorRT tests are
marked and skip with a reason where the hardware or package is missing.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vitres_deploy.convert.fp16 import KEEP_FP32_OPS, convert_file
from vitres_deploy.convert.to_onnx import export_onnx, export_onnx_group
from vitres_deploy.errors import BackendUnavailable, ConversionError, ProfileError, RuntimeFailure
from vitres_deploy.runtime import (
    BACKENDS,
    ModuleLoader,
    NoisyMeasurement,
    OnnxFile,
    Protocol,
    RunnerOptions,
    TimingStats,
    backend_status,
    get_backend,
    measure,
    random_inputs,
)
from vitres_deploy.runtime.base import HostCacheFlush
from vitres_deploy.runtime.ort import OrtCpuRunner, onnx_input_specs, session_input_specs
from vitres_deploy.vit_resnas import Block

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]

QUICK = Protocol(warmup_s=0.01, min_iterations=20, min_seconds=0.02)


def _reference(block: Block, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return block(torch.from_numpy(x)).numpy()


def test_registry_lists_every_backend_with_a_reason_when_unusable() -> None:
    rows = {r["name"]: r for r in backend_status()}
    assert set(rows) == {"ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch-cpu", "torch-cuda"}
    assert rows["ort-cpu"]["available"] and rows["torch-cpu"]["available"]
    for r in rows.values():
        assert r["available"] == (r["reason"] is None)
        if not r["available"]:
            assert r["reason"].strip()
    if not torch.cuda.is_available():
        assert "CUDA" in rows["torch-cuda"]["reason"]


def test_unknown_backend_and_unusable_backend_are_clear_errors() -> None:
    with pytest.raises(BackendUnavailable, match="unknown backend 'onnx-gpu': use one of ort-cpu"):
        get_backend("onnx-gpu")
    unusable = [b for b in BACKENDS.values() if b.unavailable_reason()]
    for b in unusable:
        with pytest.raises(BackendUnavailable, match=f"backend {b.name} is not usable here"):
            b.check()


def test_ort_cpu_runner_matches_torch_and_applies_the_batch(block: Block, block_onnx: Path) -> None:
    runner = get_backend("ort-cpu").runner(OnnxFile(block_onnx), RunnerOptions(batch=3, threads=1))
    with runner:
        assert [(s.name, s.shape, s.dtype) for s in runner.input_specs] == [("input", (3, 50, 64), "float32")]
        x = random_inputs(runner.input_specs, seed=1)
        out = runner.infer(x)["output"]
        assert runner.info()["intra_op_num_threads"] == 1
        assert runner.info()["io_binding"] is True
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=1e-4, rtol=1e-4)


def test_measure_follows_the_protocol(block_onnx: Path) -> None:
    with get_backend("ort-cpu").runner(OnnxFile(block_onnx), RunnerOptions()) as runner:
        by_count = measure(runner, Protocol(warmup_s=0.0, min_iterations=300, min_seconds=0.0, max_cv=1e9))
        by_time = measure(runner, Protocol(warmup_s=0.01, min_iterations=1, min_seconds=0.1, max_cv=1e9))
    assert by_count.iterations >= 300
    assert by_time.seconds >= 0.1 and by_time.iterations >= 1
    for s in (by_count, by_time):
        assert 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.p99_ms
        assert s.std_ms >= 0 and s.cv == pytest.approx(s.std_ms / s.mean_ms)


class FlushRecorder(OrtCpuRunner):
    """The real ``ort-cpu`` runner, recording in order its runs and the cache flushes before them.

    Each flush also sleeps ``PAUSE_S`` after the real one, so that a flush inside the timed region would show
    in every sample.
    """

    PAUSE_S = 0.02

    def __init__(self, model: OnnxFile) -> None:
        super().__init__(model, RunnerOptions())
        self.events: list[str] = []
        self.flushers: list[object] = []

    def run(self) -> None:
        self.events.append("run")
        super().run()

    def cache_flusher(self, nbytes: int):
        flush = super().cache_flusher(nbytes)
        self.flushers.append(flush)

        def recorded() -> None:
            self.events.append("flush")
            flush()
            time.sleep(self.PAUSE_S)

        return recorded


def test_measure_warns_above_the_cv_limit_and_can_flush_caches(block_onnx: Path) -> None:
    with FlushRecorder(OnnxFile(block_onnx)) as runner:
        with pytest.warns(NoisyMeasurement, match="coefficient of variation"):
            measure(runner, Protocol(warmup_s=0.0, min_iterations=50, min_seconds=0.0, max_cv=1e-12))
        assert runner.flushers == [] and "flush" not in runner.events  # warm: nothing flushed
        runner.events.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurement)
            cold = measure(runner, Protocol(warmup_s=0.0, min_iterations=20, min_seconds=0.0, flush_cache_mb=4))
    assert cold.iterations >= 20 and cold.median_ms > 0
    # One flusher for the pass: the host one, reading a 4 MiB buffer ...
    [flusher] = runner.flushers
    assert isinstance(flusher, HostCacheFlush) and flusher.buffer.nbytes == 4 << 20
    # ... called before every timed run and never during the warm-up ...
    first = runner.events.index("flush")
    assert "flush" not in runner.events[:first] and runner.events[first:] == ["flush", "run"] * cold.iterations
    # ... and outside the timed region: every flush sleeps PAUSE_S, no sample does.
    assert cold.median_ms < FlushRecorder.PAUSE_S * 1e3


def test_timing_stats_summary() -> None:
    s = TimingStats.from_samples([1.0, 2.0, 3.0, 4.0, 100.0], seconds=0.5)
    assert s.median_ms == 3.0 and s.min_ms == 1.0 and s.mean_ms == 22.0 and s.iterations == 5
    assert s.p99_ms > s.p90_ms > s.median_ms
    assert TimingStats.from_dict(s.to_dict()) == s
    with pytest.raises(ProfileError, match="protocol"):
        Protocol(min_iterations=0)


def test_torch_cpu_runner_matches_the_module(block: Block) -> None:
    with get_backend("torch-cpu").runner(ModuleLoader.of(block, (50, 64)), RunnerOptions(batch=2)) as runner:
        x = random_inputs(runner.input_specs, seed=2)
        out = runner.infer(x)["output"]
        assert measure(runner, QUICK).median_ms > 0
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=1e-5)


def test_cpu_backends_refuse_fp16(block: Block, block_onnx: Path) -> None:
    with pytest.raises(BackendUnavailable, match="supports fp32/int8, not fp16"):
        get_backend("ort-cpu").runner(OnnxFile(block_onnx), RunnerOptions(precision="fp16"))
    with pytest.raises(BackendUnavailable, match="supports fp32, not fp16"):
        get_backend("torch-cpu").runner(ModuleLoader.of(block, (50, 64)), RunnerOptions(precision="fp16"))
    with pytest.raises(BackendUnavailable, match="precision 'int4'"):
        RunnerOptions(precision="int4")


def test_static_batch_mismatch_is_a_clear_error(block: Block, tmp_path: Path) -> None:
    static = export_onnx(block, (50, 64), tmp_path / "static.onnx", dynamic_batch=False)
    assert onnx_input_specs(static, 1)[0].shape == (1, 50, 64)
    with pytest.raises(RuntimeFailure, match="static batch of 1, asked for 4: export with a dynamic batch"):
        onnx_input_specs(static, 4)
    # the runner reads its specs from the live session, by the same rule, without parsing the file again
    with pytest.raises(RuntimeFailure, match="static batch of 1, asked for 4: export with a dynamic batch"):
        with OrtCpuRunner(OnnxFile(static), RunnerOptions(batch=4)):
            pass


def test_a_runner_s_input_specs_from_its_session_equal_the_file_s(block_onnx: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {batch: onnx_input_specs(block_onnx, batch) for batch in (1, 3)}
    with monkeypatch.context() as m:  # a pass does not parse the file a second time (tens of ms for a network)
        m.setattr(onnx, "load", lambda *a, **k: pytest.fail("the runner parsed the ONNX file"))
        for batch in (1, 3):
            with OrtCpuRunner(OnnxFile(block_onnx), RunnerOptions(batch=batch)) as runner:
                assert runner.input_specs == expected[batch]
                assert runner.input_specs[0].shape == (batch, 50, 64)
    # a model whose input is a string tensor: its session is real, its input no runner can feed
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["text"], ["out"])], "strings",
        [onnx.helper.make_tensor_value_info("text", onnx.TensorProto.STRING, ["batch"])],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.STRING, ["batch"])])
    path = tmp_path / "strings.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10), path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(RuntimeFailure, match=r"input 'text' has type tensor\(string\), which no runner feeds"):
        session_input_specs(session, 1, path)


def test_fp16_onnx_keeps_layernorm_and_softmax_in_fp32(block: Block, block_onnx: Path, tmp_path: Path) -> None:
    fp16 = convert_file(block_onnx, tmp_path / "block.fp16.onnx")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16)), strict_mode=True)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert types["input"] == f32 and types["output"] == f32  # I/O stay fp32
    kept = [n for n in model.graph.node if n.op_type in KEEP_FP32_OPS]
    assert {n.op_type for n in kept} == {"LayerNormalization", "Softmax"}
    for node in kept:
        assert all(types[i] == f32 for i in node.input if i) and types[node.output[0]] == f32
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(types[i] == f16 for n in matmuls for i in n.input)
    x = random_inputs(onnx_input_specs(fp16, 1), seed=3)
    with get_backend("ort-cpu").runner(OnnxFile(fp16), RunnerOptions()) as runner:  # ORT casts fp16 ops it lacks
        out = runner.infer(x)["output"]
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=2e-2, rtol=2e-2)


def test_fp16_onnx_with_fp16_inputs_and_outputs(block: Block, block_onnx: Path, tmp_path: Path) -> None:
    fp16 = convert_file(block_onnx, tmp_path / "block.io16.onnx", keep_io_types=False)
    graph = onnx.load(str(fp16)).graph
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [onnx.TensorProto.FLOAT16] * 2
    x = random_inputs(onnx_input_specs(block_onnx, 1), seed=4)
    with get_backend("ort-cpu").runner(OnnxFile(fp16), RunnerOptions()) as runner:
        out = runner.infer({"input": x["input"].astype(np.float16)})["output"]
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), _reference(block, x["input"]), atol=3e-2, rtol=3e-2)


def test_fp16_conversion_inlines_local_functions(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    square = helper.make_function("local", "Square", ["x"], ["y"], [helper.make_node("Mul", ["x", "x"], ["y"])],
                                  [helper.make_opsetid("", 18)])
    graph = helper.make_graph(
        [helper.make_node("Square", ["input"], ["t"], domain="local"), helper.make_node("Softmax", ["t"], ["output"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])])
    src = tmp_path / "fn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                                functions=[square], ir_version=10), str(src))
    dst = convert_file(src, tmp_path / "fn.fp16.onnx")
    model = onnx.load(str(dst))
    assert not model.functions
    assert [n.op_type for n in model.graph.node] == ["Cast", "Mul", "Cast", "Softmax"]
    x = {"input": np.array([[0.5, -1.0, 2.0]], dtype=np.float32)}
    with get_backend("ort-cpu").runner(OnnxFile(dst), RunnerOptions()) as runner:
        out = runner.infer(x)["output"]
    e = np.exp(x["input"] ** 2)
    np.testing.assert_allclose(out, e / e.sum(), atol=1e-3)


# ----------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt", "torch-cuda"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_runners_match_the_module(name: str, precision: str, block: Block, block_onnx: Path,
                                      tmp_path: Path) -> None:
    backend = get_backend(name)
    if backend.unavailable_reason():
        pytest.skip(f"{name}: {backend.unavailable_reason()}")
    source = ModuleLoader.of(block, (50, 64)) if backend.source == "module" else OnnxFile(block_onnx)
    options = RunnerOptions(precision=precision, cache_dir=tmp_path, batch=2)
    with backend.runner(source, options) as runner:
        x = random_inputs(runner.input_specs, seed=4)
        out = runner.infer(x)["output"]
        stats = measure(runner, QUICK)
    tol = 1e-3 if precision == "fp32" else 3e-2
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=tol, rtol=tol)
    assert stats.median_ms > 0 and stats.iterations >= QUICK.min_iterations


@pytest.mark.gpu
def test_torch_cuda_graph_replay_matches_eager(block: Block) -> None:
    options = RunnerOptions(cuda_graphs=True)
    with get_backend("torch-cuda").runner(ModuleLoader.of(block, (50, 64)), options) as runner:
        x = random_inputs(runner.input_specs, seed=5)
        out = runner.infer(x)["output"]
        assert runner.info()["mode"] == "cuda-graph"
        assert measure(runner, QUICK).median_ms > 0
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_matches_and_is_cached(precision: str, block: Block, block_onnx: Path,
                                               tmp_path: Path) -> None:
    from vitres_deploy.runtime.tensorrt import build_engine

    options = RunnerOptions(precision=precision, cache_dir=tmp_path)
    plan = build_engine(block_onnx, options)
    assert plan.is_file() and build_engine(block_onnx, options) == plan
    assert list((tmp_path / "tensorrt").glob("timing-*.cache"))
    with get_backend("tensorrt").runner(OnnxFile(block_onnx), options) as runner:
        x = random_inputs(runner.input_specs, seed=6)
        out = runner.infer(x)["output"]
        assert measure(runner, QUICK).median_ms > 0
        assert runner.info()["fp16_via"] == (None if precision == "fp32" else "strongly typed fp16 ONNX")
    tol = 1e-3 if precision == "fp32" else 3e-2
    np.testing.assert_allclose(out, _reference(block, x["input"]), atol=tol, rtol=tol)


def test_group_export_cuts_out_each_module_as_a_single_export_makes_it(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    modules = [Block(64, 2, 32, 128).eval(), Block(48, 1, 16, 96).eval(), nn.Linear(64, 10).eval()]
    shapes = [(50, 64), (17, 48), (64,)]
    paths = export_onnx_group([(m, s, tmp_path / f"g{i}.onnx") for i, (m, s) in enumerate(zip(modules, shapes))])
    rng = np.random.default_rng(0)
    for i, (module, shape, path) in enumerate(zip(modules, shapes, paths)):
        single = export_onnx(module, shape, tmp_path / f"s{i}.onnx")
        cut, alone = onnx.load(str(path)), onnx.load(str(single))
        assert sorted(n.op_type for n in cut.graph.node) == sorted(n.op_type for n in alone.graph.node)
        assert [v.name for v in cut.graph.input] == ["input"] and [v.name for v in cut.graph.output] == ["output"]
        assert cut.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        x = rng.standard_normal((3, *shape)).astype(np.float32)
        with get_backend("ort-cpu").runner(OnnxFile(path), RunnerOptions(batch=3, threads=1)) as runner:
            y = runner.infer({"input": x})["output"]
        with torch.no_grad():
            np.testing.assert_allclose(y, module(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_group_export_stages_beside_its_files_and_removes_what_a_killed_one_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The joint export is staged beside the files it is cut into (seen from a module's forward while it is
    exported), never in the system temp folder, where a killed profile's stayed for good; the scratch folders a
    killed process left there are removed, a running process's are not."""
    import os
    import tempfile

    system_tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    seen: set[str] = set()

    class Watched(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.update(p.name for folder in (system_tmp, cache) for p in folder.iterdir() if "vitres-group" in p.name)
            return super().forward(x)

    left = {"killed": cache / ".vitres-group-999999999-a", "running": cache / f".vitres-group-{os.getpid()}-b"}
    for folder in left.values():
        folder.mkdir(parents=True)
        (folder / "group.onnx").write_bytes(b"partial")
    export_onnx_group([(Watched(8, 4), (8,), cache / "a.onnx"), (nn.Linear(8, 2), (8,), cache / "b.onnx")])
    staged = seen - {left["killed"].name, left["running"].name}
    assert staged and all(name.startswith(f".vitres-group-{os.getpid()}-") for name in staged), seen
    assert not [p for p in system_tmp.iterdir() if "vitres-group" in p.name]
    assert sorted(p.name for p in cache.iterdir()) == sorted([left["running"].name, "a.onnx", "b.onnx"])


def test_group_export_falls_back_to_one_by_one_and_names_the_module_that_fails(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1 if x.sum() > 0 else x - 1  # data-dependent control flow: torch.export refuses it

    items = [(nn.Linear(8, 8), (8,), tmp_path / "ok.onnx"), (Unexportable(), (8,), tmp_path / "bad.onnx")]
    with pytest.raises(ConversionError, match="could not export Unexportable to"):
        export_onnx_group(items)
    assert (tmp_path / "ok.onnx").is_file() and not (tmp_path / "bad.onnx").exists()


def test_the_network_cache_is_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    """``trim_cache`` deletes the files used longest ago until the rest fit; the newest is kept even alone too
    large, and other files are left alone."""
    import os

    from vitres_deploy.runtime.cache import trim_cache

    for age, name in enumerate(["new", "mid", "old", "older"]):
        (tmp_path / f"{name}.onnx").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{name}.onnx", (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)
    trim_cache(tmp_path, 250)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["mid.onnx", "new.onnx", "notes.txt"]
    trim_cache(tmp_path, 10)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new.onnx", "notes.txt"]
