"""Loading an image dataset (Fashion-MNIST, MNIST, KMNIST, CIFAR-10) into memory as uint8 arrays.

Two on-disk layouts are understood:

* ``idx``: a folder with the four canonical IDX files (``.gz`` or not). This is the order
  ``keras.datasets.fashion_mnist.load_data()`` returns, so the notebook's validation split
  (the first 5,000 training images) is reproduced exactly.
* ``tfds``: a tensorflow-datasets data dir holding the prepared dataset, read with
  ``tfds.data_source`` (no TensorFlow needed). tfds stores its own shuffled order.

Without a folder, the dataset prepared in tfds' default data dir is read if there is one;
otherwise, for Fashion-MNIST and MNIST, the four IDX files of the official release are downloaded
into bnbench's cache (``bnbench.data.download``, source ``download``), which needs neither TensorFlow
nor tfds. KMNIST and CIFAR-10 come from a prepared tfds dataset only (KMNIST also from a folder of
its IDX files). Image shapes and channels come from the data: (N, 28, 28) for the grayscale sets,
(N, 32, 32, 3) for CIFAR-10.

IDX files are identified by the release checksums: a folder holding the other dataset's release
is refused (MNIST and Fashion-MNIST share file names), and ``verified`` records whether the four
files are the named dataset's release. Whatever was decoded is cached as one ``.npz``, with that
identity, so that a second load takes milliseconds and hashes nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from bnbench.data import release
from bnbench.data.release import DOWNLOAD_URL_ENV, IDX_FILES, DataError
from bnbench.record.io import atomic_write

DATASETS = ("fashion_mnist", "mnist", "kmnist", "cifar10")
DOWNLOADABLE = ("fashion_mnist", "mnist")  # bnbench holds their release checksums (bnbench.data.download)
IDX_DATASETS = ("fashion_mnist", "mnist", "kmnist")  # released as four IDX files of 28x28 images
VALIDATION_SIZE = 5000  # the notebook: X_valid = X_train_full[:5000]
CACHE_VERSION = 2  # 2: the entry also holds whether the files are the verified release
# idx: a user's IDX folder; download: the release files fetched into the cache; tfds: a prepared
# tensorflow-datasets dataset (its own order); synthetic: generated stand-ins.
ORDER_OF_SOURCE = {"idx": "canonical", "download": "canonical", "tfds": "tfds", "synthetic": "synthetic"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The three splits as uint8 images (N, H, W) or (N, H, W, C) and int32 labels (N,), and where
    they came from."""

    name: str
    source: str  # a key of ORDER_OF_SOURCE
    location: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    # True only when the four files were checked against the named dataset's release checksums.
    verified: bool = False

    @property
    def num_classes(self) -> int:
        """How many classes the labels name (the largest label + 1)."""
        return int(max(self.train_labels.max(initial=0), self.test_labels.max(initial=0))) + 1

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
            "verified": bool(self.verified),
            "train_examples": int(len(self.train_labels)),
            "validation_examples": int(len(self.val_labels)),
            "test_examples": int(len(self.test_labels)),
            "image_shape": [int(d) for d in self.train_images.shape[1:]],
        }


def load(name: str = "fashion_mnist", data_dir: str | os.PathLike | None = None,
         validation_size: int = VALIDATION_SIZE, cache_dir: str | os.PathLike | None = None,
         download_url: str | None = None) -> Dataset:
    """Loads ``name`` from ``data_dir`` (an IDX folder or a tfds data dir); without one, from the
    dataset prepared in tfds' default data dir, else from the release files, downloaded into the
    cache (from ``download_url`` or ``BNBENCH_DOWNLOAD_URL`` alone when one is given)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    source, folder = _choose_source(name, data_dir, download_url)
    where = str(folder if folder is not None else _tfds_default_dir())
    if source == "download":
        from bnbench.data import download  # urllib and tqdm: only this path needs them

        folder, where = download.fetch(name, download.mirror(download_url), cache_dir)

    fingerprint = _fingerprint(source, name, folder)
    cache_file = None
    if fingerprint is not None:
        cache_file = release.cache_dir(cache_dir) / f"{name}-{source}-{fingerprint}.npz"
        cached = _read_cache(cache_file)
        if cached is not None:
            return _split(name, source, where, *cached, validation_size)

    if source == "tfds":
        arrays, verified = _read_tfds(name, folder), False
    else:
        verified = _check_release(name, source, folder)
        arrays = _read_idx_folder(folder)
    if cache_file is not None:
        _write_cache(cache_file, arrays, verified)
    return _split(name, source, where, arrays, verified, validation_size)


def _choose_source(name: str, data_dir, download_url) -> tuple[str, Path | None]:
    """("idx" | "tfds", folder) for a given data dir; ("tfds", None) for a dataset prepared in tfds'
    default data dir; else ("download", None). A mirror named by the user always means download."""
    if download_url and name not in DOWNLOADABLE:
        raise DataError(f"bnbench downloads only {' and '.join(DOWNLOADABLE)}, not {name}: drop --download-url and "
                        f"prepare {name} with `tfds build {name}` (needs TensorFlow), or pass --data-dir")
    if data_dir is None:
        from_env = os.environ.get(DOWNLOAD_URL_ENV)
        if name not in DOWNLOADABLE:
            if _tfds_prepared(name, None):
                return "tfds", None
            raise DataError(f"{name} is not prepared in tfds' data dir {_tfds_default_dir()} and bnbench cannot "
                            f"download it: prepare it there with `tfds build {name}` (needs TensorFlow), or pass "
                            f"--data-dir with a tfds data dir holding {name}/")
        if not (download_url or from_env) and _tfds_prepared(name, None):
            return "tfds", None
        return "download", None
    if download_url:
        raise DataError("pass either --data-dir (files you have) or --download-url (a mirror to download "
                        "them from), not both")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data dir {folder} does not exist: pass a folder with the four IDX files "
                        f"or a tfds data dir holding {name}/")
    if name in IDX_DATASETS and _find_idx_files(folder):
        return "idx", folder
    if (folder / name).is_dir():
        return "tfds", folder
    idx = f"the four IDX files ({IDX_FILES['train_images']}.gz, ...) or " if name in IDX_DATASETS else ""
    raise DataError(f"no {name} in {folder}: expected {idx}a tfds data dir containing {name}/<version>/ "
                    f"(prepare one with `tfds build {name} --data_dir {folder}`, which needs TensorFlow)")


def _split(name, source, location, arrays, verified, validation_size) -> Dataset:
    images, labels = arrays["train_images"], arrays["train_labels"]
    if not 0 <= validation_size < len(labels):
        raise DataError(f"validation size {validation_size} must be between 0 and {len(labels) - 1}")
    return Dataset(
        name=name, source=source, location=location,
        train_images=images[validation_size:], train_labels=labels[validation_size:],
        val_images=images[:validation_size], val_labels=labels[:validation_size],
        test_images=arrays["test_images"], test_labels=arrays["test_labels"], verified=verified)


# --- which release -----------------------------------------------------------------------------

def _check_release(name: str, source: str, folder: Path) -> bool:
    """True when the four IDX files are ``name``'s release, byte for byte.

    MNIST and Fashion-MNIST share file names, so the checksums are what tell them apart: a folder
    holding the other dataset's release files is refused rather than trained on under the wrong
    name. Files of no known release (a user's own copy, un-gzipped files) are accepted, unverified.
    A download that no longer matches was changed in the cache after it was verified: it is removed
    so that the next run fetches it afresh."""
    from bnbench.data import download

    files = _find_idx_files(folder)
    found = {key: release.release_file(path) for key, path in files.items()}
    others = sorted({hit[0] for hit in found.values() if hit is not None and hit[0] != name})
    if others:
        other = others[0]
        what = (f"the {release.TITLES[other]} release" if all(h and h[0] == other for h in found.values())
                else f"files of the {release.TITLES[other]} release")
        raise DataError(f"{folder} holds {what}, not {name}: pass --dataset {other}, or a --data-dir "
                        f"with the {release.TITLES.get(name, name)} files")
    verified = all(hit == (name, files[key].name) for key, hit in found.items())
    if source == "download" and not verified:
        changed = [files[key].name for key, hit in found.items() if hit != (name, files[key].name)]
        download.discard(folder, changed)
        raise DataError(f"{', '.join(changed)} in {folder} changed after it was downloaded and verified; "
                        "removed it: run again to download it afresh")
    return verified


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
    """Reads an already prepared dataset. bnbench never asks tfds to prepare one: that needs
    TensorFlow, and the download source gets the same release files without it."""
    import tensorflow_datasets as tfds  # imported here: it is slow to import and only this path needs it

    try:
        sources = tfds.data_source(
            name, split=["train", "test"], data_dir=None if data_dir is None else str(data_dir),
            download=False, builder_kwargs={"file_format": "array_record"})
        arrays = {}
        for split, source in zip(("train", "test"), sources):
            examples = [source[i] for i in range(len(source))]
            arrays[f"{split}_images"] = np.stack([_image(ex["image"]) for ex in examples])
            arrays[f"{split}_labels"] = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    except DataError:
        raise
    except Exception as e:  # tfds raises many kinds: missing files, bad records, no network
        where = data_dir if data_dir is not None else _tfds_default_dir()
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        way_out = (f"or remove {where / name} and bnbench downloads the release files instead"
                   if data_dir is None and name in DOWNLOADABLE
                   else f"or prepare {name} there (`tfds build {name} --data_dir {where}`, which needs TensorFlow)")
        idx = "pass --data-dir with a folder of the four IDX files, " if name in IDX_DATASETS else ""
        raise DataError(f"could not read {name} from {where} ({type(e).__name__}: {first_line}); "
                        f"{idx}{way_out}") from None
    return {k: v.astype(np.uint8) if k.endswith("images") else v for k, v in arrays.items()}


def _image(image) -> np.ndarray:
    """An example's image as (H, W) when it has one channel, as the IDX files hold them; else (H, W, C)."""
    image = np.asarray(image)
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _tfds_prepared(name: str, data_dir: Path | None) -> bool:
    root = data_dir if data_dir is not None else _tfds_default_dir()
    return any((root / name).glob("*/dataset_info.json"))


def _tfds_default_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


# --- cache -------------------------------------------------------------------------------------

def _fingerprint(source: str, name: str, location: Path | None) -> str | None:
    """A short hash of the source files' paths, sizes and mtimes; None when there are no files."""
    if source in ("idx", "download"):
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


def _read_cache(path: Path) -> tuple[dict[str, np.ndarray], bool] | None:
    """The decoded arrays and whether their files were the verified release, or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {key: f[key] for key in IDX_FILES}, bool(f["verified"])
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], verified: bool) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, verified=np.bool_(verified), **arrays), mode="wb")
    except OSError:
        pass  # caching is an optimisation: a read-only home must not stop a run
