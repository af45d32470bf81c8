"""Where numba keeps yolo8's compiled kernels; decided once, before any kernel is defined.

Every `@njit` of yolo8 says `cache=CACHE`. The folder is, in order:

* `NUMBA_CACHE_DIR` when set (numba's own variable; used as it is);
* else `<yolo8 cache>/numba/<cpu>-<features>-<sources>` under `$YOLO8_CACHE_DIR`, else
  `$XDG_CACHE_HOME/yolo8`, else `~/.cache/yolo8`: never the package folder, which is often
  read-only (a system or container install). The folder's name carries numba's target CPU and
  a hash of its feature flags (machine code built for one CPU is never offered to another: a
  cache baked into an image is tied to the CPU features it was built for) and a hash of
  yolo8's sources (numba does not see changes to code that a kernel inlines from another file,
  so any change of yolo8's code starts a fresh cache instead of loading stale machine code).

When the folder cannot be created or written, kernels are compiled in every run (about 15 s)
and one notice says so: yolo8 never fails for want of a cache.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import llvmlite.binding as llvm
from numba.core import config

from . import models

notices = logging.getLogger("yolo8.notice")

_PACKAGE = Path(__file__).resolve().parent


def _sources_digest() -> str:
    """A hash of every Python file of the package (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def target_features() -> frozenset[str]:
    """numba's compile-target features ("+avx512f", ...): NUMBA_CPU_FEATURES if set, else the
    host's. Cached (the configuration is fixed once numba is imported)."""
    features = config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return frozenset(features.split(","))


def target_tag() -> str:
    """numba's target CPU name and a hash of its features, e.g. `znver4-3f2a9c1d`."""
    name = config.CPU_NAME or llvm.get_host_cpu_name()
    canonical = ",".join(sorted(target_features()))
    return f"{name}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def default_cache_dir() -> Path:
    """The kernel cache folder yolo8 uses when NUMBA_CACHE_DIR is not set."""
    return models.cache_dir() / "numba" / f"{target_tag()}-{_sources_digest()}"


def _writable(folder: Path) -> str | None:
    """None if files can be created in `folder` (made if missing), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _configure() -> tuple[bool, Path | None]:
    folder = Path(config.CACHE_DIR) if config.CACHE_DIR else default_cache_dir()
    problem = _writable(folder)
    if problem is not None:
        notices.warning("cannot write the kernel cache at %s (%s): compiling the kernels in every "
                        "run (about 15 s). Set XDG_CACHE_HOME, YOLO8_CACHE_DIR or "
                        "NUMBA_CACHE_DIR to a writable folder to cache them.", folder, problem)
        return False, None
    config.CACHE_DIR = str(folder)
    return True, folder


CACHE, CACHE_DIR = _configure()
