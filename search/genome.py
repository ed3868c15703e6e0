"""Architectures as genomes, per-gene mutation and uniform crossover.

A stage's genes are its embedding width, its depth, and the heads and MLP width of every block up to
the stage's largest depth: ``[embed, depth, heads_1, mlp_1, ..., heads_D, mlp_D]``. Genes of blocks
past the depth are dormant; they are kept so that a mutation which deepens a stage has blocks to wake.

A search of precision per stage adds one gene, the plan: which stages run in int8 (a bitmask, one of the mixed
plans), and its genomes describe :class:`~vitres_deploy.arch.MixedArch` networks.

A genome is always made from an arch by :meth:`GeneLayout.encode`, which fills a stage's dormant
blocks with copies of its last block, so every arch has exactly one genome: the state of a search is
the list of evaluated archs and nothing more (what makes resuming from ``evaluated.jsonl`` exact).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..arch import Arch, BlockArch, MixedArch, StageArch, sample_arch
from ..space import SearchSpace

Genome = tuple[int, ...]


@dataclass(frozen=True)
class GeneLayout:
    """Where each gene of a space's genome sits and which values it may take (``plans``: the precision plans of a
    search of precision per stage, each a tuple of int8 stages; empty for a search of one precision)."""

    space: SearchSpace
    choices: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    starts: tuple[int, ...]
    plans: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(cls, space: SearchSpace, plans: tuple[tuple[int, ...], ...] = ()) -> GeneLayout:
        """The layout of ``space``: per stage embed, depth, then (heads, mlp) per block up to the largest depth;
        with ``plans``, a last gene: the plan, as a bitmask of its int8 stages (bit 0: stage 1)."""
        choices: list[tuple[int, ...]] = []
        names: list[str] = []
        starts = []
        for i, st in enumerate(space.stages, 1):
            starts.append(len(choices))
            choices += [st.embed_dims, st.depths]
            names += [f"stage{i}.embed_dim", f"stage{i}.depth"]
            for j in range(1, st.max_depth + 1):
                choices += [st.heads, st.mlp_hidden]
                names += [f"stage{i}.block{j}.heads", f"stage{i}.block{j}.mlp"]
        if plans:
            choices.append(tuple(_mask(p) for p in plans))
            names.append("int8_stages")
        return cls(space, tuple(choices), tuple(names), tuple(starts), tuple(plans))

    def __len__(self) -> int:
        return len(self.choices)

    def encode(self, arch: Arch) -> Genome:
        """The canonical genome of ``arch`` (dormant blocks copy the stage's last block)."""
        genes: list[int] = []
        for s, st in zip(arch.stages, self.space.stages):
            genes += [s.embed_dim, s.depth]
            for j in range(st.max_depth):
                block = s.blocks[min(j, s.depth - 1)]
                genes += [block.heads, block.mlp]
        if self.plans:
            if not isinstance(arch, MixedArch):
                raise TypeError("a layout with precision plans encodes MixedArch networks only")
            genes.append(_mask(arch.int8_stages))
        return tuple(genes)

    def decode(self, genome: Genome) -> Arch:
        """The arch a genome describes (dormant genes are ignored); a :class:`MixedArch` with ``plans``."""
        stages = []
        for start in self.starts:
            embed, depth = genome[start], genome[start + 1]
            blocks = tuple(BlockArch(genome[start + 2 + 2 * j], genome[start + 3 + 2 * j]) for j in range(depth))
            stages.append(StageArch(embed, blocks))
        if self.plans:
            mask = genome[-1]
            int8 = tuple(s for s in range(1, len(stages) + 1) if mask >> (s - 1) & 1)
            return MixedArch(self.space.family, tuple(stages), int8)
        return Arch(self.space.family, tuple(stages))

    def sample(self, rng: random.Random) -> Arch:
        """A random arch (:func:`~vitres_deploy.arch.sample_arch`), in a random plan with ``plans``."""
        arch = sample_arch(self.space, rng)
        if not self.plans:
            return arch
        return MixedArch(arch.space, arch.stages, rng.choice(self.plans))

    def active(self, genome: Genome) -> list[int]:
        """Indices of the genes that change the arch when changed (dormant blocks left out)."""
        out = []
        for start in self.starts:
            depth = genome[start + 1]
            out += range(start, start + 2 + 2 * depth)
        if self.plans:
            out.append(len(genome) - 1)
        return out


def _mask(int8_stages: tuple[int, ...]) -> int:
    """The bitmask of a plan's int8 stages (bit 0: stage 1)."""
    return sum(1 << (s - 1) for s in int8_stages)


def mutate(genome: Genome, layout: GeneLayout, rng: random.Random, prob: float) -> Genome:
    """Resample each gene, dormant ones included, uniformly among its choices with probability ``prob``."""
    return tuple(rng.choice(layout.choices[i]) if rng.random() < prob else g for i, g in enumerate(genome))


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Uniform crossover: each gene from ``a`` or ``b`` with equal probability."""
    return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))


def perturb(genome: Genome, layout: GeneLayout, rng: random.Random) -> Genome:
    """Change one active gene with more than one choice to another of its values (a repair step)."""
    movable = [i for i in layout.active(genome) if len(layout.choices[i]) > 1]
    if not movable:
        return genome
    i = rng.choice(movable)
    value = rng.choice([c for c in layout.choices[i] if c != genome[i]])
    return (*genome[:i], value, *genome[i + 1:])
