"""Opening the data a checkpoint was trained with, checked against the checkpoint's hold-out split."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint, FinetunedCheckpoint
from ..errors import DataError
from .open import open_data
from .types import HoldoutSpec, ImageData


def open_checkpoint_data(checkpoint: Checkpoint | FinetunedCheckpoint,
                         data_dir: str | Path | None = None) -> ImageData:
    """The checkpoint's data set with exactly its recorded hold-out split (so search never sees training images)."""
    spec = checkpoint.data
    if "kind" not in spec or "holdout" not in spec:
        raise DataError(f"{checkpoint.path.name} records no data spec: it cannot tell its hold-out split")
    data = open_data(spec["kind"], data_dir, checkpoint.space.image_size, HoldoutSpec.from_dict(spec["holdout"]))
    if data.holdout_digest != spec.get("holdout_sha256"):
        raise DataError(f"the data in {data_dir or 'the default directory'} gives another hold-out split than the "
                        f"one {checkpoint.path.name} was trained with: pass the same data_dir", field="data_dir")
    return data
