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

import torch
from torch import nn

from ..errors import ConversionError, first_line

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
    was_training = module.training
    module.eval()
    # A batch of 1 would be specialised by the exporter: trace with 2 when the batch is dynamic.
    example = torch.zeros(2 if dynamic_batch else 1, *sample_shape, device=_device(module))
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
            program.save(str(path), external_data=False)
    except Exception as e:  # the exporter raises many types (torch.export, onnxscript, protobuf, OSError)
        raise ConversionError(f"the PyTorch ONNX exporter could not export {type(module).__name__} to {path.name}: "
                              f"{first_line(_root_cause(e))}") from None
    finally:
        module.train(was_training)
    return path


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
