"""ImageNet-style folders (``DIR/train/<class>/*.jpg``, ``DIR/val/<class>/*.jpg``) without torchvision.

Training uses the usual augmentation (random-resized crop, scale 0.08-1, aspect 3/4-4/3, horizontal
flip); evaluation resizes the shorter side to ``size / 0.875`` and center-crops. Images are decoded
with PIL in DataLoader workers. The hold-out split (25 images per class by default, as in the paper)
is carved out of ``train/``; ``test`` is ``val/``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..seeding import shuffle_seed, stream_rng
from .types import SPLITS, Batch, HoldoutSpec, indices_digest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolder names) and (path, label) samples of one split folder."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: expected DIR/train/<class>/ and DIR/val/<class>/")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class subfolders")
    samples = [(p, label) for label, c in enumerate(classes) for p in sorted((root / c).iterdir())
               if p.suffix.lower() in _EXTENSIONS]
    if not samples:
        raise DataError(f"{root} has no images ({', '.join(_EXTENSIONS)})")
    return classes, samples


def _to_tensor(img, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def random_resized_crop(img, size: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random area (fraction ``scale``, aspect ``ratio``) and resize it to ``size`` x ``size``."""
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    side = min(w, h)  # fallback: central square
    return img.resize((size, size), Image.BILINEAR, box=((w - side) // 2, (h - side) // 2,
                                                          (w + side) // 2, (h + side) // 2))


def center_crop(img, size: int, crop_pct: float = 0.875):
    """Resize the shorter side to ``size / crop_pct`` and take the central ``size`` x ``size``."""
    from PIL import Image

    w, h = img.size
    short = round(size / crop_pct)
    nw, nh = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
    img = img.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


class _Images(Dataset):
    """Decoded, transformed images; a training set's augmentation of image i is the stream (seed, epoch, rank, i)."""

    def __init__(self, samples: list[tuple[Path, int]], size: int, train: bool, seed: int = 0, epoch: int = 0,
                 rank: int = 0) -> None:
        self.samples, self.size, self.train = samples, size, train
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if self.train:
            rng = stream_rng(self.seed, self.epoch, self.rank, i)
            img = random_resized_crop(img, self.size, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            img = center_crop(img, self.size)
        return _to_tensor(img, IMAGENET_MEAN, IMAGENET_STD), label


class ImageFolderData:
    """ImageNet-style folders behind the :class:`~vitres_deploy.data.ImageData` interface."""

    kind = "folder"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, root: str | Path, image_size: int, holdout: HoldoutSpec, workers: int = 4) -> None:
        root = Path(root)
        classes, samples = scan_folder(root / "train")
        self.class_names = tuple(classes)
        self.holdout = holdout
        labels = np.array([label for _, label in samples])
        held = holdout.indices(labels)
        self.holdout_digest = indices_digest(held)
        held_set = set(held.tolist())
        self._train = [s for i, s in enumerate(samples) if i not in held_set]
        self._holdout = [samples[i] for i in held]
        self._root, self._size, self._workers = root, image_size, workers

    def num_train(self) -> int:
        """Number of training images (hold-out excluded)."""
        return len(self._train)

    def train_batches(self, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Shuffled by (seed, epoch) with a per-rank shard, decoded in worker processes."""
        g = torch.Generator().manual_seed(shuffle_seed(seed, epoch))
        order = torch.randperm(len(self._train), generator=g)
        per_rank = len(order) // world
        shard = order[rank * per_rank:(rank + 1) * per_rank].tolist()
        dataset = _Images([self._train[i] for i in shard], self._size, train=True, seed=seed, epoch=epoch, rank=rank)
        yield from DataLoader(dataset, batch_size, shuffle=False, drop_last=True, num_workers=self._workers,
                              persistent_workers=False, pin_memory=torch.cuda.is_available())

    def eval_batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Hold-out (from train/) or test (val/) images with the eval transform, in a fixed order."""
        if split == "holdout":
            samples = self._holdout
        elif split == "test":
            samples = scan_folder(self._root / "val")[1]
        else:
            raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        samples = samples[:limit] if limit is not None else samples
        yield from DataLoader(_Images(samples, self._size, train=False), batch_size, num_workers=self._workers)

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training images drawn by ``seed`` (hold-out excluded), with the eval transform."""
        if not 1 <= count <= len(self._train):
            raise DataError(f"calibration_images {count}: use 1 to {len(self._train)} (the training images)",
                            field="calibration_images")
        order = torch.randperm(len(self._train), generator=torch.Generator().manual_seed(seed))[:count]
        samples = [self._train[i] for i in sorted(order.tolist())]
        return torch.cat([x for x, _ in DataLoader(_Images(samples, self._size, train=False), 64,
                                                   num_workers=self._workers)])
