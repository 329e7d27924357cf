"""A small learnable stand-in for Fashion-MNIST, for smoke runs (``--quick``) and tests."""

from __future__ import annotations

import numpy as np

from bnbench.data.sources import Dataset


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each class lights up its own band of rows, plus noise: learnable in an epoch or two."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 * c + 3:2 * c + 6, :] += 150
    return images, labels


def synthetic_dataset(train: int = 2000, validation: int = 500, test: int = 500) -> Dataset:
    train_images, train_labels = synthetic_split(train + validation, 0)
    test_images, test_labels = synthetic_split(test, 1)
    return Dataset(name="synthetic", source="synthetic", location="generated",
                   train_images=train_images[validation:], train_labels=train_labels[validation:].astype(np.int32),
                   val_images=train_images[:validation], val_labels=train_labels[:validation].astype(np.int32),
                   test_images=test_images, test_labels=test_labels.astype(np.int32))
