"""Architectures as genomes, per-gene mutation and uniform crossover.

A stage's genes are its embedding width, its depth, and the heads and MLP width of every block up to
the stage's largest depth: ``[embed, depth, heads_1, mlp_1, ..., heads_D, mlp_D]``. Genes of blocks
past the depth are dormant; they are kept so that a mutation which deepens a stage has blocks to wake.

A genome is always made from an arch by :meth:`GeneLayout.encode`, which fills a stage's dormant
blocks with copies of its last block, so every arch has exactly one genome: the state of a search is
the list of evaluated archs and nothing more (what makes resuming from ``evaluated.jsonl`` exact).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..arch import Arch, BlockArch, StageArch
from ..space import SearchSpace

Genome = tuple[int, ...]


@dataclass(frozen=True)
class GeneLayout:
    """Where each gene of a space's genome sits and which values it may take."""

    space: SearchSpace
    choices: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, space: SearchSpace) -> GeneLayout:
        """The layout of ``space``: per stage embed, depth, then (heads, mlp) per block up to the largest depth."""
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
        return cls(space, tuple(choices), tuple(names), tuple(starts))

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
        return tuple(genes)

    def decode(self, genome: Genome) -> Arch:
        """The arch a genome describes (dormant genes are ignored)."""
        stages = []
        for start in self.starts:
            embed, depth = genome[start], genome[start + 1]
            blocks = tuple(BlockArch(genome[start + 2 + 2 * j], genome[start + 3 + 2 * j]) for j in range(depth))
            stages.append(StageArch(embed, blocks))
        return Arch(self.space.family, tuple(stages))

    def active(self, genome: Genome) -> list[int]:
        """Indices of the genes that change the arch when changed (dormant blocks left out)."""
        out = []
        for start in self.starts:
            depth = genome[start + 1]
            out += range(start, start + 2 + 2 * depth)
        return out


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
