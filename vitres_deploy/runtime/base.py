"""The runner interface shared by every backend, and the measurement protocol.

A :class:`Runner` is built from a loader (:mod:`vitres_deploy.runtime.loaders`: an ONNX file for ONNX Runtime
and TensorRT, a static module for PyTorch) and takes its resources when activated. It holds its inputs and
outputs where the device wants them (:meth:`Runner.bind`), so that :meth:`Runner.run` times the execution
alone: no host copies inside the timed region.

:func:`measure` implements the protocol of ``trtexec``: a time-based warm-up, then at least
``min_iterations`` iterations *and* at least ``min_seconds`` of timed runs; each iteration is timed on
its own (wall clock on CPU, CUDA events on GPU) and summarised as :class:`TimingStats`.

With ``flush_cache_mb`` the protocol evicts the caches before every timed iteration, outside the timed
region (reading a CPU buffer larger than the last-level cache, or zeroing a GPU buffer larger than L2,
as Triton's ``do_bench`` does): a block timed alone then loads its weights from memory as it does inside
a network too big for the cache, instead of finding them cached from its previous iteration.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable, RuntimeFailure
from .statistics import Protocol, TimingStats

PRECISIONS = ("fp32", "fp16", "int8")


class NoisyMeasurement(UserWarning):
    """A measurement whose coefficient of variation is above the protocol's limit."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, concrete shape (batch applied) and numpy dtype name of a model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class RunnerOptions:
    """Settings every backend reads; the ones that matter for a backend are recorded with its results.

    ``threads`` fixes the CPU thread count (ONNX Runtime intra-op threads, ``torch.set_num_threads``);
    ``cache_dir`` holds engine and timing caches; ``cuda_graphs`` applies to ``torch-cuda``.
    """

    batch: int = 1
    precision: str = "fp32"
    threads: int = 1
    device_id: int = 0
    cache_dir: Path | None = None
    cuda_graphs: bool = False
    workspace_mb: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BackendUnavailable(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.batch < 1:
            raise BackendUnavailable(f"batch must be >= 1, got {self.batch}")
        if self.threads < 1:
            raise BackendUnavailable(f"threads must be >= 1, got {self.threads}")
        if self.device_id < 0:
            raise BackendUnavailable(f"device_id must be >= 0, got {self.device_id}", field="device_id")


class Runner(ABC):
    """One backend's way to run a model, in Polygraphy's shape: built from a loader, activated, run, deactivated.

    Building a runner only records its loader and options. :meth:`activate` (or entering it as a context
    manager) takes its resources: it calls the loader, creates sessions, engines, device buffers and streams,
    fixes thread settings, and fills :attr:`input_specs`; :meth:`deactivate` (or leaving the context) releases
    them. While active, :meth:`bind` checks the inputs against :attr:`input_specs` (names, shapes, dtypes) once
    for every backend and places them, with the outputs, where the device wants them, so that :meth:`run`
    times the execution alone: no checks and no host copies inside the timed region.

    Subclasses set :attr:`backend` and :attr:`device` and implement :meth:`_activate`, :meth:`_deactivate`,
    :meth:`_bind`, :meth:`run` and :meth:`outputs`. GPU runners set :attr:`stream` on activation (a
    ``torch.cuda.Stream`` their work is enqueued on) so that :meth:`time_iterations` uses CUDA events.
    A library failure while activating or running is a :class:`~vitres_deploy.errors.RuntimeFailure`.
    """

    backend: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"

    def __init__(self, options: RunnerOptions | None = None) -> None:
        self.options = options or RunnerOptions()
        self.input_specs: list[TensorSpec] = []
        self.stream: Any = None
        self.is_active = False

    def activate(self) -> None:
        """Load the model and take the resources it runs with; a failure releases what was taken."""
        if self.is_active:
            raise RuntimeFailure(f"{self.backend}: the runner is already active")
        try:
            self._activate()
        except BaseException:
            self._deactivate()
            self.input_specs, self.stream = [], None
            raise
        self.is_active = True

    def deactivate(self) -> None:
        """Release sessions, engines, device buffers and thread settings (nothing when not active)."""
        if not self.is_active:
            return
        self.is_active = False
        self._deactivate()
        self.input_specs, self.stream = [], None

    @abstractmethod
    def _activate(self) -> None:
        """Call the loader, take the resources, fill :attr:`input_specs` (and :attr:`stream` on a GPU)."""

    @abstractmethod
    def _deactivate(self) -> None:
        """Drop what :meth:`_activate` took; must also work after a partial activation."""

    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Check ``inputs`` (host arrays, by input name) and place them and the outputs where :meth:`run` works."""
        if not self.is_active:
            raise RuntimeFailure(f"{self.backend}: the runner is not active (use it in a with block or activate it)")
        self._bind(self.check_inputs(inputs))

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` as C-contiguous arrays in :attr:`input_specs` order; a :class:`RuntimeFailure` names the first
        input that is missing, unknown, or of another shape or dtype than the model takes."""
        names = [s.name for s in self.input_specs]
        unknown = [n for n in inputs if n not in names]
        if unknown:
            raise RuntimeFailure(f"{self.backend}: unknown input {unknown[0]!r} (the model takes {', '.join(names)})")
        checked = {}
        for spec in self.input_specs:
            if spec.name not in inputs:
                raise RuntimeFailure(f"{self.backend}: missing input {spec.name!r}")
            array = np.asarray(inputs[spec.name])
            if tuple(array.shape) != spec.shape:
                raise RuntimeFailure(f"{self.backend}: input {spec.name!r} has shape {tuple(array.shape)}, "
                                     f"the model takes {spec.shape}")
            if array.dtype != np.dtype(spec.dtype):
                raise RuntimeFailure(f"{self.backend}: input {spec.name!r} is {array.dtype}, the model takes "
                                     f"{spec.dtype}")
            checked[spec.name] = np.ascontiguousarray(array)
        return checked

    @abstractmethod
    def _bind(self, inputs: dict[str, np.ndarray]) -> None:
        """Place the checked ``inputs`` (every input, in :attr:`input_specs` order) and the outputs."""

    @abstractmethod
    def run(self) -> None:
        """Execute once on the bound buffers (GPU runners may return before the device is done)."""

    @abstractmethod
    def outputs(self) -> dict[str, np.ndarray]:
        """Copies of the outputs of the last run, on the host."""

    def synchronize(self) -> None:
        """Wait until the device has finished the work enqueued by :meth:`run`."""
        if self.stream is not None:
            self.stream.synchronize()

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bind ``inputs``, run once and return the outputs on the host (for checks, not for timing)."""
        self.bind(inputs)
        self.run()
        self.synchronize()
        return self.outputs()

    def time_iterations(self, n: int, before: Callable[[], None] | None = None) -> list[float]:
        """Run ``n`` times and return each run's latency in ms (CUDA events on GPU, wall clock on CPU).

        ``before`` (e.g. a cache flush) is called before every run, outside the timed region.
        """
        if self.stream is not None:
            return _time_with_cuda_events(self, n, before)
        out = []
        clock = time.perf_counter_ns
        for _ in range(n):
            if before is not None:
                before()
            t0 = clock()
            self.run()
            out.append((clock() - t0) * 1e-6)
        return out

    def cache_flusher(self, nbytes: int) -> Callable[[], None]:
        """A function that evicts the caches this runner's device uses (``nbytes``: more than the largest)."""
        if self.stream is not None:
            import torch

            buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.stream.device)
            stream = self.stream

            def flush_gpu() -> None:
                with torch.cuda.stream(stream):
                    buffer.zero_()

            return flush_gpu
        return HostCacheFlush(nbytes)

    def info(self) -> dict[str, Any]:
        """Backend-specific settings worth recording beside the results (providers, threads, ...), while active."""
        return {}

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


class HostCacheFlush:
    """Evicts the CPU caches by reading a buffer of ``nbytes`` (more than the last-level cache).

    A read, not a write: it evicts without leaving dirty lines to write back during the timed run.
    """

    def __init__(self, nbytes: int) -> None:
        self.buffer = _flush_buffer(max(1, nbytes // 4))

    def __call__(self) -> None:
        self.buffer.max()


@functools.lru_cache(maxsize=1)
def _flush_buffer(floats: int) -> np.ndarray:
    """The read-only buffer of :class:`HostCacheFlush`, made once per process and size: filling 64 MiB took about
    18 ms of every pass of a cold table on a 2-core CPU."""
    buffer = np.ones(floats, dtype=np.float32)
    buffer.flags.writeable = False
    return buffer


def _time_with_cuda_events(runner: Runner, n: int, before: Callable[[], None] | None) -> list[float]:
    import torch

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        if before is not None:
            before()
        s.record(runner.stream)
        runner.run()
        e.record(runner.stream)
    runner.stream.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs (integers: zeros) of the given specs, reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            out[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        else:
            out[s.name] = np.zeros(s.shape, dtype=s.dtype)
    return out


def measure(runner: Runner, protocol: Protocol | None = None, *, seed: int = 0) -> TimingStats:
    """Time the active ``runner`` on random inputs with the trtexec-like ``protocol`` (one pass); warn above its
    CV limit.

    Warm-up runs until ``warmup_s`` has passed (at least one run); then iterations are timed one by one,
    in chunks of at most about 50 ms, until both ``min_iterations`` and ``min_seconds`` are reached; each
    chunk after the first is sized from the runs so far to end about where both are met (a pass of a short
    protocol is not a third longer than it asks for).
    """
    protocol = protocol or Protocol()
    runner.bind(random_inputs(runner.input_specs, seed))
    runner.run()
    runner.synchronize()
    t0 = time.perf_counter()
    warm = 0
    while warm == 0 or time.perf_counter() - t0 < protocol.warmup_s:
        runner.run()
        warm += 1
        if warm % 8 == 0:
            runner.synchronize()
    runner.synchronize()
    flush = runner.cache_flusher(protocol.flush_cache_mb << 20) if protocol.flush_cache_mb else None
    per_run = max((time.perf_counter() - t0) / warm, 1e-7) + (0.003 if flush else 0.0)
    most = int(min(max(1, 0.05 / per_run), 10_000))
    chunk = min(most, max(1, protocol.min_iterations, math.ceil(protocol.min_seconds / per_run)))
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.extend(runner.time_iterations(chunk, flush))
        elapsed = time.perf_counter() - start
        if len(samples) >= protocol.min_iterations and elapsed >= protocol.min_seconds:
            break
        per_run = elapsed / len(samples)
        left = max(protocol.min_iterations - len(samples), math.ceil((protocol.min_seconds - elapsed) / per_run))
        chunk = min(most, max(1, left))
    stats = TimingStats.from_samples(samples, elapsed, protocol.window_s)
    if stats.cv > protocol.max_cv:
        warnings.warn(
            NoisyMeasurement(
                f"{runner.backend}: coefficient of variation {stats.cv:.1%} is above {protocol.max_cv:.0%} "
                f"(median {stats.median_ms:.4g} ms over {stats.iterations} runs): is the machine busy?"
            ),
            stacklevel=2,
        )
    return stats


def require_cuda_device(device_id: int, backend: str) -> None:
    """Check that torch sees CUDA device ``device_id``; else a :class:`BackendUnavailable` for ``backend`` saying
    how many devices it sees (the one check of every GPU runner and engine build)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not 0 <= device_id < count:
        raise BackendUnavailable(f"{backend}: CUDA device {device_id} does not exist: torch sees {count}"
                                 + ("" if count else " (no CUDA GPU is visible)"), field="device_id")
