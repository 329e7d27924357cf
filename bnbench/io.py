"""Writing files atomically, so that an interrupted run never leaves a half-written report, and
writing reports as strict JSON: every number finite or null."""

from __future__ import annotations

import json
import math
import os
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
