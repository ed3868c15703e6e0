"""Runtime backends: one small runner interface (load, activate, run, time) per backend, and the registry.

``ort-cpu``, ``ort-cuda``, ``ort-trt`` and ``tensorrt`` run ONNX files (an :class:`OnnxFile` loader);
``torch-cpu`` and ``torch-cuda`` run the static module (a :class:`ModuleLoader`). Heavy libraries
(onnxruntime, tensorrt) are imported only when a runner is activated, so importing this package costs nothing.
"""

from __future__ import annotations

from .base import NoisyMeasurement, Runner, RunnerOptions, TensorSpec, measure, random_inputs
from .loaders import ModelLoader, ModuleLoader, OnnxFile
from .registry import BACKENDS, Backend, backend_status, get_backend
from .statistics import Protocol, Settled, TimingStats

__all__ = [
    "BACKENDS",
    "Backend",
    "ModelLoader",
    "ModuleLoader",
    "NoisyMeasurement",
    "OnnxFile",
    "Protocol",
    "Runner",
    "RunnerOptions",
    "Settled",
    "TensorSpec",
    "TimingStats",
    "backend_status",
    "get_backend",
    "measure",
    "random_inputs",
]
