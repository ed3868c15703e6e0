"""Data: Fashion-MNIST from its IDX files, ImageNet-style folders, and the seeded hold-out split.

Both sources expose the same small interface (:class:`ImageData`): seeded, shardable training batches
with augmentation, and evaluation batches of the ``holdout`` split (carved out of the training set,
never trained on, used by search) or the ``test`` split (final reporting only).
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
SPLITS = ("holdout", "test")
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class HoldoutSpec:
    """A seeded, class-stratified hold-out split of the training set.

    Exactly one of ``per_class`` (images per class) or ``fraction`` (of each class) is set.
    """

    seed: int = 0
    fraction: float | None = None
    per_class: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.per_class is None):
            raise DataError("a hold-out split needs exactly one of fraction or per_class")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise DataError(f"hold-out fraction {self.fraction} must be in (0, 1)")

    def indices(self, labels: np.ndarray) -> np.ndarray:
        """Sorted training-set indices of the hold-out images (the same for the same labels and spec)."""
        rng = np.random.default_rng(self.seed)
        picked = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = self.per_class if self.per_class is not None else round(self.fraction * len(idx))
            if k >= len(idx):
                raise DataError(f"class {c} has {len(idx)} images, too few for a hold-out of {k}")
            picked.append(rng.permutation(idx)[:k])
        return np.sort(np.concatenate(picked))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (recorded in checkpoints)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HoldoutSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(seed=int(d.get("seed", 0)), fraction=d.get("fraction"), per_class=d.get("per_class"))


def indices_digest(indices: np.ndarray) -> str:
    """sha256 of a split's indices: recorded with the spec so that a changed split is detected."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


class ImageData(Protocol):
    """What training, evaluation, search and export need from a data set."""

    kind: str
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    holdout: HoldoutSpec
    holdout_digest: str

    def num_train(self) -> int: ...

    def train_batches(self, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Augmented, normalised training batches (hold-out excluded), shuffled by (seed, epoch), sharded by rank."""
        ...

    def eval_batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Normalised ``holdout`` or ``test`` batches in a fixed order (the first ``limit`` images if given)."""
        ...


def data_spec(data: ImageData) -> dict[str, Any]:
    """What a checkpoint records about its data: kind, normalisation, classes, and the hold-out split."""
    return {"kind": data.kind, "mean": list(data.mean), "std": list(data.std), "class_names": list(data.class_names),
            "holdout": data.holdout.to_dict(), "holdout_sha256": data.holdout_digest}


# ------------------------------------------------------------------------------ Fashion-MNIST


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
        "(apt-get install dataset-fashion-mnist) or pass --data DIR with the four IDX files"
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
                "(apt-get install dataset-fashion-mnist) or pass --data DIR"
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
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        images, labels = self._train
        order = torch.randperm(len(labels), generator=g)
        g.manual_seed((seed * 100_003 + epoch) * 1_009 + rank + 1)  # augmentation differs per rank
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


def open_data(kind: str, root: str | Path | None, image_size: int, holdout: HoldoutSpec | None = None,
              workers: int = 4) -> ImageData:
    """Open a data set by kind: ``fmnist`` (IDX files) or ``folder`` (ImageNet-style train/ and val/)."""
    if kind == "fmnist":
        return FashionMNIST(root, holdout)
    if kind == "folder":
        from .imagefolder import ImageFolderData

        if root is None:
            raise DataError("--data DIR is required for ImageNet-style folders (DIR/train/<class>/..., DIR/val/...)")
        return ImageFolderData(root, image_size, holdout or HoldoutSpec(seed=0, per_class=25), workers)
    raise DataError(f"unknown data kind {kind!r}: use fmnist or folder")
