"""``torch-cpu`` and ``torch-cuda``: the static module itself, eager, in inference mode.

Both are built from a :class:`~vitres_deploy.runtime.loaders.ModuleLoader`; activation loads a private copy
of the module. ``torch-cpu`` fixes ``torch.set_num_threads(threads)`` while active (process-wide; recorded;
the previous count comes back on deactivation). ``torch-cuda`` runs on its own stream and is timed with CUDA
events; with ``cuda_graphs`` the forward pass is captured once into a CUDA graph and each run is a graph
replay. fp16 (GPU only) runs the module in half precision. A forward pass that fails is a
:class:`RuntimeFailure`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, RuntimeFailure, first_line
from .base import Runner, RunnerOptions, TensorSpec, require_cuda_device
from .loaders import ModuleLoader


class TorchRunner(Runner):
    """An ``nn.Module`` fed a single input named ``input`` of shape ``(batch, *sample_shape)``."""

    backend = "torch-cpu"
    device = "cpu"

    def __init__(self, model: ModuleLoader, options: RunnerOptions | None = None) -> None:
        super().__init__(options)
        if self.options.precision == "fp16" and self.device == "cpu":
            raise BackendUnavailable(f"{self.backend} runs fp32 only: use precision fp32", field="precision")
        self.model = model
        self.module: Any = None
        self._torch: Any = None
        self._threads: int | None = None
        self._x: Any = None
        self._y: Any = None

    def _activate(self) -> None:
        import torch

        self._torch = torch
        self.dtype = torch.float16 if self.options.precision == "fp16" else torch.float32
        self._start()
        self.module = self._place(copy.deepcopy(self.model()).eval())
        self.input_specs = [TensorSpec("input", (self.options.batch, *self.model.sample_shape), "float32")]

    def _deactivate(self) -> None:
        self.module = self._x = self._y = None
        if self._threads is not None:
            self._torch.set_num_threads(self._threads)
            self._threads = None

    def _start(self) -> None:
        """Take the device: on the CPU, the process's thread count (given back on deactivation)."""
        self._threads = self._torch.get_num_threads()
        self._torch.set_num_threads(self.options.threads)

    def _place(self, module: Any) -> Any:
        return module.float()

    def _bind(self, inputs: dict[str, np.ndarray]) -> None:
        self._x = self._torch.from_numpy(inputs["input"]).to(self.dtype)

    def run(self) -> None:
        try:
            with self._torch.inference_mode():
                self._y = self.module(self._x)
        except Exception as e:  # whatever the module's forward raises
            raise RuntimeFailure(f"{self.backend}: the module failed: {first_line(e)}") from None

    def outputs(self) -> dict[str, np.ndarray]:
        self.synchronize()
        return {"output": self._y.float().cpu().numpy()}

    def info(self) -> dict[str, Any]:
        return {"torch": self._torch.__version__, "num_threads": self._torch.get_num_threads(), "mode": "eager"}


class TorchCudaRunner(TorchRunner):
    """``torch-cuda``: the module on the GPU, optionally replayed from a CUDA graph."""

    backend = "torch-cuda"
    device = "cuda"

    def __init__(self, model: ModuleLoader, options: RunnerOptions | None = None) -> None:
        super().__init__(model, options)
        self._graph: Any = None

    def _start(self) -> None:
        require_cuda_device(self.options.device_id, self.backend)
        self.stream = self._torch.cuda.Stream(device=self.options.device_id)

    def _deactivate(self) -> None:
        self._graph = None
        super()._deactivate()

    def _place(self, module: Any) -> Any:
        return module.to(device=f"cuda:{self.options.device_id}", dtype=self.dtype)

    def _bind(self, inputs: dict[str, np.ndarray]) -> None:
        torch = self._torch
        host = torch.from_numpy(inputs["input"])
        self._x = host.to(device=f"cuda:{self.options.device_id}", dtype=self.dtype)
        self._graph = None
        if self.options.cuda_graphs:
            try:
                with torch.cuda.stream(self.stream), torch.inference_mode():
                    for _ in range(3):  # warm-up on the capture stream, as torch.cuda.graphs recommends
                        self.module(self._x)
                self.stream.synchronize()
                self._graph = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(self._graph, stream=self.stream):
                    self._y = self.module(self._x)
            except Exception as e:  # capture fails on modules that sync with the host
                raise RuntimeFailure(f"torch-cuda: capturing the CUDA graph failed: {first_line(e)}") from None
        torch.cuda.synchronize(self.options.device_id)

    def run(self) -> None:
        torch = self._torch
        try:
            if self._graph is not None:
                with torch.cuda.stream(self.stream):
                    self._graph.replay()
                return
            with torch.cuda.stream(self.stream), torch.inference_mode():
                self._y = self.module(self._x)
        except Exception as e:  # whatever the module's forward raises
            raise RuntimeFailure(f"torch-cuda: the module failed: {first_line(e)}") from None

    def info(self) -> dict[str, Any]:
        return {"torch": self._torch.__version__, "cuda": self._torch.version.cuda,
                "mode": "cuda-graph" if self.options.cuda_graphs else "eager"}
