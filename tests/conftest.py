"""Shared test fixtures and the hardware markers.

Tests that need a CUDA GPU are marked ``@pytest.mark.gpu``, tests that need TensorRT
``@pytest.mark.tensorrt``; both skip with a reason where the hardware or package is missing.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from vitres_deploy.arch import Arch, BlockArch, StageArch
from vitres_deploy.convert.to_onnx import export_onnx
from vitres_deploy.space import PRESETS, SearchSpace
from vitres_deploy.vit_resnas import Block, init_weights

#: The test scopes that take longest (a module, or a class holding tests; what ``--dist loadscope`` hands a
#: pytest-xdist worker whole), longest first, as measured on the Zen 1 CPU (2026-12-05, 237 s for the first, 23 s
#: for the last: benchmarks/suite_balance.py). They are collected first, and `make test` passes
#: ``--no-loadscope-reorder`` so that the workers take them in that order, the short scopes filling in at the end:
#: the two workers end close together. With xdist's own order (scopes with the most tests first) they ended 243 s
#: apart (docs/latency.md, nineteenth round).
LONGEST_SCOPES = (
    "tests/test_search_precision.py", "tests/test_latency.py", "tests/test_docs.py::TestStepByStep",
    "tests/test_docs.py::TestQuickDemo", "tests/test_export_int8.py", "tests/test_export.py", "tests/test_demo.py",
    "tests/test_drift.py", "tests/test_finetune.py", "tests/test_int8.py", "tests/test_train.py",
    "tests/test_search.py", "tests/test_supernet.py", "tests/test_runtime.py", "tests/test_macs.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the tests of :data:`LONGEST_SCOPES` first, in that order (the rest keep theirs), and skip ``gpu`` and
    ``tensorrt`` tests, with the reason, where this machine cannot run them."""
    rank = {scope: i for i, scope in enumerate(LONGEST_SCOPES)}
    items.sort(key=lambda item: rank.get(item.nodeid.rsplit("::", 1)[0], len(rank)))
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    if importlib.util.find_spec("tensorrt") is None:
        skips["tensorrt"] = pytest.mark.skip(reason="needs the tensorrt Python package, which is not installed")
    for item in items:
        for marker, skip in skips.items():
            if item.get_closest_marker(marker) is not None:  # not keywords: a checkout folder named gpu is one
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def suite_export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export cache (``VITRES_DEPLOY_CACHE``) for the whole run, shared by its pytest-xdist workers and the
    commands the tests start: the suite neither reads nor fills the user's cache (a file exported there by older
    code could hide a change of the exporter's use), and a network that two tests export is exported once. A test
    that counts exports or needs an empty cache sets its own."""
    run = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base folder is in the run's
        run = run.parent
    cache = run / "export-cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VITRES_DEPLOY_CACHE", str(cache))
        yield cache


#: A space of a few small entries, for profiling and validation tests that run in seconds.
MINI_SPACE = {
    "name": "mini", "image_size": 16, "in_chans": 1, "num_classes": 4, "patch_size": 4, "stem_channels": 8,
    "stages": [
        {"embed_dims": [24, 16], "heads": [1], "head_dim": 8, "mlp_hidden": [32], "depths": [2, 1]},
        {"embed_dims": [32], "heads": [2, 1], "head_dim": 8, "mlp_hidden": [48], "depths": [1]},
    ],
}


@pytest.fixture(scope="module")
def mini() -> SearchSpace:
    """The ``mini`` space (:data:`MINI_SPACE`)."""
    return SearchSpace.from_dict(MINI_SPACE)


@pytest.fixture(scope="session")
def fmnist() -> SearchSpace:
    """The demo search space (Fashion-MNIST, 28x28x1): small enough for every test."""
    return PRESETS["fmnist"]


def _every_arch(space: SearchSpace) -> list[Arch]:
    per_stage = []
    for st in space.stages:
        options = []
        for d, depth in itertools.product(st.embed_dims, st.depths):
            for blocks in itertools.product(itertools.product(st.heads, st.mlp_hidden), repeat=depth):
                options.append(StageArch(d, tuple(BlockArch(h, m) for h, m in blocks)))
        per_stage.append(options)
    return [Arch(space.family, stages) for stages in itertools.product(*per_stage)]


@pytest.fixture(scope="session")
def every_arch() -> Callable[[SearchSpace], list[Arch]]:
    """A function giving every sub-network of a (small) space."""
    return _every_arch


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for a test module.

    On a busy 2-core machine (a training run beside the tests), two OpenMP threads made small CPU
    forwards about 10x slower than one. Use with ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fmnist_dir():
    """Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist, installed by `make test`)."""
    from vitres_deploy.data import FMNIST_DIR

    if not FMNIST_DIR.is_dir():
        pytest.fail(f"{FMNIST_DIR} missing: run `make test` (it installs dataset-fashion-mnist) or apt-get install it")
    return FMNIST_DIR


@pytest.fixture(scope="session")
def small_supernet(tmp_path_factory: pytest.TempPathFactory, fmnist_dir):
    """A real fmnist supernet checkpoint from a 2-step training run (seconds), with its data spec."""
    from vitres_deploy.train import TrainConfig, train

    out = tmp_path_factory.mktemp("small-supernet")
    return train(TrainConfig(epochs=1, steps_per_epoch=2, batch_size=32, eval_limit=200), out, progress=False)


@pytest.fixture(scope="module")
def block() -> Block:
    """A stage-1 fmnist transformer block (64 wide, 4 heads, MLP 192), ViT-initialised."""
    torch.manual_seed(0)
    b = Block(64, 4, 16, 192)
    init_weights(b)
    return b.eval()


@pytest.fixture(scope="module")
def block_onnx(block: Block, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The block exported with the shared dynamo export primitive (dynamic batch)."""
    return export_onnx(block, (50, 64), tmp_path_factory.mktemp("onnx") / "block.onnx")
