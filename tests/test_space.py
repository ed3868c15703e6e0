"""Search spaces: the presets are the issue's tables, user spaces load from JSON/YAML, bad files fail clearly."""

from __future__ import annotations

import json

import pytest
import yaml

from vitres_deploy.arch import max_arch, min_arch
from vitres_deploy.errors import SpaceError
from vitres_deploy.macs import arch_cost
from vitres_deploy.space import PRESETS, SearchSpace, load_space, space_difference

# The paper spaces, transcribed from the Foundation issue: (embed dims, heads, head dim, MLP hidden, depths).
PAPER_TABLES = {
    "vit-resnas-tiny": [
        ([256, 224, 192, 176, 160], [6, 5, 4, 3], 32, [768, 704, 640, 576, 512, 448, 384], [3, 4, 5, 6]),
        ([512, 448, 384, 352, 320], [12, 10, 8, 6], 48, [1536, 1408, 1280, 1152, 1024, 896, 768], [3, 4, 5, 6]),
        ([1024, 896, 768, 704, 640], [12, 10, 8, 6], 64, [3072, 2816, 2560, 2304, 2048, 1792, 1536], [3, 4, 5, 6]),
    ],
    "vit-resnas-small": [
        ([320, 280, 240, 220, 200], [8, 7, 6, 5], 32, [960, 880, 800, 720, 640, 560, 480], [4, 5, 6, 7]),
        ([640, 560, 480, 440, 400], [16, 14, 12, 10], 48, [1920, 1760, 1600, 1440, 1280, 1120, 960], [4, 5, 6, 7]),
        ([1280, 1120, 960, 880, 800], [16, 14, 12, 10], 64, [3840, 3520, 3200, 2880, 2560, 2240, 1920], [4, 5, 6, 7]),
    ],
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_paper_presets_match_the_issue_tables(name: str) -> None:
    space = PRESETS[name]
    assert (space.image_size, space.in_chans, space.num_classes, space.patch_size) == (224, 3, 1000, 14)
    assert space.grids == (16, 8, 4)
    assert space.tokens == (257, 65, 17)
    assert len(space.stages) == 3
    for stage, (embed, heads, head_dim, mlp, depths) in zip(space.stages, PAPER_TABLES[name]):
        assert set(stage.embed_dims) == set(embed) and len(stage.embed_dims) == len(embed)
        assert set(stage.heads) == set(heads) and len(stage.heads) == len(heads)
        assert stage.head_dim == head_dim
        assert set(stage.mlp_hidden) == set(mlp) and len(stage.mlp_hidden) == len(mlp)
        assert set(stage.depths) == set(depths) and len(stage.depths) == len(depths)
        # choices are stored largest first: the order progressive warm-up opens them
        for choices in (stage.embed_dims, stage.heads, stage.mlp_hidden, stage.depths):
            assert list(choices) == sorted(choices, reverse=True)


def test_fmnist_space_is_a_three_stage_demo_space(fmnist: SearchSpace) -> None:
    assert (fmnist.image_size, fmnist.in_chans, fmnist.num_classes) == (28, 1, 10)
    assert fmnist.grids == (7, 4, 2)
    assert fmnist.tokens == (50, 17, 5)
    assert len(fmnist.stages) == 3
    for stage in fmnist.stages:
        assert len(stage.embed_dims) >= 3
        assert len(stage.heads) >= 3
        assert len(stage.mlp_hidden) >= 3
        assert {1, 2, 3} <= set(stage.depths)
    smallest, largest = arch_cost(min_arch(fmnist), fmnist).macs, arch_cost(max_arch(fmnist), fmnist).macs
    assert 5 * smallest <= largest, f"min {smallest} MACs is not 5x below max {largest}"


def test_a_stem_width_per_stage_1_width_pairs_by_size(fmnist: SearchSpace) -> None:
    assert [fmnist.stem_width(w) for w in fmnist.stages[0].embed_dims] == [16, 12, 8, 4]
    assert fmnist.stem_widths == (16, 12, 8, 4) and fmnist.to_dict()["stem_channels"] == [16, 12, 8, 4]
    shuffled = SearchSpace.from_dict({**fmnist.to_dict(), "stem_channels": [4, 16, 8, 12]})
    assert shuffled == fmnist  # sorted largest first, like every list of choices
    tiny = PRESETS["vit-resnas-tiny"]
    assert tiny.stem_width(160) == tiny.stem_width(256) == 24 and tiny.to_dict()["stem_channels"] == 24
    one = SearchSpace.from_dict({**fmnist.to_dict(), "stem_channels": 8})
    assert space_difference(fmnist, one) == "stem_channels: [16, 12, 8, 4] vs 8"


def test_number_of_subnetworks_counts_every_choice(fmnist: SearchSpace) -> None:
    # per block 3 heads x 4 MLP widths, depth 1, 2 or 3 in each of the 3 stages; 4, 3 and 5 embed widths
    per_stage = 12 + 12**2 + 12**3
    assert fmnist.num_subnets() == (4 * per_stage) * (3 * per_stage) * (5 * per_stage)


def test_preset_names_and_reduced_resolution() -> None:
    assert load_space("fmnist") is PRESETS["fmnist"]
    tiny56 = load_space("vit-resnas-tiny@56")
    assert tiny56 == PRESETS["vit-resnas-tiny"].at_resolution(56)
    assert tiny56.name == "vit-resnas-tiny@56" and tiny56.family == "vit-resnas-tiny"
    assert tiny56.image_size == 56 and tiny56.tokens == (17, 5, 2)
    assert tiny56.stages == PRESETS["vit-resnas-tiny"].stages
    assert PRESETS["fmnist"].at_resolution(28) is PRESETS["fmnist"]


def test_the_same_space_is_the_same_name_geometry_and_choices(fmnist: SearchSpace) -> None:
    described = SearchSpace.from_dict({**fmnist.to_dict(), "description": "another text"})
    assert space_difference(fmnist, described) == "" and described == fmnist
    renamed = SearchSpace.from_dict({**fmnist.to_dict(), "name": "my-fmnist"})
    assert space_difference(fmnist, renamed) == "name: fmnist vs my-fmnist" and renamed != fmnist
    assert space_difference(fmnist, fmnist.at_resolution(56)) == "name: fmnist vs fmnist@56; image_size: 28 vs 56"
    stages = fmnist.to_dict()["stages"]
    narrower = SearchSpace.from_dict({**fmnist.to_dict(), "stages": [{**stages[0], "depths": [1, 2]}, *stages[1:]]})
    assert space_difference(fmnist, narrower) == "stage 1 depths: [3, 2, 1] vs [2, 1]"


def test_an_arch_belongs_to_its_family_at_every_resolution() -> None:
    tiny, tiny56 = PRESETS["vit-resnas-tiny"], load_space("vit-resnas-tiny@56")
    assert tiny56.holds_family("vit-resnas-tiny") and not tiny56.holds_family("vit-resnas-tiny@56")
    assert not tiny56.holds_family("fmnist")
    assert max_arch(tiny).validate(tiny56) == max_arch(tiny56)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_user_files(tmp_path, name: str, suffix: str) -> None:
    data = PRESETS[name].to_dict()
    path = tmp_path / f"space{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    loaded = load_space(path)
    assert loaded == PRESETS[name]
    assert loaded.to_dict() == data


def test_hand_written_yaml_space_loads(tmp_path) -> None:
    path = tmp_path / "cifar.yaml"
    path.write_text(
        "name: cifar-small\n"
        "image_size: 32\n"
        "in_chans: 3\n"
        "num_classes: 100\n"
        "patch_size: 8\n"
        "stem_channels: 8\n"
        "stages:\n"
        "  - {embed_dims: [32, 24], heads: [2, 1], head_dim: 8, mlp_hidden: [64, 48], depths: [1, 2]}\n"
        "  - {embed_dims: [64, 48], heads: [2, 1], head_dim: 8, mlp_hidden: [128, 96], depths: [1, 2]}\n"
    )
    space = load_space(str(path))
    assert space.name == "cifar-small" and space.family == "cifar-small"
    assert space.grids == (4, 2) and space.tokens == (17, 5)
    assert space.stages[0].depths == (2, 1)  # sorted largest first whatever the file's order
    assert space.num_subnets() == (2 * (4 + 4**2)) ** 2


def _preset_with(**changes) -> dict:
    data = PRESETS["fmnist"].to_dict()
    for key, value in changes.items():
        if key.startswith("stage2_"):
            data["stages"][1][key.removeprefix("stage2_")] = value
        else:
            data[key] = value
    return data


BAD_SPACES = [
    ("not json", "{'name': 'x'", r"space\.json is not valid JSON: "),
    ("a list", "[1, 2]", r"a search space must be a mapping"),
    ("no stages", _preset_with(stages=[]), r"needs at least one stage"),
    ("missing field", {k: v for k, v in _preset_with().items() if k != "stem_channels"},
     r"search space is missing the field 'stem_channels'"),
    ("stage missing field", _preset_with(stages=[{"embed_dims": [8], "heads": [1], "head_dim": 8, "depths": [1]}]),
     r"stage 1 is missing the field 'mlp_hidden'"),
    ("unknown field", _preset_with(imagesize=28), r"unknown field 'imagesize'"),
    ("heads a string", _preset_with(stage2_heads="4"), r"stage 2: heads='4' is not a non-empty list of integers"),
    ("heads a float", _preset_with(stage2_heads=[2.5]), r"stage 2: heads=2\.5 is not an integer"),
    ("empty depths", _preset_with(stage2_depths=[]), r"stage 2: depths=\[\] is not a non-empty list"),
    ("negative width", _preset_with(stage2_embed_dims=[-8]), r"stage 2: embed_dims must be .* positive"),
    ("narrowing stage", _preset_with(stage2_embed_dims=[24]), r"stage 2 widths must be >= stage 1 widths"),
    ("odd patch", _preset_with(patch_size=7), r"patch_size must be even"),
    ("stem widths not one per stage-1 width", _preset_with(stem_channels=[16, 8]),
     r"stem_channels lists 2 widths for 4 stage-1 widths: give one number, or one per stage-1 width"),
    ("stem width zero", _preset_with(stem_channels=[16, 12, 8, 0]), r"stem_channels must be a positive integer, got 0"),
    ("stem widths strings", _preset_with(stem_channels=["16"]), r"stem_channels='16' is not an integer"),
    ("image not patch multiple", _preset_with(image_size=30), r"image_size 30 is not a multiple of patch_size 4"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in BAD_SPACES], ids=[c[0] for c in BAD_SPACES])
def test_malformed_space_files_fail_with_a_clear_one_line_error(tmp_path, content, message: str) -> None:
    path = tmp_path / "space.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value), "the message names the file"


def test_malformed_yaml_fails_clearly(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match=r"space\.yaml is not valid YAML: ") as info:
        load_space(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vit-resnas-huge", r"unknown search space 'vit-resnas-huge': use one of vit-resnas-tiny, .*fmnist"),
        ("fmnist@abc", r"unknown search space 'fmnist@abc'"),
        ("fmnist@30", r"image_size 30 is not a multiple of patch_size 4"),
        ("fmnist@0", r"image_size must be a positive integer"),
        ("no/such/space.yaml", r"search space file no/such/space\.yaml does not exist"),
        ("space.toml", r"unsupported extension '\.toml', use \.json or \.yaml"),
    ],
)
def test_unknown_spaces_fail_clearly(spec: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        load_space(spec)


@pytest.mark.parametrize("name", ["../../../escaped-space", "/tmp/abs-space", ".hidden", "a/b", ""])
def test_space_names_that_would_leave_the_profiles_folder_are_refused(tmp_path, name):
    """A space's name becomes a table's file name: path separators, a leading dot, absolute paths are refused
    where the space is read, so `profile` writes nothing outside profiles/."""
    from click.testing import CliRunner

    from vitres_deploy.cli import main

    data = PRESETS["fmnist"].to_dict()
    data["name"] = name
    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpaceError, match="space name"):
        load_space(str(path))
    work = tmp_path / "work"
    work.mkdir()
    r = CliRunner().invoke(main, ["profile", "--space", str(path), "--backend", "ort-cpu"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "space name" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.json", "work"]
