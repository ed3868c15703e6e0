"""MACs and parameters: fvcore on built models equals the closed form, for every preset; one block by hand."""

from __future__ import annotations

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from vitres_deploy.arch import Arch, random_arch
from vitres_deploy.archfile import resolve_arch
from vitres_deploy.macs import arch_cost, block_macs, block_params, count_params, fvcore_macs
from vitres_deploy.space import PRESETS
from vitres_deploy.vit_resnas import Block, vit_resnas

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Full resolution for every preset: the closed form must hold where the models are deployed.
CASES = [(name, spec) for name in PRESETS for spec in ("max", "min", "random:0", "random:1")]
CASES += [("fmnist", f"random:{seed}") for seed in range(2, 8)]


@pytest.mark.parametrize(("name", "spec"), CASES)
def test_fvcore_equals_the_closed_form(name: str, spec: str) -> None:
    space = PRESETS[name]
    arch = resolve_arch(spec, space)
    torch.manual_seed(0)
    model = vit_resnas(arch, space)
    cost = arch_cost(arch, space)
    assert fvcore_macs(model, space.image_size, space.in_chans) == cost.macs
    assert count_params(model) == cost.params
    assert sum(m for m, _ in cost.parts.values()) == cost.macs
    assert sum(p for _, p in cost.parts.values()) == cost.params
    assert list(cost.parts) == ["stem", "stage1", "stage2", "stage3", "head"]


def test_fvcore_counts_the_active_arch_of_the_supernet(fmnist) -> None:
    from vitres_deploy.supernet import build_supernet

    net = build_supernet(fmnist)
    for seed in range(3):
        arch = random_arch(fmnist, seed)
        net.set_active(arch)
        assert fvcore_macs(net, fmnist.image_size, fmnist.in_chans) == arch_cost(arch, fmnist).macs


class _TokensThenBlock(nn.Module):
    """Turns a (1, C, H, W) "image" into H*W tokens of width C and runs one block (fvcore_macs takes images)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.flatten(2).transpose(1, 2))


def test_one_small_block_by_hand() -> None:
    # N = 4 tokens, C = 8 channels, h = 2 heads of d = 4 (h*d = 8), MLP hidden 16
    qkv = 4 * 8 * (3 * 8)  # N x C x 3hd = 768
    scores = 2 * 4 * 4 * 4  # q @ k^T per head: N x N x d, 2 heads = 128
    mix = 2 * 4 * 4 * 4  # attn @ v per head: N x N x d, 2 heads = 128
    proj = 4 * 8 * 8  # N x hd x C = 256
    mlp = 4 * 8 * 16 + 4 * 16 * 8  # fc1 + fc2 = 1024
    assert qkv + scores + mix + proj + mlp == 2304
    assert block_macs(tokens=4, dim=8, heads=2, head_dim=4, mlp=16) == 2304

    block = Block(dim=8, heads=2, head_dim=4, mlp_hidden=16)
    assert fvcore_macs(_TokensThenBlock(block), image_size=2, in_chans=8) == 2304
    # norms 2 x (8 + 8), qkv 8x24 + 24, proj 8x8 + 8, fc1 8x16 + 16, fc2 16x8 + 8
    assert count_params(block) == block_params(dim=8, heads=2, head_dim=4, mlp=16) == 32 + 216 + 72 + 144 + 136


def test_plain_fvcore_would_drop_the_attention_matmuls() -> None:
    # Why fvcore_macs installs its own handle: fvcore has none for scaled_dot_product_attention.
    model = _TokensThenBlock(Block(dim=8, heads=2, head_dim=4, mlp_hidden=16)).eval()
    analysis = FlopCountAnalysis(model, torch.zeros(1, 8, 2, 2)).unsupported_ops_warnings(False)
    analysis.total()
    assert "aten::scaled_dot_product_attention" in analysis.unsupported_ops()


def test_the_papers_searched_tiny_counts_what_the_paper_reports() -> None:
    """ViT-ResNAS-Tiny as searched in the paper (the seed code's searched_net/tiny.sh network definition): 1.8
    GMACs and 41 M parameters in the paper; with the seed's 24-channel stem 1.7826 G and 40.79 M exactly."""
    stages = [(176, [(3, 704), (3, 576), (3, 640), (4, 576), (4, 704)]),
              (352, [(10, 1408), (8, 1408), (8, 1280), (8, 1408), (10, 1280), (10, 1024)]),
              (704, [(10, 2560), (10, 1792), (10, 2816), (8, 2816), (8, 2560)])]
    arch = Arch.from_dict({"space": "vit-resnas-tiny", "stages": [
        {"embed_dim": width, "blocks": [{"heads": h, "mlp": m} for h, m in blocks]} for width, blocks in stages]})
    cost = arch_cost(arch, PRESETS["vit-resnas-tiny"])
    assert cost.macs / 1e9 == pytest.approx(1.7826, rel=0.01)
    assert cost.params / 1e6 == pytest.approx(40.79, rel=0.01)
    torch.manual_seed(0)
    assert count_params(vit_resnas(arch, PRESETS["vit-resnas-tiny"])) == cost.params
