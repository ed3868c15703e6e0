"""Architectures: the file format, the canonical hash, validation messages, max/min/random:SEED."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path

import pytest

from vitres_deploy.arch import (
    Arch,
    BlockArch,
    StageArch,
    max_arch,
    min_arch,
    random_arch,
    sample_arch,
    sample_arch_sized,
    smallest_open_arch,
)
from vitres_deploy.archfile import resolve_arch
from vitres_deploy.errors import ArchError
from vitres_deploy.macs import arch_cost
from vitres_deploy.space import PRESETS, SearchSpace, load_space

TINY = PRESETS["vit-resnas-tiny"]

# The example of the Foundation issue, completed to three valid stages.
ISSUE_EXAMPLE = {
    "space": "vit-resnas-tiny",
    "stages": [
        {"embed_dim": 176, "blocks": [{"heads": 3, "mlp": 704}, {"heads": 4, "mlp": 576}, {"heads": 6, "mlp": 384}]},
        {"embed_dim": 352, "blocks": [{"heads": 6, "mlp": 768}, {"heads": 12, "mlp": 1536}, {"heads": 8, "mlp": 1024}]},
        {"embed_dim": 704, "blocks": [{"heads": 12, "mlp": 3072}] * 3 + [{"heads": 6, "mlp": 1536}]},
    ],
}


def test_architecture_file_round_trips_exactly() -> None:
    arch = Arch.from_dict(ISSUE_EXAMPLE).validate(TINY)
    assert arch.to_dict() == ISSUE_EXAMPLE
    assert json.loads(json.dumps(arch.to_dict())) == ISSUE_EXAMPLE
    assert Arch.from_dict(json.loads(arch.to_json())) == arch
    assert [s.depth for s in arch.stages] == [3, 3, 4]
    assert arch.stages[0].blocks[1] == BlockArch(heads=4, mlp=576)


def test_file_shape_is_exactly_space_stages_embed_dim_blocks_heads_mlp(fmnist: SearchSpace) -> None:
    data = random_arch(fmnist, 3).to_dict()
    assert list(data) == ["space", "stages"]
    for stage in data["stages"]:
        assert list(stage) == ["embed_dim", "blocks"]
        assert all(list(b) == ["heads", "mlp"] for b in stage["blocks"])
        assert all(type(v) is int for b in stage["blocks"] for v in b.values())


def test_the_short_form_parses_back_to_the_same_arch() -> None:
    rng = random.Random(7)
    for arch in [Arch.from_dict(ISSUE_EXAMPLE), max_arch(TINY), min_arch(TINY)] + [sample_arch(TINY, rng)
                                                                                 for _ in range(20)]:
        again = Arch.from_short(arch.short(), TINY.family)
        assert again == arch and again.hash == arch.hash
    for bad in ("", "176", "176[3/704", "176[3]", "176[3/x]", "176[3/704,] | 352[6/768]", "176[3/704]  352[6/768]"):
        with pytest.raises(ArchError, match="expected WIDTH"):
            Arch.from_short(bad, TINY.family)


def test_extra_top_level_keys_are_ignored() -> None:
    arch = Arch.from_dict({**ISSUE_EXAMPLE, "accuracy": 0.7, "latency_ms": 1.2})
    assert arch.to_dict() == ISSUE_EXAMPLE


def test_hash_is_stable_and_insensitive_to_layout(tmp_path, fmnist: SearchSpace) -> None:
    arch = Arch.from_dict(ISSUE_EXAMPLE)
    # pinned: hashes name archs in tables and bundles, so they must not change between versions
    assert arch.hash == "63c494cda96af343"
    assert max_arch(fmnist).hash == "6a0bf89ac45e3f7d"  # the fmnist space of 2026-12-02 (narrow end added)
    # the definition other tools can recompute: sha256 of the sorted, space-free JSON, first 16 hex digits
    canonical = json.dumps(ISSUE_EXAMPLE, sort_keys=True, separators=(",", ":"))
    assert arch.to_json() == canonical
    assert arch.hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]

    reordered = {
        "stages": [
            {"blocks": [{"mlp": b["mlp"], "heads": b["heads"]} for b in s["blocks"]], "embed_dim": s["embed_dim"]}
            for s in ISSUE_EXAMPLE["stages"]
        ],
        "space": "vit-resnas-tiny",
    }
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(reordered, indent=7, separators=(" ,  ", " :\n ")))
    assert resolve_arch(path, TINY).hash == arch.hash

    changed = json.loads(json.dumps(ISSUE_EXAMPLE))
    changed["stages"][2]["blocks"][0]["mlp"] = 2816
    assert Arch.from_dict(changed).hash != arch.hash


def test_archs_are_hashable_values(fmnist: SearchSpace) -> None:
    a, b = random_arch(fmnist, 1), Arch.from_dict(random_arch(fmnist, 1).to_dict())
    assert a == b and hash(a) == hash(b) and len({a, b, max_arch(fmnist)}) == 2


def _tiny_with(stage: int, block: int | None = None, **change) -> Arch:
    data = json.loads(json.dumps(ISSUE_EXAMPLE))
    target = data["stages"][stage - 1] if block is None else data["stages"][stage - 1]["blocks"][block - 1]
    target.update(change)
    return Arch.from_dict(data)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (_tiny_with(2, 3, heads=9), "stage 2 block 3: heads=9 not in {6, 8, 10, 12}"),
        (_tiny_with(1, 2, mlp=700), "stage 1 block 2: mlp=700 not in {384, 448, 512, 576, 640, 704, 768}"),
        (_tiny_with(3, embed_dim=512), "stage 3: embed_dim=512 not in {640, 704, 768, 896, 1024}"),
        (_tiny_with(1, blocks=[{"heads": 3, "mlp": 384}]), "stage 1: depth=1 not in {3, 4, 5, 6}"),
        (Arch("fmnist", Arch.from_dict(ISSUE_EXAMPLE).stages), "arch is of space 'fmnist', expected 'vit-resnas-tiny'"),
        (Arch("vit-resnas-tiny", Arch.from_dict(ISSUE_EXAMPLE).stages[:2]),
         "arch has 2 stages, space 'vit-resnas-tiny' has 3"),
    ],
)
def test_validation_names_the_place_and_the_allowed_values(arch: Arch, message: str) -> None:
    with pytest.raises(ArchError) as info:
        arch.validate(TINY)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "an architecture must be a JSON object with 'space' and 'stages'"),
        ({"space": "fmnist"}, "an architecture must be a JSON object with 'space' and 'stages'"),
        ({"space": "fmnist", "stages": {}}, "'stages' must be a list"),
        ({"space": "fmnist", "stages": [{"embed_dim": 64}]},
         "stage 1: must be an object with 'embed_dim' and 'blocks'"),
        ({"space": "fmnist", "stages": [{"embed_dim": 64, "blocks": 3}]}, "stage 1: 'blocks' must be a list"),
        ({"space": "fmnist", "stages": [{"embed_dim": "64", "blocks": []}]},
         "stage 1: embed_dim='64' is not an integer"),
        ({"space": "fmnist", "stages": [{"embed_dim": 64, "blocks": [{"heads": 4, "mlp": 1.5}]}]},
         "stage 1 block 1: mlp=1.5 is not an integer"),
        ({"space": "fmnist", "stages": [{"embed_dim": 64, "blocks": [{"heads": True, "mlp": 96}]}]},
         "stage 1 block 1: heads=True is not an integer"),
        ({"space": "fmnist", "stages": [{"embed_dim": 64, "blocks": [{"heads": 4, "mlp": 96, "qkv": 1}]}]},
         "stage 1 block 1: must be an object with exactly 'heads' and 'mlp'"),
    ],
)
def test_malformed_architectures_fail_with_a_clear_message(data, message: str) -> None:
    with pytest.raises(ArchError) as info:
        Arch.from_dict(data)
    assert str(info.value) == message


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_max_and_min_take_the_extreme_choices(name: str) -> None:
    space = PRESETS[name]
    big, small = max_arch(space).validate(space), min_arch(space).validate(space)
    for s_big, s_small, ss in zip(big.stages, small.stages, space.stages):
        assert (s_big.embed_dim, s_big.depth) == (max(ss.embed_dims), max(ss.depths))
        assert (s_small.embed_dim, s_small.depth) == (min(ss.embed_dims), min(ss.depths))
        assert set(s_big.blocks) == {BlockArch(max(ss.heads), max(ss.mlp_hidden))}
        assert set(s_small.blocks) == {BlockArch(min(ss.heads), min(ss.mlp_hidden))}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_random_archs_are_deterministic_valid_and_varied(name: str) -> None:
    space = PRESETS[name]
    archs = [random_arch(space, seed) for seed in range(50)]
    assert archs == [random_arch(space, seed) for seed in range(50)]
    for arch in archs:
        arch.validate(space)
    assert len(set(archs)) == 50
    # every choice is reached: each stage's depths and widths all appear among the samples
    for i, ss in enumerate(space.stages):
        assert {a.stages[i].embed_dim for a in archs} == set(ss.embed_dims)
        assert {a.stages[i].depth for a in archs} == set(ss.depths)


def test_sampling_with_a_fraction_opens_only_the_largest_choices(fmnist: SearchSpace) -> None:
    rng = random.Random(0)
    for _ in range(30):
        arch = sample_arch(fmnist, rng, fraction=0.25)
        for s, ss in zip(arch.stages, fmnist.stages):
            assert s.embed_dim in ss.embed_dims[:math.ceil(0.25 * len(ss.embed_dims))]  # the widest 1 or 2
            assert s.depth == ss.depths[0]  # ceil(0.25 * 3) = 1 choice
            assert {b.heads for b in s.blocks} == {ss.heads[0]}


def test_the_smallest_open_arch_takes_the_narrowest_open_choice(fmnist: SearchSpace) -> None:
    assert smallest_open_arch(fmnist, 1.0) == min_arch(fmnist)
    assert smallest_open_arch(fmnist, 0.0) == max_arch(fmnist)  # only the largest choices are open
    half = smallest_open_arch(fmnist, 0.5)
    for s, ss in zip(half.stages, fmnist.stages):
        assert s.embed_dim == ss.embed_dims[math.ceil(0.5 * len(ss.embed_dims)) - 1]
        assert s.depth == ss.depths[math.ceil(0.5 * len(ss.depths)) - 1]
        assert {(b.heads, b.mlp) for b in s.blocks} == {(ss.heads[math.ceil(0.5 * len(ss.heads)) - 1],
                                                       ss.mlp_hidden[math.ceil(0.5 * len(ss.mlp_hidden)) - 1])}
    rng = random.Random(0)
    for _ in range(30):  # no open arch is narrower in any choice
        arch = sample_arch(fmnist, rng, fraction=0.5)
        for s, h in zip(arch.stages, half.stages):
            assert s.embed_dim >= h.embed_dim and s.depth >= h.depth
            assert all(b.heads >= h.blocks[0].heads and b.mlp >= h.blocks[0].mlp for b in s.blocks)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_sized_sampling_moves_from_the_smallest_to_the_largest_arch(name: str) -> None:
    space = PRESETS[name]
    rng = random.Random(0)
    assert sample_arch_sized(space, rng, 0.0, spread=0.0) == min_arch(space)
    assert sample_arch_sized(space, rng, 1.0, spread=0.0) == max_arch(space)
    macs = []
    for size in (0.1, 0.5, 0.9):
        archs = [sample_arch_sized(space, rng, size) for _ in range(40)]
        for arch in archs:
            arch.validate(space)
        assert len(set(archs)) > 10  # spread: not one arch per size
        macs.append(sum(arch_cost(a, space).macs for a in archs) / len(archs))
    assert macs[0] < macs[1] < macs[2]


def test_resolve_arch_accepts_max_min_random_and_files(tmp_path, fmnist: SearchSpace) -> None:
    assert resolve_arch("max", fmnist) == max_arch(fmnist)
    assert resolve_arch("min", fmnist) == min_arch(fmnist)
    assert resolve_arch("random:7", fmnist) == random_arch(fmnist, 7) == resolve_arch("random:7", fmnist)
    assert resolve_arch("random:7", fmnist) != resolve_arch("random:8", fmnist)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(random_arch(fmnist, 5).to_dict()))
    assert resolve_arch(path, fmnist) == random_arch(fmnist, 5)
    assert resolve_arch(str(path), fmnist) == random_arch(fmnist, 5)


def test_archs_keep_their_space_family_at_reduced_resolution() -> None:
    tiny56 = load_space("vit-resnas-tiny@56")
    assert resolve_arch("max", tiny56) == max_arch(TINY)
    assert resolve_arch("random:4", tiny56).space == "vit-resnas-tiny"
    Arch.from_dict(ISSUE_EXAMPLE).validate(tiny56)


def test_resolve_arch_rejects_bad_specs(tmp_path, fmnist: SearchSpace) -> None:
    with pytest.raises(ArchError, match=r"'random:abc': the seed of random:SEED must be an integer"):
        resolve_arch("random:abc", fmnist)
    with pytest.raises(ArchError, match=r"arch 'biggest' is neither max, min, random:SEED nor an existing file"):
        resolve_arch("biggest", fmnist)
    bad = tmp_path / "bad.json"
    bad.write_text('{"space": "fmnist", "stages": [')
    with pytest.raises(ArchError, match=r"arch file .*bad\.json is not valid JSON"):
        resolve_arch(bad, fmnist)
    outside = tmp_path / "outside.json"
    data = max_arch(fmnist).to_dict()
    data["stages"][1]["blocks"][0]["heads"] = 9
    outside.write_text(json.dumps(data))
    with pytest.raises(ArchError, match=r"^stage 2 block 1: heads=9 not in \{1, 2, 4\}$"):
        resolve_arch(outside, fmnist)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(ISSUE_EXAMPLE))
    with pytest.raises(ArchError, match=r"arch is of space 'vit-resnas-tiny', expected 'fmnist'"):
        resolve_arch(other, fmnist)


def test_stage_arch_depth_is_the_number_of_blocks() -> None:
    assert StageArch(64, (BlockArch(4, 96),) * 2).depth == 2


def test_the_readme_example_is_a_valid_architecture_file() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"```json\n(.*?)```", readme, re.S)
    assert example, "README.md shows an architecture file in a ```json block"
    arch = Arch.from_dict(json.loads(example.group(1))).validate(TINY)
    assert json.loads(example.group(1)) == arch.to_dict()
