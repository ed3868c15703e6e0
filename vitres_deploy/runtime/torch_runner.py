"""``torch-cpu`` and ``torch-cuda``: the static module itself, eager, in inference mode.

``torch-cpu`` fixes ``torch.set_num_threads(threads)`` (process-wide; recorded). ``torch-cuda`` runs on
its own stream and is timed with CUDA events; with ``cuda_graphs`` the forward pass is captured once
into a CUDA graph and each run is a graph replay. fp16 (GPU only) runs the module in half precision.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, ProfileError
from .base import Runner, RunnerOptions, TensorSpec


class TorchRunner(Runner):
    """An ``nn.Module`` fed a single input of shape ``(batch, *sample_shape)``."""

    backend = "torch-cpu"
    device = "cpu"

    def __init__(self, module: Any, sample_shape: Sequence[int], options: RunnerOptions | None = None) -> None:
        import torch

        super().__init__()
        self.options = options or RunnerOptions()
        if self.options.precision == "fp16" and self.device == "cpu":
            raise BackendUnavailable(f"{self.backend} runs fp32 only: use --precision fp32")
        self._torch = torch
        self.dtype = torch.float16 if self.options.precision == "fp16" else torch.float32
        self.module = self._place(copy.deepcopy(module).eval())
        self.input_specs = [TensorSpec("input", (self.options.batch, *map(int, sample_shape)), "float32")]
        self._x: Any = None
        self._y: Any = None

    def _place(self, module: Any) -> Any:
        self._torch.set_num_threads(self.options.threads)
        return module.float()

    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        if "input" not in inputs:
            raise ProfileError(f"{self.backend}: missing input 'input'")
        self._x = self._torch.from_numpy(np.ascontiguousarray(inputs["input"], dtype=np.float32)).to(self.dtype)

    def run(self) -> None:
        with self._torch.inference_mode():
            self._y = self.module(self._x)

    def outputs(self) -> dict[str, np.ndarray]:
        self.synchronize()
        return {"output": self._y.float().cpu().numpy()}

    def info(self) -> dict[str, Any]:
        return {"torch": self._torch.__version__, "num_threads": self._torch.get_num_threads(), "mode": "eager"}

    def close(self) -> None:
        self.module = self._x = self._y = None


class TorchCudaRunner(TorchRunner):
    """``torch-cuda``: the module on the GPU, optionally replayed from a CUDA graph."""

    backend = "torch-cuda"
    device = "cuda"

    def __init__(self, module: Any, sample_shape: Sequence[int], options: RunnerOptions | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("torch-cuda: no CUDA GPU is visible to torch")
        self._graph: Any = None
        super().__init__(module, sample_shape, options)
        self.stream = torch.cuda.Stream(device=self.options.device_id)

    def _place(self, module: Any) -> Any:
        return module.to(device=f"cuda:{self.options.device_id}", dtype=self.dtype)

    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        torch = self._torch
        if "input" not in inputs:
            raise ProfileError("torch-cuda: missing input 'input'")
        host = torch.from_numpy(np.ascontiguousarray(inputs["input"], dtype=np.float32))
        self._x = host.to(device=f"cuda:{self.options.device_id}", dtype=self.dtype)
        self._graph = None
        if self.options.cuda_graphs:
            with torch.cuda.stream(self.stream), torch.inference_mode():
                for _ in range(3):  # warm-up on the capture stream, as torch.cuda.graphs recommends
                    self.module(self._x)
            self.stream.synchronize()
            self._graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(self._graph, stream=self.stream):
                self._y = self.module(self._x)
        torch.cuda.synchronize(self.options.device_id)

    def run(self) -> None:
        torch = self._torch
        if self._graph is not None:
            with torch.cuda.stream(self.stream):
                self._graph.replay()
            return
        with torch.cuda.stream(self.stream), torch.inference_mode():
            self._y = self.module(self._x)

    def info(self) -> dict[str, Any]:
        return {"torch": self._torch.__version__, "cuda": self._torch.version.cuda,
                "mode": "cuda-graph" if self.options.cuda_graphs else "eager"}

    def close(self) -> None:
        self._graph = None
        super().close()
