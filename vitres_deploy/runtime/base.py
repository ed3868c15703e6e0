"""The runner interface shared by every backend, and the measurement protocol.

A :class:`Runner` is built from an ONNX file (ONNX Runtime, TensorRT) or from a static module
(PyTorch). It holds its inputs and outputs where the device wants them (:meth:`Runner.bind`), so
that :meth:`Runner.run` times the execution alone: no host copies inside the timed region.

:func:`measure` implements the protocol of ``trtexec``: a time-based warm-up, then at least
``min_iterations`` iterations *and* at least ``min_seconds`` of timed runs; each iteration is timed on
its own (wall clock on CPU, CUDA events on GPU) and summarised as :class:`TimingStats`.

With ``flush_cache_mb`` the protocol evicts the caches before every timed iteration, outside the timed
region (reading a CPU buffer larger than the last-level cache, or zeroing a GPU buffer larger than L2,
as Triton's ``do_bench`` does): a block timed alone then loads its weights from memory as it does inside
a network too big for the cache, instead of finding them cached from its previous iteration.
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendUnavailable, ProfileError

PRECISIONS = ("fp32", "fp16")


class NoisyMeasurement(UserWarning):
    """A measurement whose coefficient of variation is above the protocol's limit."""


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and to time. Defaults follow ``trtexec`` (200 ms warm-up, 10 iterations, 3 s).

    :func:`measure` times one *pass*. ``rounds`` is for the profiler: it times every entry of a table (or
    every network of a validation) in that many interleaved passes, each with a fresh runner, and keeps the
    median of the per-pass medians (:meth:`TimingStats.combine`), so slow drift of a shared machine hits
    every item alike instead of whichever items it happened to be timing.
    """

    warmup_s: float = 0.2
    min_iterations: int = 10
    min_seconds: float = 3.0
    max_cv: float = 0.05
    flush_cache_mb: int = 0
    rounds: int = 1

    def __post_init__(self) -> None:
        if (self.warmup_s < 0 or self.min_seconds < 0 or self.min_iterations < 1 or self.max_cv <= 0
                or self.flush_cache_mb < 0 or self.rounds < 1):
            raise ProfileError("protocol: needs warmup_s >= 0, min_seconds >= 0, min_iterations >= 1, max_cv > 0, "
                               "flush_cache_mb >= 0 and rounds >= 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class TimingStats:
    """Summary of per-iteration latencies, in milliseconds."""

    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    iterations: int
    seconds: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], seconds: float) -> TimingStats:
        """Statistics of a list of per-iteration latencies (ms) timed over ``seconds`` of wall clock."""
        if not len(samples_ms):
            raise ValueError("no timing samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        return cls(
            median_ms=float(np.median(a)),
            mean_ms=mean,
            min_ms=float(a.min()),
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            std_ms=std,
            cv=std / mean if mean > 0 else math.inf,
            iterations=int(a.size),
            seconds=float(seconds),
        )

    @classmethod
    def combine(cls, passes: Sequence[TimingStats]) -> TimingStats:
        """Statistics of several passes over one item (see :attr:`Protocol.rounds`).

        The median is the median of the per-pass medians, so one pass disturbed by the machine does not
        move it; p90 and p99 are the medians of the passes' too. Mean, std and CV pool every iteration of
        every pass (the spread between passes included); iterations and seconds add up.
        """
        if not passes:
            raise ValueError("no timing passes")
        if len(passes) == 1:
            return passes[0]
        n = sum(p.iterations for p in passes)
        mean = sum(p.mean_ms * p.iterations for p in passes) / n
        spread = sum((p.iterations - 1) * p.std_ms ** 2 + p.iterations * (p.mean_ms - mean) ** 2 for p in passes)
        std = math.sqrt(spread / max(n - 1, 1))
        return cls(
            median_ms=float(np.median([p.median_ms for p in passes])),
            mean_ms=mean,
            min_ms=min(p.min_ms for p in passes),
            p90_ms=float(np.median([p.p90_ms for p in passes])),
            p99_ms=float(np.median([p.p99_ms for p in passes])),
            std_ms=std,
            cv=std / mean if mean > 0 else math.inf,
            iterations=n,
            seconds=sum(p.seconds for p in passes),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingStats:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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


class Runner(ABC):
    """One backend's way to run a model: bind inputs once, run, time.

    Subclasses set :attr:`backend` and :attr:`device`, fill :attr:`input_specs` in their constructor,
    and implement :meth:`bind`, :meth:`run` and :meth:`outputs`. GPU runners also set :attr:`stream`
    (a ``torch.cuda.Stream`` their work is enqueued on) so that :meth:`time_iterations` uses CUDA events.
    """

    backend: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"

    def __init__(self, stream: Any = None) -> None:
        self.input_specs: list[TensorSpec] = []
        self.stream: Any = stream

    @abstractmethod
    def bind(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Place ``inputs`` (host arrays, by input name) and the outputs where :meth:`run` reads and writes."""

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
        host = np.ones(max(1, nbytes // 4), dtype=np.float32)

        def flush_cpu() -> None:
            host.max()  # a read: evicts without leaving dirty lines to write back during the timed run

        return flush_cpu

    def info(self) -> dict[str, Any]:
        """Backend-specific settings worth recording beside the results (providers, threads, ...)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, runners without resources keep the default
        """Release sessions, engines and device buffers."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """Time ``runner`` on random inputs with the trtexec-like ``protocol`` (one pass); warn above its CV limit.

    Warm-up runs until ``warmup_s`` has passed (at least one run); then iterations are timed one by one,
    in chunks of about 50 ms, until both ``min_iterations`` and ``min_seconds`` are reached.
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
    chunk = int(min(max(1, 0.05 / per_run), 10_000))
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.extend(runner.time_iterations(chunk, flush))
        elapsed = time.perf_counter() - start
        if len(samples) >= protocol.min_iterations and elapsed >= protocol.min_seconds:
            break
    stats = TimingStats.from_samples(samples, elapsed)
    if stats.cv > protocol.max_cv:
        warnings.warn(
            NoisyMeasurement(
                f"{runner.backend}: coefficient of variation {stats.cv:.1%} is above {protocol.max_cv:.0%} "
                f"(median {stats.median_ms:.4g} ms over {stats.iterations} runs): is the machine busy?"
            ),
            stacklevel=2,
        )
    return stats
