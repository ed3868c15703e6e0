"""Checkpoints: safetensors + JSON metadata round trip, space checks, corrupt and foreign files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from vitres_deploy.arch import random_arch
from vitres_deploy.checkpoint import load_checkpoint, read_meta, save_checkpoint
from vitres_deploy.errors import CheckpointError, SpaceError
from vitres_deploy.space import PRESETS, SearchSpace
from vitres_deploy.supernet import build_supernet


def test_round_trip_keeps_weights_buffers_and_metadata(tmp_path):
    space = PRESETS["fmnist"]
    net = build_supernet(space)
    for norms in net.stem.norms.values():  # every stem width's BatchNorm statistics
        norms[0].running_mean.uniform_()
    path = save_checkpoint(tmp_path / "a.safetensors", net, {"metrics": {"x": 1.5}})
    loaded = load_checkpoint(path, expect_space=space)
    assert loaded.meta["metrics"] == {"x": 1.5} and "torch" in loaded.meta["packages"]
    arch, x = random_arch(space, 3), torch.randn(2, 1, 28, 28)
    net.eval()
    net.set_active(arch)
    loaded.supernet.set_active(arch)
    assert torch.equal(net(x), loaded.supernet(x))
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)
    assert not list(tmp_path.glob(".*tmp"))


def test_space_mismatch_says_what_differs(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", build_supernet(PRESETS["fmnist"]), {})
    with pytest.raises(CheckpointError, match="not 'vit-resnas-tiny'"):
        load_checkpoint(path, expect_space=PRESETS["vit-resnas-tiny"])
    other = SearchSpace.from_dict({**PRESETS["fmnist"].to_dict(), "num_classes": 5})
    with pytest.raises(CheckpointError, match="num_classes: 10 vs 5"):
        load_checkpoint(path, expect_space=other)
    renamed = SearchSpace.from_dict({**PRESETS["fmnist"].to_dict(), "name": "my-fmnist"})
    with pytest.raises(CheckpointError, match=r"not 'my-fmnist' \(name: fmnist vs my-fmnist\)"):
        load_checkpoint(path, expect_space=renamed)
    described = SearchSpace.from_dict({**PRESETS["fmnist"].to_dict(), "description": "another text"})
    assert load_checkpoint(path, expect_space=described).space == PRESETS["fmnist"]


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="no vitres-deploy metadata"):
        read_meta(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError):
        load_checkpoint(pickled)


def test_wrong_tensors_are_named(tmp_path):
    net = build_supernet(PRESETS["fmnist"])
    path = save_checkpoint(tmp_path / "a.safetensors", net, {})
    meta = read_meta(path)
    tensors = {k: v for k, v in net.state_dict().items() if k != "head.weight"}
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={"vitres_deploy": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        load_checkpoint(tmp_path / "b.safetensors")


def _crafted(tmp_path, edit_meta=None, edit_tensors=None, raw_meta=None):
    """A copy of a real fmnist checkpoint with its metadata and/or tensors edited."""
    net = build_supernet(PRESETS["fmnist"])
    meta = read_meta(save_checkpoint(tmp_path / "real.safetensors", net, {}))
    tensors = dict(net.state_dict())
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    path = tmp_path / "crafted.safetensors"
    save_file(tensors, str(path), metadata={"vitres_deploy": raw_meta if raw_meta is not None else json.dumps(meta)})
    return path


def test_a_crafted_header_is_refused_before_anything_is_built(tmp_path):
    """A stage width of 10^6 in the metadata: refused by the space's limits; a width the limits allow but the
    tensors do not have: refused from the header's shapes (nothing the size of the declared space is built)."""
    wide = _crafted(tmp_path, lambda m: m["space"]["stages"][0].update(embed_dims=[10**6]))
    with pytest.raises(SpaceError, match="embed_dims 1000000 is above the limit"):
        load_checkpoint(wide)
    def widen(meta):
        meta["space"].update(name="crafted")
        meta["space"]["stages"][2].update(embed_dims=[4096])

    with pytest.raises(CheckpointError, match=r"has shape \[.*the supernet of crafted needs \[.*4096"):
        load_checkpoint(_crafted(tmp_path, widen))


def test_bad_checkpoint_metadata_and_tensors_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="has format 'list'"):
        load_checkpoint(_crafted(tmp_path, raw_meta="[1,2,3]"))
    with pytest.raises(CheckpointError, match=r"tensor head.weight has shape \[3, 3\]"):
        load_checkpoint(_crafted(tmp_path, edit_tensors=lambda t: t.update({"head.weight": torch.zeros(3, 3)})))


@pytest.mark.parametrize(("data", "message"), [
    ({"kind": "fmnist", "holdout": [1]}, "a hold-out split is a mapping (seed, fraction or per_class), not [1]"),
    ({"kind": "fmnist", "holdout": {"per_class": -3}}, "hold-out per_class -3 must be a whole number of at least 1"),
    ({"kind": "fmnist", "holdout": {"fraction": "0.1"}}, "hold-out fraction '0.1' must be a finite number > 0 and < 1"),
    ({"kind": "fmnist", "holdout": {"seed": 1.5, "fraction": 0.1}}, "hold-out seed 1.5 must be a whole number"),
    ({"kind": 5, "holdout": {"fraction": 0.1}}, "its kind 5 is not a name"),
])
def test_a_malformed_data_spec_in_checkpoint_metadata_is_a_one_line_error(tmp_path, data, message):
    """The hold-out split a checkpoint records is parsed before any data is opened: a crafted one is a
    CheckpointError naming the file, never a traceback."""
    from click.testing import CliRunner

    from vitres_deploy.cli import main
    from vitres_deploy.data import open_checkpoint_data

    path = _crafted(tmp_path, lambda m: m.update(data=data))
    expected = f"crafted.safetensors records a malformed data spec: {message}"
    with pytest.raises(CheckpointError) as error:
        open_checkpoint_data(load_checkpoint(path))
    assert str(error.value) == expected
    result = CliRunner().invoke(main, ["evaluate", "--supernet", str(path), "--arch", "min"])
    assert result.exit_code == 2 and result.output == f"error: {expected}\n"


def test_metadata_that_is_not_strict_json_writes_nothing(tmp_path):
    """NaN in the metadata (a diverged metric) is refused before the file is written: checkpoints are strict JSON."""
    supernet = build_supernet(PRESETS["fmnist"])
    with pytest.raises(CheckpointError, match="holds NaN or infinity: nothing written"):
        save_checkpoint(tmp_path / "x.safetensors", supernet, {"metrics": {"loss": float("nan")}})
    assert list(tmp_path.iterdir()) == []
