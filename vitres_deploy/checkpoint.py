"""Supernet checkpoints: safetensors weights plus JSON metadata, in one file, written atomically.

The metadata (space, data spec with the hold-out split, training config, metrics, package versions,
and for resumable training checkpoints the optimizer's scalar state) is stored as JSON in the
safetensors header under the key ``vitres_deploy``. Nothing is ever unpickled.
The name ``fmnist-demo`` resolves to the supernet shipped inside the package.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import JSONError, atomic_write, loads_json
from .space import PRESETS, SearchSpace, space_difference
from .supernet import ViTResNASSupernet

FORMAT = "vitres-deploy/supernet-v1"
META_KEY = "vitres_deploy"
SHIPPED = {"fmnist-demo": "fmnist-demo.safetensors"}
OPTIMIZER_PREFIX = "optimizer/"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the supernet (weights loaded) and its metadata."""

    supernet: ViTResNASSupernet
    meta: dict[str, Any]
    path: Path
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def space(self) -> SearchSpace:
        """The checkpoint's search space."""
        return self.supernet.space

    @property
    def data(self) -> dict[str, Any]:
        """The data spec recorded at training time (kind, normalisation, classes, hold-out split)."""
        return self.meta.get("data", {})


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the packages that matter for reproducing a result, and of the installed ones of ``extra``."""
    versions = {"python": platform.python_version()}
    for name in ("vitres-deploy", "torch", "numpy", "onnx", "onnxruntime", "safetensors", "tensorrt", *extra):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def save_checkpoint(path: str | Path, supernet: ViTResNASSupernet, meta: dict[str, Any],
                    optimizer_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights (and optional optimizer tensors) with ``meta`` atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in supernet.state_dict().items()}
    for k, v in (optimizer_tensors or {}).items():
        tensors[OPTIMIZER_PREFIX + k] = v.detach().cpu().contiguous()
    full = {"format": FORMAT, "space": supernet.space.to_dict(), "packages": package_versions(), **meta}
    try:
        header = json.dumps(full, allow_nan=False)
    except ValueError:
        raise CheckpointError(f"checkpoint metadata for {path.name} holds NaN or infinity: nothing written") from None
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: header}))
    return path


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """Path of a checkpoint given by path or by the name of a shipped one (``fmnist-demo``)."""
    key = str(name_or_path)
    if key in SHIPPED:
        path = Path(str(resources.files("vitres_deploy") / "assets" / SHIPPED[key]))
        if not path.is_file():
            raise CheckpointError(f"the shipped supernet {key} is missing from the installed package ({path})")
        return path
    path = Path(key)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {key} not found: pass a .safetensors file or one of {', '.join(SHIPPED)}")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file, without loading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # any decoding failure means a corrupt or foreign file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({type(e).__name__})") from None
    if raw is None:
        raise CheckpointError(f"{path} has no vitres-deploy metadata: it was not written by vitres-deploy")
    try:
        meta = loads_json(raw)
    except JSONError as e:
        raise CheckpointError(f"{path} has corrupt metadata (not JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} has format {found!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(name_or_path: str | Path, expect_space: SearchSpace | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint (weights only, never pickle); its space must be ``expect_space`` (the same space, if given)."""
    from safetensors.torch import load_file

    path = resolve_checkpoint(name_or_path)
    meta = read_meta(path)
    try:
        space = SearchSpace.from_dict(meta["space"])
    except KeyError:
        raise CheckpointError(f"{path} metadata has no search space") from None
    if expect_space is not None and (differs := space_difference(space, expect_space)):
        raise CheckpointError(f"checkpoint {path.name} is of space {space.name!r}, not {expect_space.name!r} "
                              f"({differs})")
    preset = PRESETS.get(space.name)
    if preset is not None and (differs := space_difference(space, preset)):
        raise CheckpointError(f"checkpoint {path.name} has a space named {space.name!r} that differs from the "
                              f"preset ({differs}); rename it or use its space file")
    check_shapes(path, space)  # from the header, before anything the size of the space is allocated
    tensors = load_file(str(path), device=str(map_location))
    optimizer = {k[len(OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    supernet = ViTResNASSupernet(space).to(map_location)
    supernet.load_state_dict(weights)
    return Checkpoint(supernet.eval(), meta, path, optimizer)


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every weight tensor of a checkpoint, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith(OPTIMIZER_PREFIX)}


def supernet_shapes(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of ``space``'s supernet, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ViTResNASSupernet(space).state_dict().items()}


def check_shapes(path: Path, space: SearchSpace) -> None:
    """Raise :class:`CheckpointError` unless the header's weights are exactly those of ``space``'s supernet."""
    found, expected = header_shapes(path), supernet_shapes(space)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path.name}: tensor {k} has shape {list(found[k])}, the supernet of {space.name} "
                              f"needs {list(expected[k])} ({len(wrong)} tensors of the wrong shape)")
    if missing or unexpected:
        raise CheckpointError(f"{path.name} does not match the supernet of {space.name}: "
                              f"{len(missing)} missing and {len(unexpected)} unexpected tensors "
                              f"(e.g. {(missing or unexpected)[0]})")
