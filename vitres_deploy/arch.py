"""Architectures (sub-networks of a search space): parsing, validation, canonical hash, sampling.

The on-disk form is the architecture file shared with other tools::

    {"space": "vit-resnas-tiny",
     "stages": [{"embed_dim": 176, "blocks": [{"heads": 3, "mlp": 704}, ...]}, ...]}

Depth is the number of blocks. Wherever an arch is accepted, ``max``, ``min`` and ``random:SEED``
are accepted too (see :func:`resolve_arch`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from .errors import ArchError
from .space import SearchSpace, StageSpace


@dataclass(frozen=True)
class BlockArch:
    """One transformer block: number of attention heads and MLP hidden width."""

    heads: int
    mlp: int


@dataclass(frozen=True)
class StageArch:
    """One stage: its embedding width and its blocks (depth = number of blocks)."""

    embed_dim: int
    blocks: tuple[BlockArch, ...]

    @property
    def depth(self) -> int:
        """Number of blocks in the stage."""
        return len(self.blocks)


@dataclass(frozen=True)
class Arch:
    """A sub-network of the search space named ``space``."""

    space: str
    stages: tuple[StageArch, ...]

    def to_dict(self) -> dict[str, Any]:
        """The architecture-file form."""
        return {
            "space": self.space,
            "stages": [
                {"embed_dim": s.embed_dim, "blocks": [{"heads": b.heads, "mlp": b.mlp} for b in s.blocks]}
                for s in self.stages
            ],
        }

    def to_json(self) -> str:
        """Canonical JSON text (sorted keys, no spaces): the input of :attr:`hash`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Canonical 16-hex-digit hash: equal archs have equal hashes, whatever their file layout."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def short(self) -> str:
        """Compact one-line description, e.g. ``64[4/256,3/192] | 128[...] | ...``."""
        return " | ".join(
            f"{s.embed_dim}[" + ",".join(f"{b.heads}/{b.mlp}" for b in s.blocks) + "]" for s in self.stages
        )

    @classmethod
    def from_short(cls, text: str, space: str) -> Arch:
        """Parse the form :meth:`short` writes (as in a validation report's rows), an arch of the space ``space``."""
        stages = []
        for i, part in enumerate(text.split(" | "), 1):
            width, sep, rest = part.partition("[")
            if not sep or not rest.endswith("]"):
                raise ArchError(f"stage {i} of {text!r}: expected WIDTH[HEADS/MLP,...]")
            try:
                blocks = tuple(BlockArch(*map(int, b.split("/", 1))) for b in rest[:-1].split(","))
                stages.append(StageArch(int(width), blocks))
            except (TypeError, ValueError):
                raise ArchError(f"stage {i} of {text!r}: expected WIDTH[HEADS/MLP,...]") from None
        return cls(space, tuple(stages))

    @classmethod
    def from_dict(cls, data: Any) -> Arch:
        """Parse the architecture-file form (extra top-level keys, as in ``best.json``, are ignored)."""
        if not isinstance(data, dict) or "stages" not in data or "space" not in data:
            raise ArchError("an architecture must be a JSON object with 'space' and 'stages'")
        stages_in = data["stages"]
        if not isinstance(stages_in, list):
            raise ArchError("'stages' must be a list")
        stages = []
        for i, s in enumerate(stages_in, 1):
            if not isinstance(s, dict) or "embed_dim" not in s or "blocks" not in s:
                raise ArchError(f"stage {i}: must be an object with 'embed_dim' and 'blocks'")
            if not isinstance(s["blocks"], list):
                raise ArchError(f"stage {i}: 'blocks' must be a list")
            blocks = []
            for j, b in enumerate(s["blocks"], 1):
                if not isinstance(b, dict) or set(b) != {"heads", "mlp"}:
                    raise ArchError(f"stage {i} block {j}: must be an object with exactly 'heads' and 'mlp'")
                blocks.append(BlockArch(_as_int(b["heads"], f"stage {i} block {j}: heads"),
                                        _as_int(b["mlp"], f"stage {i} block {j}: mlp")))
            stages.append(StageArch(_as_int(s["embed_dim"], f"stage {i}: embed_dim"), tuple(blocks)))
        return cls(space=str(data["space"]), stages=tuple(stages))

    def validate(self, space: SearchSpace) -> Arch:
        """Check that the arch belongs to ``space``; errors name the place and the allowed values.

        The rule of :mod:`vitres_deploy.space`: the arch names the space's family and takes only its choices.
        """
        if not space.holds_family(self.space):
            raise ArchError(f"arch is of space {self.space!r}, expected {space.family!r}")
        if len(self.stages) != len(space.stages):
            raise ArchError(f"arch has {len(self.stages)} stages, space {space.name!r} has {len(space.stages)}")
        for i, (s, ss) in enumerate(zip(self.stages, space.stages), 1):
            _check(s.embed_dim, ss.embed_dims, f"stage {i}: embed_dim")
            _check(s.depth, ss.depths, f"stage {i}: depth")
            for j, b in enumerate(s.blocks, 1):
                _check(b.heads, ss.heads, f"stage {i} block {j}: heads")
                _check(b.mlp, ss.mlp_hidden, f"stage {i} block {j}: mlp")
        return self


@dataclass(frozen=True)
class MixedArch(Arch):
    """An arch with a precision per stage: ``int8_stages`` (1-based, ascending) run in int8, the others in fp32.

    The unit of a search of precision per stage. The stem goes with stage 1, a reduction with the stage it leads
    into, the final norm and head with the last stage (as :func:`vitres_deploy.convert.int8.node_stages` assigns
    the nodes of an exported network). Its file form is the arch's with ``int8_stages`` beside ``stages``, so its
    hash differs from the plain arch's and from the same arch's other plans.
    """

    int8_stages: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The architecture-file form with ``int8_stages``."""
        return {**super().to_dict(), "int8_stages": list(self.int8_stages)}

    def short(self) -> str:
        """The arch's one-line description and its int8 stages, e.g. ``... | 192[2/576] int8:3``."""
        return f"{super().short()} int8:{','.join(map(str, self.int8_stages))}"

    @property
    def plain(self) -> Arch:
        """The architecture alone (no precision)."""
        return Arch(self.space, self.stages)

    @classmethod
    def from_dict(cls, data: Any) -> MixedArch:
        """Parse the file form (the arch's, with ``int8_stages``: distinct stage numbers from 1, any order)."""
        arch = Arch.from_dict(data)
        stages = data.get("int8_stages")
        if not isinstance(stages, list) or not stages:
            raise ArchError("'int8_stages' must be a non-empty list of stage numbers")
        numbers = tuple(sorted(_as_int(s, "int8_stages") for s in stages))
        if numbers[0] < 1 or numbers[-1] > len(arch.stages) or len(set(numbers)) < len(numbers):
            raise ArchError(f"int8_stages {list(stages)}: give distinct stage numbers from 1 to {len(arch.stages)}")
        return cls(arch.space, arch.stages, numbers)


def parse_arch(data: Any) -> Arch:
    """An arch of the file form: a :class:`MixedArch` when it names ``int8_stages``, else an :class:`Arch`."""
    return MixedArch.from_dict(data) if isinstance(data, dict) and "int8_stages" in data else Arch.from_dict(data)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchError(f"{where}={value!r} is not an integer")
    return value


def _check(value: int, allowed: tuple[int, ...], where: str) -> None:
    if value not in allowed:
        raise ArchError(f"{where}={value} not in {{{', '.join(map(str, sorted(allowed)))}}}")


def _open(choices: tuple[int, ...], fraction: float) -> tuple[int, ...]:
    """The largest ``ceil(fraction * n)`` choices (at least one): progressive warm-up opens them in order."""
    return choices[: max(1, math.ceil(fraction * len(choices) - 1e-9))]


def max_arch(space: SearchSpace) -> Arch:
    """The largest sub-network: every choice at its maximum."""
    return Arch(space.family, tuple(
        StageArch(s.embed_dims[0], (BlockArch(s.heads[0], s.mlp_hidden[0]),) * s.depths[0]) for s in space.stages
    ))


def min_arch(space: SearchSpace) -> Arch:
    """The smallest sub-network: every choice at its minimum."""
    return smallest_open_arch(space, 1.0)


def smallest_open_arch(space: SearchSpace, fraction: float = 1.0) -> Arch:
    """The smallest sub-network among the choices opened by ``fraction`` (1.0: every choice, :func:`min_arch`)."""
    return Arch(space.family, tuple(
        StageArch(_open(s.embed_dims, fraction)[-1],
                  (BlockArch(_open(s.heads, fraction)[-1], _open(s.mlp_hidden, fraction)[-1]),)
                  * _open(s.depths, fraction)[-1])
        for s in space.stages
    ))


def sample_stage(stage: StageSpace, rng: random.Random, fraction: float = 1.0) -> StageArch:
    """Sample one stage uniformly among the choices opened by ``fraction`` (1.0: all of them)."""
    depth = rng.choice(_open(stage.depths, fraction))
    heads, mlps = _open(stage.heads, fraction), _open(stage.mlp_hidden, fraction)
    blocks = tuple(BlockArch(rng.choice(heads), rng.choice(mlps)) for _ in range(depth))
    return StageArch(rng.choice(_open(stage.embed_dims, fraction)), blocks)


def sample_arch(space: SearchSpace, rng: random.Random, fraction: float = 1.0) -> Arch:
    """Sample a sub-network uniformly per choice; ``fraction`` < 1 keeps only the largest choices."""
    return Arch(space.family, tuple(sample_stage(s, rng, fraction) for s in space.stages))


def _near(choices: tuple[int, ...], size: float, rng: random.Random, spread: float) -> int:
    """A choice drawn around position ``size`` of ``choices`` (sorted largest first: 0 the smallest, 1 the
    largest), Gaussian with standard deviation ``spread`` of the range."""
    position = min(1.0, max(0.0, rng.gauss(size, spread)))
    return choices[round((1.0 - position) * (len(choices) - 1))]


def sample_arch_sized(space: SearchSpace, rng: random.Random, size: float, spread: float = 0.25) -> Arch:
    """Sample a sub-network whose choices lie around ``size`` of their ranges (0: near the smallest arch, 1: near
    the largest), each drawn independently: a ``size`` drawn uniformly gives archs over the whole latency range,
    where :func:`sample_arch` gives mostly middle-sized ones."""
    stages = []
    for stage in space.stages:
        depth = _near(stage.depths, size, rng, spread)
        blocks = tuple(BlockArch(_near(stage.heads, size, rng, spread), _near(stage.mlp_hidden, size, rng, spread))
                       for _ in range(depth))
        stages.append(StageArch(_near(stage.embed_dims, size, rng, spread), blocks))
    return Arch(space.family, tuple(stages))


def random_arch(space: SearchSpace, seed: int) -> Arch:
    """The sub-network named ``random:SEED``: the same seed always gives the same arch."""
    return sample_arch(space, random.Random(seed))
