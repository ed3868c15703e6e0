"""Random streams: one per (seed, coordinates), with the values the shipped supernet and recorded runs drew."""

from __future__ import annotations

import random

from vitres_deploy.seeding import augmentation_seed, drop_path_seed, shuffle_seed, stream_rng


def test_a_python_stream_is_seeded_by_the_text_of_its_coordinates():
    # The search's stream of (seed 0, iteration 3, budget 1) and training's arch sampling draw what they always did.
    assert [stream_rng(0, 3, 1).random() for _ in range(3)] == [random.Random("0/3/1").random() for _ in range(3)]
    assert stream_rng(7, 0, 2, 1).getrandbits(64) == random.Random("7/0/2/1").getrandbits(64)


def test_streams_differ_by_every_coordinate():
    draws = {stream_rng(0, *c).getrandbits(64) for c in [(0, 0), (0, 1), (1, 0), ("x", 0)]}
    assert len(draws) == 4
    assert stream_rng(1, 0).getrandbits(64) != stream_rng(0, 1).getrandbits(64)


def test_torch_seeds_keep_their_mixing_constants():
    # The constants the shipped supernet and docs/training's runs were trained with: changing them changes what a
    # seed trains.
    assert shuffle_seed(3, 2) == 3 * 100_003 + 2
    assert augmentation_seed(3, 2, 1) == (3 * 100_003 + 2) * 1_009 + 2
    assert drop_path_seed(3, 2, 1) == (3 * 1_000_003 + 2) * 1_009 + 1
    seeds = {shuffle_seed(0, 1), augmentation_seed(0, 1, 0), augmentation_seed(0, 1, 1), drop_path_seed(0, 1, 0)}
    assert len(seeds) == 4
