"""Data: Fashion-MNIST from its IDX files, ImageNet-style folders, the seeded hold-out split.

``types`` (the batch type, :class:`HoldoutSpec`, the :class:`ImageData` interface) is shared by the two
readers ``fmnist`` and ``folders``; ``open`` is the table that opens one by kind; ``recorded`` opens the
data a checkpoint was trained with, checked against its recorded hold-out split.
"""

from .fmnist import FMNIST_CLASSES, FMNIST_DIR, FMNIST_MEAN, FMNIST_STD, FashionMNIST, read_idx
from .folders import ImageFolderData
from .open import open_data
from .recorded import open_checkpoint_data
from .types import SPLITS, Batch, HoldoutSpec, ImageData, data_spec, indices_digest

__all__ = [
    "FMNIST_CLASSES",
    "FMNIST_DIR",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "SPLITS",
    "Batch",
    "FashionMNIST",
    "HoldoutSpec",
    "ImageData",
    "ImageFolderData",
    "data_spec",
    "indices_digest",
    "open_checkpoint_data",
    "open_data",
    "read_idx",
]
