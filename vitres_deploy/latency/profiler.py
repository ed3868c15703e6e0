"""Profile a whole space into a latency table, and measure single models the way a table was measured.

Two phases, so that timing never shares the CPU with building:

1. *build*: every entry still missing is exported to ONNX with the shared export primitive (the same
   one that ships networks), in ``workers`` processes, into a cache keyed by what the file depends on;
   backends with an engine build step (TensorRT) build each engine in this process as its export
   finishes, one at a time: builds that share a GPU would time their tactics against each other; the new files
   are synced to disk (``os.sync``) before anything is timed, so their write-back does not share the timing;
2. *time*: entries are timed one after the other with the backend's runner and the protocol, in
   ``protocol.rounds`` interleaved passes (:func:`time_in_passes`), and the table is rewritten atomically
   as it fills (after each entry with one round, every few seconds with several, and on an interrupt),
   so an interrupt loses one entry, or a few seconds of passes, at most.

Besides the entries, the backend's per-call overhead is measured once on an empty model (one
Identity node, or ``nn.Identity`` for torch backends): prediction takes it out of every entry and
adds it back once per network.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .. import __version__
from ..arch import Arch, sample_arch
from ..convert.to_onnx import export_onnx_group
from ..errors import ProfileError, SettingsError
from ..files import atomic_write
from ..macs import weight_bytes
from ..progress import advance_plan, progress_bar
from ..rundir import hold_output
from ..runtime.base import NoisyMeasurement
from ..runtime.cache import cache_root, int8_onnx
from ..runtime.loaders import ModelLoader, ModuleLoader, OnnxFile
from ..runtime.registry import Backend, get_backend
from ..runtime.statistics import Settled, TimingStats, item_latency, needs_pass
from ..space import SearchSpace
from ..vit_resnas import vit_resnas
from ..workers import spawning_workers
from .device import device_info, last_level_cache_bytes
from .entries import EntrySpec, enumerate_entries, network_sample_shape
from .fingerprint import device_fingerprint
from .table import Correction, Entry, LatencyTable, TableMeta, check_resumable, default_table_path
from .timing import ProfileSettings, measure_source, time_until_stable

Job = TypeVar("Job")

#: While timing, a table is rewritten at most this often (and always at the end, or when interrupted): an
#: interrupt that kills the process loses at most this much timing.
SAVE_EVERY_S = 2.0

CACHE_STATES = ("auto", "warm", "cold")


def resolve_cache_state(space: SearchSpace, settings: ProfileSettings,
                        device: str) -> tuple[ProfileSettings, dict[str, Any]]:
    """Decide whether entries are timed with caches flushed before each iteration (``cold``) or not (``warm``).

    An entry should be timed in the cache state it meets inside a network. ``auto`` compares the weights of
    the median random network of the space (64 seeded samples) with the device's last-level cache (CPU) or
    L2 (GPU): networks that do not fit stream their weights from memory block after block, so each entry
    is timed cold; networks that fit keep their weights cached across inferences, so entries are timed warm.
    Returns the settings with the protocol's ``flush_cache_mb`` set, and the decision for the metadata.
    """
    if settings.cache_state not in CACHE_STATES:
        raise SettingsError(f"cache_state {settings.cache_state!r} is not one of {', '.join(CACHE_STATES)}",
                            field="cache_state")
    llc = last_level_cache_bytes(device, settings.device_id)
    flush_mb = max(64, 2 * (llc >> 20)) if llc else 256
    rng = random.Random(0)
    sizes = sorted(weight_bytes(sample_arch(space, rng), space, settings.precision) for _ in range(64))
    decision: dict[str, Any] = {"cache": settings.cache_state, "last_level_cache_bytes": llc,
                                "median_network_weight_bytes": sizes[len(sizes) // 2]}
    if settings.cache_state == "auto":
        decision["cache"] = "cold" if llc is not None and sizes[len(sizes) // 2] > llc else "warm"
        decision["rule"] = "auto: median random network weights vs last-level cache"
    flush = flush_mb if decision["cache"] == "cold" else 0
    return replace(settings, protocol=replace(settings.protocol, flush_cache_mb=flush)), decision


def new_meta(space: SearchSpace, settings: ProfileSettings, backend: Backend,
             cache_decision: dict[str, Any] | None = None) -> TableMeta:
    """Metadata for a new table of ``space`` measured with ``settings`` here (``cache_decision``: from
    :func:`resolve_cache_state`)."""
    dev = device_info(backend.device, settings.device_id)
    return TableMeta(
        space=space.name, family=space.family, resolution=space.image_size, backend=backend.name,
        backend_version=backend.version(), precision=settings.precision, batch=settings.batch,
        threads=settings.threads, device=dev["device"], device_slug=dev["device_slug"], cpu_model=dev["cpu_model"],
        cpu_count=dev["cpu_count"], driver=dev["driver"], cuda=dev["cuda"],
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), package_version=__version__,
        torch_version=torch.__version__, opset=settings.opset, dynamic_batch=settings.dynamic_batch,
        protocol=settings.protocol, options={**settings.recorded_options(), **(cache_decision or {})},
        fingerprint=device_fingerprint(backend.device, settings.device_id),
    )


# ------------------------------------------------------------------------------------ build phase


@dataclass(frozen=True)
class Target:
    """Something to time: a table entry (``entry`` = its key) or a whole network (``arch`` = its dict)."""

    name: str
    entry: str | None = None
    arch: dict[str, Any] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.entry is None) == (self.arch is None):
            raise ValueError(f"target {self.name} needs exactly one of an entry and an arch")

    def module(self, space: SearchSpace) -> nn.Module:
        """The static module, built from the target's seed."""
        if self.entry is not None:
            return EntrySpec.from_key(self.entry, space).build(space, self.seed)
        torch.manual_seed(self.seed)
        return vit_resnas(Arch.from_dict(self.arch), space).eval()

    def sample_shape(self, space: SearchSpace) -> tuple[int, ...]:
        """The shape of one input sample of the module (no batch dimension)."""
        if self.entry is not None:
            return EntrySpec.from_key(self.entry, space).sample_shape(space)
        return network_sample_shape(space)

    def loader(self, space: SearchSpace) -> ModuleLoader:
        """The loader of the module, built when a runner is activated (modules of a whole space would not fit
        in memory together)."""
        return ModuleLoader(functools.partial(self.module, space), self.sample_shape(space))

    def signature(self, space: SearchSpace) -> dict[str, Any]:
        """Everything the exported file depends on besides the exporter settings."""
        geometry = {k: v for k, v in space.to_dict().items() if k not in ("name", "description")}
        return {"entry": self.entry, "arch": self.arch, "seed": self.seed, "space": geometry}


def entry_target(spec: EntrySpec) -> Target:
    """The target of one table entry."""
    return Target(spec.key, entry=spec.key)


def network_target(arch: Arch, seed: int = 0) -> Target:
    """The target of a whole network (validation)."""
    return Target(f"arch/{arch.hash}", arch=arch.to_dict(), seed=seed)


def onnx_cache_path(space: SearchSpace, target: Target, settings: ProfileSettings) -> Path:
    """Where the exported ONNX file of ``target`` is cached."""
    key = {"target": target.signature(space), "torch": torch.__version__, "opset": settings.opset,
           "dynamic_batch": settings.dynamic_batch}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(settings.cache_dir) / "onnx" / f"{target.name.replace('/', '-')}-{digest}.onnx"


@dataclass(frozen=True)
class _BuildJob:
    """Targets exported in one exporter call (:func:`export_onnx_group`), each to its path."""

    space: dict[str, Any]
    targets: tuple[Target, ...]
    paths: tuple[str, ...]
    settings: ProfileSettings


#: Entries exported per exporter call: the exporter's fixed cost per call is shared by this many blocks.
GROUP_SIZE = 16


def _export(job: _BuildJob) -> None:
    """Export the job's targets that are not cached (in one exporter call), and quantize them for int8 tables;
    runs in worker processes too."""
    space = SearchSpace.from_dict(job.space)
    missing = [(t.module(space), t.sample_shape(space), p) for t, p in zip(job.targets, job.paths)
               if not Path(p).is_file()]
    export_onnx_group(missing, opset=job.settings.opset, dynamic_batch=job.settings.dynamic_batch)
    if job.settings.precision == "int8":
        for path in job.paths:
            int8_onnx(path, job.settings.int8, job.settings.cache_dir)


def _jobs(space: SearchSpace, targets: Sequence[Target], settings: ProfileSettings) -> list[_BuildJob]:
    """Build jobs: entries in groups of :data:`GROUP_SIZE` (split evenly over the workers when there are few),
    whole networks one by one (they are large: the fixed cost is small beside them)."""
    entries = [t for t in targets if t.entry is not None]
    size = max(1, min(GROUP_SIZE, -(-len(entries) // max(1, settings.workers))))
    groups = [entries[i:i + size] for i in range(0, len(entries), size)]
    groups += [[t] for t in targets if t.entry is None]
    return [_BuildJob(space.to_dict(), tuple(g), tuple(str(onnx_cache_path(space, t, settings)) for t in g),
                      settings) for g in groups]


def run_builds(jobs: Sequence[Job], workers: int, export: Callable[[Job], Any],
               build: Callable[[Job], None] | None, advance: Callable[[], None] | None = None) -> None:
    """Run ``export`` of every job, in ``workers`` processes when more than one (``export`` and the jobs must
    pickle), and ``build`` of each job in this process once its export is done, one build at a time.

    The schedule of the build phase: CPU work (ONNX exports) in parallel, GPU work (engine builds) in turn,
    overlapping the exports still running. ``advance`` is called once per job done.
    """
    def done(job: Job) -> None:
        if build is not None:
            build(job)
        if advance is not None:
            advance()

    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for job in jobs:
            export(job)
            done(job)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker)
    try:
        with spawning_workers():  # the workers, spawned as jobs are submitted, die with this process
            futures = {pool.submit(export, job): job for job in jobs}
        for fut in as_completed(futures):
            fut.result()
            done(futures[fut])
    except BaseException:
        # an interrupt or a failed job: a running export can take tens of seconds on a busy machine, so the
        # workers are killed rather than waited for (the executor has no public way to do this before 3.14)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _init_worker() -> None:
    """Set up a build worker (dying with its parent since its first import: :mod:`vitres_deploy.workers`): one
    thread, quiet."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def prepare_sources(space: SearchSpace, targets: Sequence[Target], settings: ProfileSettings,
                    advance: Callable[[], None] | None = None) -> dict[str, ModelLoader]:
    """What each target's runner is built from, by target name: the :class:`OnnxFile` of its exported ONNX, or
    for torch backends the :class:`ModuleLoader` that builds its module when the target is timed.

    ONNX files are exported in ``settings.workers`` processes and engines pre-built here, one at a time
    (:func:`run_builds`); cached files are reused. ``advance`` is called once per target done.
    """
    backend = get_backend(settings.backend)
    if backend.source == "module":
        loaders: dict[str, ModelLoader] = {t.name: t.loader(space) for t in targets}
        for _ in targets:
            if advance:
                advance()
        return loaders
    paths = {t.name: onnx_cache_path(space, t, settings) for t in targets}
    todo = [t for t in targets if backend.builds_engines or settings.precision == "int8" or not paths[t.name].is_file()]
    for _ in range(len(targets) - len(todo)):
        if advance:
            advance()

    def built(job: _BuildJob) -> None:  # in this process, one engine build at a time (see run_builds)
        for path in job.paths:
            if backend.builds_engines:
                backend.prebuild(OnnxFile(path), settings.runner_options())
            if advance:
                advance()

    run_builds(_jobs(space, todo, settings), settings.workers, _export, built)
    if todo:  # the new files' dirty pages (gigabytes for large networks) are written back now, not while timing
        os.sync()
    return {name: OnnxFile(path) for name, path in paths.items()}


def null_source(space: SearchSpace, settings: ProfileSettings) -> ModelLoader:
    """An empty model (input -> Identity -> output, stage-1 tokens) to measure the per-call overhead."""
    shape = (space.tokens[0], max(space.stages[0].embed_dims))
    backend = get_backend(settings.backend)
    if backend.source == "module":
        return ModuleLoader.of(nn.Identity(), shape)
    import onnx
    from onnx import TensorProto, helper

    path = cache_root(settings.cache_dir) / "onnx" / f"null-{'x'.join(map(str, shape))}-opset{settings.opset}.onnx"
    if not path.is_file():
        dims = ["batch" if settings.dynamic_batch else 1, *shape]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["output"])], "null",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", settings.opset)], ir_version=10)
        atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
    return OnnxFile(path)


def profile_space(
    space: SearchSpace,
    settings: ProfileSettings,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    on_entry: Callable[[Entry], None] | None = None,
) -> LatencyTable:
    """Measure every distinct choice of ``space`` into a table saved at ``out`` (default under ``profiles/``).

    With ``resume``, an existing table at ``out`` made with the same settings is completed; without it
    an existing file is an error (nothing is overwritten). ``on_entry`` is called after each entry is saved.
    The backend must run the precision here, int8 models in its int8 layout. Steps: decide the cache state, lock
    and open the table (a second process on one table is refused), fill it (:func:`fill_table`).
    """
    backend = get_backend(settings.backend)
    backend.check(settings.precision)
    if settings.precision == "int8" and backend.int8_layout is not None:  # before any export or quantization
        settings.int8.check_layout(backend.int8_layout)
    settings, cache_decision = resolve_cache_state(space, settings, backend.device)
    meta = new_meta(space, settings, backend, cache_decision)
    path = Path(out) if out is not None else default_table_path(space, meta.backend, meta.precision, meta.batch,
                                                                 meta.device_slug)
    with hold_output(path):  # one process writes the table
        table = open_table(space, meta, path, resume=resume)
        fill_table(table, settings, progress, on_entry)
    return table


def fill_table(table: LatencyTable, settings: ProfileSettings, progress: bool,
               on_entry: Callable[[Entry], None] | None) -> None:
    """Build the entries ``table`` misses, time the per-call overhead (once per table), time the entries."""
    space = table.space
    missing = set(table.missing())
    todo = [s for s in enumerate_entries(space) if s.key in missing]
    done = {s.key: table.entries[s.key].pass_stats() for s in todo if s.key in table.entries}
    with progress_bar(progress) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurement)
        build = bar.add_task("build", total=len(todo))
        sources = prepare_sources(space, [entry_target(s) for s in todo], settings, lambda: bar.advance(build))
        fewest = settings.protocol.fewest_rounds
        timings = fewest * len(todo) - sum(min(len(p), fewest) for p in done.values())
        timing = bar.add_task("time", total=timings + (table.overhead is None))
        if table.overhead is None:
            measure_overhead(table, settings)
            bar.advance(timing)

        def timed(entry: Entry, final: bool) -> None:
            advance_plan(bar, timing, another_step=not final and entry.passes_done >= fewest)
            if on_entry is not None and final:
                on_entry(entry)

        time_entries(table, todo, sources, settings, done, timed)
        bar.update(timing, total=bar.tasks[timing].completed)  # a recheck may reopen an item it does not time


def open_table(space: SearchSpace, meta: TableMeta, path: Path, *, resume: bool) -> LatencyTable:
    """The table to fill at ``path``: a new one, saved at once, or with ``resume`` the unfinished one found
    there, if it was made for the same space and settings."""
    if not path.exists():
        table = LatencyTable(space, meta)
        table.save(path)
        return table
    if not resume:
        raise ProfileError(f"{path} exists: pass resume to finish it, or choose another table path", field="resume")
    table = LatencyTable.load(path)
    if table.space.to_dict() != space.to_dict():
        raise ProfileError(f"cannot resume {path}: it was made for another definition of space {space.name!r}")
    check_resumable(table.meta, meta, path)
    return table


def measure_overhead(table: LatencyTable, settings: ProfileSettings) -> None:
    """Time the backend's per-call overhead on an empty model into ``table`` (its overhead, the correction's
    initial offset and per-call terms, and the runner's recorded settings), and save it."""
    info: dict[str, Any] = {}

    def measure_pass(source: ModelLoader, s: ProfileSettings) -> TimingStats:
        stats, runner_info = measure_source(source, s)
        info.update(runner_info)
        return stats

    null = {"null": null_source(table.space, settings)}
    passes = time_until_stable(null, settings, measure_pass=measure_pass)["null"]
    stats = TimingStats.combine(passes)
    per_call = item_latency(passes, settings.protocol)
    table.overhead = stats
    table.correction = Correction(offset_ms=per_call, per_call_ms=per_call)
    table.meta = replace(table.meta, runner=info)
    table.save()


def time_entries(table: LatencyTable, specs: Sequence[EntrySpec], sources: Mapping[str, ModelLoader],
                 settings: ProfileSettings, done: Mapping[str, Sequence[TimingStats]],
                 timed: Callable[[Entry, bool], None]) -> None:
    """Time the entries ``specs`` (models in ``sources``, passes already measured in ``done``) into ``table``
    until each is settled (:func:`~vitres_deploy.latency.timing.time_until_stable`).

    The table is saved at most every :data:`SAVE_EVERY_S` while timing, always at the end, and on an
    interrupt. ``timed(entry, final)`` is called after each pass, ``final`` when the entry needs no more.
    The lowest share of an entry's nodes run by TensorRT (``ort-trt``) is kept in the table's runner record.
    """
    by_key = {s.key: s for s in specs}
    protocol = settings.protocol
    saved_at = time.monotonic()
    last_info: dict[str, Any] = {}

    def measure_pass(source: ModelLoader, s: ProfileSettings) -> TimingStats:
        stats, info = measure_source(source, s)
        last_info.clear()
        last_info.update(info)
        return stats

    def record(key: str, passes: list[TimingStats]) -> None:
        nonlocal saved_at
        note_node_share(table, key, last_info)
        entry = Entry.measured(by_key[key], table.space, passes, protocol)
        table.entries[key] = entry
        if time.monotonic() - saved_at >= SAVE_EVERY_S:
            table.save()
            saved_at = time.monotonic()
        timed(entry, not needs_pass(passes, protocol))

    try:
        time_until_stable({key: sources[key] for key in by_key}, settings, done, record, measure_pass)
    finally:
        table.save()


def note_node_share(table: LatencyTable, key: str, info: Mapping[str, Any]) -> None:
    """Keep in ``table``'s runner record the lowest ``tensorrt_node_share`` of the runner ``info`` of its entries
    (``ort-trt``: the share of nodes not left to the CUDA provider), with the entry ``key`` it was measured on."""
    share = info.get("tensorrt_node_share")
    lowest = table.meta.runner.get("lowest_tensorrt_node_share")
    if share is None or (lowest is not None and lowest["share"] <= share):
        return
    table.meta = replace(table.meta, runner={**table.meta.runner,
                                             "lowest_tensorrt_node_share": {"share": share, "entry": key}})


def unsettled_entries(table: LatencyTable) -> list[str]:
    """Keys of entries whose two lowest passes are further apart than the protocol's ``stable_within``: timed up
    to its ``rounds`` without settling, the machine's noise reaching them (the per-run coefficient of variation
    says nothing here: runs of tens of microseconds vary by 20-40% in a quiet hour too). Empty for a protocol
    without a settling rule (a fixed number of passes)."""
    protocol = table.meta.protocol
    if protocol.fewest_rounds >= protocol.rounds or protocol.statistic != "window_floor":
        return []
    return [k for k, e in table.entries.items()
            if len(e.passes) > 1 and Settled.of(e.passes, protocol).spread > protocol.stable_within]

