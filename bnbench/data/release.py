"""The facts about the datasets' release files that every part of ``bnbench.data`` shares: their
names, sizes and checksums, which release a file is, and where bnbench keeps what it caches.

Fetching (``download``) and reading (``sources``) both build on this module and never on each other's
internals.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

from bnbench.errors import BnbenchError

DOWNLOAD_URL_ENV = "BNBENCH_DOWNLOAD_URL"  # a mirror: the base URL of the four release files
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(BnbenchError):
    """The dataset is missing, damaged, or cannot be prepared here."""


# file name -> (bytes, sha256) of each release file.
RELEASES: dict[str, dict[str, tuple[int, str]]] = {
    # Keras' keras/src/datasets/fashion_mnist.py FILE_HASHES and tfds'
    # tensorflow_datasets/url_checksums/fashion_mnist.txt (sizes); checked against the copy in
    # ../shared/data/fashion_mnist (SHA256SUMS).
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
    # tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (commit 31f1255e), the
    # checksums tfds verifies its MNIST download against (the same values are in tfds' testing
    # dataset_info "download_checksums").
    "mnist": {
        "train-images-idx3-ubyte.gz": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
}
# file name -> (bytes, sha256) of each release file's decompressed content, so that a folder of
# un-gzipped files is identified too. Computed by decompressing the release files above (their
# SHA-256 checked first). MNIST's are missing: no verified copy was at hand to compute them from, so
# un-gzipped MNIST files are read unverified, as any file of no known release is.
CONTENTS: dict[str, dict[str, tuple[int, str]]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}
TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


def release_file(path: Path) -> tuple[str, str] | None:
    """(dataset, file name) of the release file that ``path`` is byte for byte (a ``.gz`` file), or
    whose decompressed content it is (any other name), else None.

    Sizes are compared first, so only a file as large as a release file is hashed."""
    if path.suffix == ".gz":
        found = _match(RELEASES, path.stat().st_size, lambda: sha256(path))
        # Compressed again (another level, another tool): the content decides, as for raw files.
        return found or _match(CONTENTS, _gzip_size(path), lambda: _gunzipped_sha256(path), ".gz")
    return _match(CONTENTS, path.stat().st_size, lambda: sha256(path))


def _match(table, size: int | None, digest, suffix: str = "") -> tuple[str, str] | None:
    candidates = [(name, filename, sha) for name, files in table.items()
                  for filename, (nbytes, sha) in files.items() if nbytes == size]
    if not candidates:
        return None
    found = digest()
    return next(((name, filename + suffix) for name, filename, sha in candidates if sha == found), None)


def _gzip_size(path: Path) -> int | None:
    """The decompressed size a gzip file records in its last four bytes (modulo 2**32), unread."""
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    except OSError:
        return None


def _gunzipped_sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def cache_dir(cache_dir=None) -> Path:
    """Where bnbench keeps downloads and decoded datasets: ``cache_dir``, else ``BNBENCH_CACHE_DIR``,
    else the user's cache folder."""
    if cache_dir is not None:
        return Path(cache_dir)
    if "BNBENCH_CACHE_DIR" in os.environ:
        return Path(os.environ["BNBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "bnbench"

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
