"""Reading darknet .weights files: header, exact size, hash, then one float32 array per layer.

The reader knows nothing of layers: it is told how many floats each weighted layer takes, in
file order, and yields them; the graph gives each array to its layer (see graph.load_weights).
"""
from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import WeightsError, reading

_HEADER = struct.Struct("<iii")  # major, minor, revision


class WeightsDigestError(WeightsError):
    """The file is not the one expected (its sha256 differs)."""


def _seen_size(major: int, minor: int) -> int:
    """darknet writes `seen` as size_t (8 bytes) from format 0.2 on, as int before."""
    return 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4


def expected_size(floats: int, major: int, minor: int) -> int:
    """Bytes of a .weights file of this format version holding `floats` values."""
    return _HEADER.size + _seen_size(major, minor) + 4 * floats


def _sha256(src) -> str:
    src.seek(0)
    digest = hashlib.sha256()
    while chunk := src.read(1 << 22):
        digest.update(chunk)
    return digest.hexdigest()


class WeightsFile:
    """An open .weights file checked against the floats a cfg needs (`sizes`, one per
    weighted layer in file order; `cfg` names the cfg in messages).

    Use as a context manager; `sha256` is the file's hash and `arrays()` yields the layers'
    values. Hashed in chunks, then read layer by layer: no copy of the whole file is held. A
    file that must have a given hash is checked before anything else (even its header could
    be damaged); any other file is first checked by its size, so a wrong large file is not
    read at all.
    """

    def __init__(self, path: str | Path, sizes: Sequence[int], cfg: str,
                 expected_sha256: str | None = None) -> None:
        self.path, self.sizes, self.cfg = Path(path), list(sizes), cfg
        self.expected_sha256 = expected_sha256
        self.sha256 = ""
        self._src = None
        self._first = 0

    def __enter__(self) -> WeightsFile:
        with reading(self.path, "weights file", WeightsError):
            self._src = self.path.open("rb")
            try:
                self._check()
            except BaseException:
                self._src.close()
                raise
        return self

    def __exit__(self, *exc) -> None:
        self._src.close()

    def _check(self) -> None:
        src = self._src
        if self.expected_sha256 is not None:
            self.sha256 = _sha256(src)
            if self.sha256 != self.expected_sha256:
                raise WeightsDigestError(f"has sha256 {self.sha256}, expected "
                                         f"{self.expected_sha256}", path=self.path)
            src.seek(0)
        self._first = self._check_size()
        if self.expected_sha256 is None:
            self.sha256 = _sha256(src)

    def _check_size(self) -> int:
        """The offset of the first float, once the file's size is known to fit the cfg: a
        wrong file (a video, another model's weights) is refused from its size and header."""
        floats = sum(self.sizes)
        size = os.fstat(self._src.fileno()).st_size
        header = self._src.read(_HEADER.size)
        if size < _HEADER.size + 4 or len(header) < _HEADER.size:
            raise WeightsError(f"is {size} bytes, too short for a darknet weights header "
                               f"(expected {expected_size(floats, 0, 2)} bytes for {self.cfg})",
                               path=self.path)
        major, minor, _revision = _HEADER.unpack(header)
        expected = expected_size(floats, major, minor)
        if size != expected:
            which = "short" if size < expected else "long"
            raise WeightsError(f"is {size} bytes but {self.cfg} needs exactly {expected} "
                               f"({size - expected:+d} bytes: too {which}); wrong weights for "
                               f"this cfg?", path=self.path)
        return _HEADER.size + _seen_size(major, minor)

    def arrays(self) -> Iterator[np.ndarray]:
        """One float32 array per entry of `sizes`, in order (the values as read: the graph's
        loader checks that they are finite)."""
        with reading(self.path, "weights file", WeightsError):
            self._src.seek(self._first)
            for count in self.sizes:
                chunk = np.fromfile(self._src, dtype="<f4", count=count)
                if len(chunk) != count:  # the file shrank while we read it
                    raise WeightsError("changed while being read", path=self.path)
                yield chunk.astype(np.float32, copy=False)  # native order: no copy on little-endian
