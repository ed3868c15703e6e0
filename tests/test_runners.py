"""The runner lifecycle (load, activate, bind, run, deactivate) and the one input check, on real runners.

Every test runs real ONNX Runtime sessions or real torch modules on tiny models built here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from vitres_deploy.errors import RuntimeFailure
from vitres_deploy.runtime import ModuleLoader, OnnxFile, RunnerOptions, get_backend

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _onnx_model(path: Path, node: onnx.NodeProto, *initializers: onnx.TensorProto) -> Path:
    """A one-node model from ``input`` (batch x 3, float) to ``output``, saved at ``path``."""
    graph = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


@pytest.fixture
def softmax_onnx(tmp_path: Path) -> Path:
    return _onnx_model(tmp_path / "softmax.onnx", helper.make_node("Softmax", ["input"], ["output"]))


def test_a_runner_loads_nothing_until_it_is_activated(softmax_onnx: Path, tmp_path: Path) -> None:
    later = tmp_path / "later.onnx"
    runner = get_backend("ort-cpu").runner(OnnxFile(later), RunnerOptions(batch=2))  # no file yet: nothing read
    assert not runner.is_active and runner.input_specs == [] and runner.session is None
    with pytest.raises(RuntimeFailure, match=r"later\.onnx does not exist"):
        runner.activate()
    assert not runner.is_active
    later.write_bytes(softmax_onnx.read_bytes())
    for _ in range(2):  # a runner can be activated again after deactivation
        with runner:
            assert runner.is_active and runner.session is not None
            assert [(s.name, s.shape, s.dtype) for s in runner.input_specs] == [("input", (2, 3), "float32")]
            out = runner.infer({"input": np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=np.float32)})
            np.testing.assert_allclose(out["output"].sum(axis=1), [1.0, 1.0], rtol=1e-6)
        assert not runner.is_active and runner.session is None and runner.input_specs == []


def test_activation_is_not_reentrant_and_binding_needs_it(softmax_onnx: Path) -> None:
    runner = get_backend("ort-cpu").runner(OnnxFile(softmax_onnx), RunnerOptions())
    with pytest.raises(RuntimeFailure, match="ort-cpu: the runner is not active"):
        runner.bind({"input": np.zeros((1, 3), dtype=np.float32)})
    with runner:
        with pytest.raises(RuntimeFailure, match="already active"):
            runner.activate()
    runner.deactivate()  # deactivating an inactive runner is a no-op


def test_a_module_is_built_and_threads_are_fixed_only_while_active() -> None:
    built = []

    def build() -> nn.Module:
        torch.manual_seed(0)
        built.append(nn.Linear(3, 2))
        return built[-1]

    before = torch.get_num_threads()
    runner = get_backend("torch-cpu").runner(ModuleLoader(build, (3,)), RunnerOptions(batch=4, threads=before + 1))
    assert built == []
    with runner:
        assert len(built) == 1 and torch.get_num_threads() == before + 1
        assert runner.module is not built[0]  # the runner runs its own copy
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        out = runner.infer({"input": x})["output"]
        assert runner.info()["num_threads"] == before + 1
    assert torch.get_num_threads() == before and runner.module is None
    with torch.no_grad():
        np.testing.assert_allclose(out, built[0](torch.from_numpy(x)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_inputs_are_checked_by_name_shape_and_dtype(backend: str, softmax_onnx: Path) -> None:
    model = OnnxFile(softmax_onnx) if backend == "ort-cpu" else ModuleLoader.of(nn.Softmax(dim=-1), (3,))
    good = np.zeros((2, 3), dtype=np.float32)
    with get_backend(backend).runner(model, RunnerOptions(batch=2)) as runner:
        with pytest.raises(RuntimeFailure, match=rf"^{backend}: missing input 'input'$"):
            runner.bind({})
        with pytest.raises(RuntimeFailure, match=rf"^{backend}: unknown input 'image' \(the model takes input\)$"):
            runner.bind({"input": good, "image": good})
        with pytest.raises(RuntimeFailure, match=rf"^{backend}: input 'input' has shape \(3, 3\), the model takes "
                                                 r"\(2, 3\)$"):
            runner.infer({"input": np.zeros((3, 3), dtype=np.float32)})
        with pytest.raises(RuntimeFailure, match=rf"^{backend}: input 'input' is float64, the model takes float32$"):
            runner.infer({"input": good.astype(np.float64)})
        np.testing.assert_allclose(runner.infer({"input": good})["output"], np.full((2, 3), 1 / 3), rtol=1e-6)


def test_a_backend_takes_only_its_kind_of_loader(softmax_onnx: Path) -> None:
    with pytest.raises(TypeError, match="backend ort-cpu runs models given as OnnxFile, got ModuleLoader"):
        get_backend("ort-cpu").runner(ModuleLoader.of(nn.Identity(), (3,)), RunnerOptions())
    with pytest.raises(TypeError, match="backend torch-cpu runs models given as ModuleLoader, got PosixPath"):
        get_backend("torch-cpu").runner(softmax_onnx, RunnerOptions())  # type: ignore[arg-type]


def test_onnx_runtime_failing_to_run_a_model_is_a_runtime_failure(tmp_path: Path) -> None:
    # Loads fine (the batch is symbolic) but cannot run: 2 x 3 values do not reshape to 4.
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [4])
    path = _onnx_model(tmp_path / "reshape.onnx", helper.make_node("Reshape", ["input", "shape"], ["output"]), shape)
    with get_backend("ort-cpu").runner(OnnxFile(path), RunnerOptions(batch=2)) as runner:
        with pytest.raises(RuntimeFailure, match=r"^ort-cpu: onnxruntime failed to run reshape.onnx: .*"):
            runner.infer({"input": np.zeros((2, 3), dtype=np.float32)})


def test_a_module_failing_in_its_forward_pass_is_a_runtime_failure() -> None:
    with get_backend("torch-cpu").runner(ModuleLoader.of(nn.Linear(4, 2), (3,)), RunnerOptions()) as runner:
        with pytest.raises(RuntimeFailure, match=r"^torch-cpu: the module failed: mat1 and mat2 shapes"):
            runner.infer({"input": np.zeros((1, 3), dtype=np.float32)})
