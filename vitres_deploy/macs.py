"""Multiply-accumulates (MACs) and parameters of architectures.

Counting rule: multiply-accumulates of convolutions, linears and the two attention matmuls
(``q @ k^T`` and ``attn @ v``), with the class token in the sequence length; norms, softmax, GELU,
pooling and biases are ignored. :func:`arch_macs` is the closed form, used on hot paths (search);
:func:`fvcore_macs` measures a built module with fvcore, whose missing handle for
``scaled_dot_product_attention`` (it would silently drop the attention matmuls) is supplied here.
Tests cross-check the two for every preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .arch import Arch
from .space import SearchSpace


def _stem(space: SearchSpace, c1: int) -> tuple[int, int]:
    c, half, k = space.stem_width(c1), space.image_size // 2, space.patch_size // 2
    g = space.grids[0]
    macs = half * half * 9 * (space.in_chans * c + 2 * c * c) + g * g * k * k * c * c1
    params = 9 * (space.in_chans * c + 2 * c * c) + 3 * 2 * c + k * k * c * c1 + c1
    return macs, params


def block_macs(tokens: int, dim: int, heads: int, head_dim: int, mlp: int) -> int:
    """MACs of one transformer block: qkv, the two attention matmuls, proj, and the MLP."""
    hd = heads * head_dim
    return tokens * dim * 3 * hd + 2 * tokens * tokens * hd + tokens * hd * dim + 2 * tokens * dim * mlp


def block_params(dim: int, heads: int, head_dim: int, mlp: int) -> int:
    """Parameters of one transformer block (two LayerNorms, attention, MLP)."""
    hd = heads * head_dim
    return 4 * dim + (dim * 3 * hd + 3 * hd) + (hd * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)


def reduction_macs(in_dim: int, out_dim: int, out_grid: int) -> int:
    """MACs of a residual spatial reduction: the 3x3 stride-2 conv and the class-token Linear."""
    return out_grid * out_grid * 9 * in_dim * out_dim + in_dim * out_dim


def reduction_params(in_dim: int, out_dim: int, out_grid: int) -> int:
    """Parameters of a residual spatial reduction (LN, conv, class-token Linear, position embedding)."""
    return 2 * in_dim + 9 * in_dim * out_dim + out_dim + in_dim * out_dim + out_dim + out_grid * out_grid * out_dim


@dataclass(frozen=True)
class ArchCost:
    """MACs and parameters of an arch, in total and per part (``stem``, ``stage1``.., ``head``)."""

    macs: int
    params: int
    parts: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: totals plus ``{"parts": {name: {"macs", "params"}}}``."""
        return {
            "macs": self.macs,
            "params": self.params,
            "parts": {k: {"macs": m, "params": p} for k, (m, p) in self.parts.items()},
        }


def arch_cost(arch: Arch, space: SearchSpace) -> ArchCost:
    """Closed-form MACs (batch 1) and parameters of ``arch``; a stage's part includes the reduction into it."""
    dims = [s.embed_dim for s in arch.stages]
    parts: dict[str, tuple[int, int]] = {}
    m, p = _stem(space, dims[0])
    parts["stem"] = (m, p + dims[0] + space.tokens[0] * dims[0])  # + class token and position embedding
    for i, (s, ss) in enumerate(zip(arch.stages, space.stages)):
        n = space.tokens[i]
        m = sum(block_macs(n, s.embed_dim, b.heads, ss.head_dim, b.mlp) for b in s.blocks)
        p = sum(block_params(s.embed_dim, b.heads, ss.head_dim, b.mlp) for b in s.blocks)
        if i:
            m += reduction_macs(dims[i - 1], dims[i], space.grids[i])
            p += reduction_params(dims[i - 1], dims[i], space.grids[i])
        parts[f"stage{i + 1}"] = (m, p)
    parts["head"] = (dims[-1] * space.num_classes, 2 * dims[-1] + dims[-1] * space.num_classes + space.num_classes)
    return ArchCost(sum(v[0] for v in parts.values()), sum(v[1] for v in parts.values()), parts)


#: Bytes a weight takes in a precision (an int8 network keeps its few float weights, norms and biases, in float:
#: they are left out of the count).
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def weight_bytes(arch: Arch, space: SearchSpace, precision: str = "fp32", int8_stages: tuple[int, ...] = ()) -> int:
    """Bytes of ``arch``'s weights in ``precision``; the 1-based ``int8_stages`` in int8 whatever ``precision``
    (a mixed network: the stem goes with stage 1, the head with the last stage)."""
    cost = arch_cost(arch, space)
    last = len(arch.stages)

    def stage_of(part: str) -> int:
        return 1 if part == "stem" else last if part == "head" else int(part.removeprefix("stage"))

    return sum(params * (1 if stage_of(part) in int8_stages else BYTES_PER_WEIGHT[precision])
               for part, (_, params) in cost.parts.items())


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    *batch, n, d = q
    lead = 1
    for size in batch:
        lead *= size
    return lead * n * k[-2] * d + lead * n * k[-2] * v[-1]


def _ignored(inputs: list[Any], outputs: list[Any]) -> int:
    # fvcore's set_op_handle(name, None) does not override its default norm handles; a zero one does.
    return 0


_IGNORED_OPS = ("aten::batch_norm", "aten::layer_norm", "aten::group_norm", "aten::instance_norm")


def fvcore_macs(model: nn.Module, image_size: int, in_chans: int) -> int:
    """MACs of ``model`` on one image, measured by fvcore under the counting rule of this module."""
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        analysis = (
            FlopCountAnalysis(model, x)
            .set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            .set_op_handle(**dict.fromkeys(_IGNORED_OPS, _ignored))
            .unsupported_ops_warnings(False)
            .uncalled_modules_warnings(False)
        )
        return int(analysis.total())
    finally:
        model.train(was_training)


def count_params(model: nn.Module) -> int:
    """Number of parameters of a built module."""
    return sum(p.numel() for p in model.parameters())
