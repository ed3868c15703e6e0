"""What a runner is built from: typed loaders, called when the runner is activated, not before.

As in Polygraphy, a loader is a small callable object that says where a model comes from; the runner calls
it in :meth:`~vitres_deploy.runtime.base.Runner.activate`, so that building a runner costs nothing and a
profile can hold one loader per entry of a whole space without holding its models in memory.

* :class:`OnnxFile`: an ONNX model on disk (ONNX Runtime and TensorRT backends);
* :class:`ModuleLoader`: a static PyTorch module and the shape of one input sample (``torch-*`` backends).

TensorRT engines have their own loaders beside their builder (:mod:`vitres_deploy.runtime.tensorrt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RuntimeFailure

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class OnnxFile:
    """Loader of an ONNX model stored in a file: calling it returns the path of an existing file."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __call__(self) -> Path:
        if not self.path.is_file():
            raise RuntimeFailure(f"ONNX model {self.path} does not exist")
        return self.path


@dataclass(frozen=True)
class ModuleLoader:
    """Loader of a static PyTorch module fed inputs of shape ``(batch, *sample_shape)``.

    ``build`` makes the module when the runner is activated (:meth:`of` wraps a module already built).
    """

    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]

    def __call__(self) -> nn.Module:
        return self.build()

    @classmethod
    def of(cls, module: nn.Module, sample_shape: Sequence[int]) -> ModuleLoader:
        """The loader of ``module``, already in memory."""
        return cls(lambda: module, tuple(int(d) for d in sample_shape))


#: What a backend's runner is built from: an ONNX file (``Backend.source == "onnx"``) or a module.
ModelLoader = OnnxFile | ModuleLoader
