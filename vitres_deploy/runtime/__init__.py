"""Runtime backends: one small runner interface (build, run, time) per backend, and the registry.

``ort-cpu``, ``ort-cuda``, ``ort-trt`` and ``tensorrt`` run ONNX files; ``torch-cpu`` and ``torch-cuda``
run the static module. Heavy libraries (onnxruntime, tensorrt) are imported only when a runner is
built, so importing this package costs nothing.
"""

from __future__ import annotations

from .base import NoisyMeasurement, Protocol, Runner, RunnerOptions, TensorSpec, TimingStats, measure, random_inputs
from .registry import BACKENDS, Backend, backend_status, get_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "NoisyMeasurement",
    "Protocol",
    "Runner",
    "RunnerOptions",
    "TensorSpec",
    "TimingStats",
    "backend_status",
    "get_backend",
    "measure",
    "random_inputs",
]
