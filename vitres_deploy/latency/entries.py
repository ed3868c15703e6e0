"""The distinct choices of a search space, each as a small static module at the right token count.

A latency table has one entry per distinct choice:

* ``stem/W``: the conv stem, class token and position embedding for stage-1 width W (image in, tokens out);
* ``block/S/C/H/M``: a transformer block of stage S with width C, H heads and MLP hidden width M;
* ``reduction/S/CI/CO``: the residual spatial reduction into stage S, from width CI to CO;
* ``head/W``: the final LayerNorm and classifier on the class token, for last-stage width W.

The modules are the layers of :mod:`vitres_deploy.vit_resnas` (forward code included), built with
the ViT initialisation from a fixed seed, so what is timed is what the network runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import Arch
from ..errors import ProfileError
from ..space import SearchSpace
from ..vit_resnas import Block, ConvStem, ResidualSpatialReduction, ViTResNAS, init_weights


class StemEntry(nn.Module):
    """Stem, class token and position embedding: :meth:`ViTResNAS.forward_features` with no stages."""

    forward = ViTResNAS.forward_features

    def __init__(self, space: SearchSpace, width: int) -> None:
        super().__init__()
        self.stem = ConvStem(space.in_chans, space.stem_width(width), width, space.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, space.tokens[0], width))
        self.stages = nn.ModuleList()
        self.reductions = nn.ModuleList()


class HeadEntry(nn.Module):
    """Final LayerNorm on the class token and the classifier: :meth:`ViTResNAS.forward_head`."""

    forward = ViTResNAS.forward_head

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)


@dataclass(frozen=True, order=True)
class EntrySpec:
    """One distinct choice: ``kind``, the 1-based ``stage`` it belongs to, and its integer ``dims``.

    ``dims`` is ``(W,)`` for stem and head, ``(C, H, M)`` for a block, ``(CI, CO)`` for a reduction.
    """

    kind: str
    stage: int
    dims: tuple[int, ...]

    @property
    def key(self) -> str:
        """The table key, e.g. ``block/1/64/4/192``, ``reduction/2/64/128``, ``stem/64``, ``head/256``."""
        if self.kind in ("stem", "head"):
            return f"{self.kind}/{self.dims[0]}"
        return "/".join([self.kind, str(self.stage), *map(str, self.dims)])

    @classmethod
    def from_key(cls, key: str, space: SearchSpace) -> EntrySpec:
        """Parse a table key back (stem and head take their stage from the space)."""
        parts = key.split("/")
        try:
            kind, nums = parts[0], [int(p) for p in parts[1:]]
        except ValueError:
            raise ProfileError(f"malformed table key {key!r}") from None
        expected = {"stem": 1, "head": 1, "block": 4, "reduction": 3}
        if kind not in expected or len(nums) != expected[kind]:
            raise ProfileError(f"malformed table key {key!r}")
        if kind == "stem":
            return cls("stem", 1, tuple(nums))
        if kind == "head":
            return cls("head", len(space.stages), tuple(nums))
        return cls(kind, nums[0], tuple(nums[1:]))

    def sample_shape(self, space: SearchSpace) -> tuple[int, ...]:
        """Shape of one input sample (no batch dimension)."""
        if self.kind == "stem":
            return (space.in_chans, space.image_size, space.image_size)
        if self.kind == "block":
            return (space.tokens[self.stage - 1], self.dims[0])
        if self.kind == "reduction":
            return (space.tokens[self.stage - 2], self.dims[0])
        return (space.tokens[-1], self.dims[0])

    def build(self, space: SearchSpace, seed: int = 0) -> nn.Module:
        """The static module of this choice, ViT-initialised from ``seed``, in eval mode."""
        torch.manual_seed(seed)
        if self.kind == "stem":
            module: nn.Module = StemEntry(space, self.dims[0])
        elif self.kind == "block":
            c, h, m = self.dims
            module = Block(c, h, space.stages[self.stage - 1].head_dim, m)
        elif self.kind == "reduction":
            module = ResidualSpatialReduction(self.dims[0], self.dims[1], space.grids[self.stage - 2])
        elif self.kind == "head":
            module = HeadEntry(self.dims[0], space.num_classes)
        else:
            raise ProfileError(f"unknown entry kind {self.kind!r}")
        init_weights(module)
        return module.eval()


def enumerate_entries(space: SearchSpace) -> list[EntrySpec]:
    """Every distinct choice of ``space``, in a fixed order (stem, then per stage reductions and blocks, head)."""
    out = [EntrySpec("stem", 1, (w,)) for w in space.stages[0].embed_dims]
    for i, st in enumerate(space.stages, 1):
        if i > 1:
            prev = space.stages[i - 2].embed_dims
            out += [EntrySpec("reduction", i, (a, b)) for a, b in itertools.product(prev, st.embed_dims)]
        choices = itertools.product(st.embed_dims, st.heads, st.mlp_hidden)
        out += [EntrySpec("block", i, (c, h, m)) for c, h, m in choices]
    out += [EntrySpec("head", len(space.stages), (w,)) for w in space.stages[-1].embed_dims]
    return out


def arch_entries(arch: Arch, space: SearchSpace) -> list[EntrySpec]:
    """The entries ``arch`` runs, in execution order (with repeats: one per block)."""
    dims = [s.embed_dim for s in arch.stages]
    out = [EntrySpec("stem", 1, (dims[0],))]
    for i, s in enumerate(arch.stages, 1):
        if i > 1:
            out.append(EntrySpec("reduction", i, (dims[i - 2], dims[i - 1])))
        out += [EntrySpec("block", i, (s.embed_dim, b.heads, b.mlp)) for b in s.blocks]
    out.append(EntrySpec("head", len(arch.stages), (dims[-1],)))
    return out


def network_sample_shape(space: SearchSpace) -> tuple[int, int, int]:
    """Shape of one image of ``space`` (channels, height, width)."""
    return (space.in_chans, space.image_size, space.image_size)
