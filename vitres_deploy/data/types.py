"""What every data source shares: the batch type, the seeded hold-out split, the :class:`ImageData` interface.

Both sources expose the same small interface (:class:`ImageData`): seeded, shardable training batches
with augmentation, and evaluation batches of the ``holdout`` split (carved out of the training set,
never trained on, used by search) or the ``test`` split (final reporting only).
"""

from __future__ import annotations

import hashlib
import reprlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import DataError
from ..values import check_count, check_real

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
        """Refuse a split no data set can be cut by (a crafted file's included), as a :class:`DataError`."""
        if (self.fraction is None) == (self.per_class is None):
            raise DataError("a hold-out split needs exactly one of fraction or per_class")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DataError(f"hold-out seed {self.seed!r} must be a whole number")
        try:
            if self.fraction is not None:
                check_real("fraction", self.fraction, low_open=0.0, high_open=1.0, error=DataError)
            if self.per_class is not None:
                check_count("per_class", self.per_class, error=DataError)
        except DataError as e:
            raise DataError(f"hold-out {e}") from None

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
    def from_dict(cls, d: Mapping[str, Any]) -> HoldoutSpec:
        """Inverse of :meth:`to_dict`; anything else is a :class:`DataError`."""
        if not isinstance(d, Mapping):
            raise DataError(f"a hold-out split is a mapping (seed, fraction or per_class), not {reprlib.repr(d)}")
        return cls(seed=d.get("seed", 0), fraction=d.get("fraction"), per_class=d.get("per_class"))


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

    def calibration_images(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` training images (hold-out excluded), drawn by ``seed``, normalised with the eval transform (no
        augmentation): the images int8 models are calibrated on, never the test split."""
        ...


def data_spec(data: ImageData) -> dict[str, Any]:
    """What a checkpoint records about its data: kind, normalisation, classes, and the hold-out split."""
    return {"kind": data.kind, "mean": list(data.mean), "std": list(data.std), "class_names": list(data.class_names),
            "holdout": data.holdout.to_dict(), "holdout_sha256": data.holdout_digest}
