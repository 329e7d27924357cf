"""Fetching a dataset's official release (the four IDX ``.gz`` files) into bnbench's cache.

Only the standard library speaks HTTP here, so that a fresh machine needs neither TensorFlow nor
tensorflow-datasets to get the data. Every file is checked against the release's size and SHA-256
(``RELEASES``) while it is written to a temporary file beside its target, and renamed into place
only once it matched: a file in the download folder is always a verified release file, so a
later run uses it by its size alone. The same table tells ``bnbench.data.sources`` which dataset an IDX
folder holds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bnbench.data import release as release_lib
from bnbench.data.release import DOWNLOAD_URL_ENV as MIRROR_ENV
from bnbench.data.release import IDX_FILES, RELEASES, DataError
from bnbench.record.io import file_mode_for

TIMEOUT_S = 30  # per connection attempt and per read: a stalled transfer fails instead of hanging
CHUNK_BYTES = 1 << 16
STALE_PART_S = 600  # a partial file untouched this long belongs to a download that died

# Where the release files are fetched from, in order: the next is tried when one fails.
LOCATIONS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # keras.datasets.fashion_mnist
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # tfds' fashion_mnist (Zalando's)
    ),
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # tfds' mnist (Keras ships MNIST as one .npz)
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's MNIST mirror
    ),
}

WAYS_OUT = ("pass --data-dir with a folder of the four IDX files, or --download-url URL "
            f"(or {MIRROR_ENV}) naming a mirror that holds them")


class _Failed(Exception):
    """One location did not yield a verified file; the message says why, in a few words."""


def mirror(download_url: str | None = None) -> str | None:
    """The mirror the user named (``--download-url``, else ``BNBENCH_DOWNLOAD_URL``), checked, or None."""
    url = download_url or os.environ.get(MIRROR_ENV) or None
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise DataError(f"download URL {url!r} (--download-url or {MIRROR_ENV}) is malformed ({e}): give the "
                        "base URL of a folder holding the four IDX files") from None
    if parts.scheme not in ("http", "https", "ftp", "file") or not (parts.netloc or parts.scheme == "file"):
        raise DataError(f"download URL {url!r} (--download-url or {MIRROR_ENV}) is not an http(s), ftp or "
                        "file URL: give the base URL of a folder holding the four IDX files, e.g. "
                        "https://example.org/fashion-mnist/ (for a local folder, use --data-dir)")
    return url


def file_url(base: str, filename: str) -> str:
    """``filename`` in the folder ``base`` names, its query kept (a signed mirror's token, say):
    ``https://m.org/fm?t=1`` gives ``https://m.org/fm/FILE?t=1``."""
    parts = urllib.parse.urlsplit(base)
    folder = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit(parts._replace(path=folder + filename, fragment=""))


def download_dir(name: str, cache_dir=None) -> Path:
    return release_lib.cache_dir(cache_dir) / "downloads" / name


def fetch(name: str, mirror_url: str | None = None, cache_dir=None) -> tuple[Path, str]:
    """Makes sure the four release files of ``name`` are in the cache; returns their folder and a
    location naming where they were fetched from and where they are kept.

    Files already there with the release's size are used as they are (they got there only by a
    verified rename). The others are downloaded from ``mirror_url`` alone when it is given, else
    from ``LOCATIONS[name]`` in order."""
    folder = download_dir(name, cache_dir)
    release = RELEASES[name]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {folder} ({e.strerror}): set BNBENCH_CACHE_DIR "
                        "to a writable folder, or pass --data-dir with the four IDX files") from None
    _remove_stale_parts(folder)
    missing = [f for f in (stem + ".gz" for stem in IDX_FILES.values()) if not _present(folder / f, release[f][0])]
    if missing:
        bases = (mirror_url,) if mirror_url else LOCATIONS[name]
        from tqdm import tqdm

        with tqdm(total=sum(release[f][0] for f in missing), desc=f"downloading {name}", unit="B",
                  unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
            for filename in missing:
                _fetch_file(name, filename, bases, folder, bar)
    return folder, f"{_origins(folder)} -> {folder}"


def discard(folder: Path, filenames) -> None:
    """Removes cached release files (and what says where they came from), so they are fetched afresh."""
    for filename in filenames:
        (folder / filename).unlink(missing_ok=True)
        (folder / f"{filename}.url").unlink(missing_ok=True)


# --- one file ------------------------------------------------------------------------------------

def _present(path: Path, size: int) -> bool:
    """A file of the right size is a verified download; one of another size is left from something
    else (a copy by hand, an older release) and is removed, so it is never used."""
    if not path.is_file():
        return False
    if path.stat().st_size == size:
        return True
    discard(path.parent, [path.name])
    return False


def _fetch_file(name: str, filename: str, bases, folder: Path, bar) -> None:
    size, sha256 = RELEASES[name][filename]
    failures = []
    for base in bases:
        url = file_url(base, filename)
        try:
            _download(url, folder / filename, size, sha256, bar)
        except _Failed as e:
            failures.append(f"{url}: {e}")
            continue
        _write_origin(folder / f"{filename}.url", url)
        return
    raise DataError(f"could not download {filename} of {name} ({'; '.join(failures)}): {WAYS_OUT}")


def _download(url: str, target: Path, size: int, sha256: str, bar) -> None:
    """Streams ``url`` into a temporary file beside ``target``, checks its size and SHA-256, and only
    then renames it over ``target``; whatever fails, the temporary file is removed. The transfer's
    failures are ``_Failed`` (another location may do better); failing to write here is not."""
    tmp = None
    received = 0
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.fchmod(fd, file_mode_for(target))  # a cached release file is readable as any new file is
        with os.fdopen(fd, "wb") as out:
            received, digest = _stream(url, out, size, bar)
            out.flush()
            os.fsync(out.fileno())
        if received > size:
            raise _Failed(f"it is larger than the release file ({size} bytes); it was removed")
        if received < size:
            raise _Failed(f"the transfer broke off after {received} of {size} bytes; nothing was kept")
        if digest != sha256:
            raise _Failed(f"its sha256 is {digest}, the release's is {sha256}: not the release file; it was removed")
        os.replace(tmp, target)
    except OSError as e:
        _abandon(tmp, received, bar)
        raise DataError(f"cannot write {target} ({e.strerror or e}): make room there, or set BNBENCH_CACHE_DIR "
                        "to another folder") from None
    except BaseException:
        _abandon(tmp, received, bar)
        raise


def _abandon(tmp: str | None, received: int, bar) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)
    bar.update(-received)  # what a failed attempt counted is not downloaded


def _stream(url: str, out, size: int, bar) -> tuple[int, str]:
    """Copies the response into ``out``; returns the bytes received and their sha256.

    A response announcing another length is refused before its body is read, and reading stops
    one byte past the release's size: a larger file is wrong whatever follows."""
    h = hashlib.sha256()
    received = 0
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise _Failed(f"HTTP {e.code} {_one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise _Failed(f"cannot reach it ({_one_line(e.reason)})") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # HTTPException: not HTTP at all
        raise _Failed(f"cannot reach it ({_one_line(e) or type(e).__name__})") from None
    with response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) != size:
            raise _Failed(f"it is {int(length)} bytes, the release file is {size}; nothing was kept")
        while received <= size:
            try:
                chunk = response.read(min(CHUNK_BYTES, size + 1 - received))
            except Exception as e:  # a reset connection, a timeout, an IncompleteRead
                bar.update(-received)
                raise _Failed(f"the transfer broke off after {received} bytes ({_one_line(e) or type(e).__name__}); "
                              "nothing was kept") from None
            if not chunk:
                break
            out.write(chunk)  # an OSError here is this machine's: the caller says so
            h.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received, h.hexdigest()


# --- bookkeeping -------------------------------------------------------------------------------

def _write_origin(path: Path, url: str) -> None:
    """Remembers where a file came from, for the report's ``location``; losing it costs nothing else."""
    try:
        path.write_text(url + "\n")
    except OSError:
        pass


def _origins(folder: Path) -> str:
    """The base URLs the four files were fetched from (usually one), or 'an earlier download'."""
    bases = []
    for stem in IDX_FILES.values():
        try:
            url = (folder / f"{stem}.gz.url").read_text().strip()
        except OSError:
            url = ""
        if url:
            parts = urllib.parse.urlsplit(url)  # the folder, without a signed mirror's query
            base = urllib.parse.urlunsplit(parts._replace(path=parts.path.rsplit("/", 1)[0] + "/", query="",
                                                          fragment=""))
        else:
            base = "an earlier download"
        if base not in bases:
            bases.append(base)
    return " and ".join(bases)


def _remove_stale_parts(folder: Path) -> None:
    """Partial files of downloads that were killed (a live download writes its file every moment)."""
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:
            pass


def _one_line(value) -> str:
    return " ".join(str(value).split())
