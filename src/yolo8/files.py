"""Output files that are whole or absent: written to a temporary name, then renamed.

An interrupted run (Ctrl-C, a crash, a full disk) never leaves a half-written file under the
name a user or a later step reads: the old file (if any) stays until the new one is complete.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import Yolo8Error, writing


def make_parent(path: Path) -> None:
    """Create the folder of `path` (one clear error naming it when that is impossible)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Yolo8Error(f"cannot create the output folder: {exc.strerror}",
                         path=path.parent) from None


def reserve_twin(path: Path) -> Path:
    """A new empty temporary file next to `path` with the same suffix (writers that pick a
    format by the name, as OpenCV's, still work)."""
    make_parent(path)
    with writing(path):
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}",
                                    dir=path.parent)
        os.close(fd)
    return Path(name)


def settle_twin(temp: Path, path: Path, keep: bool) -> None:
    """Rename the twin over `path` (keep) or remove it."""
    try:
        if keep:
            with writing(path):
                os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def temporary_twin(path: Path) -> Iterator[Path]:
    """A twin of `path` (`reserve_twin`) renamed over it when the block ends normally, removed
    when it raises."""
    temp = reserve_twin(path)
    done = False
    try:
        yield temp
        done = True
    finally:
        settle_twin(temp, path, keep=done)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary twin."""
    with temporary_twin(path) as temp, writing(path):
        temp.write_bytes(data)
