"""Writing files atomically, so that an interrupted run never leaves a half-written report;
writing reports as strict JSON, every number finite or null; and claiming a report's path before
training, so that no report is lost to another writer or replaced unasked (``ReportClaim``)."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from bnbench.errors import BnbenchError


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def file_mode_for(path: Path) -> int:
    """An existing file keeps its mode; a new one gets what open() would give it (0666 less the
    umask), not the 0600 of mkstemp's private temporary file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Calls ``write(f)`` on a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode_for(path))
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by None: JSON has no such numbers (Python's
    NaN and Infinity literals are not JSON), and null says "no value" to every reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """The one place reports are written: strict JSON, every number finite or null."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text))


def check_writable(path: str | os.PathLike) -> Path:
    """Fails now, with a clear message, if a report could not be written to ``path`` later."""
    path = Path(path)
    if path.is_dir():
        raise BnbenchError(f"output path {path} is a directory: name a file, e.g. {path / 'report.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".check")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise BnbenchError(f"cannot write to {path} ({e.strerror}): choose a writable path") from None
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """The output folder of ``bnbench report``, created if needed; one line if it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BnbenchError(f"--out {path} is a file, not a folder: name a folder for README.md and the plots")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnbenchError(f"cannot create the folder {path} ({e.strerror or e}): choose another --out") from None
    return path


def _signature(path: Path) -> tuple | None:
    """What a file is now (None if it does not exist): a write by anyone else changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class PathTaken(BnbenchError):
    """The report's path exists, or another process is writing it."""


def lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def hold_lock(path: Path) -> int:
    """An exclusive lock on writing ``path`` (``flock`` on ``.NAME.lock`` beside it), or one line
    naming who holds it. Returns the lock's file descriptor, for ``drop_lock``."""
    lock = lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BnbenchError(f"cannot write beside {path} ({e.strerror}): choose a writable path") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise PathTaken(f"{path} is being written by {holder}: wait for it to finish, or "
                                "name another file") from None
            raise BnbenchError(f"cannot lock {lock} ({e.strerror}): choose a writable path") from None
        # The holder before us may have removed the lock file as we opened it: lock the file
        # that is there now, or two writers would each hold a lock of their own.
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"bnbench pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return fd


def drop_lock(path: Path, fd: int) -> None:
    lock_path(path).unlink(missing_ok=True)  # while still held: see hold_lock
    os.close(fd)


class ReportClaim:
    """The right to write one report file, taken before training and held until it is written.

    - An existing file is refused unless ``replace`` (``--force``, or a sweep's ``--resume``).
    - An exclusive lock (``flock`` on ``.NAME.lock`` beside it) is taken at once: a second writer of
      the same path stops before it trains, in one line. The kernel drops the lock of a process
      that dies, so no stale lock outlives a crash.
    - At the write, the file must still be what it was when the claim was taken; if anything else
      wrote it meanwhile (a tool that takes no lock), the report goes to a new name beside it
      (``moved_to``), which the caller prints: results are never lost, and nothing is overwritten.
    """

    def __init__(self, path: str | os.PathLike, replace: bool = False, how_to_replace: str = "pass --force"):
        path = Path(path)
        # A link is written through, to the file it names, and locked there: two links to one file
        # are one path.
        self._made_folder = None if path.parent.exists() else path.parent  # removed again if left empty
        if path.is_symlink():
            try:
                path = path.resolve(strict=False)
            except (RuntimeError, OSError) as e:  # a loop of links
                raise BnbenchError(f"cannot write to {path} ({e}): name a file, not a loop of links") from None
        self.path = check_writable(path)
        self.moved_to: Path | None = None
        self._fd = hold_lock(self.path)
        self._signature = _signature(self.path)
        if self._signature is not None and not replace:
            self.release()
            raise PathTaken(f"{self.path} exists: {how_to_replace} to replace it, or name another file")

    def target(self) -> Path:
        """Where the next write goes: the claimed path, or, if the file changed under us, a new one
        beside it (``moved_to``, kept for every later write)."""
        if self._fd is None:
            raise RuntimeError(f"the claim on {self.path} was released")
        now = _signature(self.path)
        # Changed by someone else: keep both. Removed meanwhile: nothing there to lose.
        if self.moved_to is None and now is not None and now != self._signature:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.moved_to = unused_path(self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}"))
        return self.moved_to or self.path

    def write_json(self, obj: Any) -> Path:
        """Writes ``obj`` where ``target`` says; returns where it went. The claim is kept for later
        writes (a sweep's)."""
        target = self.target()
        write_json(target, obj)
        if self.moved_to is None:
            self._signature = _signature(self.path)
        return target

    def moved_line(self, what: str) -> str | None:
        """The one line that says ``what`` (this report, pytest-benchmark's JSON) went beside the
        claimed path, or None if it did not."""
        if self.moved_to is None:
            return None
        return (f"bnbench: error: {self.path} changed while this ran (written by something else): {what} is in "
                f"{self.moved_to} instead")

    def release(self) -> None:
        if self._fd is None:
            return
        drop_lock(self.path, self._fd)
        self._fd = None
        if self._made_folder is not None:
            try:
                self._made_folder.rmdir()  # only if nothing was written there (a refused or empty run)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def unused_path(path: Path) -> Path:
    """``path``, or ``NAME-2.json``, ``NAME-3.json``, ... : the first that no file has taken."""
    candidate, n = path, 1
    while candidate.exists() or lock_path(candidate).exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def claim_default(kind: str, folder: str | os.PathLike = "reports") -> ReportClaim:
    """A claim on a new path when none is given: ``reports/KIND-<date>-<time>.json`` in the current
    folder, with a number added if that name is taken (by a run started in the same second, too)."""
    path = Path(folder) / f"{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    while True:
        try:
            return ReportClaim(unused_path(path))
        except PathTaken:
            continue  # taken between the look and the lock: the next free name


MANIFEST = ".bnbench-report"  # in a folder that ``bnbench report`` wrote: the files it wrote, a name a line


class ReportFolder:
    """``bnbench report``'s folder, locked while written. The page is drawn into a hidden folder
    inside it (``staging``), then ``finish`` moves each file in whole (a rename) and removes what
    the previous page wrote and this one did not (its old plots), as listed in the manifest.
    A file of the new page's name that the previous page did not write (a README.md of someone
    else's) stops it, unless ``force``; other files are left as they are."""

    def __init__(self, path: str | os.PathLike, force: bool = False):
        self.path, self.force = make_folder(path), force
        self._fd = hold_lock(self.path / MANIFEST)
        manifest = self.path / MANIFEST
        self.previous = set(manifest.read_text().split()) if manifest.is_file() else set()
        for stale in self.path.glob(f"{MANIFEST}.*.tmp"):  # left by a page that was killed: the lock is ours
            shutil.rmtree(stale, ignore_errors=True)
        try:
            self.staging = Path(tempfile.mkdtemp(dir=self.path, prefix=f"{MANIFEST}.", suffix=".tmp"))
        except OSError as e:
            self.release()
            raise BnbenchError(f"cannot write into {self.path} ({e.strerror}): choose a writable --out folder"
                               ) from None

    def finish(self) -> list[Path]:
        """Moves the staged page in; returns its files as they now lie in the folder."""
        names = sorted(p.name for p in self.staging.iterdir())
        foreign = [n for n in names if (self.path / n).exists() and n not in self.previous]
        if foreign and not self.force:
            named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise BnbenchError(f"--out {self.path} holds {named}, which bnbench report did not write: choose a new "
                               "or empty folder, or pass --force to replace them")
        def manifest(listed):
            atomic_write(self.path / MANIFEST, lambda f: f.write("".join(f"{n}\n" for n in sorted(listed))))

        manifest(self.previous | set(names))  # first, so that a page killed midway still owns all its files
        for name in names:
            os.replace(self.staging / name, self.path / name)
        for stale in sorted(self.previous - set(names)):
            (self.path / stale).unlink(missing_ok=True)
        manifest(names)
        return [self.path / n for n in names]

    def release(self) -> None:
        """Removes the staging folder (what was not moved in) and drops the lock."""
        if getattr(self, "staging", None) is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._fd is not None:
            drop_lock(self.path / MANIFEST, self._fd)
            self._fd = None
