"""Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist``), held in memory."""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..seeding import augmentation_seed, shuffle_seed
from .types import SPLITS, Batch, HoldoutSpec, indices_digest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path} is truncated: expected {math.prod(shape)} values, found {data.size}")
    return data.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}: install Debian's package dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or set data_dir to a directory with the four IDX files",
        field="data_dir",
    )


class FashionMNIST:
    """Fashion-MNIST held in memory; augmentation (random crop with 2-pixel padding, flip) runs per batch."""

    kind = "fmnist"
    class_names = FMNIST_CLASSES
    mean, std = FMNIST_MEAN, FMNIST_STD

    def __init__(self, root: str | Path | None = None, holdout: HoldoutSpec | None = None) -> None:
        root = Path(root) if root else FMNIST_DIR
        if not root.is_dir():
            raise DataError(
                f"Fashion-MNIST directory {root} not found: install Debian's package dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or set data_dir to a directory with its four IDX files",
                field="data_dir",
            )
        images = read_idx(_find(root, "train-images-idx3-ubyte"))
        labels = read_idx(_find(root, "train-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{root}: {len(images)} training images but {len(labels)} labels")
        self.holdout = holdout or HoldoutSpec(seed=0, fraction=0.1)
        held = self.holdout.indices(labels)
        self.holdout_digest = indices_digest(held)
        keep = np.setdiff1d(np.arange(len(labels)), held)
        self._root = root
        self._train = (torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep].astype(np.int64)))
        self._holdout = (torch.from_numpy(images[held].copy()), torch.from_numpy(labels[held].astype(np.int64)))
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def num_train(self) -> int:
        """Number of training images (hold-out excluded)."""
        return len(self._train[1])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1).float() / 255.0 - self.mean[0]) / self.std[0]

    def train_batches(self, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Shuffled by (seed, epoch), the same on every rank; each rank takes every world-th batch."""
        g = torch.Generator().manual_seed(shuffle_seed(seed, epoch))
        images, labels = self._train
        order = torch.randperm(len(labels), generator=g)
        g.manual_seed(augmentation_seed(seed, epoch, rank))
        steps = len(order) // (batch_size * world)  # drop the ragged tail so every rank takes the same steps
        for step in range(steps):
            idx = order[(step * world + rank) * batch_size: (step * world + rank + 1) * batch_size]
            yield _augment(self._normalise(images[idx]), g), labels[idx]

    def eval_batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Hold-out or test images, normalised, in file order."""
        images, labels = self._split(split)
        n = len(labels) if limit is None else min(limit, len(labels))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield self._normalise(images[start:stop]), labels[start:stop]

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training images drawn by ``seed`` (hold-out excluded), normalised, not augmented."""
        images = self._train[0]
        if not 1 <= count <= len(images):
            raise DataError(f"calibration_images {count}: use 1 to {len(images)} (the training images)",
                            field="calibration_images")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
        return self._normalise(images[order.sort().values])

    def _split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "holdout":
            return self._holdout
        if split == "test":
            if self._test is None:
                self._test = (torch.from_numpy(read_idx(_find(self._root, "t10k-images-idx3-ubyte")).copy()),
                              torch.from_numpy(read_idx(_find(self._root, "t10k-labels-idx1-ubyte")).astype(np.int64)))
            return self._test
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip, per sample, on a (B, C, H, W) batch."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=float(x.min()))
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g) + torch.arange(h)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g) + torch.arange(w)
    crops = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], oy[:, :, None], ox[:, None, :]]
    crops = crops.permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops).contiguous()
