"""Loading Fashion-MNIST (or MNIST) into memory as uint8 arrays.

Two on-disk layouts are understood:

* ``idx``: a folder with the four canonical IDX files (``.gz`` or not). This is the order
  ``keras.datasets.fashion_mnist.load_data()`` returns, so the notebook's validation split
  (the first 5,000 training images) is reproduced exactly.
* ``tfds``: a tensorflow-datasets data dir holding the prepared dataset, read with
  ``tfds.data_source`` (no TensorFlow needed). tfds stores its own shuffled order.

Without a folder, tfds' default data dir is used and tfds downloads and prepares the dataset
there; preparing needs TensorFlow, and without it the user is told what to install or pass.

Whatever was decoded is cached as one ``.npz`` so that a second load takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from bnbench.errors import BnbenchError
from bnbench.io import atomic_write

DATASETS = ("fashion_mnist", "mnist")
VALIDATION_SIZE = 5000  # the notebook: X_valid = X_train_full[:5000]
CACHE_VERSION = 1
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
ORDER_OF_SOURCE = {"idx": "canonical", "tfds": "tfds", "synthetic": "synthetic"}


class DataError(BnbenchError):
    """The dataset is missing, damaged, or cannot be prepared here."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The three splits as uint8 images (N, 28, 28) and int32 labels (N,), and where they came from."""

    name: str
    source: str  # "idx" or "tfds"
    location: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def order(self) -> str:
        """'canonical' (the release's and Keras' order) or 'tfds' (tfds' own shuffled order)."""
        return ORDER_OF_SOURCE[self.source]

    def describe(self) -> dict:
        return {
            "dataset": self.name,
            "source": self.source,
            "order": self.order,
            "location": self.location,
            "train_examples": int(len(self.train_labels)),
            "validation_examples": int(len(self.val_labels)),
            "test_examples": int(len(self.test_labels)),
        }


def load(name: str = "fashion_mnist", data_dir: str | os.PathLike | None = None,
         validation_size: int = VALIDATION_SIZE, cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads ``name`` from ``data_dir`` (an IDX folder or a tfds data dir), or through tfds."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"data dir {folder} does not exist: pass a folder with the four IDX files "
                            f"or a tfds data dir holding {name}/")
        if _find_idx_files(folder):
            source, location = "idx", folder
        elif (folder / name).is_dir():
            source, location = "tfds", folder
        else:
            raise DataError(
                f"no {name} in {folder}: expected the four IDX files ({IDX_FILES['train_images']}.gz, ...) "
                f"or a tfds data dir containing {name}/<version>/")
    else:
        source, location = "tfds", None

    fingerprint = _fingerprint(source, name, location)
    cache_file = None
    if fingerprint is not None:
        cache_file = _cache_dir(cache_dir) / f"{name}-{source}-{fingerprint}.npz"
        arrays = _read_cache(cache_file)
        if arrays is not None:
            return _split(name, source, str(location), arrays, validation_size)

    if source == "idx":
        arrays = _read_idx_folder(location)
    else:
        arrays = _read_tfds(name, location)
    if cache_file is not None:
        _write_cache(cache_file, arrays)
    where = str(location) if location is not None else "tfds default data dir"
    return _split(name, source, where, arrays, validation_size)


def _split(name, source, location, arrays, validation_size) -> Dataset:
    images, labels = arrays["train_images"], arrays["train_labels"]
    if not 0 <= validation_size < len(labels):
        raise DataError(f"validation size {validation_size} must be between 0 and {len(labels) - 1}")
    return Dataset(
        name=name, source=source, location=location,
        train_images=images[validation_size:], train_labels=labels[validation_size:],
        val_images=images[:validation_size], val_labels=labels[:validation_size],
        test_images=arrays["test_images"], test_labels=arrays["test_labels"])


# --- IDX -------------------------------------------------------------------------------------

def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
    if not found:
        return None
    missing = sorted(set(IDX_FILES) - set(found))
    if missing:
        names = ", ".join(IDX_FILES[k] + ".gz" for k in missing)
        raise DataError(f"{folder} holds only some of the IDX files: {names} missing; copy all four there")
    return found


def read_idx(path: Path) -> np.ndarray:
    """Parses one IDX file (unsigned bytes, any rank), gzipped or not."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is damaged ({e}): replace it with a fresh copy of the release") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes: replace it with a fresh copy")
    rank = raw[3]
    header = 4 + 4 * rank
    shape = struct.unpack(f">{rank}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or damaged (header says {shape}, found "
                        f"{len(raw) - header} bytes of data): replace it with a fresh copy")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    files = _find_idx_files(folder)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match "
                            "a 28x28 dataset: replace the IDX files with fresh copies")
        arrays[f"{split}_labels"] = labels.astype(np.int32)
    return arrays


# --- tensorflow-datasets ----------------------------------------------------------------------

def _read_tfds(name: str, data_dir: Path | None) -> dict[str, np.ndarray]:
    import tensorflow_datasets as tfds  # imported here: it is slow to import and only this path needs it

    prepared = data_dir is not None or _tfds_prepared(name, None)
    can_prepare = importlib.util.find_spec("tensorflow") is not None
    if not prepared and not can_prepare:
        raise DataError(
            f"{name} is not prepared in tfds' data dir and preparing it needs TensorFlow, which is not "
            "installed: `pip install tensorflow` once (bnbench then downloads and prepares it), or pass "
            "--data-dir with a folder of the four IDX files or a prepared tfds data dir")
    try:
        sources = tfds.data_source(
            name, split=["train", "test"], data_dir=None if data_dir is None else str(data_dir),
            download=not prepared, builder_kwargs={"file_format": "array_record"})
        arrays = {}
        for split, source in zip(("train", "test"), sources):
            examples = [source[i] for i in range(len(source))]
            arrays[f"{split}_images"] = np.stack([np.asarray(ex["image"]).reshape(28, 28) for ex in examples])
            arrays[f"{split}_labels"] = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    except DataError:
        raise
    except Exception as e:  # tfds raises many kinds: missing files, bad records, no network
        where = data_dir if data_dir is not None else "tfds' default data dir"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not read {name} from {where} ({type(e).__name__}: {first_line}); "
                        "pass --data-dir with a folder of the four IDX files, or delete the damaged "
                        "dataset folder and let tfds prepare it again") from None
    return {k: v.astype(np.uint8) if k.endswith("images") else v for k, v in arrays.items()}


def _tfds_prepared(name: str, data_dir: Path | None) -> bool:
    root = data_dir if data_dir is not None else _tfds_default_dir()
    return any((root / name).glob("*/dataset_info.json"))


def _tfds_default_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


# --- cache -------------------------------------------------------------------------------------

def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if "BNBENCH_CACHE_DIR" in os.environ:
        return Path(os.environ["BNBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bnbench"


def _fingerprint(source: str, name: str, location: Path | None) -> str | None:
    """A short hash of the source files' paths, sizes and mtimes; None when there are no files."""
    if source == "idx":
        files = sorted(_find_idx_files(location).values())
    else:
        root = location if location is not None else _tfds_default_dir()
        files = sorted(p for p in (root / name).glob("*/*") if p.is_file())
    if not files:
        return None
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for path in files:
        stat = path.stat()
        h.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {key: f[key] for key in IDX_FILES}
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")
    except OSError:
        pass  # caching is an optimisation: a read-only home must not stop a run
