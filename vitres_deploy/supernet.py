"""The weight-sharing ViT-ResNAS supernet, with Once-for-All-style dynamic layers.

Every dynamic layer holds the full-size weight of the largest choice and slices it by its
``active_*`` state (first k channels, first h heads, first m MLP units); its ``get_active_subnet``
hands back the matching static layer of :mod:`vitres_deploy.vit_resnas` with copied weights.
LayerNorm statistics are over the active channels only; blocks beyond a stage's depth are skipped. The conv
stem is as wide as the space's stem width for the active stage-1 width, with BatchNorm layers of its own per
stem width (their statistics cannot be shared between widths).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch, BlockArch, max_arch
from .space import SearchSpace
from .vit_resnas import (
    Attention,
    Block,
    ConvStem,
    Mlp,
    ResidualSpatialReduction,
    ViTResNAS,
    attend,
    init_weights,
    pool_skip,
    skip_pool_scale,
)

# ------------------------------------------------------------------------------- dynamic layers


_M = TypeVar("_M", bound=nn.Module)


def _copy(dst: nn.Parameter | torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def _uninitialised(build: Callable[[], _M], device: torch.device) -> _M:
    """``build()`` allocated on ``device`` without random initialisation: its weights are about to be copied in.

    Building on the meta device skips the initialisers, which otherwise cost about twice the copies
    themselves. Buffers come back uninitialised too: the caller sets them.
    """
    with torch.device("meta"):
        module = build()
    return module.to_empty(device=device)


class DynamicLinear(nn.Linear):
    """Linear over the first ``x.shape[-1]`` inputs and the first ``active_out`` outputs."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__(max_in, max_out)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[: self.active_out, : x.shape[-1]], self.bias[: self.active_out])

    def get_active_subnet(self, in_features: int) -> nn.Linear:
        """A static ``nn.Linear(in_features, active_out)`` with the sliced weights."""
        layer = _uninitialised(lambda: nn.Linear(in_features, self.active_out), self.weight.device)
        _copy(layer.weight, self.weight[: self.active_out, :in_features])
        _copy(layer.bias, self.bias[: self.active_out])
        return layer


class DynamicLayerNorm(nn.LayerNorm):
    """LayerNorm over the active (leading) channels of its input, statistics included."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        return F.layer_norm(x, (c,), self.weight[:c], self.bias[:c], self.eps)

    def get_active_subnet(self, dim: int) -> nn.LayerNorm:
        """A static ``nn.LayerNorm(dim)`` with the sliced affine parameters."""
        layer = _uninitialised(lambda: nn.LayerNorm(dim, eps=self.eps), self.weight.device)
        _copy(layer.weight, self.weight[:dim])
        _copy(layer.bias, self.bias[:dim])
        return layer


class DynamicAttention(nn.Module):
    """Attention whose qkv/proj weights are sliced to the first ``active_heads`` heads of each of q, k, v."""

    def __init__(self, max_dim: int, max_heads: int, head_dim: int) -> None:
        super().__init__()
        self.max_heads, self.head_dim = max_heads, head_dim
        self.qkv = nn.Linear(max_dim, 3 * max_heads * head_dim)
        self.proj = nn.Linear(max_heads * head_dim, max_dim)
        self.active_heads = max_heads

    def _qkv(self, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, d, hmax = self.active_heads, self.head_dim, self.max_heads
        w = self.qkv.weight.view(3, hmax, d, -1)[:, :h, :, :dim].reshape(3 * h * d, dim)
        b = self.qkv.bias.view(3, hmax, d)[:, :h].reshape(3 * h * d)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim, hd = x.shape[-1], self.active_heads * self.head_dim
        out = attend(F.linear(x, *self._qkv(dim)), self.active_heads, self.head_dim)
        return F.linear(out, self.proj.weight[:dim, :hd], self.proj.bias[:dim])

    def get_active_subnet(self, dim: int) -> Attention:
        """A static :class:`Attention` with the active heads."""
        attn = _uninitialised(lambda: Attention(dim, self.active_heads, self.head_dim), self.qkv.weight.device)
        w, b = self._qkv(dim)
        _copy(attn.qkv.weight, w)
        _copy(attn.qkv.bias, b)
        _copy(attn.proj.weight, self.proj.weight[:dim, : self.active_heads * self.head_dim])
        _copy(attn.proj.bias, self.proj.bias[:dim])
        return attn


class DynamicMlp(nn.Module):
    """MLP whose hidden layer is sliced to the first ``active_hidden`` units."""

    def __init__(self, max_dim: int, max_hidden: int) -> None:
        super().__init__()
        self.fc1 = DynamicLinear(max_dim, max_hidden)
        self.fc2 = DynamicLinear(max_hidden, max_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fc2.active_out = x.shape[-1]
        return self.fc2(F.gelu(self.fc1(x)))

    def get_active_subnet(self, dim: int) -> Mlp:
        """A static :class:`Mlp` with the active hidden width."""
        self.fc2.active_out = dim
        mlp = _uninitialised(lambda: Mlp(dim, self.fc1.active_out), self.fc1.weight.device)
        mlp.fc1 = self.fc1.get_active_subnet(dim)
        mlp.fc2 = self.fc2.get_active_subnet(self.fc1.active_out)
        return mlp


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``rate`` (training only)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DynamicBlock(nn.Module):
    """Pre-norm transformer block with dynamic width, heads and MLP hidden width."""

    def __init__(self, max_dim: int, max_heads: int, head_dim: int, max_mlp: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = DynamicLayerNorm(max_dim)
        self.attn = DynamicAttention(max_dim, max_heads, head_dim)
        self.norm2 = DynamicLayerNorm(max_dim)
        self.mlp = DynamicMlp(max_dim, max_mlp)
        self.drop_path = drop_path

    def set_active(self, block: BlockArch) -> None:
        """Select the heads and MLP hidden width of this block."""
        self.attn.active_heads = block.heads
        self.mlp.fc1.active_out = block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)

    def get_active_subnet(self, dim: int) -> Block:
        """A static :class:`Block` of width ``dim`` with the active heads and MLP width."""
        device = self.norm1.weight.device
        block = _uninitialised(
            lambda: Block(dim, self.attn.active_heads, self.attn.head_dim, self.mlp.fc1.active_out), device
        )
        block.norm1, block.attn = self.norm1.get_active_subnet(dim), self.attn.get_active_subnet(dim)
        block.norm2, block.mlp = self.norm2.get_active_subnet(dim), self.mlp.get_active_subnet(dim)
        return block


class DynamicConvStem(nn.Module):
    """Conv stem of ``active_channels`` channels (the first of each conv) whose patchifying conv outputs the first
    ``active_out`` channels.

    Each stem width keeps its own BatchNorm layers (switchable BatchNorm, as in slimmable networks): a channel's
    statistics depend on how many channels feed it, so widths cannot share them.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], max_out: int, patch_size: int) -> None:
        super().__init__()
        c = max(widths)
        self.conv1 = nn.Conv2d(in_chans, c, 3, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.conv3 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.norms = nn.ModuleDict({str(w): nn.ModuleList(nn.BatchNorm2d(w) for _ in range(3)) for w in widths})
        self.proj = nn.Conv2d(c, max_out, patch_size // 2, patch_size // 2)
        self.active_channels, self.active_out = c, max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> stage-1 tokens of the active width, through the stem of the active channels."""
        c, k = self.active_channels, self.active_out
        bn1, bn2, bn3 = self.norms[str(c)]
        x = F.relu(bn1(F.conv2d(x, self.conv1.weight[:c], None, 2, 1)))
        y = F.relu(bn2(F.conv2d(x, self.conv2.weight[:c, :c], None, 1, 1)))
        x = F.relu(x + bn3(F.conv2d(y, self.conv3.weight[:c, :c], None, 1, 1)))
        return F.conv2d(x, self.proj.weight[:k, :c], self.proj.bias[:k], self.proj.stride).flatten(2).transpose(1, 2)

    def get_active_subnet(self) -> ConvStem:
        """A static :class:`ConvStem` (its width's BatchNorm statistics included) of the active widths."""
        c, k = self.active_channels, self.active_out
        stem = _uninitialised(
            lambda: ConvStem(self.conv1.in_channels, c, k, 2 * self.proj.stride[0]), self.proj.weight.device
        )
        stem.bn1, stem.bn2, stem.bn3 = (copy.deepcopy(bn) for bn in self.norms[str(c)])
        _copy(stem.conv1.weight, self.conv1.weight[:c])
        _copy(stem.conv2.weight, self.conv2.weight[:c, :c])
        _copy(stem.conv3.weight, self.conv3.weight[:c, :c])
        _copy(stem.proj.weight, self.proj.weight[:k, :c])
        _copy(stem.proj.bias, self.proj.bias[:k])
        return stem


class DynamicReduction(nn.Module):
    """Residual spatial reduction with dynamic input and output widths."""

    def __init__(self, max_in: int, max_out: int, grid: int) -> None:
        super().__init__()
        out_grid = math.ceil(grid / 2)
        self.grid = grid
        self.norm = DynamicLayerNorm(max_in)
        self.conv = nn.Conv2d(max_in, max_out, 3, 2, 1)
        self.cls_proj = DynamicLinear(max_in, max_out)
        self.pos_embed = nn.Parameter(torch.zeros(1, out_grid * out_grid, max_out))
        self.register_buffer("skip_scale", skip_pool_scale(grid), persistent=False)

    @property
    def active_out(self) -> int:
        """Active output width (that of the next stage)."""
        return self.cls_proj.active_out

    @active_out.setter
    def active_out(self, value: int) -> None:
        self.cls_proj.active_out = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, k = x.shape[0], x.shape[-1], self.active_out
        y = self.norm(x)
        grid = y[:, 1:].transpose(1, 2).reshape(b, c, self.grid, self.grid)
        conv = F.conv2d(grid, self.conv.weight[:k, :c], self.conv.bias[:k], 2, 1)
        main = torch.cat([self.cls_proj(y[:, :1]), conv.flatten(2).transpose(1, 2) + self.pos_embed[..., :k]], 1)
        skip = torch.cat([x[:, :1], pool_skip(x[:, 1:], self.grid, self.skip_scale)], 1)
        return main + F.pad(skip, (0, k - c))

    def get_active_subnet(self, in_dim: int) -> ResidualSpatialReduction:
        """A static :class:`ResidualSpatialReduction` from ``in_dim`` to the active output width."""
        k = self.active_out
        red = _uninitialised(lambda: ResidualSpatialReduction(in_dim, k, self.grid), self.conv.weight.device)
        red.skip_scale = None if self.skip_scale is None else self.skip_scale.clone()
        red.norm, red.cls_proj = self.norm.get_active_subnet(in_dim), self.cls_proj.get_active_subnet(in_dim)
        _copy(red.conv.weight, self.conv.weight[:k, :in_dim])
        _copy(red.conv.bias, self.conv.bias[:k])
        _copy(red.pos_embed, self.pos_embed[..., :k])
        return red


# ------------------------------------------------------------------------------------ supernet


class ViTResNASSupernet(nn.Module):
    """Weight-sharing supernet over every architecture of a :class:`SearchSpace`.

    ``forward(x)`` runs the active arch (see :meth:`set_active`); ``forward(x, archs=[a1, ..., aG])``
    splits the batch into G groups and runs each through its own sub-network in one pass
    (multi-architectural sampling). :meth:`extract` returns the static network of an arch.
    """

    def __init__(self, space: SearchSpace, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.space = space
        dims = [s.embed_dims[0] for s in space.stages]
        self.stem = DynamicConvStem(space.in_chans, space.stem_widths, dims[0], space.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[0]))
        self.pos_embed = nn.Parameter(torch.zeros(1, space.tokens[0], dims[0]))
        self.stages = nn.ModuleList(
            nn.ModuleList(
                DynamicBlock(dims[i], s.heads[0], s.head_dim, s.mlp_hidden[0]) for _ in range(s.max_depth)
            )
            for i, s in enumerate(space.stages)
        )
        self.reductions = nn.ModuleList(
            DynamicReduction(dims[i], dims[i + 1], space.grids[i]) for i in range(len(dims) - 1)
        )
        self.norm = DynamicLayerNorm(dims[-1])
        self.head = DynamicLinear(dims[-1], space.num_classes)
        init_weights(self)
        self.set_drop_path(drop_path_rate)
        self.active = max_arch(space)
        self.set_active(self.active)

    def set_drop_path(self, rate: float) -> None:
        """Drop-path schedule: ``rate * i / (n - 1)`` for the i-th of the n blocks, counted across the stages."""
        blocks = [block for stage in self.stages for block in stage]
        for i, block in enumerate(blocks):
            block.drop_path = rate * i / max(len(blocks) - 1, 1)

    def set_active(self, arch: Arch) -> None:
        """Select the sub-network that a plain ``forward`` runs (validated against the space)."""
        arch.validate(self.space)
        self.active = arch
        self.stem.active_channels = self.space.stem_width(arch.stages[0].embed_dim)
        self.stem.active_out = arch.stages[0].embed_dim
        for i, (stage, blocks) in enumerate(zip(arch.stages, self.stages)):
            if i:
                self.reductions[i - 1].active_out = stage.embed_dim
            for block_arch, block in zip(stage.blocks, blocks):
                block.set_active(block_arch)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> last-stage tokens of the active sub-network."""
        c1 = self.active.stages[0].embed_dim
        x = self.stem(x)
        x = torch.cat([self.cls_token[..., :c1].expand(x.shape[0], -1, -1), x], 1) + self.pos_embed[..., :c1]
        for i, (stage, blocks) in enumerate(zip(self.active.stages, self.stages)):
            if i:
                x = self.reductions[i - 1](x)
            for block in blocks[: stage.depth]:
                x = block(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage tokens -> logits, with the final LayerNorm over the active channels."""
        return self.head(self.norm(x[:, 0]))

    def forward(self, x: torch.Tensor, archs: Sequence[Arch] | None = None,
                sizes: Sequence[int] | None = None) -> torch.Tensor:
        """Logits of the active arch, or of ``archs[g]`` for the g-th of ``len(archs)`` batch groups: equal groups
        (``tensor_split``), or ``sizes[g]`` images each."""
        if not archs:
            return self.forward_head(self.forward_features(x))
        groups = x.split(list(sizes)) if sizes is not None else x.tensor_split(len(archs))
        if len(groups) != len(archs):
            raise ValueError(f"{len(archs)} archs for {len(groups)} groups of images")
        outputs, active = [], self.active
        try:
            for arch, group in zip(archs, groups):
                self.set_active(arch)
                outputs.append(self.forward_head(self.forward_features(group)))
        finally:
            self.set_active(active)  # the arch a plain forward runs is left as it was
        return torch.cat(outputs)

    def extract(self, arch: Arch) -> ViTResNAS:
        """The static network of ``arch`` with the supernet's (sliced, copied) weights, in the same mode.

        The supernet's active arch (what a plain ``forward`` runs) is left as it was.
        """
        active = self.active
        self.set_active(arch)
        try:
            model = self._extract_active()
        finally:
            self.set_active(active)
        return model.train(self.training)

    def _extract_active(self) -> ViTResNAS:
        arch = self.active
        dims = [s.embed_dim for s in arch.stages]
        return ViTResNAS(
            arch,
            self.space,
            stem=self.stem.get_active_subnet(),
            cls_token=nn.Parameter(self.cls_token[..., : dims[0]].detach().clone()),
            pos_embed=nn.Parameter(self.pos_embed[..., : dims[0]].detach().clone()),
            stages=nn.ModuleList(
                nn.Sequential(*(block.get_active_subnet(s.embed_dim) for block in blocks[: s.depth]))
                for s, blocks in zip(arch.stages, self.stages)
            ),
            reductions=nn.ModuleList(r.get_active_subnet(dims[i]) for i, r in enumerate(self.reductions)),
            norm=self.norm.get_active_subnet(dims[-1]),
            head=self.head.get_active_subnet(dims[-1]),
        )


def build_supernet(space: SearchSpace, drop_path_rate: float = 0.0) -> ViTResNASSupernet:
    """A freshly initialised supernet over ``space``."""
    return ViTResNASSupernet(space, drop_path_rate)
