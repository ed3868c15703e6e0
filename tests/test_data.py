"""Fashion-MNIST IDX reading, the seeded hold-out split and the batch pipeline, on the real files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from vitres_deploy.data import FashionMNIST, HoldoutSpec, indices_digest, open_data, read_idx
from vitres_deploy.errors import DataError


@pytest.fixture(scope="module")
def fmnist_data(fmnist_dir):
    return FashionMNIST(fmnist_dir)


def test_idx_files_read_with_their_shapes(fmnist_dir):
    images = read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(fmnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))


def test_truncated_idx_is_a_clear_error(tmp_path):
    bad = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 10)
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)


def test_holdout_is_seeded_stratified_and_disjoint_from_training(fmnist_data):
    labels = np.arange(60_000) % 10
    a = HoldoutSpec(seed=0, fraction=0.1).indices(labels)
    assert np.array_equal(a, HoldoutSpec(seed=0, fraction=0.1).indices(labels))
    assert not np.array_equal(a, HoldoutSpec(seed=1, fraction=0.1).indices(labels))
    assert np.bincount(labels[a]).tolist() == [600] * 10
    assert fmnist_data.num_train() == 54_000
    assert sum(len(y) for _, y in fmnist_data.eval_batches("holdout", 2048)) == 6_000
    held = {bytes(x.numpy().tobytes()) for x, _ in zip(*fmnist_data._holdout)}
    train_images = fmnist_data._train[0]
    assert not any(bytes(train_images[i].numpy().tobytes()) in held for i in range(0, 54_000, 97))


def test_holdout_digest_tracks_the_indices():
    assert indices_digest(np.array([1, 2, 3])) == indices_digest(np.array([1, 2, 3]))
    assert indices_digest(np.array([1, 2, 3])) != indices_digest(np.array([1, 2, 4]))


def test_training_batches_are_deterministic_sharded_and_augmented(fmnist_data):
    first = next(fmnist_data.train_batches(64, epoch=0, seed=0))
    again = next(fmnist_data.train_batches(64, epoch=0, seed=0))
    other_epoch = next(fmnist_data.train_batches(64, epoch=1, seed=0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other_epoch[1])
    r0 = next(fmnist_data.train_batches(64, 0, 0, rank=0, world=2))[1]
    r1 = next(fmnist_data.train_batches(64, 0, 0, rank=1, world=2))[1]
    assert not torch.equal(r0, r1)
    x, y = first
    assert x.shape == (64, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3  # normalised


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nowhere")
    with pytest.raises(DataError, match="unknown data kind"):
        open_data("cifar", None, 28)


def _image_folders(root):
    """Two classes of random 40x52 RGB images: 6 per class in train/, 2 in val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return open_data("folder", root, 32, HoldoutSpec(seed=0, per_class=2), workers=0)


def test_image_folder_pipeline(tmp_path):
    data = _image_folders(tmp_path)
    assert data.class_names == ("cat", "dog") and data.num_train() == 8
    x, _ = next(data.train_batches(4, epoch=0, seed=0))
    assert x.shape == (4, 3, 32, 32)
    assert sum(len(y) for _, y in data.eval_batches("holdout", 3)) == 4
    assert sum(len(y) for _, y in data.eval_batches("test", 3)) == 4


def test_image_folder_batches_repeat_for_a_seed_and_epoch_and_change_with_them(tmp_path):
    data = _image_folders(tmp_path)
    first = next(data.train_batches(4, epoch=0, seed=0, rank=0, world=1))
    assert all(torch.equal(a, b) for a, b in zip(first, next(data.train_batches(4, epoch=0, seed=0))))
    assert not torch.equal(first[0], next(data.train_batches(4, epoch=1, seed=0))[0])
    assert not torch.equal(first[0], next(data.train_batches(4, epoch=0, seed=1))[0])


def test_calibration_images_are_seeded_training_images_never_holdout_or_test(fmnist_data, tmp_path):
    a = fmnist_data.calibration_images(64, seed=0)
    assert a.shape == (64, 1, 28, 28) and torch.equal(a, fmnist_data.calibration_images(64, seed=0))
    assert not torch.equal(a, fmnist_data.calibration_images(64, seed=1))
    held = {x.numpy().tobytes() for batch, _ in fmnist_data.eval_batches("holdout", 6000) for x in batch}
    assert len(held) > 5000
    train = {x.numpy().tobytes() for x in fmnist_data._normalise(fmnist_data._train[0][:54_000:50])}
    assert not any(x.numpy().tobytes() in held for x in a)
    assert any(x.numpy().tobytes() in train for x in fmnist_data.calibration_images(54_000 // 4, seed=0))
    with pytest.raises(DataError, match="calibration_images 0: use 1 to 54000"):
        fmnist_data.calibration_images(0)
    folders = _image_folders(tmp_path)
    assert folders.calibration_images(3, seed=0).shape == (3, 3, 32, 32)
    assert torch.equal(folders.calibration_images(3, seed=0), folders.calibration_images(3, seed=0))
