"""Every random stream of the project, derived from the user's seed in this one module.

A stream is named by the seed and the coordinates that make it unique (epoch, step, rank, search
iteration, budget index, image index): the same coordinates always give the same numbers, whatever ran
before, which is what lets training resume bit for bit and a search continue where it stopped.

Python RNGs take the coordinates' text, ``"seed/epoch/step/rank"`` (:func:`stream_rng`); torch generators
take an integer mixed from them (:func:`shuffle_seed`, :func:`augmentation_seed`, :func:`drop_path_seed`).
The mixing constants are those the shipped supernet and the recorded runs were trained with, so a seed
draws the same numbers it always did.
"""

from __future__ import annotations

import random


def stream_rng(seed: int, *coordinates: int | str) -> random.Random:
    """The Python RNG of the stream ``(seed, *coordinates)``, seeded by their text ``"seed/c1/c2/..."``."""
    return random.Random("/".join(str(part) for part in (seed, *coordinates)))


def shuffle_seed(seed: int, epoch: int) -> int:
    """Torch seed of an epoch's order of training images: the same on every rank, which shard one permutation."""
    return seed * 100_003 + epoch


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch seed of one rank's augmentation in an epoch (a stream apart from the shuffling, one per rank)."""
    return shuffle_seed(seed, epoch) * 1_009 + rank + 1


def drop_path_seed(seed: int, epoch: int, rank: int) -> int:
    """Torch seed of one rank's drop-path masks in an epoch."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank
