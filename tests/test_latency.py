"""Latency tables: entries, profiling with real ONNX Runtime sessions, resume, prediction, range, validation, CLI.

Profiling tests use a tiny two-stage space (9 entries) with a loose protocol and one shared export cache,
so the exports are paid once per module; fmnist is used where nothing is timed.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vitres_deploy.arch import Arch, BlockArch, StageArch, max_arch, random_arch
from vitres_deploy.cli import main
from vitres_deploy.errors import ProfileError
from vitres_deploy.latency import (
    Correction,
    Entry,
    EntrySpec,
    LatencyTable,
    ProfileSettings,
    TableSummary,
    ValidationReport,
    arch_entries,
    enumerate_entries,
    fit_correction,
    latency_range,
    measure_onnx,
    predict,
    profile_space,
    profiler,
    validate_table,
    weight_mib,
)
from vitres_deploy.latency.drift import check_fingerprint, rescaled
from vitres_deploy.latency.entries import HeadEntry, StemEntry
from vitres_deploy.latency.fingerprint import device_fingerprint, fingerprint_id
from vitres_deploy.latency.metrics import kendall_tau, mape, ranks, spearman, within
from vitres_deploy.latency.profiler import (
    entry_target,
    new_meta,
    onnx_cache_path,
    prepare_sources,
    resolve_cache_state,
    unsettled_entries,
)
from vitres_deploy.latency.report import Repeatability
from vitres_deploy.latency.table import resolve_table_path, shipped_profiles, shipped_tables
from vitres_deploy.latency.validate import sample_archs
from vitres_deploy.macs import arch_cost
from vitres_deploy.runtime import NoisyMeasurement, OnnxFile, Protocol, TimingStats, get_backend
from vitres_deploy.space import SearchSpace
from vitres_deploy.vit_resnas import Block, ResidualSpatialReduction, vit_resnas

pytestmark = [pytest.mark.usefixtures("torch_one_thread"),
              pytest.mark.filterwarnings("ignore::vitres_deploy.runtime.base.NoisyMeasurement")]

QUICK = Protocol(warmup_s=0.005, min_iterations=20, min_seconds=0.01)
QUICK_FLAGS = ["--warmup", "0.005", "--min-seconds", "0.01", "--min-iterations", "20", "--workers", "1"]


@pytest.fixture(scope="module")
def mini_file(tmp_path_factory: pytest.TempPathFactory, mini: SearchSpace) -> Path:
    path = tmp_path_factory.mktemp("space") / "mini.json"
    path.write_text(json.dumps(mini.to_dict()))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: every ONNX file is exported once."""
    return tmp_path_factory.mktemp("cache")


def quick(cache: Path, **kwargs: object) -> ProfileSettings:
    return ProfileSettings(**{"protocol": QUICK, "workers": 1, "cache_dir": cache, **kwargs})


@pytest.fixture(scope="module")
def mini_table(mini: SearchSpace, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    out = tmp_path_factory.mktemp("tables") / "mini.json"
    return profile_space(mini, quick(cache), out, progress=False)


# --------------------------------------------------------------------------------------- entries


def test_fmnist_entries_are_every_distinct_choice(fmnist: SearchSpace) -> None:
    specs = enumerate_entries(fmnist)
    keys = [s.key for s in specs]
    # stems: 4 stage-1 widths; blocks: (4 + 3 + 5 widths) x 3 heads x 4 MLP widths; reductions: 4 x 3 + 3 x 5
    # width pairs; heads: 5 stage-3 widths
    assert len(keys) == len(set(keys)) == 4 + (4 + 3 + 5) * 3 * 4 + (4 * 3 + 3 * 5) + 5
    assert {k: sum(s.kind == k for s in specs) for k in ("stem", "block", "reduction", "head")} == \
        {"stem": 4, "block": 144, "reduction": 27, "head": 5}
    assert all(EntrySpec.from_key(s.key, fmnist) == s for s in specs)
    rng = random.Random(0)
    for _ in range(20):
        arch = random_arch(fmnist, rng.randrange(10**6))
        assert {s.key for s in arch_entries(arch, fmnist)} <= set(keys)
    assert EntrySpec("block", 2, (128, 4, 384)).sample_shape(fmnist) == (17, 128)
    assert EntrySpec("reduction", 3, (96, 160)).sample_shape(fmnist) == (17, 96)


def test_entry_modules_chain_into_the_network(fmnist: SearchSpace) -> None:
    """Entries are the network's own layers: with its weights, their chain computes the network."""
    arch = random_arch(fmnist, 3)
    model = vit_resnas(arch, fmnist).eval()
    state = model.state_dict()
    x = torch.randn(2, 1, 28, 28)
    blocks = [b for stage in model.stages for b in stage]
    modules = []
    for spec in arch_entries(arch, fmnist):
        module = spec.build(fmnist)
        if spec.kind == "stem":
            assert isinstance(module, StemEntry)
            module.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in ("stem", "cls_token",
                                                                                            "pos_embed")})
        elif spec.kind == "block":
            assert isinstance(module, Block)
            module.load_state_dict(blocks.pop(0).state_dict())
        elif spec.kind == "reduction":
            assert isinstance(module, ResidualSpatialReduction)
            module.load_state_dict(model.reductions[spec.stage - 2].state_dict())
        else:
            assert isinstance(module, HeadEntry)
            module.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in ("norm", "head")})
        modules.append((spec, module))
    y = x
    with torch.no_grad():
        for spec, module in modules:
            assert tuple(y.shape[1:]) == spec.sample_shape(fmnist)
            y = module(y)
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- profiling


def test_profiled_table_is_complete_and_recorded(mini_table: LatencyTable, mini: SearchSpace) -> None:
    assert mini_table.complete and len(mini_table.entries) == 9
    assert all(e.latency_ms > 0 and e.stats.iterations >= QUICK.min_iterations for e in mini_table.entries.values())
    m = mini_table.meta
    assert (m.space, m.backend, m.precision, m.batch, m.threads, m.resolution) == ("mini", "ort-cpu", "fp32", 1, 1, 16)
    assert m.backend_version and m.device and m.cpu_model and m.date and m.package_version
    assert m.protocol.min_iterations == QUICK.min_iterations and m.options["cache"] in ("warm", "cold")
    assert m.runner["intra_op_num_threads"] == 1
    assert mini_table.overhead is not None and mini_table.correction.per_call_ms == mini_table.overhead.median_ms
    loaded = LatencyTable.load(mini_table.path)
    assert loaded.entries == mini_table.entries and loaded.meta == mini_table.meta
    assert not list(mini_table.path.parent.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_interrupted_profile_resumes_where_it_stopped(mini: SearchSpace, cache: Path, tmp_path: Path) -> None:
    out, done = tmp_path / "partial.json", []

    def interrupt_after_three(entry: Entry) -> None:
        done.append(entry.key)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_space(mini, quick(cache), out, progress=False, on_entry=interrupt_after_three)
    partial = LatencyTable.load(out)
    assert sorted(partial.entries) == sorted(done) and not partial.complete
    with pytest.raises(ProfileError, match="incomplete \\(3 of 9 entries finished\\)"):
        latency_range(partial)
    with pytest.raises(ProfileError, match="exists: pass resume to finish it"):
        profile_space(mini, quick(cache), out, progress=False)
    with pytest.raises(ProfileError, match="threads=1, now threads=2"):
        profile_space(mini, quick(cache, threads=2), out, resume=True, progress=False)
    finished = profile_space(mini, quick(cache), out, resume=True, progress=False)
    assert finished.complete
    assert all(finished.entries[k] == partial.entries[k] for k in done)


def test_passes_combine_to_the_median_of_their_medians() -> None:
    passes = [TimingStats.from_samples(samples, 1.0) for samples in ([1.0, 1.1, 1.2], [2.0, 2.2, 2.4], [1.4, 1.5])]
    combined = TimingStats.combine(passes)
    assert combined.median_ms == pytest.approx(1.45)  # medians 1.1, 2.2, 1.45: one slow pass does not move it
    assert combined.iterations == 8 and combined.seconds == 3.0 and combined.min_ms == 1.0
    assert combined.mean_ms == pytest.approx((3.3 + 6.6 + 2.9) / 8)
    every = TimingStats.from_samples([1.0, 1.1, 1.2, 2.0, 2.2, 2.4, 1.4, 1.5], 3.0)
    assert combined.std_ms == pytest.approx(every.std_ms) and combined.cv == pytest.approx(every.cv)
    assert TimingStats.combine(passes[:1]) == passes[0]


def test_rounds_interleave_passes_and_resume_mid_pass(mini: SearchSpace, cache: Path, tmp_path: Path) -> None:
    settings, out, done = quick(cache, protocol=replace(QUICK, rounds=2)), tmp_path / "rounds.json", []
    keys = [s.key for s in enumerate_entries(mini)]

    def interrupt_after_three(entry: Entry) -> None:
        done.append(entry.key)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_space(mini, settings, out, progress=False, on_entry=interrupt_after_three)
    assert done == keys[::-1][:3]  # the second pass runs in reverse order
    partial = LatencyTable.load(out)  # saved on the way out of the interrupt
    assert sorted(partial.missing()) == sorted(keys[:-3]) and all(k in partial.entries for k in keys)
    with pytest.raises(ProfileError, match="incomplete \\(3 of 9 entries finished\\)"):
        partial.require_complete()
    table = profile_space(mini, settings, out, resume=True, progress=False)
    assert table.complete and table.meta.protocol.rounds == 2
    for key, entry in table.entries.items():
        assert len(entry.passes) == 2 and entry.passes[0] == partial.entries[key].pass_stats()[0]
        assert entry.latency_ms == pytest.approx(sum(p.median_ms for p in entry.passes) / 2)
    assert LatencyTable.load(out).entries == table.entries
    report = validate_table(table, samples=4, workers=1, cache_dir=cache, progress=False, save=False)
    for row in report.rows:  # two runs of two passes each; a protocol of the median keeps the median of them
        assert len(row.pass_medians_ms) == 4 and len(row.runs_ms) == 2
        assert row.measured_ms == pytest.approx(float(np.median(row.pass_medians_ms)))


def test_torch_cpu_tables_time_the_static_modules(mini: SearchSpace, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    table = profile_space(mini, quick(cache, backend="torch-cpu"), tmp_path / "torch.json", progress=False)
    assert table.complete and table.meta.backend == "torch-cpu" and table.meta.runner["mode"] == "eager"
    report = validate_table(table, samples=4, workers=1, cache_dir=cache, progress=False)
    assert not (cache / "onnx").exists()  # torch backends time the modules: nothing is exported
    assert report.test_samples == 2 and LatencyTable.load(tmp_path / "torch.json").validation is not None


@pytest.mark.slow
def test_exports_run_in_worker_processes(mini: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(profiler.os, "sync", lambda: synced.append(1))
    settings = ProfileSettings(protocol=QUICK, workers=2, cache_dir=tmp_path)
    targets = [entry_target(s) for s in enumerate_entries(mini)[:2]]
    sources = prepare_sources(mini, targets, settings)
    for t in targets:
        assert sources[t.name] == OnnxFile(onnx_cache_path(mini, t, settings))
        onnx.checker.check_model(str(sources[t.name].path))
    assert synced == [1]  # the exports are on disk before anything is timed
    prepare_sources(mini, targets, settings)
    assert synced == [1]  # nothing new to write back


def test_cache_state_follows_network_size(fmnist: SearchSpace) -> None:
    tiny = SearchSpace.from_dict({**fmnist.to_dict(), "name": "wide", "num_classes": 100_000})
    warm, decision = resolve_cache_state(fmnist, ProfileSettings(), "cpu")
    if decision["last_level_cache_bytes"] is None:
        pytest.skip("the last-level cache size of this CPU is unknown")
    assert decision["cache"] == "warm" and warm.protocol.flush_cache_mb == 0  # fmnist networks are a few MB
    cold, decision = resolve_cache_state(tiny, ProfileSettings(), "cpu")  # a 25M-parameter classifier does not fit
    assert decision["cache"] == "cold" and cold.protocol.flush_cache_mb >= 64
    forced, decision = resolve_cache_state(fmnist, ProfileSettings(cache_state="cold"), "cpu")
    assert decision["cache"] == "cold" and forced.protocol.flush_cache_mb > 0


# ------------------------------------------------------------------------------------ prediction


def test_prediction_is_the_corrected_sum_of_entries(mini_table: LatencyTable, mini: SearchSpace) -> None:
    arch = max_arch(mini)
    p = predict(mini_table, arch)
    keys = [s.key for s in arch_entries(arch, mini)]
    raw = sum(mini_table.entries[k].latency_ms for k in keys)
    c = mini_table.correction
    assert p.entries == len(keys) == 6 and p.sum_ms == pytest.approx(raw)
    assert p.latency_ms == pytest.approx(c.scale * (raw - len(keys) * c.per_call_ms) + c.offset_ms)
    assert sum(p.parts_ms.values()) == pytest.approx(c.scale * p.adjusted_sum_ms)


def synthetic_table(space: SearchSpace, seed: int) -> LatencyTable:
    """A table of random entry latencies (for checking the range search against brute force)."""
    rng = random.Random(seed)
    meta = new_meta(space, ProfileSettings(protocol=Protocol()), get_backend("ort-cpu"))
    table = LatencyTable(space, meta, overhead=TimingStats.from_samples([0.002], 1.0),
                         correction=Correction(scale=1.3, offset_ms=0.01, per_call_ms=0.002))
    for s in enumerate_entries(space):
        stats = TimingStats.from_samples([rng.uniform(0.003, 0.1)], 1.0)
        table.entries[s.key] = Entry.measured(s, space, [stats], meta.protocol)
    return table


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_range_is_exact(seed: int, mini: SearchSpace,
                                every_arch: Callable[[SearchSpace], list[Arch]]) -> None:
    space = SearchSpace.from_dict({
        **mini.to_dict(), "stages": [
            {"embed_dims": [24, 16], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [32, 16], "depths": [2, 1]},
            {"embed_dims": [40, 32], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [48], "depths": [2, 1]},
            {"embed_dims": [48, 40], "heads": [1], "head_dim": 8, "mlp_hidden": [64], "depths": [1]},
        ]})
    table = synthetic_table(space, seed)
    archs = every_arch(space)
    assert len(archs) == space.num_subnets()
    lat = [predict(table, a).latency_ms for a in archs]
    r = latency_range(table)
    assert r.fastest_ms == pytest.approx(min(lat)) and r.slowest_ms == pytest.approx(max(lat))
    assert predict(table, r.fastest).latency_ms == pytest.approx(r.fastest_ms)
    assert predict(table, r.slowest).latency_ms == pytest.approx(r.slowest_ms)


def test_other_space_and_uncovered_archs_are_clear_errors(mini_table: LatencyTable, fmnist: SearchSpace) -> None:
    with pytest.raises(ProfileError, match="is for space 'mini', the arch is of space 'fmnist'"):
        predict(mini_table, random_arch(fmnist, 0))
    wide = Arch("mini", (StageArch(20, (BlockArch(1, 32),)), StageArch(32, (BlockArch(2, 48),))))
    with pytest.raises(ProfileError, match=r"not covered by latency table.*embed_dim=20"):
        predict(mini_table, wide)
    holed = LatencyTable.from_dict(mini_table.to_dict())
    del holed.entries["block/2/32/2/48"]
    with pytest.raises(ProfileError, match="has no entry block/2/32/2/48"):
        predict(holed, max_arch(mini_table.space))
    with pytest.raises(ProfileError, match="incomplete"):
        latency_range(holed)


def test_bad_table_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist: build it with `vitres-deploy profile`"):
        LatencyTable.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="is not valid JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"space": "fmnist"}))
    with pytest.raises(ProfileError, match="is not a vitres-deploy latency table"):
        LatencyTable.load(tmp_path / "other.json")


SHIPPED_TABLE = "amd-epyc/fmnist-ort-cpu-fp32-b1.json"


def shipped_correction() -> str:
    """The scale and offset of the shipped fmnist table's fitted correction, as an error message names them."""
    correction = shipped_table_data()["correction"]
    return f"scale {correction['scale']:g}, offset_ms {correction['offset_ms']:g}"


def shipped_path() -> Path:
    """The shipped fmnist table that ``profiles/amd-epyc/...`` names on this machine."""
    return resolve_table_path(f"profiles/{SHIPPED_TABLE}")


def shipped_table_data() -> dict:
    """The plain form of the shipped fmnist table (a complete, validated table to tamper with)."""
    return json.loads((shipped_path()).read_text())


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["entries"]["stem/32"].update(latency_ms=float("nan")), "entry stem/32 latency_ms is nan"),
    (lambda d: d["entries"]["stem/32"].update(latency_ms=-14.6), "entry stem/32 latency_ms is -14.6"),
    (lambda d: d["entries"]["stem/32"].update(latency_ms=float("inf")), "entry stem/32 latency_ms is inf"),
    (lambda d: d["entries"]["stem/32"]["stats"].update(median_ms=float("nan")), "entry stem/32 median_ms is nan"),
    (lambda d: d["entries"]["stem/32"].update(latency_ms=None), "entry stem/32 latency_ms is None"),
    (lambda d: d["entries"]["stem/32"]["stats"].update(median_ms="0.1"), "median_ms is '0.1'"),
    (lambda d: d["entries"]["stem/32"]["stats"].update(iterations=0), "iterations is 0"),
    (lambda d: d["entries"].update({"stem/999": d["entries"]["stem/32"]}), "stem/999 is not a choice of space"),
    (lambda d: d.update(entries=[]), "malformed"),
    (lambda d: d["overhead"].update(median_ms=-1.0), "overhead median_ms is -1.0"),
    (lambda d: d["correction"].update(scale="x"), "correction scale is 'x'"),
    (lambda d: d["correction"].update(offset_ms=float("nan")), "correction offset_ms is nan"),
    (lambda d: [e.update(latency_ms=1e308) for e in d["entries"].values()], "latency_ms is 1e+308: it must be a "
                                                                            "finite number above 0 and at most 1e+06"),
    (lambda d: d["entries"]["stem/32"]["stats"].update(p99_ms=1e300), "entry stem/32 p99_ms is 1e+300"),
    (lambda d: d["correction"].update(offset_ms=-1e7), "correction offset_ms is -10000000.0"),
    (lambda d: d["correction"].update(offset_ms=-1e6), "predicts -1e+06 ms for the fastest arch of its space"),
    (lambda d: d["correction"].update(per_call_ms=1.0), "ms for the fastest arch of its space: its correction "
                                                        f"({shipped_correction()}, per_call_ms 1)"),
    (lambda d: d["correction"].update(per_call_ms=1e7), "correction per_call_ms is 10000000.0"),
    (lambda d: d["correction"].update(scale=1e3), "correction scale is 1000.0"),
    (lambda d: d["correction"].update(spill_ms_per_mib=-0.1), "correction spill_ms_per_mib is -0.1"),
    (lambda d: d["correction"].update(spill_ms_per_mib=0.1, spill_above_mib=float("inf")),
     "correction spill_above_mib is inf"),
    (lambda d: d["entries"]["stem/32"].update(latency_ms="0.1"), "entry stem/32 latency_ms is '0.1'"),
    (lambda d: d["meta"].update(batch="x"), "batch is 'x': it must be a whole number of at least 1"),
    (lambda d: d["meta"].update(threads=-3), "threads is -3: it must be a whole number of at least 1"),
    (lambda d: d["meta"].update(backend=None), "backend is None: it must be text"),
    (lambda d: d["meta"]["protocol"].update(warmup_s=float("nan")), "is malformed: protocol: warmup_s nan must be"),
    (lambda d: d["meta"]["protocol"].update(recheck_rounds=-1),
     "is malformed: protocol: recheck_rounds -1 must be a whole number of at least 0"),
])
def test_tables_with_impossible_values_are_refused_on_load(tmp_path: Path, edit, message: str) -> None:
    """NaN, infinite, negative, mistyped values and unknown entries: one-line errors, on load and in the CLI."""
    data = shipped_table_data()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=re.escape(message)):
        LatencyTable.load(path)
    r = CliRunner().invoke(main, ["predict", "--profile", str(path), "--arch", "max"])
    assert r.exit_code == 2 and r.output.startswith("error: latency table") and len(r.output.splitlines()) == 1


def test_shipped_tables_pass_the_value_checks() -> None:
    for path in shipped_profiles().glob("*/*/*.json"):
        assert LatencyTable.load(path).complete


def test_shipped_tables_are_filed_by_device_and_fingerprint() -> None:
    """``profiles/<device>/<fingerprint id>/<file>``: the folders say what each table records, and
    ``profiles/<device>/<file>`` names one of them: this machine's where one of them was measured here."""
    paths = sorted(shipped_profiles().glob("*/*/*.json"))
    assert len(paths) >= 6
    here = device_fingerprint("cpu")
    for path in paths:
        meta = json.loads(path.read_text())["meta"]
        assert path.parent.parent.name == meta["device_slug"]
        assert path.parent.name == meta["fingerprint"]["id"] == fingerprint_id(meta["fingerprint"])
        candidates = shipped_tables(path.name, meta["device_slug"])
        resolved = resolve_table_path(f"profiles/{meta['device_slug']}/{path.name}")
        assert path in candidates and resolved in candidates
        if any(json.loads(c.read_text())["meta"]["fingerprint"]["id"] == here["id"] for c in candidates):
            assert check_fingerprint(LatencyTable.load(resolved)) == []


def test_validating_a_shipped_table_writes_a_copy_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped table is a read-only input: validation writes (and names) a copy; the package is untouched."""
    shipped = shipped_path()
    before = shipped.read_bytes()
    with pytest.raises(ProfileError, match="is shipped with vitres-deploy and is read-only"):
        LatencyTable.load(shipped).save()
    monkeypatch.chdir(shipped_profiles().parent)  # here profiles/ is the shipped folder itself: --out is needed
    r = CliRunner().invoke(main, ["profile", "validate", "--profile", f"profiles/{SHIPPED_TABLE}", "--samples", "4"])
    assert r.exit_code == 2 and r.output.startswith("error: latency table") and "pass --out" in r.output
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["profile", "validate", "--profile", f"profiles/{SHIPPED_TABLE}", "--samples", "4",
                                  "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert f"validated table written to profiles/{SHIPPED_TABLE}" in r.output
    assert shipped.read_bytes() == before
    copy = LatencyTable.load(tmp_path / "profiles" / SHIPPED_TABLE)
    assert copy.validation is not None and len(copy.validation.rows) == 4


def test_validating_a_table_another_process_writes_is_refused_before_measuring(tmp_path: Path) -> None:
    """`profile validate` holds the lock of the table it writes: while another process holds it (a profile or a
    validation of that table), it is refused in one line and the table is left as it was."""
    from vitres_deploy.rundir import hold_output

    table = tmp_path / "t.json"
    shutil.copyfile(shipped_path(), table)
    before = table.read_bytes()
    with hold_output(table):
        r = CliRunner().invoke(main, ["profile", "validate", "--profile", str(table), "--samples", "4",
                                      "--workers", "1"], env={"VITRES_DEPLOY_CACHE": str(tmp_path / "cache")})
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: --out {table} is in use by another vitres-deploy process (pid ")
    assert table.read_bytes() == before and not (tmp_path / "cache").exists()


def test_measure_onnx_uses_the_table_protocol(mini_table: LatencyTable, mini: SearchSpace, cache: Path) -> None:
    """The table's protocol, not a default one: its rounds (one pass each), its CV limit and its timed seconds."""
    spec = enumerate_entries(mini)[0]
    path = onnx_cache_path(mini, entry_target(spec), quick(cache))
    protocol = Protocol(warmup_s=0.0, min_iterations=20, min_seconds=0.1, max_cv=1e-9, rounds=3)
    table = replace(mini_table, meta=replace(mini_table.meta, protocol=protocol))
    with pytest.warns(NoisyMeasurement) as warned:  # max_cv=1e-9: every pass is reported as noisy
        measured = measure_onnx(table, path, cache_dir=cache)
    stats = measured.stats
    assert len([w for w in warned if issubclass(w.category, NoisyMeasurement)]) == protocol.rounds
    assert len(measured.passes) == protocol.rounds and measured.statistic == "median"
    assert measured.latency_ms == pytest.approx(float(np.median([p.median_ms for p in measured.passes])))
    assert stats.median_ms > 0 and stats.iterations >= protocol.rounds * protocol.min_iterations
    assert stats.seconds >= protocol.rounds * protocol.min_seconds


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", ["fmnist-ort-cpu-fp32-b1.json", "vit-resnas-tiny@112-ort-cpu-fp32-b1.json"])
def test_validation_networks_span_the_whole_latency_range(name: str) -> None:
    table = LatencyTable.load(resolve_table_path(f"profiles/amd-epyc/{name}"))
    span = latency_range(table)
    archs = sample_archs(table, 20, seed=3)
    assert archs == sample_archs(table, 20, seed=3) and archs != sample_archs(table, 20, seed=4)
    assert len(set(archs)) == 20
    assert archs[0] == span.fastest and archs[-1] == span.slowest  # the slowest is held out (odd index)
    ms = [predict(table, a).latency_ms for a in archs]
    assert ms == sorted(ms)
    width = (span.slowest_ms - span.fastest_ms) / 20
    # one network per stratum of the range: no gap much wider than a stratum, the top fifth as full as the rest
    assert max(b - a for a, b in itertools.pairwise(ms)) < 2.5 * width
    assert sum(m >= span.slowest_ms - 4 * width for m in ms) >= 4
    # uniform sampling per choice leaves the top of the range empty: what this replaces
    rng = random.Random(3)
    uniform = [predict(table, random_arch(table.space, rng.randrange(10**6))).latency_ms for _ in range(20)]
    assert max(uniform) < span.slowest_ms - 2 * width


def test_validation_fits_on_half_reports_on_the_other(mini_table: LatencyTable, cache: Path, tmp_path: Path) -> None:
    path = shutil.copy(mini_table.path, tmp_path / "mini.json")
    report = validate_table(path, samples=4, seed=0, workers=1, cache_dir=cache, progress=False)
    written = json.loads(Path(path).read_text())["validation"]
    for key in ("mape", "max_error_pct", "within_5pct", "within_10pct", "kendall_tau", "spearman",
                "noise_cv_median", "uncalibrated", "correction"):
        assert key in written
    e = report.errors
    assert 0 <= e.within_5pct <= e.within_10pct <= 1
    assert report.fit_samples == 2 and report.test_samples == 2
    assert [r.split for r in report.rows] == ["fit", "test", "fit", "test"]
    stored = LatencyTable.load(path)
    assert stored.validation.errors.mape == pytest.approx(e.mape)
    assert stored.validation == report and written == report.to_dict()
    assert stored.correction.fitted_on == 2 and stored.correction.model in ("offset", "scale+offset")
    test_rows = report.test_rows
    assert len(test_rows) == 2 and all(r.split == "test" for r in test_rows)
    assert e.mape == pytest.approx(sum(abs(r.error_pct) for r in test_rows) / len(test_rows))
    assert e.within_10pct == sum(abs(r.error_pct) <= 10 for r in test_rows) / len(test_rows)
    assert e.within_5pct == sum(abs(r.error_pct) <= 5 for r in test_rows) / len(test_rows)


@pytest.mark.parametrize("name", ["fmnist-ort-cpu-fp32-b1.json", "vit-resnas-tiny@112-ort-cpu-fp32-b1.json"])
def test_shipped_reports_read_typed_and_write_back_unchanged(name: str) -> None:
    table = LatencyTable.load(resolve_table_path(f"profiles/amd-epyc/{name}"))
    stored = json.loads(table.path.read_text())["validation"]
    report = table.validation
    assert isinstance(report, ValidationReport) and report.samples == stored["samples"] == len(report.rows)
    assert report.errors.mape == stored["mape"] and len(report.test_rows) == stored["test_samples"]
    written = report.to_dict()
    # every stored figure reads back unchanged; the verdict is derived from them (written by newer versions)
    assert {k: v for k, v in written.items() if k not in ("protocol", "validated", "blame")} == \
        {k: v for k, v in stored.items() if k not in ("protocol", "validated", "blame")}
    assert written["validated"] == (report.errors.within_10pct >= 0.95 and report.errors.kendall_tau >= 0.9)
    assert Protocol.from_dict(written["protocol"]) == Protocol.from_dict(stored["protocol"]) == report.protocol
    summary = TableSummary.of(table).to_dict()
    assert summary["validation"] == {k: v for k, v in written.items() if k != "rows"}
    assert sum(k["count"] for k in summary["kinds"].values()) == summary["entries"] == summary["expected_entries"]
    assert summary["range"] == latency_range(table).to_dict()


def test_repeatability_tells_a_move_of_the_machine_from_noise() -> None:
    first = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00]
    moved = [v * 0.96 for v in first]  # every network 4% faster in the second run: the machine moved
    moved[3] *= 1.02
    r = Repeatability.of(first, moved)
    assert r.median_change_pct == pytest.approx(4.0) and r.p90_change_pct == pytest.approx(4.0)
    assert r.max_change_pct == pytest.approx(4.0)
    assert r.shift_pct == pytest.approx(-4.0)
    assert r.p90_around_shift_pct == pytest.approx(0.192)  # one network of ten 1.92 points off the move
    assert Repeatability.from_dict(r.to_dict()) == r
    old = {"median_change_pct": 1.0, "p90_change_pct": 2.0, "max_change_pct": 3.0}  # a report written before the shift
    assert Repeatability.from_dict(old).shift_pct is None and Repeatability.from_dict(old).to_dict() == old
    with pytest.raises(KeyError):
        Repeatability.from_dict({"median_change_pct": 1.0, "p90_change_pct": 2.0})


def test_correction_fit_keeps_the_scale_only_when_it_helps() -> None:
    x = [0.10, 0.15, 0.20, 0.25, 0.30, 0.35]
    scaled = fit_correction(x, [1.1 * v + 0.01 for v in x], per_call_ms=0.002)
    assert scaled.model == "scale+offset"
    assert scaled.scale == pytest.approx(1.1) and scaled.offset_ms == pytest.approx(0.01)
    shifted = fit_correction(x, [v + 0.02 + (0.001 if i % 2 else -0.001) for i, v in enumerate(x)], 0.002)
    assert shifted.model == "offset" and shifted.scale == 1.0
    assert shifted.offset_ms == pytest.approx(0.02, abs=1e-3)
    # a table of a CPU twice as fast, validated here on 6 networks (3 fitted): the scale is found from 3
    slower = fit_correction([0.2, 0.5, 0.9], [0.41, 1.02, 1.79], 0.002)
    assert slower.model == "scale+offset" and slower.scale == pytest.approx(1.98, rel=0.03)



def test_correction_fit_finds_the_weights_a_cache_cannot_hold() -> None:
    """Networks whose weights outgrow the cache pay per MiB beyond it (measured so on an 8 MiB L3); given the
    weights, the fit finds the knee and the rate, and predicts a held-out network the other models miss."""
    x = [0.30 + 0.1 * i for i in range(12)]
    mib = [0.2 + 0.4 * i for i in range(12)]
    truth = Correction(offset_ms=-0.02, spill_ms_per_mib=0.09, spill_above_mib=2.6)
    measured = [truth.apply(v, w) * (1.004 if i % 2 else 0.996) for i, (v, w) in enumerate(zip(x, mib))]
    fitted = fit_correction(x, measured, 0.007, mib)
    assert fitted.model == "offset+spill" and fitted.scale == 1.0
    assert fitted.spill_above_mib == pytest.approx(2.6) and fitted.spill_ms_per_mib == pytest.approx(0.09, rel=0.1)
    assert fitted.details["loo_mape_pct"]["offset+spill"] < fitted.details["loo_mape_pct"]["scale+offset"]
    held_out = (1.55, 5.5)  # a larger network than any fitted
    assert fitted.apply(*held_out) == pytest.approx(truth.apply(*held_out), rel=0.02)
    assert abs(fit_correction(x, measured, 0.007).apply(*held_out) / truth.apply(*held_out) - 1) > 0.03
    linear = fit_correction(x, [v + 0.02 + (0.001 if i % 2 else -0.001) for i, v in enumerate(x)], 0.007, mib)
    assert linear.model == "offset" and linear.spill_ms_per_mib == 0.0  # no knee in the data: none fitted


def test_a_spill_adds_to_the_prediction_and_the_range(mini_table: LatencyTable, mini: SearchSpace) -> None:
    arch = max_arch(mini)
    plain = predict(mini_table, arch)
    weights = weight_mib(mini_table, arch)
    assert weights == pytest.approx(arch_cost(arch, mini).params * 4 / 2**20)
    knee = weights / 2
    spilling = replace(mini_table, correction=replace(mini_table.correction, spill_ms_per_mib=0.5,
                                                      spill_above_mib=knee))
    p = predict(spilling, arch)
    assert p.latency_ms == pytest.approx(plain.latency_ms + 0.5 * (weights - knee))
    assert p.parts_ms["spill"] == pytest.approx(0.5 * (weights - knee))
    r = latency_range(spilling)
    assert r.slowest_ms == pytest.approx(predict(spilling, r.slowest).latency_ms)
    assert r.fastest_ms == pytest.approx(predict(spilling, r.fastest).latency_ms)
    assert rescaled(spilling, 2.0).correction.apply(1.0, weights) == pytest.approx(
        2 * spilling.correction.apply(1.0, weights))


def test_rank_and_error_statistics() -> None:
    assert kendall_tau([1, 2, 3, 4, 5], [3, 4, 1, 2, 5]) == pytest.approx(0.2)
    assert spearman([1, 2, 3, 4, 5], [3, 4, 1, 2, 5]) == pytest.approx(0.2)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert mape([110, 90], [100, 100]) == pytest.approx(10.0)
    assert within([110, 90], [100, 100], 0.10) == 1.0 and within([110, 90], [100, 100], 0.05) == 0.0


# ------------------------------------------------------------------------------------------- CLI


def test_cli_profile_show_predict(mini_file: Path, cache: Path, tmp_path: Path, fmnist: SearchSpace) -> None:
    runner = CliRunner(env={"VITRES_DEPLOY_CACHE": str(cache)})
    out = tmp_path / "cli.json"
    args = ["profile", "--space", str(mini_file), "--backend", "ort-cpu", *QUICK_FLAGS, "--rounds", "2",
            "--out", str(out)]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert LatencyTable.load(out).complete
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and again.output.strip().splitlines()[-1].startswith("error: ")
    assert "pass --resume" in again.output
    other = runner.invoke(main, [*args, "--resume", "--threads", "2"])  # resumed with another setting: named by flag
    assert other.exit_code == 2
    assert other.output.strip() == (f"error: cannot resume {out}: it was made with --threads=1, now threads=2: use the "
                                    "same settings, or start afresh elsewhere")

    plot = tmp_path / "table.png"
    r = runner.invoke(main, ["profile", "show", str(out), "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["complete"] and shown["entries"] == 9 and shown["range"]["fastest_ms"] <= shown["range"]["slowest_ms"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shown["meta"]["protocol"]["rounds"] == 2
    r = runner.invoke(main, ["profile", "show", str(out)])
    assert r.exit_code == 0 and "in each of 2 interleaved passes" in r.output

    r = runner.invoke(main, ["predict", "--profile", str(out), "--arch", "max", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert isinstance(result["latency_ms"], float) and result["latency_ms"] > 0 and result["space"] == "mini"

    other = tmp_path / "fmnist-arch.json"
    other.write_text(json.dumps(random_arch(fmnist, 1).to_dict()))
    r = runner.invoke(main, ["predict", "--profile", str(out), "--arch", str(other)])
    assert r.exit_code == 2 and r.output.strip().startswith("error: latency table")
    assert "Traceback" not in r.output


def test_profile_show_counts_the_entries_that_did_not_settle(tmp_path: Path) -> None:
    """An entry whose two lowest passes are more than the protocol's 3% apart is unsettled; a table of a fixed
    number of passes has no settling rule and none."""
    data = shipped_table_data()
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    before = unsettled_entries(LatencyTable.load(path))
    settled = [k for k in data["entries"] if k not in before][:3]
    for key in settled:  # every other pass at least 10% above the lowest
        passes = sorted(data["entries"][key]["passes"], key=lambda p: p["floor_ms"])
        for other in passes[1:]:
            other["floor_ms"] = max(other["floor_ms"], passes[0]["floor_ms"] * 1.1)
        data["entries"][key]["passes"] = passes
    path.write_text(json.dumps(data))
    assert set(unsettled_entries(LatencyTable.load(path))) == set(before) | set(settled)
    r = CliRunner().invoke(main, ["profile", "show", str(path), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["unsettled_entries"] == len(before) + 3
    r = CliRunner().invoke(main, ["profile", "show", str(path)])
    assert f"{len(before) + 3} unsettled (best two passes > 3% apart)" in r.output
    data["meta"]["protocol"].update(min_rounds=6)  # every entry timed in each of 6 passes
    path.write_text(json.dumps(data))
    assert unsettled_entries(LatencyTable.load(path)) == []


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["profile", "--backend", "ort-cpu"])
    assert r.exit_code == 2 and "needs --space and --backend" in r.output
    r = runner.invoke(main, ["profile", "validate", "--profile", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and r.output.startswith("error: latency table") and "does not exist" in r.output
    r = runner.invoke(main, ["profile", "--space", "fmnist", "--backend", "nope", "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and r.output.startswith("error: unknown backend 'nope'")
    if get_backend("tensorrt").unavailable_reason():
        r = runner.invoke(main, ["profile", "--space", "fmnist", "--backend", "tensorrt", "--out",
                                 str(tmp_path / "y.json")])
        assert r.exit_code == 2 and r.output.startswith("error: backend tensorrt is not usable here")
    r = runner.invoke(main, ["backends", "--json"])
    assert r.exit_code == 0 and any(b["name"] == "ort-cpu" and b["available"] for b in json.loads(r.stdout))


# ------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["ort-cuda", "torch-cuda", "tensorrt"])
def test_gpu_profile_and_validate(backend: str, mini: SearchSpace, cache: Path, tmp_path: Path) -> None:
    reason = get_backend(backend).unavailable_reason()
    if reason:
        pytest.skip(f"{backend}: {reason}")
    table = profile_space(mini, quick(cache, backend=backend), tmp_path / "gpu.json", progress=False)
    assert table.complete and table.meta.device_slug and table.meta.cuda
    report = validate_table(table, samples=4, workers=1, cache_dir=cache, progress=False)
    test_rows = report.test_rows
    assert len(test_rows) == report.test_samples == 2 and all(r.measured_ms > 0 for r in report.rows)
    assert report.errors.within_10pct == sum(abs(r.error_pct) <= 10 for r in test_rows) / len(test_rows)
    assert report.errors.mape == pytest.approx(sum(abs(r.error_pct) for r in test_rows) / len(test_rows))
    assert LatencyTable.load(table.path).validation == report


def _children(pid: int) -> set[int]:
    """Pids of the live children of ``pid`` (from /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(c) for c in task.read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_build_workers_die_with_a_killed_profile(mini_file: Path, tmp_path: Path, signal_name: str) -> None:
    """SIGKILL or SIGTERM of `profile` while its workers build: no worker outlives it; SIGTERM is an interrupt."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "VITRES_DEPLOY_CACHE": str(tmp_path / "cache")}
    cli = Path(sys.executable).with_name("vitres-deploy")
    proc = subprocess.Popen([str(cli), "profile", "--space", str(mini_file), "--backend", "ort-cpu", "--workers", "2",
                             "--out", str(tmp_path / "t.json"), *QUICK_FLAGS[:-2]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the build workers never started"
    proc.send_signal(getattr(signal, signal_name))
    _, err = proc.communicate(timeout=30)
    if signal_name == "SIGTERM":
        assert proc.returncode == 130 and "interrupted" in err.splitlines(), err
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)]


def _descendants(pid: int) -> set[int]:
    """Pids of every live descendant of ``pid``."""
    found, todo = set(), [pid]
    while todo:
        children = _children(todo.pop())
        todo += children - found
        found |= children
    return found


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_build_workers_die_with_a_profile_killed_as_they_start(mini_file: Path, tmp_path: Path) -> None:
    """SIGKILL of `profile` the moment its first build worker is spawned, while the worker is still starting up
    (importing torch takes seconds): the worker and every other process `profile` started (the resource
    tracker) are gone within 3 s."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "VITRES_DEPLOY_CACHE": str(tmp_path / "cache")}
    cli = Path(sys.executable).with_name("vitres-deploy")
    proc = subprocess.Popen([str(cli), "profile", "--space", str(mini_file), "--backend", "ort-cpu", "--workers", "2",
                             "--out", str(tmp_path / "t.json"), *QUICK_FLAGS[:-2]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not any(b"spawn_main" in _command(c) for c in _children(proc.pid)) and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    family = _descendants(proc.pid)
    spawned = [p for p in family if b"spawn_main" in _command(p)]  # read before the kill: the worker may die at once
    proc.kill()
    proc.wait(timeout=30)
    assert spawned, "no build worker was spawned"
    deadline = time.monotonic() + 3
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [(p, _command(p)) for p in family if _alive(p)]


def test_incomplete_tables_say_what_is_missing(tmp_path: Path) -> None:
    data = shipped_table_data()
    data["overhead"] = None
    path = tmp_path / "no-overhead.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"180 of 180 entries finished; only the per-call overhead is not measured"):
        LatencyTable.load(path).require_complete()


@pytest.mark.skipif(get_backend("tensorrt").unavailable_reason() is None, reason="TensorRT is usable here")
def test_validating_a_table_of_a_missing_backend_fails_before_building(tmp_path: Path) -> None:
    data = shipped_table_data()
    data["meta"]["backend"] = "tensorrt"
    path = tmp_path / "trt.json"
    path.write_text(json.dumps(data))
    r = CliRunner().invoke(main, ["profile", "validate", "--profile", str(path), "--samples", "4",
                                  "--workers", "1"], env={"VITRES_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 2 and r.output.startswith("error: backend tensorrt is not usable here"), r.output
    assert not (tmp_path / "cache").exists()
