"""Writing files atomically, so that an interrupted run never leaves a half-written report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from bnbench.errors import BnbenchError


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Calls ``write(f)`` on a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: (json.dump(obj, f, indent=2, sort_keys=False), f.write("\n")))


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
        raise BnbenchError(f"cannot write to {path} ({e.strerror}): choose a writable --out path") from None
    return path
