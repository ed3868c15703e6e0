"""The opener table: a data set by kind (``fmnist`` IDX files or ``folder`` ImageNet-style folders)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .fmnist import FashionMNIST
from .folders import ImageFolderData
from .types import HoldoutSpec, ImageData


def open_data(kind: str, root: str | Path | None, image_size: int, holdout: HoldoutSpec | None = None,
              workers: int = 4) -> ImageData:
    """Open a data set by kind: ``fmnist`` (IDX files) or ``folder`` (ImageNet-style train/ and val/)."""
    if kind == "fmnist":
        return FashionMNIST(root, holdout)
    if kind == "folder":
        if root is None:
            raise DataError("data_dir is required for ImageNet-style folders (DIR/train/<class>/..., DIR/val/...)",
                            field="data_dir")
        return ImageFolderData(root, image_size, holdout or HoldoutSpec(seed=0, per_class=25), workers)
    raise DataError(f"unknown data kind {kind!r}: use fmnist or folder", field="data_kind")
