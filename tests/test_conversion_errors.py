"""Library failures end as typed errors, and on the command line as one ``error:`` line, no traceback.

Real components throughout: the PyTorch ONNX exporter on a module it cannot export, ONNX shape inference and
the checker on a malformed model in the fp16 conversion, ONNX Runtime on a corrupt ``.onnx`` file (through
``vitres-deploy profile``, which reuses the ONNX files of its cache).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from vitres_deploy.cli import main
from vitres_deploy.cli.boundary import Command
from vitres_deploy.convert.fp16 import convert_file
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.errors import ConversionError, Fp16ConversionError, RuntimeFailure
from vitres_deploy.latency.entries import enumerate_entries
from vitres_deploy.latency.profiler import ProfileSettings, entry_target, null_source, onnx_cache_path
from vitres_deploy.runtime import OnnxFile, RunnerOptions, get_backend
from vitres_deploy.space import SearchSpace

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MINI = {
    "name": "mini", "image_size": 16, "in_chans": 1, "num_classes": 4, "patch_size": 4, "stem_channels": 8,
    "stages": [{"embed_dims": [16], "heads": [1], "head_dim": 8, "mlp_hidden": [32], "depths": [1]}],
}


class DataDependent(nn.Module):
    """Branches on a value of its input: ``torch.export`` cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


def _malformed_onnx(path: Path) -> Path:
    """A model whose MatMul multiplies batch x 3 by 4 x 5: it loads, ONNX's checks reject it."""
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["output"])], "malformed",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])],
                              [numpy_helper.from_array(np.ones((4, 5), dtype=np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def _with_subgraph(path: Path) -> Path:
    """A valid model with an If node: the fp16 conversion does not handle subgraphs."""
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["input"], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 3])])

    nodes = [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"]),
             helper.make_node("If", ["positive"], ["output"], then_branch=branch("then"), else_branch=branch("else"))]
    graph = helper.make_graph(nodes, "branching",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def _through_the_boundary(call: Callable[[], object]) -> Result:
    """Run ``call`` as a command of the project's CLI boundary (the class every command uses)."""
    return CliRunner().invoke(click.command(cls=Command)(call), [])


def _one_error_line(result: Result) -> str:
    """The one ``error:`` line of a command that failed through the boundary (not an uncaught exception)."""
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_the_exporter_failing_is_a_conversion_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"^the PyTorch ONNX exporter could not export DataDependent to "
                                              r"dd\.onnx: Could not guard on data-dependent expression"):
        export_onnx(DataDependent(), (4,), tmp_path / "dd.onnx")
    assert not (tmp_path / "dd.onnx").exists()
    result = _through_the_boundary(lambda: export_onnx(DataDependent(), (4,), tmp_path / "dd.onnx"))
    line = _one_error_line(result)
    assert line.startswith("error: the PyTorch ONNX exporter could not export DataDependent") and result.exit_code == 2
    assert "data-dependent" in line and len(result.output.splitlines()) == 1  # the exporter's dumps are silenced


def test_onnx_rejecting_a_malformed_model_in_the_fp16_conversion_is_a_conversion_error(tmp_path: Path) -> None:
    bad = _malformed_onnx(tmp_path / "bad.onnx")
    with pytest.raises(ConversionError, match=r"^bad.onnx: onnx rejects the model: \[ShapeInferenceError\].*"
                                              "Incompatible dimensions for matrix multiplication") as e:
        convert_file(bad, tmp_path / "bad.fp16.onnx")
    assert not isinstance(e.value, Fp16ConversionError)  # the input is at fault, not the conversion
    assert not (tmp_path / "bad.fp16.onnx").exists()
    line = _one_error_line(_through_the_boundary(lambda: convert_file(bad, tmp_path / "bad.fp16.onnx")))
    assert line.startswith("error: bad.onnx: onnx rejects the model: [ShapeInferenceError]")


def test_what_the_fp16_conversion_cannot_read_or_handle_is_a_conversion_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an ONNX model")
    with pytest.raises(ConversionError, match=r"^cannot read the ONNX model .*corrupt\.onnx: Error parsing message"):
        convert_file(corrupt, tmp_path / "corrupt.fp16.onnx")
    with pytest.raises(Fp16ConversionError, match=r"^branching\.onnx: node If has a subgraph: not supported"):
        convert_file(_with_subgraph(tmp_path / "branching.onnx"), tmp_path / "branching.fp16.onnx")


def test_onnx_runtime_failing_on_a_corrupt_file_is_a_runtime_failure(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not an ONNX model")
    runner = get_backend("ort-cpu").runner(OnnxFile(corrupt), RunnerOptions())
    with pytest.raises(RuntimeFailure, match=r"^ort-cpu: onnxruntime could not load .*corrupt.onnx: "
                                             r"\[ONNXRuntimeError\].*INVALID_PROTOBUF"):
        runner.activate()
    assert not runner.is_active


def test_profile_reports_a_corrupt_cached_onnx_file_in_one_line(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``profile`` reuses the ONNX files of its cache: a corrupt one is an ``error:`` line, not a traceback."""
    monkeypatch.setenv("VITRES_DEPLOY_CACHE", str(tmp_path / "cache"))
    space_file = tmp_path / "mini.json"
    space_file.write_text(json.dumps(MINI))
    space = SearchSpace.from_dict(MINI)
    settings = ProfileSettings(backend="ort-cpu")  # what the command builds; the files depend on its opset
    cached = [onnx_cache_path(space, entry_target(s), settings) for s in enumerate_entries(space)]
    cached.append(null_source(space, settings).path)  # the empty model timed first, for the per-call overhead
    for path in cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an ONNX model")
    result = CliRunner().invoke(main, ["profile", "--space", str(space_file), "--backend", "ort-cpu", "--workers", "1",
                                       "--out", str(tmp_path / "table.json")])
    line = _one_error_line(result)
    assert result.exit_code == 2
    assert line.startswith("error: ort-cpu: onnxruntime could not load ") and "null-" in line
    assert "INVALID_PROTOBUF" in line
