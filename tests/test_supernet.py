"""The weight-sharing supernet: exact extraction, static-only extracted modules, multi-arch forward, devices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitres_deploy.arch import max_arch, min_arch, random_arch
from vitres_deploy.macs import arch_cost, count_params
from vitres_deploy.space import SearchSpace, load_space
from vitres_deploy.supernet import ViTResNASSupernet, build_supernet

# Paper spaces at a reduced resolution (same choices and weight shapes, 17 -> 5 -> 2 tokens) to stay fast.
SPACES = ["fmnist", "vit-resnas-tiny@56", "vit-resnas-small@56"]
NUM_RANDOM_ARCHS = 20
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """Make every parameter matter: randomise biases and norm affines, and BatchNorm running statistics.

    Fresh initialisation leaves biases at 0, norm weights at 1 and BatchNorm statistics at (0, 1), so a
    wrongly copied bias or running mean would go unnoticed.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
    return model


def images(space: SearchSpace, batch: int, seed: int = 0) -> torch.Tensor:
    """A deterministic batch of random images of ``space``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, space.in_chans, space.image_size, space.image_size, generator=gen)


@pytest.fixture(scope="module", params=SPACES)
def supernet(request: pytest.FixtureRequest, torch_one_thread: None) -> ViTResNASSupernet:
    """A perturbed supernet in eval mode, built once per space for this module."""
    torch.manual_seed(0)
    return perturb_(build_supernet(load_space(request.param)), seed=1).eval()


@torch.no_grad()
def test_extraction_equals_the_supernet_on_random_archs(supernet: ViTResNASSupernet) -> None:
    space = supernet.space
    x = images(space, 2)
    archs = [max_arch(space), min_arch(space)] + [random_arch(space, seed) for seed in range(NUM_RANDOM_ARCHS)]
    for arch in archs:
        supernet.set_active(arch)
        expected = supernet(x)
        static = supernet.extract(arch)
        assert not static.training
        diff = (static(x) - expected).abs().max().item()
        assert diff <= TOLERANCE, f"{space.name} {arch.short()}: max abs diff {diff:.3g}"
        assert expected.abs().max().item() > 0.1, "outputs too small for the comparison to mean anything"


@torch.no_grad()
def test_extracted_module_is_static_lean_and_independent(supernet: ViTResNASSupernet) -> None:
    space = supernet.space
    arch = random_arch(space, 123)
    static = supernet.extract(arch)
    for name, module in static.named_modules():
        origin = type(module).__module__
        assert origin == "vitres_deploy.vit_resnas" or origin.startswith("torch.nn.modules."), (
            f"{name or 'model'} is a {type(module).__qualname__} from {origin}, not a plain static layer"
        )
    assert count_params(static) == arch_cost(arch, space).params
    # sliced copies, not views: no storage shared with the supernet
    shared = {p.data_ptr() for p in supernet.parameters()} & {p.data_ptr() for p in static.parameters()}
    assert not shared
    x = images(space, 2)
    before = static(x)
    supernet.stages[0][0].attn.qkv.weight.add_(1.0)
    try:
        assert torch.equal(static(x), before)
    finally:
        supernet.stages[0][0].attn.qkv.weight.sub_(1.0)


def test_extract_and_multi_arch_forward_leave_the_active_arch(fmnist: SearchSpace) -> None:
    net = build_supernet(fmnist).eval()
    chosen = random_arch(fmnist, 1)
    net.set_active(chosen)
    net.extract(random_arch(fmnist, 2))
    net(images(fmnist, 4), archs=[random_arch(fmnist, 3), random_arch(fmnist, 4)])
    assert net.active == chosen


@torch.no_grad()
def test_multi_arch_forward_equals_each_group_alone(fmnist: SearchSpace) -> None:
    torch.manual_seed(0)
    net = perturb_(build_supernet(fmnist), seed=2).eval()
    archs = [random_arch(fmnist, seed) for seed in (10, 11, 12)]
    x = images(fmnist, 7)  # uneven groups: 3, 2, 2
    together = net(x, archs=archs)
    assert together.shape == (7, fmnist.num_classes)
    for arch, group, out in zip(archs, x.tensor_split(3), together.tensor_split(3)):
        net.set_active(arch)
        assert (net(group) - out).abs().max().item() <= TOLERANCE


def test_the_stem_narrows_with_stage_1_and_keeps_each_width_s_batchnorm(fmnist: SearchSpace) -> None:
    torch.manual_seed(0)
    net = build_supernet(fmnist).train()
    smallest, largest = min_arch(fmnist), max_arch(fmnist)
    assert net.extract(smallest).stem.conv1.out_channels == 4 and net.extract(largest).stem.conv1.out_channels == 16
    means = {w: norms[0].running_mean.clone() for w, norms in net.stem.norms.items()}
    with torch.no_grad():
        net(images(fmnist, 8), archs=[smallest])  # a training step of the 4-channel stem alone
    moved = {w for w, norms in net.stem.norms.items() if not torch.equal(norms[0].running_mean, means[w])}
    assert moved == {"4"}, f"a 4-channel stem's batch moved the statistics of widths {sorted(moved)}"


@torch.no_grad()
def test_different_archs_give_different_outputs(fmnist: SearchSpace) -> None:
    torch.manual_seed(0)
    net = perturb_(build_supernet(fmnist), seed=3).eval()
    x = images(fmnist, 2)
    outputs = []
    for arch in [max_arch(fmnist), min_arch(fmnist)] + [random_arch(fmnist, s) for s in range(4)]:
        net.set_active(arch)
        outputs.append(net(x))
    for i in range(len(outputs)):
        for j in range(i):
            assert (outputs[i] - outputs[j]).abs().max().item() > 1e-3, f"archs {i} and {j} give the same output"


def test_drop_path_is_active_only_in_training(fmnist: SearchSpace) -> None:
    x = images(fmnist, 8)
    torch.manual_seed(0)
    net = build_supernet(fmnist, drop_path_rate=0.5)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        assert (net.extract(max_arch(fmnist))(x) - net(x)).abs().max().item() <= TOLERANCE
        net.train()
        torch.manual_seed(1)
        first = net(x)
        torch.manual_seed(1)
        assert torch.equal(net(x), first), "same seed, same drop-path mask"
        torch.manual_seed(2)
        assert not torch.allclose(net(x), first), "another seed drops other paths"

        torch.manual_seed(0)
        plain = build_supernet(fmnist, drop_path_rate=0.0).train()
        torch.manual_seed(1)
        first = plain(x)
        torch.manual_seed(2)
        assert torch.equal(plain(x), first), "without drop-path, training mode is deterministic"


def test_drop_path_rises_linearly_over_the_blocks_of_all_stages(fmnist: SearchSpace) -> None:
    def rates(net: ViTResNASSupernet) -> list[float]:
        return [block.drop_path for stage in net.stages for block in stage]

    net = build_supernet(fmnist, drop_path_rate=0.4)
    assert rates(net) == pytest.approx([0.4 * i / 8 for i in range(9)]) and rates(net)[0] == 0.0
    net.set_drop_path(0.2)
    assert rates(net) == pytest.approx([0.2 * i / 8 for i in range(9)])


def test_extraction_keeps_the_training_mode(fmnist: SearchSpace) -> None:
    net = build_supernet(fmnist)
    assert net.train().extract(min_arch(fmnist)).training
    assert not net.eval().extract(min_arch(fmnist)).training


def test_user_space_from_yaml_builds_and_extracts(tmp_path) -> None:
    path = tmp_path / "two_stages.yaml"
    path.write_text(
        "name: two-stages\nimage_size: 24\nin_chans: 3\nnum_classes: 5\npatch_size: 4\nstem_channels: 8\n"
        "stages:\n"
        "  - {embed_dims: [24, 16], heads: [2, 1], head_dim: 8, mlp_hidden: [48, 32], depths: [2, 1]}\n"
        "  - {embed_dims: [48, 32], heads: [2, 1], head_dim: 8, mlp_hidden: [96, 64], depths: [2, 1]}\n"
    )
    space = load_space(path)
    assert space.grids == (6, 3)  # an even then an odd grid
    torch.manual_seed(0)
    net = perturb_(build_supernet(space), seed=4).eval()
    x = images(space, 3)
    with torch.no_grad():
        for seed in range(5):
            arch = random_arch(space, seed)
            net.set_active(arch)
            assert net(x).shape == (3, 5)
            assert (net.extract(arch)(x) - net(x)).abs().max().item() <= TOLERANCE


@pytest.mark.gpu
def test_supernet_and_extraction_on_cuda(fmnist: SearchSpace) -> None:
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # compare in true fp32
    try:
        torch.manual_seed(0)
        cpu_net = perturb_(build_supernet(fmnist), seed=5).eval()
        net = build_supernet(fmnist).eval()
        net.load_state_dict(cpu_net.state_dict())
        net.cuda()
        x = images(fmnist, 6)
        archs = [random_arch(fmnist, seed) for seed in range(3)]
        with torch.no_grad():
            for arch in archs:
                net.set_active(arch)
                cpu_net.set_active(arch)
                out = net(x.cuda())
                assert out.is_cuda
                static = net.extract(arch)
                assert all(p.is_cuda for p in static.parameters())
                assert (static(x.cuda()) - out).abs().max().item() <= TOLERANCE
                assert (out.cpu() - cpu_net(x)).abs().max().item() <= 1e-4
            together = net(x.cuda(), archs=archs)
            for arch, group, out in zip(archs, x.tensor_split(3), together.tensor_split(3)):
                net.set_active(arch)
                assert (net(group.cuda()) - out).abs().max().item() <= TOLERANCE
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
