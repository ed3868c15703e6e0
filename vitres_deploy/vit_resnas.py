"""ViT-ResNAS: the static (deployable) model family.

Order as in timm's ``vision_transformer.py``: blocks, then the model, then entry points.
A :class:`ViTResNAS` is a plain module with fixed widths: it is what the supernet's
:meth:`~vitres_deploy.supernet.ViTResNASSupernet.extract` returns and what gets timed and exported.

Structure (Liao et al., 2021): a conv stem, stages of pre-norm transformer blocks, and a residual
spatial reduction between stages; the head is a LayerNorm on the class token and a Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Arch
from .space import SearchSpace

# --------------------------------------------------------------------------------------- blocks


class ConvStem(nn.Module):
    """Conv 3x3/2 + BN + ReLU, a residual pair of conv 3x3 + BN (+ReLU), then a patchifying conv.

    The last conv has kernel = stride = ``patch_size // 2`` and maps to the stage-1 width; its output
    grid is flattened to tokens.
    """

    def __init__(self, in_chans: int, channels: int, out_dim: int, patch_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.proj = nn.Conv2d(channels, out_dim, patch_size // 2, patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(x + self.bn3(self.conv3(y)))
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a decoupled head dimension: qkv C -> 3*h*d, proj h*d -> C."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(attend(self.qkv(x), self.heads, self.head_dim))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


def attend(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Scaled dot-product attention over packed ``[q | k | v]`` projections of shape (B, N, 3*h*d)."""
    b, n, _ = qkv.shape
    q, k, v = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, heads * head_dim)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear with an explicit hidden width."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def skip_pool_scale(grid: int) -> torch.Tensor | None:
    """Correction that turns a 2x2 average over a zero-padded odd grid into an in-bounds average.

    Returns None for even grids (no padding, no correction). For odd grids the last row and column
    of windows cover 2 (or 1) real tokens instead of 4, so they are scaled by 4 / count.
    """
    if grid % 2 == 0:
        return None
    out = math.ceil(grid / 2)
    side = torch.full((out,), 2.0)
    side[-1] = 1.0
    return (4.0 / (side[:, None] * side[None, :])).reshape(1, 1, out, out)


def pool_skip(patches: torch.Tensor, grid: int, scale: torch.Tensor | None) -> torch.Tensor:
    """2x2 average pooling of patch tokens (B, g*g, C) -> (B, ceil(g/2)^2, C); odd grids are padded."""
    b, _, c = patches.shape
    x = patches.transpose(1, 2).reshape(b, c, grid, grid)
    if scale is not None:
        x = F.avg_pool2d(F.pad(x, (0, 1, 0, 1)), 2) * scale
    else:
        x = F.avg_pool2d(x, 2)
    return x.flatten(2).transpose(1, 2)


class ResidualSpatialReduction(nn.Module):
    """Residual spatial reduction between stages.

    Main path: LN -> patch tokens as a grid -> conv 3x3/2 (C_in -> C_out) + new position embedding;
    class token through Linear(C_in, C_out). Skip path: un-normed patch tokens through 2x2 average
    pooling, class token unchanged, channels zero-padded to C_out. Output = main + skip.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.grid = in_dim, out_dim, grid
        out_grid = math.ceil(grid / 2)
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.cls_proj = nn.Linear(in_dim, out_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, out_grid * out_grid, out_dim))
        self.register_buffer("skip_scale", skip_pool_scale(grid), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.norm(x)
        grid = y[:, 1:].transpose(1, 2).reshape(b, self.in_dim, self.grid, self.grid)
        main = torch.cat([self.cls_proj(y[:, :1]), self.conv(grid).flatten(2).transpose(1, 2) + self.pos_embed], 1)
        skip = torch.cat([x[:, :1], pool_skip(x[:, 1:], self.grid, self.skip_scale)], 1)
        return main + F.pad(skip, (0, self.out_dim - self.in_dim))


# ---------------------------------------------------------------------------------------- model


class ViTResNAS(nn.Module):
    """A static ViT-ResNAS network: one fixed architecture of a search space.

    Build a fresh one with :func:`vit_resnas`; get one with trained weights from the supernet's
    ``extract(arch)``. ``forward_features`` returns the tokens of the last stage, ``forward_head``
    applies the final LayerNorm to the class token and classifies it.
    """

    def __init__(
        self,
        arch: Arch,
        space: SearchSpace,
        *,
        stem: ConvStem,
        cls_token: nn.Parameter,
        pos_embed: nn.Parameter,
        stages: nn.ModuleList,
        reductions: nn.ModuleList,
        norm: nn.LayerNorm,
        head: nn.Linear,
    ) -> None:
        super().__init__()
        self.arch, self.space = arch, space
        self.stem, self.cls_token, self.pos_embed = stem, cls_token, pos_embed
        self.stages, self.reductions = stages, reductions
        self.norm, self.head = norm, head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (B, C, H, W) -> last-stage tokens (B, 1 + g*g, C_last), class token first."""
        x = self.stem(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for i, stage in enumerate(self.stages):
            if i:
                x = self.reductions[i - 1](x)
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage tokens -> logits (B, num_classes)."""
        return self.head(self.norm(x[:, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------- entry points


def vit_resnas(arch: Arch, space: SearchSpace) -> ViTResNAS:
    """Build a freshly initialised static network for ``arch`` (validated against ``space``)."""
    arch.validate(space)
    dims = [s.embed_dim for s in arch.stages]
    grids, tokens = space.grids, space.tokens
    model = ViTResNAS(
        arch,
        space,
        stem=ConvStem(space.in_chans, space.stem_width(dims[0]), dims[0], space.patch_size),
        cls_token=nn.Parameter(torch.zeros(1, 1, dims[0])),
        pos_embed=nn.Parameter(torch.zeros(1, tokens[0], dims[0])),
        stages=nn.ModuleList(
            nn.Sequential(*(Block(s.embed_dim, b.heads, ss.head_dim, b.mlp) for b in s.blocks))
            for s, ss in zip(arch.stages, space.stages)
        ),
        reductions=nn.ModuleList(
            ResidualSpatialReduction(dims[i], dims[i + 1], grids[i]) for i in range(len(dims) - 1)
        ),
        norm=nn.LayerNorm(dims[-1]),
        head=nn.Linear(dims[-1], space.num_classes),
    )
    init_weights(model)
    return model


def init_weights(model: nn.Module) -> None:
    """ViT initialisation: truncated normal (std 0.02) for linears and embeddings, Kaiming for convs."""
    for name, p in model.named_parameters():
        if name.endswith(("cls_token", "pos_embed")):
            nn.init.trunc_normal_(p, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
