"""Opening the data a checkpoint was trained with, checked against the checkpoint's hold-out split."""

from __future__ import annotations

import reprlib
from pathlib import Path

from ..checkpoint import Checkpoint, FinetunedCheckpoint
from ..errors import CheckpointError, DataError, first_line
from .open import open_data
from .types import HoldoutSpec, ImageData


def _recorded_split(checkpoint: Checkpoint | FinetunedCheckpoint) -> tuple[str, HoldoutSpec]:
    """The data kind and hold-out split ``checkpoint`` records; none is a :class:`DataError`, a malformed one
    (crafted metadata) a :class:`CheckpointError`."""
    spec = checkpoint.data
    if not isinstance(spec, dict) or "kind" not in spec or "holdout" not in spec:
        raise DataError(f"{checkpoint.path.name} records no data spec: it cannot tell its hold-out split")
    malformed = f"{checkpoint.path.name} records a malformed data spec"
    if not isinstance(spec["kind"], str):
        raise CheckpointError(f"{malformed}: its kind {reprlib.repr(spec['kind'])} is not a name")
    try:
        return spec["kind"], HoldoutSpec.from_dict(spec["holdout"])
    except DataError as e:
        raise CheckpointError(f"{malformed}: {first_line(e)}") from None


def open_checkpoint_data(checkpoint: Checkpoint | FinetunedCheckpoint,
                         data_dir: str | Path | None = None) -> ImageData:
    """The checkpoint's data set with exactly its recorded hold-out split (so search never sees training images)."""
    spec = checkpoint.data
    kind, holdout = _recorded_split(checkpoint)
    data = open_data(kind, data_dir, checkpoint.space.image_size, holdout)
    if data.holdout_digest != spec.get("holdout_sha256"):
        raise DataError(f"the data in {data_dir or 'the default directory'} gives another hold-out split than the "
                        f"one {checkpoint.path.name} was trained with: pass the same data_dir", field="data_dir")
    return data
