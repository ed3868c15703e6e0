"""Checkpoints: safetensors weights plus JSON metadata, in one file, written atomically.

Two kinds: a **supernet** checkpoint (``train``) holds the weight-sharing supernet of a space; a **fine-tuned**
checkpoint (``finetune``) holds the static network of one architecture (metadata ``kind`` ``"finetuned"``,
with the arch, the supernet it was extracted from and the fine-tuning settings). The metadata (space, data
spec with the hold-out split, settings, metrics, package versions, and for resumable checkpoints the
optimizer's scalar state) is stored as strict JSON in the safetensors header under the key ``vitres_deploy``.
Nothing is ever unpickled, and the header's tensor shapes are checked against the declared space (and arch)
before anything is built. The name ``fmnist-demo`` resolves to the supernet shipped inside the package.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .arch import Arch
from .errors import ArchError, CheckpointError
from .files import JSONError, atomic_write, loads_json
from .space import PRESETS, SearchSpace, space_difference
from .supernet import ViTResNASSupernet
from .vit_resnas import ViTResNAS, vit_resnas

FORMAT = "vitres-deploy/supernet-v1"
FINETUNED_FORMAT = "vitres-deploy/finetuned-v1"
FINETUNED = "finetuned"
META_KEY = "vitres_deploy"
SHIPPED = {"fmnist-demo": "fmnist-demo.safetensors"}
OPTIMIZER_PREFIX = "optimizer/"


@dataclass
class Checkpoint:
    """A loaded supernet checkpoint: the supernet (weights loaded) and its metadata."""

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


@dataclass
class FinetunedCheckpoint:
    """A loaded fine-tuned checkpoint: the static network of one arch (weights loaded) and its metadata.

    ``meta["supernet"]`` names the supernet it was extracted from (file, path, sha256, its metrics),
    ``meta["finetune_config"]`` the settings and ``meta["epoch"]`` the epochs done.
    """

    model: ViTResNAS
    meta: dict[str, Any]
    path: Path
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def space(self) -> SearchSpace:
        """The search space of the network's arch."""
        return self.model.space

    @property
    def arch(self) -> Arch:
        """The architecture the network was fine-tuned as."""
        return self.model.arch

    @property
    def data(self) -> dict[str, Any]:
        """The data spec recorded at fine-tuning time (the supernet's, hold-out split included)."""
        return self.meta.get("data", {})

    def check_arch(self, arch: Arch) -> None:
        """Refuse ``arch`` unless it is the one arch this network was fine-tuned as (:class:`ArchError`)."""
        if arch.stages != self.arch.stages:
            raise ArchError(f"arch {arch.hash} ({arch.short()}) is not the arch {self.path.name} was fine-tuned as "
                            f"({self.arch.hash}: {self.arch.short()}): pass that arch")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the packages that matter for reproducing a result, and of the installed ones of ``extra``."""
    versions = {"python": platform.python_version()}
    for name in ("vitres-deploy", "torch", "numpy", "onnx", "onnxruntime", "safetensors", "tensorrt", *extra):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def _write(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``meta`` (strict JSON, else nothing is written) atomically to ``path``."""
    from safetensors.torch import save_file

    try:
        header = json.dumps(meta, allow_nan=False)
    except ValueError:
        raise CheckpointError(f"checkpoint metadata for {path.name} holds NaN or infinity: nothing written") from None
    atomic_write(path, lambda tmp: save_file(dict(tensors), str(tmp), metadata={META_KEY: header}))
    return path


def _tensors(model: torch.nn.Module, optimizer_tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The weights of ``model`` and the optimizer tensors (under :data:`OPTIMIZER_PREFIX`), on the CPU."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (optimizer_tensors or {}).items():
        tensors[OPTIMIZER_PREFIX + k] = v.detach().cpu().contiguous()
    return tensors


def save_checkpoint(path: str | Path, supernet: ViTResNASSupernet, meta: dict[str, Any],
                    optimizer_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a supernet's weights (and optional optimizer tensors) with ``meta`` atomically to ``path``."""
    full = {"format": FORMAT, "space": supernet.space.to_dict(), "packages": package_versions(), **meta}
    return _write(Path(path), _tensors(supernet, optimizer_tensors), full)


def save_finetuned(path: str | Path, model: ViTResNAS, meta: dict[str, Any],
                   optimizer_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a fine-tuned static network (and optional optimizer tensors) with ``meta`` atomically to ``path``.

    The metadata records the kind (``finetuned``), the space and the arch beside ``meta``.
    """
    full = {"format": FINETUNED_FORMAT, "kind": FINETUNED, "space": model.space.to_dict(),
            "arch": model.arch.to_dict(), "packages": package_versions(), **meta}
    return _write(Path(path), _tensors(model, optimizer_tensors), full)


def save_without_optimizer(src: str | Path, dst: str | Path, extra: dict[str, Any]) -> Path:
    """Copy checkpoint ``src`` (either kind) to ``dst`` without its optimizer state, its metadata updated with
    ``extra`` and this process's package versions: a run's final checkpoint from its last one."""
    from safetensors.torch import load_file

    src = Path(src)
    meta = read_meta(src, (FORMAT, FINETUNED_FORMAT))
    tensors = {k: v for k, v in load_file(str(src)).items() if not k.startswith(OPTIMIZER_PREFIX)}
    return _write(Path(dst), tensors, {**meta, "packages": package_versions(), **extra})


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


def read_meta(path: Path, formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """The JSON metadata of a checkpoint file of one of ``formats``, without loading its tensors."""
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
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found == FINETUNED_FORMAT and found not in formats:
        raise CheckpointError(f"{path} is a fine-tuned checkpoint of one arch, not a supernet: pass the supernet it "
                              "was fine-tuned from (recorded in its metadata under supernet)")
    if found not in formats:
        raise CheckpointError(f"{path} has format {found!r}, expected {' or '.join(map(repr, formats))}")
    return meta


def _space_of(path: Path, meta: dict[str, Any], expect_space: SearchSpace | None) -> SearchSpace:
    """The search space a checkpoint's metadata declares: ``expect_space`` if given, and a preset's own
    definition if it bears a preset's name."""
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
    return space


def _split_tensors(path: Path, map_location: str | torch.device) -> tuple[dict[str, torch.Tensor],
                                                                          dict[str, torch.Tensor]]:
    """The weights and the optimizer tensors of a checkpoint file, on ``map_location``."""
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=str(map_location))
    optimizer = {k[len(OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    return weights, optimizer


def load_checkpoint(name_or_path: str | Path, expect_space: SearchSpace | None = None,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a supernet checkpoint (weights only, never pickle); its space must be ``expect_space`` (the same
    space, if given)."""
    path = resolve_checkpoint(name_or_path)
    meta = read_meta(path)
    space = _space_of(path, meta, expect_space)
    check_shapes(path, space)  # from the header, before anything the size of the space is allocated
    weights, optimizer = _split_tensors(path, map_location)
    supernet = ViTResNASSupernet(space).to(map_location)
    supernet.load_state_dict(weights)
    return Checkpoint(supernet.eval(), meta, path, optimizer)


def load_finetuned(path: str | Path, map_location: str | torch.device = "cpu") -> FinetunedCheckpoint:
    """Load a fine-tuned checkpoint (weights only, never pickle): the static network of its recorded arch."""
    path = resolve_checkpoint(path)
    meta = read_meta(path, (FINETUNED_FORMAT,))
    space = _space_of(path, meta, None)
    try:
        arch = Arch.from_dict(meta.get("arch")).validate(space)
    except ArchError as e:
        raise CheckpointError(f"{path.name} records no valid arch of {space.name}: {e}") from None
    source = meta.get("supernet")
    recorded = isinstance(source, dict) and {"file", "sha256"} <= set(source)
    if not recorded or not {"finetune_config", "epoch"} <= set(meta):
        raise CheckpointError(f"{path.name} does not record the supernet, settings and epochs of its fine-tuning")
    check_static_shapes(path, arch, space)
    weights, optimizer = _split_tensors(path, map_location)
    model = vit_resnas(arch, space).to(map_location)
    model.load_state_dict(weights)
    return FinetunedCheckpoint(model.eval(), meta, path, optimizer)


def load_any_checkpoint(name_or_path: str | Path,
                        map_location: str | torch.device = "cpu") -> Checkpoint | FinetunedCheckpoint:
    """Load a supernet or a fine-tuned checkpoint, told apart by its metadata's format."""
    path = resolve_checkpoint(name_or_path)
    if read_meta(path, (FORMAT, FINETUNED_FORMAT))["format"] == FINETUNED_FORMAT:
        return load_finetuned(path, map_location)
    return load_checkpoint(path, map_location=map_location)


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every weight tensor of a checkpoint, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith(OPTIMIZER_PREFIX)}


def supernet_shapes(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of ``space``'s supernet, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ViTResNASSupernet(space).state_dict().items()}


def static_shapes(arch: Arch, space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of ``arch``'s static network, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in vit_resnas(arch, space).state_dict().items()}


def _check_header(path: Path, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise :class:`CheckpointError` unless the header's weights are exactly ``expected`` (those of ``what``)."""
    found = header_shapes(path)
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path.name}: tensor {k} has shape {list(found[k])}, {what} needs "
                              f"{list(expected[k])} ({len(wrong)} tensors of the wrong shape)")
    if missing or unexpected:
        raise CheckpointError(f"{path.name} does not match {what}: {len(missing)} missing and {len(unexpected)} "
                              f"unexpected tensors (e.g. {(missing or unexpected)[0]})")


def check_shapes(path: Path, space: SearchSpace) -> None:
    """Raise :class:`CheckpointError` unless the header's weights are exactly those of ``space``'s supernet."""
    _check_header(path, supernet_shapes(space), f"the supernet of {space.name}")


def check_static_shapes(path: Path, arch: Arch, space: SearchSpace) -> None:
    """Raise :class:`CheckpointError` unless the header's weights are exactly those of ``arch``'s static network."""
    _check_header(path, static_shapes(arch, space), f"the network of arch {arch.hash} ({space.name})")
