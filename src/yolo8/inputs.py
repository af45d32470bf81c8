"""What `yolo8 detect` reads: command-line arguments expanded into an ordered list of sources.

An argument is, in this order of checks:

* an existing folder: the images inside (by extension, case-insensitively), sorted by name; with
  `recursive`, those of its subfolders too, sorted by relative path. Hidden files and folders
  (a leading dot, e.g. macOS `._x.jpg` resource forks) are left out;
* an existing `.txt` file: a darknet image list, one path per line (blank and `#` lines skipped,
  CRLF and a UTF-8 BOM fine); relative entries resolve against the working directory, then the
  list's folder; an entry with a video extension is a video;
* an existing file with a video extension: a video (read with OpenCV's FFmpeg backend);
* any other existing file: an image (decoded by content, so a PNG named `.jpg` is fine);
* a path that does not exist but contains glob characters (`*?[`): the image and video files it
  matches (`**` recurses), sorted;
* anything else is missing.

Cameras (`--camera N`) come after the arguments. A problem with one argument (missing, empty
folder or list, a list entry that does not exist, a glob without a match) does not stop the others:
it is returned in `Expanded.problems`, and the caller decides.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterator, Literal, Sequence

import cv2

from .data import read_image_list
from .errors import InputError

log = logging.getLogger(__name__)

# Extensions looked for in folders and globs. Explicit files are decoded whatever their name.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".avif",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".hdr", ".pic", ".gif",
})
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m2v", ".wmv", ".asf",
    ".flv", ".3gp", ".3g2", ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".mjpeg", ".mjpg", ".y4m",
})
LIST_EXTENSIONS = frozenset({".txt"})
GLOB_CHARS = frozenset("*?[")

Kind = Literal["image", "video", "camera"]


@dataclass(frozen=True)
class Source:
    """One thing to detect in: an image file, a video file or a camera."""

    kind: Kind
    display: str                     # how it is named in printed lines and the JSON
    path: Path | None = None         # the file (None for a camera)
    relative: PurePath | None = None  # its name under --save-dir (a sub-path for folder entries)
    camera: int | None = None

    @property
    def is_stream(self) -> bool:
        return self.kind != "image"


def source_groups(sources: list[Source]) -> list[list[Source]]:
    """In input order: consecutive images together (one decode-ahead pipeline), each video or
    camera alone."""
    groups: list[list[Source]] = []
    for source in sources:
        if source.is_stream or not groups or groups[-1][0].is_stream:
            groups.append([source])
        else:
            groups[-1].append(source)
    return groups


@dataclass
class Expanded:
    sources: list[Source] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)
    repeated: list[Source] = field(default_factory=list)  # named again by a later argument


def is_image_name(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_name(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in VIDEO_EXTENSIONS


def has_glob_chars(text: str) -> bool:
    return any(char in GLOB_CHARS for char in text)


def file_source(path: Path, display: str | None = None, relative: PurePath | None = None) -> Source:
    """An existing file as an image or a video source (by extension)."""
    kind: Kind = "video" if is_video_name(path) else "image"
    return Source(kind, display if display is not None else str(path), path,
                  relative if relative is not None else PurePath(path.name))


def camera_source(index: int) -> Source:
    return Source("camera", f"camera{index}", relative=PurePath(f"camera{index}.avi"), camera=index)


# ------------------------------------------------------------------------------------ folders


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_folder(folder: Path, recursive: bool = False) -> list[PurePath]:
    """The image files of a folder as paths relative to it, sorted (by relative path)."""
    if not recursive:
        names = (entry.name for entry in os.scandir(folder)
                 if _visible(entry.name) and entry.is_file() and is_image_name(entry.name))
        return [PurePath(name) for name in sorted(names)]
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        base = PurePath(os.path.relpath(root, folder))
        found.extend(base / name for name in files if _visible(name) and is_image_name(name))
    return sorted(found, key=lambda p: p.parts)


_COMMON_IMAGE_EXTENSIONS = "jpg, jpeg, png, bmp, tif, tiff, webp, ..."


def _has_subfolders(folder: Path) -> bool:
    return any(entry.is_dir() and _visible(entry.name) for entry in os.scandir(folder))


def _expand_folder(arg: str, recursive: bool) -> Expanded:
    folder = Path(arg)
    try:
        entries = list_folder(folder, recursive)
        if not entries:
            hint = "" if recursive or not _has_subfolders(folder) else \
                "; --recursive to look in subfolders"
            return Expanded(problems=[InputError(
                f"empty folder: no image files ({_COMMON_IMAGE_EXTENSIONS}){hint}", path=arg)])
    except OSError as exc:
        return Expanded(problems=[InputError(f"cannot read folder: {exc.strerror}", path=arg)])
    return Expanded(sources=[file_source(folder / rel, str(folder / rel), rel) for rel in entries])


# -------------------------------------------------------------------------------------- lists


def read_input_list(path: Path) -> Expanded:
    """The sources named by a darknet list file (`data.read_image_list`); entries that do not
    exist, or name folders, become problems."""
    try:
        entries = read_image_list(path)
    except InputError as exc:
        return Expanded(problems=[exc])
    out = Expanded()
    for entry in entries:
        if entry.problem is not None:
            out.problems.append(entry.problem)
        else:
            out.sources.append(file_source(entry.path))
    return out


# -------------------------------------------------------------------------------------- globs


def _expand_glob(pattern: str) -> Expanded:
    matches = sorted(glob.glob(pattern, recursive=True))
    files = [m for m in matches if os.path.isfile(m) and (is_image_name(m) or is_video_name(m))]
    if not files:
        what = "no image or video file matches" if matches else "nothing matches"
        return Expanded(problems=[InputError(f"{what} this pattern", path=pattern)])
    return Expanded(sources=[file_source(Path(m), m) for m in files])


# ------------------------------------------------------------------------------------ all args


def _missing(arg: str) -> InputError:
    if PurePath(arg).suffix.lower() in LIST_EXTENSIONS:
        what = "image list"
    elif is_video_name(arg):
        what = "video"
    elif PurePath(arg).suffix:
        what = "image"
    else:
        what = "file or folder"
    return InputError(f"{what} not found", path=arg)


def expand_argument(arg: str, recursive: bool = False) -> Expanded:
    """One command-line argument -> its sources (or the problem with it)."""
    path = Path(arg)
    if path.is_dir():
        return _expand_folder(arg, recursive)
    if path.exists():
        if path.suffix.lower() in LIST_EXTENSIONS:
            return read_input_list(path)
        return Expanded(sources=[file_source(path, arg)])
    if has_glob_chars(arg):
        return _expand_glob(arg)
    return Expanded(problems=[_missing(arg)])


def _identity(source: Source) -> object:
    return source.camera if source.path is None else source.path.resolve()


def expand_inputs(args: Sequence[str], cameras: Sequence[int] = (), recursive: bool = False
                  ) -> Expanded:
    """Every argument expanded in order, then the cameras. A file (or camera) named more than
    once, e.g. by a folder and by a glob, is kept once, where it first appears: twice would give
    duplicate results."""
    out = Expanded()
    seen: set[object] = set()
    candidates = []
    for arg in args:
        got = expand_argument(arg, recursive)
        candidates.extend(got.sources)
        out.problems.extend(got.problems)
    candidates.extend(camera_source(index) for index in cameras)
    for source in candidates:
        identity = _identity(source)
        if identity in seen:
            out.repeated.append(source)
        else:
            seen.add(identity)
            out.sources.append(source)
    return out


# ------------------------------------------------------------------------------ video capture


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's and FFmpeg's own stderr messages ("moov atom not found", "can't open
    camera by index", ...) so that a file we cannot open is reported by us in one line.
    Kept when yolo8 logs at debug level (-v)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    logging_api = cv2.utils.logging
    old_level = logging_api.getLogLevel()
    old_env = os.environ.get("OPENCV_FFMPEG_LOGLEVEL")
    logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET; OpenCV reads it when opening
    try:
        yield
    finally:
        logging_api.setLogLevel(old_level)
        if old_env is None:
            os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)
        else:
            os.environ["OPENCV_FFMPEG_LOGLEVEL"] = old_env


def open_capture(source: Source) -> cv2.VideoCapture:
    """An opened VideoCapture for a video file or a camera; InputError when it cannot be opened."""
    with quiet_opencv():
        if source.kind == "camera":
            capture = cv2.VideoCapture(source.camera)
        else:
            # FFmpeg only: the default chain would also try CAP_IMAGES, which reads a name with
            # a printf pattern (`img_%03d.jpg`) as an image sequence.
            capture = cv2.VideoCapture(str(source.path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        if source.kind == "camera":
            raise InputError(f"cannot open camera {source.camera} (no such device, or it is busy)",
                             path=source.display)
        raise InputError("is not a video OpenCV can open (or the file is damaged)",
                         path=source.display)
    return capture
