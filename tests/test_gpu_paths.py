"""What the GPU paths are set up with, tested where it is decided: pure functions that build provider options,
environments, schedules and version readings, and real CPU sessions. The GPU runs themselves are marked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vitres_deploy.convert.fp16 import convert_to_fp16
from vitres_deploy.errors import Fp16ConversionError
from vitres_deploy.latency.profiler import run_builds
from vitres_deploy.runtime import OnnxFile, RunnerOptions, get_backend
from vitres_deploy.runtime.ort import (
    activation_peaks,
    cuda_provider_options,
    nodes_by_provider,
    overflowing_nodes,
    tensorrt_environment,
    tensorrt_provider_options,
)
from vitres_deploy.runtime.versions import nvinfer_major

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
    trt = tensorrt_provider_options(0, 7, fp16_flag=True, engines=tmp_path, shapes="input:2x3", workspace_mb=64)
    assert trt["trt_fp16_enable"] == "True" and trt["trt_max_workspace_size"] == str(64 << 20)
    assert {trt[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")} == {"input:2x3"}
    assert not any("tf32" in k for k in trt)  # the provider has no TF32 option: the environment does it


# --------------------------------------------------------------- the TensorRT of ort-trt (item 4)


def test_the_tensorrt_a_provider_library_links_is_read_from_its_dependencies() -> None:
    assert nvinfer_major(b"\x00libcudart.so.12\x00libnvinfer.so.10\x00libnvonnxparser.so.10\x00") == 10
    assert nvinfer_major(b"\x00libnvinfer_plugin.so.11\x00libnvinfer.so.11\x00") == 11
    assert nvinfer_major(b"KERNEL32.dll\x00nvinfer_10.dll\x00") == 10
    assert nvinfer_major(b"\x00libcudart.so.12\x00") is None


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


def test_nodes_whose_activations_overflow_fp16_are_found_and_kept_in_fp32(tmp_path: Path) -> None:
    model = _overflowing_onnx(tmp_path / "overflow.onnx")
    images = np.full((2, 3), 100.0, dtype=np.float32)
    peaks = activation_peaks(model, images)
    assert peaks == pytest.approx({"grow": 1e5, "shrink": 100.0, "relu": 100.0})
    assert overflowing_nodes(model, images) == pytest.approx({"grow": 1e5})  # beyond 65504: kept in fp32
    assert overflowing_nodes(model, images / 10) == {}  # 1e4 fits

    fp16 = convert_to_fp16(onnx.load(str(model)), keep_nodes=overflowing_nodes(model, images))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in fp16.graph.value_info}
    assert types["grown"] == TensorProto.FLOAT and types["shrunk"] == TensorProto.FLOAT16
    assert {t.name: t.data_type for t in fp16.graph.initializer}["w"] == TensorProto.FLOAT
    with pytest.raises(Fp16ConversionError, match="keep_nodes: no node 'nope'"):
        convert_to_fp16(onnx.load(str(model)), keep_nodes=["nope"])


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
    from vitres_deploy.runtime.registry import backend_status

    reasons = {row["name"]: row["reason"] for row in backend_status()}
    missing = (("ort-cuda", "onnxruntime-gpu"), ("ort-trt", "onnxruntime-gpu"), ("tensorrt", "tensorrt-cu12"))
    for name, package in missing:
        if reasons[name] and "CUDA GPU" not in reasons[name]:  # a missing package, not a missing GPU
            assert package in reasons[name], reasons[name]
