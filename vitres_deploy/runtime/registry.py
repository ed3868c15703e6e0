"""The backends by name: what each needs, whether it is usable here and why not, and how to build its runner.

Availability checks import nothing heavy unless the backend's package is installed (``find_spec``
first), so listing backends is cheap and works without onnxruntime-gpu, TensorRT or a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendUnavailable
from .base import Runner, RunnerOptions
from .loaders import ModelLoader, ModuleLoader, OnnxFile
from .versions import (
    SUPPORTED_TENSORRT_MAJORS,
    installed_version,
    major_version,
    nvinfer_loadable,
    ort_tensorrt_major,
)


def cuda_reason(cuda_build: str | None, version: str, gpu_visible: bool) -> str | None:
    """Why torch cannot run on a CUDA GPU here, None when it can: ``cuda_build`` is ``torch.version.cuda`` (None
    on a CPU-only build), ``version`` torch's version, ``gpu_visible`` whether torch sees a GPU."""
    if cuda_build is None:
        base = version.split("+")[0]
        return (f"torch {version} is a CPU-only build: install a CUDA build of torch {base} "
                "(pytorch.org gives the pip command for each CUDA version)")
    if not gpu_visible:
        return "no CUDA GPU is visible to torch (no GPU or no driver)"
    return None


def _cuda_reason() -> str | None:
    import torch

    return cuda_reason(torch.version.cuda, torch.__version__, torch.cuda.is_available())


#: How to install what each kind of backend misses, with the exact package names (extras of pyproject.toml,
#: installed from the source tree as the README's "On a GPU machine" does).
INSTALL_ORT_CPU = "pip install -c constraints.txt -e '.[cpu]' (the onnxruntime package)"
INSTALL_ORT_GPU = ("pip uninstall onnxruntime, then pip install -c constraints.txt -e '.[gpu]' (CUDA 12) or "
                   "-e '.[gpu-cu13]' (CUDA 13) (the onnxruntime-gpu package)")
INSTALL_TENSORRT = ("pip install -c constraints.txt -e '.[gpu]' (tensorrt-cu12, CUDA 12) or -e '.[gpu-cu13]' "
                    "(tensorrt-cu13, CUDA 13)")


def tensorrt_runtime_reason(major: int | None, loadable: bool) -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot start here, None when it can: ``major`` is the TensorRT major
    version its library links (:func:`~.versions.ort_tensorrt_major`; None when it names none), ``loadable``
    whether that version's ``libnvinfer`` loads (:func:`~.versions.nvinfer_loadable`). ONNX Runtime lists the
    provider whenever its own library is installed, TensorRT or not."""
    if major is None:
        return "onnxruntime's TensorRT provider library names no libnvinfer: reinstall onnxruntime-gpu"
    if not loadable:
        return (f"onnxruntime's TensorRT provider needs TensorRT {major} (libnvinfer.so.{major}), which does not "
                f"load: pip install 'tensorrt-cu12-libs=={major}.*' (CUDA 12) or "
                f"'tensorrt-cu13-libs=={major}.*' (CUDA 13)")
    return None


def _ort_reason(provider: str, cuda: bool) -> str | None:
    version = _ort_version()
    if version is None:
        return f"onnxruntime is not installed: {INSTALL_ORT_GPU if cuda else INSTALL_ORT_CPU}"
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return f"onnxruntime {version} has no {provider}: {INSTALL_ORT_GPU}"
    if provider == "TensorrtExecutionProvider":
        major = ort_tensorrt_major()
        reason = tensorrt_runtime_reason(major, major is not None and nvinfer_loadable(major))
        if reason:
            return reason
    return _cuda_reason() if cuda else None


def _tensorrt_reason() -> str | None:
    version = _tensorrt_version()
    if version is None:
        return f"the tensorrt Python package is not installed: {INSTALL_TENSORRT}"
    if major_version(version) not in SUPPORTED_TENSORRT_MAJORS:
        return f"tensorrt {version} is installed; TensorRT 10.x or 11.x is needed: {INSTALL_TENSORRT}"
    return _cuda_reason()


def _ort_version() -> str | None:
    return installed_version("onnxruntime")


def _tensorrt_version() -> str | None:
    return installed_version("tensorrt")


def _torch_version() -> str:
    import torch

    return torch.__version__


def _make_ort(kind: str) -> Callable[[Any, RunnerOptions], Runner]:
    def make(model: OnnxFile, options: RunnerOptions) -> Runner:
        from . import ort

        cls = {"cpu": ort.OrtCpuRunner, "cuda": ort.OrtCudaRunner, "trt": ort.OrtTrtRunner}[kind]
        return cls(model, options)

    return make


def _make_tensorrt(model: OnnxFile, options: RunnerOptions) -> Runner:
    from .tensorrt import EngineFromOnnx, TensorRTRunner

    return TensorRTRunner(EngineFromOnnx(model, options), options)


def _make_torch(cuda: bool) -> Callable[[Any, RunnerOptions], Runner]:
    def make(model: ModuleLoader, options: RunnerOptions) -> Runner:
        from .torch_runner import TorchCudaRunner, TorchRunner

        return (TorchCudaRunner if cuda else TorchRunner)(model, options)

    return make


def _prebuild_tensorrt(model: OnnxFile, options: RunnerOptions) -> None:
    from .tensorrt import build_engine

    build_engine(model(), options)


def _prebuild_ort_trt(model: OnnxFile, options: RunnerOptions) -> None:
    from .ort import OrtTrtRunner

    with OrtTrtRunner(model, options):  # creating the session fills ONNX Runtime's engine cache
        pass


#: Why ``ort-cuda`` refuses int8. ONNX Runtime's CUDA build has int8 kernels for QuantizeLinear,
#: DequantizeLinear and MatMulInteger only (https://github.com/microsoft/onnxruntime/blob/main/docs/FAQ.md), so a
#: static int8 model runs its MatMuls and Convs in float between Q/DQ nodes there; ONNX Runtime does int8 on GPUs
#: through its TensorRT provider (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
#: #quantization-on-gpu).
ORT_CUDA_INT8 = ("ONNX Runtime's CUDA provider has no int8 MatMul or Conv kernels (its int8 on GPUs is the TensorRT "
                 "provider's): int8 runs on ort-cpu, ort-trt and tensorrt")


@dataclass(frozen=True)
class Backend:
    """One backend: its name, device, what it runs (``onnx``: an :class:`OnnxFile`; ``module``: a
    :class:`ModuleLoader`) and how. ``int8_layout`` is the int8 layout its int8 models are quantized in
    (:data:`~vitres_deploy.convert.int8.LAYOUTS`; None without int8); ``refused`` says, by precision, why a
    precision it does not run is not offered."""

    name: str
    device: str
    source: str
    precisions: tuple[str, ...]
    description: str
    _reason: Callable[[], str | None]
    _version: Callable[[], str | None]
    _make: Callable[[Any, RunnerOptions], Runner]
    _prebuild: Callable[[OnnxFile, RunnerOptions], None] | None = None
    int8_layout: str | None = None
    refused: Mapping[str, str] = field(default_factory=dict)

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why not (one line)."""
        return self._reason()

    def version(self) -> str | None:
        """Version of the library doing the work (onnxruntime, tensorrt, torch), None when absent."""
        return self._version()

    @property
    def builds_engines(self) -> bool:
        """Whether engines are built ahead of timing (on the GPU, one at a time)."""
        return self._prebuild is not None

    def check(self, precision: str = "fp32") -> None:
        """Raise :class:`BackendUnavailable` when the backend cannot run here at ``precision``: a precision it never
        runs first (true on any machine, with the reason where it has one), then what this machine lacks."""
        if precision not in self.precisions:
            why = f": {self.refused[precision]}" if precision in self.refused else ""
            raise BackendUnavailable(f"backend {self.name} supports {'/'.join(self.precisions)}, not {precision}{why}")
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(f"backend {self.name} is not usable here: {reason}")

    def prebuild(self, model: OnnxFile, options: RunnerOptions) -> None:
        """Build and cache the engine of ``model`` (no-op for backends without a build step)."""
        if self._prebuild is not None:
            self._prebuild(model, options)

    def runner(self, model: ModelLoader, options: RunnerOptions) -> Runner:
        """An inactive runner of ``model``: an :class:`OnnxFile`, or a :class:`ModuleLoader` for torch backends.

        Nothing is loaded until the runner is activated (``with backend.runner(...) as runner:``).
        """
        self.check(options.precision)
        kind: type = OnnxFile if self.source == "onnx" else ModuleLoader
        if not isinstance(model, kind):
            raise TypeError(f"backend {self.name} runs models given as {kind.__name__}, got {type(model).__name__}")
        return self._make(model, options)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("ort-cpu", "cpu", "onnx", ("fp32", "int8"), "ONNX Runtime, CPU provider, IO binding, fixed threads",
                lambda: _ort_reason("CPUExecutionProvider", False), _ort_version, _make_ort("cpu"),
                int8_layout="ort-cpu"),
        Backend("ort-cuda", "cuda", "onnx", ("fp32", "fp16"), "ONNX Runtime, CUDA provider, IO binding on the GPU",
                lambda: _ort_reason("CUDAExecutionProvider", True), _ort_version, _make_ort("cuda"),
                refused={"int8": ORT_CUDA_INT8}),
        Backend("ort-trt", "cuda", "onnx", ("fp32", "fp16", "int8"), "ONNX Runtime, TensorRT provider, engine cache",
                lambda: _ort_reason("TensorrtExecutionProvider", True), _ort_version, _make_ort("trt"),
                _prebuild_ort_trt, int8_layout="tensorrt"),
        Backend("tensorrt", "cuda", "onnx", ("fp32", "fp16", "int8"), "TensorRT 10.x/11.x Python API, execute_async_v3",
                _tensorrt_reason, _tensorrt_version, _make_tensorrt, _prebuild_tensorrt, int8_layout="tensorrt"),
        Backend("torch-cpu", "cpu", "module", ("fp32",), "PyTorch eager, static module, fixed threads",
                lambda: None, _torch_version, _make_torch(False)),
        Backend("torch-cuda", "cuda", "module", ("fp32", "fp16"), "PyTorch eager on the GPU, optional CUDA graphs",
                _cuda_reason, _torch_version, _make_torch(True)),
    )
}


def get_backend(name: str) -> Backend:
    """The backend called ``name``; unknown names are a :class:`BackendUnavailable` listing the known ones."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_status() -> list[dict[str, Any]]:
    """One row per backend: name, device, precisions, available, version, reason (None when usable)."""
    rows = []
    for b in BACKENDS.values():
        reason = b.unavailable_reason()
        rows.append({"name": b.name, "device": b.device, "precisions": list(b.precisions),
                     "available": reason is None, "version": b.version(), "reason": reason,
                     "description": b.description})
    return rows
