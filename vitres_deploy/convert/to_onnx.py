"""ONNX export of static modules with the dynamo-based ``torch.onnx.export``.

Used by the export pipeline (whole sub-networks) and by latency profiling (single blocks), so that
what is timed is exactly what gets shipped. This is the one module that calls the exporter: a module it
cannot export is a :class:`~vitres_deploy.errors.ConversionError` naming the exporter's reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConversionError, first_line
from ..files import atomic_write, scratch_folder

DEFAULT_OPSET = 18


def export_onnx(
    module: nn.Module,
    sample_shape: Sequence[int],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "output",
) -> Path:
    """Export ``module`` (in eval mode) for inputs of shape ``(batch, *sample_shape)`` to ``path``.

    With ``dynamic_batch`` the first dimension is symbolic (named ``batch``); otherwise it is 1.
    The module's parameters are stored inside the ONNX file (no external data). Returns ``path``.
    A module the exporter cannot export (or a file it cannot write) is a :class:`ConversionError`.
    """
    path = Path(path)
    # A batch of 1 would be specialised by the exporter: trace with 2 when the batch is dynamic.
    example = torch.zeros(2 if dynamic_batch else 1, *sample_shape, device=_device(module))
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    _run_exporter(module, (example,), dynamic_shapes, path, opset, [input_name], [output_name],
                  f"{type(module).__name__} to {path.name}")
    return path


def _run_exporter(module: nn.Module, args: tuple[Any, ...], dynamic_shapes: tuple[Any, ...] | None, path: Path,
                  opset: int, input_names: list[str], output_names: list[str], what: str) -> None:
    """One quiet call of the dynamo exporter on ``module`` in eval mode (each submodule's mode is put back),
    saved to ``path`` with its weights inside; a failure is a :class:`ConversionError` naming ``what``."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with _quiet():
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=input_names,
                                        output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True,
                                        verbose=False)
            program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many types (torch.export, onnxscript, protobuf, OSError)
        raise ConversionError(f"the PyTorch ONNX exporter could not export {what}: "
                              f"{first_line(_root_cause(e))}") from None
    finally:
        for m, training in modes:
            m.training = training


class _Side(nn.Module):
    """Modules side by side: input ``i`` goes through module ``i`` alone (one exporter call for all)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(part(x) for part, x in zip(self.parts, inputs))


def export_onnx_group(
    items: Sequence[tuple[nn.Module, Sequence[int], str | Path]],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> list[Path]:
    """Export several small modules, each ``(module, sample_shape, path)``, as :func:`export_onnx` would.

    The exporter's fixed cost per call (building its operator registry, decompositions, the graph optimizer)
    is about as large as the work on one transformer block, so the modules are exported side by side in one
    call and each one's graph is cut out of the result (``onnx.utils.extract_model``: exactly the nodes and
    weights between its input and its output, renamed ``input``/``output``). The nodes are the ones a separate
    export makes. If the joint export fails, each module is exported alone, so the error names the module that
    cannot be exported. Each file is written atomically; the joint export is staged in a scratch folder beside
    the first file (:func:`~vitres_deploy.files.scratch_folder`). Returns the paths.
    """
    def one_by_one() -> list[Path]:
        return [atomic_write(path, lambda tmp, m=m, shape=shape: export_onnx(m, shape, tmp, opset=opset,
                                                                             dynamic_batch=dynamic_batch),
                             suffix=".tmp.onnx") for m, shape, path in items]

    if len(items) <= 1:
        return one_by_one()
    side = _Side([m for m, _, _ in items])
    with scratch_folder(Path(items[0][2]).parent, "vitres-group") as tmp:
        joint = tmp / "group.onnx"
        try:
            _export_side(side, [shape for _, shape, _ in items], joint, opset, dynamic_batch)
        except ConversionError:
            return one_by_one()
        return [atomic_write(path, lambda out, i=i: _cut(joint, i, out), suffix=".tmp.onnx")
                for i, (_, _, path) in enumerate(items)]


def _export_side(side: _Side, shapes: Sequence[Sequence[int]], path: Path, opset: int, dynamic_batch: bool) -> None:
    example = tuple(torch.zeros(2 if dynamic_batch else 1, *shape, device=_device(side)) for shape in shapes)
    # One batch dimension per input: with a shared one the exporter computes the batch of one module from
    # another module's input, and the modules could not be cut apart.
    dims = [torch.export.Dim(f"batch{i}", min=1, max=4096) for i in range(len(shapes))]
    dynamic_shapes = (tuple({0: dim} for dim in dims),) if dynamic_batch else None
    _run_exporter(side, (example,), dynamic_shapes, path, opset, [f"input{i}" for i in range(len(shapes))],
                  [f"output{i}" for i in range(len(shapes))], f"a group of {len(shapes)} modules")


def _cut(joint: Path, index: int, out: Path) -> None:
    """Write the graph between ``input<index>`` and ``output<index>`` of ``joint`` to ``out``, with the names a
    single export gives (``input``, ``output``)."""
    import onnx
    import onnx.utils

    onnx.utils.extract_model(str(joint), str(out), [f"input{index}"], [f"output{index}"])
    model = onnx.load(str(out))
    rename = {f"input{index}": "input", f"output{index}": "output"}
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        value.name = rename.get(value.name, value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == f"batch{index}":
                dim.dim_param = "batch"
    for node in model.graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def max_opset() -> int:
    """The newest ONNX opset the installed ``onnx`` package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def _root_cause(error: BaseException) -> BaseException:
    """The innermost explicit cause of ``error``: the exporter wraps the reason in its own step errors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, logs and warnings: they are not errors, and what goes wrong is
    raised (the graph dumps torch.export prints on a failure, onnxscript's logged tracebacks, ...)."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
