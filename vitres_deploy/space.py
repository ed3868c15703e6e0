"""Search spaces as data: a dataclass per space, presets by name, user spaces from JSON or YAML.

A space fixes the geometry (image size, patch size, stem width, token grids) and, per stage, the
choices of embedding width, number of heads (with a fixed, decoupled head dimension), MLP hidden
width and depth. Choices are kept largest first, which is the order progressive warm-up opens them.
The stem width is one number for every sub-network, or one per stage-1 width (the stem then narrows with
stage 1: :meth:`SearchSpace.stem_width`).

Compatibility, the one rule (:func:`space_difference`, :meth:`SearchSpace.holds_family`):

* Anything made for a space (a checkpoint's weights, a latency table's timings) serves another space
  only when they are *the same space*: the same name (so the same family and resolution) and the same
  geometry and choices. The description does not count. Weights have the shapes of the geometry and
  choices, timings depend on the resolution too, and archs name their space.
* An architecture belongs to a space when it names the space's *family* (the name without ``@RES``: an
  arch is the same network at every resolution) and each of its choices is one of the space's
  (:meth:`vitres_deploy.arch.Arch.validate`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import SpaceError, first_line
from .files import loads_json

#: The largest value of each field a space may have: far above any real ViT-ResNAS space, low enough that a
#: crafted space (or checkpoint) cannot make the supernet's size exhaust memory before anything is checked.
LIMITS = {"embed_dims": 8192, "heads": 128, "head_dim": 1024, "mlp_hidden": 32768, "depths": 64, "stages": 8,
          "image_size": 4096, "in_chans": 64, "num_classes": 100_000, "stem_channels": 8192}
#: A space's name: it becomes part of file names (latency tables), so no path separators and no leading dot.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,63}")


@dataclass(frozen=True)
class StageSpace:
    """Choices of one stage. Every tuple is sorted largest first."""

    embed_dims: tuple[int, ...]
    heads: tuple[int, ...]
    head_dim: int
    mlp_hidden: tuple[int, ...]
    depths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("embed_dims", "heads", "mlp_hidden", "depths"):
            values = tuple(sorted({int(v) for v in getattr(self, name)}, reverse=True))
            if not values or values[-1] <= 0:
                raise SpaceError(f"{name} must be a non-empty list of positive integers")
            if values[0] > LIMITS[name]:
                raise SpaceError(f"{name} {values[0]} is above the limit of {LIMITS[name]}")
            object.__setattr__(self, name, values)
        if not 0 < self.head_dim <= LIMITS["head_dim"]:
            raise SpaceError(f"head_dim must be a positive integer of at most {LIMITS['head_dim']}")

    @property
    def max_depth(self) -> int:
        """Largest depth of the stage: the number of blocks the supernet holds."""
        return self.depths[0]

    def num_subnets(self) -> int:
        """Number of distinct sub-networks of this stage alone."""
        per_block = len(self.heads) * len(self.mlp_hidden)
        return len(self.embed_dims) * sum(per_block**d for d in self.depths)


@dataclass(frozen=True)
class SearchSpace:
    """A ViT-ResNAS search space: fixed geometry plus per-stage choices."""

    name: str
    image_size: int
    in_chans: int
    num_classes: int
    patch_size: int
    stem_channels: int | tuple[int, ...]
    stages: tuple[StageSpace, ...]
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise SpaceError(f"space name {self.name!r} must be 1 to 64 letters, digits, '.', '_', '-', '+' or '@', "
                             "starting with a letter or digit (it becomes part of file names)")
        if len(self.stages) < 1:
            raise SpaceError(f"space {self.name!r}: needs at least one stage")
        if len(self.stages) > LIMITS["stages"]:
            raise SpaceError(f"space {self.name!r}: {len(self.stages)} stages, above the limit of {LIMITS['stages']}")
        for name, value in [(n, getattr(self, n)) for n in ("image_size", "in_chans", "num_classes")] + [
                ("stem_channels", v) for v in self.stem_widths]:
            if value <= 0:
                raise SpaceError(f"space {self.name!r}: {name} must be a positive integer, got {value}")
            if value > LIMITS[name]:
                raise SpaceError(f"space {self.name!r}: {name} {value} is above the limit of {LIMITS[name]}")
        if isinstance(self.stem_channels, tuple):
            if len(self.stem_channels) != len(self.stages[0].embed_dims):
                raise SpaceError(
                    f"space {self.name!r}: stem_channels lists {len(self.stem_channels)} widths for "
                    f"{len(self.stages[0].embed_dims)} stage-1 widths: give one number, or one per stage-1 width"
                )
            object.__setattr__(self, "stem_channels", tuple(sorted(self.stem_channels, reverse=True)))
        if self.patch_size % 2 or self.patch_size < 2:
            raise SpaceError(f"space {self.name!r}: patch_size must be even (the stem halves first)")
        if self.image_size % self.patch_size:
            raise SpaceError(
                f"space {self.name!r}: image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )
        for i in range(1, len(self.stages)):
            if min(self.stages[i].embed_dims) < max(self.stages[i - 1].embed_dims):
                raise SpaceError(
                    f"space {self.name!r}: stage {i + 1} widths must be >= stage {i} widths "
                    "(the reduction's skip path zero-pads channels)"
                )

    def stem_width(self, stage1_width: int) -> int:
        """Channels of the conv stem of a sub-network whose stage 1 is ``stage1_width`` wide.

        With one stem width per stage-1 width, they pair by size: the widest stem with the widest stage 1.
        """
        if not isinstance(self.stem_channels, tuple):
            return self.stem_channels
        return dict(zip(self.stages[0].embed_dims, self.stem_channels))[stage1_width]

    @property
    def stem_widths(self) -> tuple[int, ...]:
        """The distinct stem widths of the space's sub-networks, largest first."""
        widths = self.stem_channels if isinstance(self.stem_channels, tuple) else (self.stem_channels,)
        return tuple(sorted(set(widths), reverse=True))

    @property
    def family(self) -> str:
        """The name archs carry: the preset's name without a ``@RES`` resolution suffix."""
        return self.name.partition("@")[0]

    def holds_family(self, family: str) -> bool:
        """True when an arch naming ``family`` is of this space's family (its choices are checked apart)."""
        return family == self.family

    @property
    def grids(self) -> tuple[int, ...]:
        """Side of the patch-token grid of each stage (a 3x3 stride-2 conv halves it, rounding up)."""
        sides = [self.image_size // self.patch_size]
        for _ in self.stages[1:]:
            sides.append(math.ceil(sides[-1] / 2))
        return tuple(sides)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Sequence length of each stage, class token included."""
        return tuple(g * g + 1 for g in self.grids)

    def at_resolution(self, image_size: int) -> SearchSpace:
        """The same space at another input resolution (token grids follow; the name records it).

        Used to profile or test the 224x224 paper spaces at a reduced resolution; the choices and the
        weights' shapes stay the same except for the position embeddings.
        """
        if image_size == self.image_size:
            return self
        return replace(self, name=f"{self.name}@{image_size}", image_size=image_size)

    def num_subnets(self) -> int:
        """Number of distinct sub-networks of the space."""
        return math.prod(s.num_subnets() for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, the same shape that :func:`load_space` reads."""
        d = asdict(self)
        if isinstance(self.stem_channels, tuple):
            d["stem_channels"] = list(self.stem_channels)
        d["stages"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()} for s in d["stages"]]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """Build a space from its plain form; errors name the missing, unknown or bad field."""
        if not isinstance(data, dict):
            raise SpaceError("a search space must be a mapping with 'name', 'image_size', ..., 'stages'")
        _check_fields(data, _SPACE_FIELDS, "search space", optional=("description",))
        if not isinstance(data["stages"], list):
            raise SpaceError("search space field stages must be a list of stage mappings")
        stages = []
        for i, s in enumerate(data["stages"], 1):
            where = f"search space stage {i}"
            if not isinstance(s, dict):
                raise SpaceError(f"{where} must be a mapping with {', '.join(_STAGE_FIELDS)}")
            _check_fields(s, _STAGE_FIELDS, where)
            try:
                stages.append(StageSpace(
                    embed_dims=_ints(s["embed_dims"], f"{where}: embed_dims"),
                    heads=_ints(s["heads"], f"{where}: heads"),
                    head_dim=_int(s["head_dim"], f"{where}: head_dim"),
                    mlp_hidden=_ints(s["mlp_hidden"], f"{where}: mlp_hidden"),
                    depths=_ints(s["depths"], f"{where}: depths"),
                ))
            except SpaceError as e:
                raise SpaceError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
        return cls(
            name=str(data["name"]),
            image_size=_int(data["image_size"], "search space: image_size"),
            in_chans=_int(data["in_chans"], "search space: in_chans"),
            num_classes=_int(data["num_classes"], "search space: num_classes"),
            patch_size=_int(data["patch_size"], "search space: patch_size"),
            stem_channels=(_ints(data["stem_channels"], "search space: stem_channels")
                           if isinstance(data["stem_channels"], list)
                           else _int(data["stem_channels"], "search space: stem_channels")),
            stages=tuple(stages),
            description=str(data.get("description", "")),
        )


def space_difference(a: SearchSpace, b: SearchSpace) -> str:
    """The fields in which ``a`` and ``b`` differ, '' when they are the same space (the module's rule).

    Name, geometry and stage choices count; the description does not: '' exactly when ``a == b``.
    """
    da, db = a.to_dict(), b.to_dict()
    diffs = []
    for key in da:
        if key == "description":
            continue
        if key == "stages":
            for i, (sa, sb) in enumerate(zip(da["stages"], db["stages"]), 1):
                diffs += [f"stage {i} {k}: {sa[k]} vs {sb[k]}" for k in sa if sa[k] != sb[k]]
            if len(da["stages"]) != len(db["stages"]):
                diffs.append(f"stages: {len(da['stages'])} vs {len(db['stages'])}")
        elif da[key] != db[key]:
            diffs.append(f"{key}: {da[key]} vs {db[key]}")
    return "; ".join(diffs)


_SPACE_FIELDS = ("name", "image_size", "in_chans", "num_classes", "patch_size", "stem_channels", "stages")
_STAGE_FIELDS = ("embed_dims", "heads", "head_dim", "mlp_hidden", "depths")


def _check_fields(data: dict[str, Any], required: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in required if k not in data]
    if missing:
        raise SpaceError(f"{where} is missing the field {missing[0]!r}")
    unknown = sorted(str(k) for k in data if k not in required + optional)
    if unknown:
        raise SpaceError(f"{where} has an unknown field {unknown[0]!r} (fields: {', '.join(required + optional)})")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpaceError(f"{where}={value!r} is not an integer")
    return value


def _ints(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpaceError(f"{where}={value!r} is not a non-empty list of integers")
    return tuple(_int(v, where) for v in value)


def _span(hi: int, lo: int, step: int) -> tuple[int, ...]:
    return tuple(range(hi, lo - 1, -step))


PRESETS: dict[str, SearchSpace] = {
    "vit-resnas-tiny": SearchSpace(
        name="vit-resnas-tiny",
        description="the paper's Tiny space: 224x224 RGB, 1000 classes, 16x16 -> 8x8 -> 4x4 tokens",
        image_size=224,
        in_chans=3,
        num_classes=1000,
        patch_size=14,
        stem_channels=24,
        stages=(
            StageSpace((256, 224, 192, 176, 160), (6, 5, 4, 3), 32, _span(768, 384, 64), (3, 4, 5, 6)),
            StageSpace((512, 448, 384, 352, 320), (12, 10, 8, 6), 48, _span(1536, 768, 128), (3, 4, 5, 6)),
            StageSpace((1024, 896, 768, 704, 640), (12, 10, 8, 6), 64, _span(3072, 1536, 256), (3, 4, 5, 6)),
        ),
    ),
    "vit-resnas-small": SearchSpace(
        name="vit-resnas-small",
        description="the paper's Small/Medium space: 224x224 RGB, 1000 classes, 16x16 -> 8x8 -> 4x4 tokens",
        image_size=224,
        in_chans=3,
        num_classes=1000,
        patch_size=14,
        stem_channels=24,
        stages=(
            StageSpace((320, 280, 240, 220, 200), (8, 7, 6, 5), 32, _span(960, 480, 80), (4, 5, 6, 7)),
            StageSpace((640, 560, 480, 440, 400), (16, 14, 12, 10), 48, _span(1920, 960, 160), (4, 5, 6, 7)),
            StageSpace((1280, 1120, 960, 880, 800), (16, 14, 12, 10), 64, _span(3840, 1920, 320), (4, 5, 6, 7)),
        ),
    ),
    "fmnist": SearchSpace(
        name="fmnist",
        description="demo space for Fashion-MNIST: 28x28 grey, 10 classes, 7x7 -> 4x4 -> 2x2 tokens; "
        "its narrow end is capacity-limited (the stem narrows with stage 1), so architecture matters",
        image_size=28,
        in_chans=1,
        num_classes=10,
        patch_size=4,
        stem_channels=(16, 12, 8, 4),
        stages=(
            StageSpace((32, 24, 16, 8), (4, 2, 1), 8, (96, 64, 32, 16), (1, 2, 3)),
            StageSpace((64, 48, 32), (4, 2, 1), 16, (192, 128, 64, 32), (1, 2, 3)),
            StageSpace((192, 160, 128, 96, 64), (4, 2, 1), 32, (576, 384, 192, 64), (1, 2, 3)),
        ),
    ),
}


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Return a preset by name (``NAME@RES`` for a preset at another resolution), or read a ``.json``/``.yaml`` file."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    base, _, size = key.partition("@")
    if base in PRESETS and size.isdigit():
        return PRESETS[base].at_resolution(int(size))
    path = Path(key)
    if not path.suffix:
        raise SpaceError(f"unknown search space {key!r}: use one of {', '.join(PRESETS)} or a .json/.yaml file")
    if path.suffix not in (".json", ".yaml", ".yml"):
        raise SpaceError(f"search space file {key}: unsupported extension {path.suffix!r}, use .json or .yaml")
    if not path.is_file():
        raise SpaceError(f"search space file {key} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = loads_json(text)
    except Exception as e:
        raise SpaceError(f"search space file {key} is not valid {path.suffix[1:].upper()}: {first_line(e)}") from None
    try:
        return SearchSpace.from_dict(data)
    except SpaceError as e:
        raise SpaceError(f"{key}: {e}") from None
