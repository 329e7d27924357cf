"""Small IDX datasets on disk, for the tests of loading, downloading and sweeping."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from bnbench.data.synthetic import synthetic_split


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_folder(folder: Path, train: int = 5300, test: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_split(train, 0)
    test_images, test_labels = synthetic_split(test, 1)
    write_idx(folder / "train-images-idx3-ubyte.gz", train_images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", test_images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)
    return folder
