"""Darknet data sets: the .data file, image lists, names and YOLO label files.

Darknet's conventions, read the way `darknet detector map` reads them:

* a `.data` file holds `key = value` lines (`classes`, `valid`, `names`, `difficult`, ...);
* `valid` names a list of images, one path per line;
* the labels of `.../images/x.jpg` are in `.../labels/x.txt` (see `label_path`), one object per
  line: `class x_center y_center width height`, coordinates relative to the image size;
* `difficult` (optional, PASCAL VOC) names a second list, parallel to `valid` line by line, whose
  label files hold the boxes marked difficult (darknet's scripts/voc_label_difficult.py).

Where darknet is silent about bad input (it stops reading a label file at the first line it cannot
parse, it accepts any class id) we raise `InputError` naming the file and line instead: a metric
computed from silently truncated ground truth cannot be trusted.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from yolo8.errors import InputError, reading

log = logging.getLogger(__name__)

# Folders darknet maps to `labels` (COCO's `images/...`, PASCAL VOC's `JPEGImages`).
_IMAGE_FOLDERS = ("images", "JPEGImages")
_LABEL_FIELDS = 5


@dataclass(frozen=True)
class DataConfig:
    """The parts of a darknet .data file that evaluation uses; paths already resolved."""

    classes: int
    valid: Path
    names: Path | None
    difficult: Path | None
    path: Path


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The objects of one image: xyxy boxes in pixels (float64), class ids, difficult flags."""

    boxes: np.ndarray  # (G, 4) float64, x1 y1 x2 y2 in pixels
    classes: np.ndarray  # (G,) int64
    difficult: np.ndarray  # (G,) bool

    @classmethod
    def empty(cls) -> GroundTruth:
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """The detections of one image: xyxy boxes in pixels, class ids, scores (one row per class)."""

    boxes: np.ndarray  # (D, 4) float64, x1 y1 x2 y2 in pixels
    classes: np.ndarray  # (D,) int64
    scores: np.ndarray  # (D,) float64

    @classmethod
    def empty(cls) -> ImageDetections:
        return cls(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))


# ----------------------------------------------------------------------------------- text files


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file without line ends (LF or CRLF, optional UTF-8 BOM)."""
    try:
        with reading(path, what, InputError):
            text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} is not UTF-8 text ({exc.reason})", path=path) from None
    return text.splitlines()


def _resolve(entry: str, folder: Path) -> Path | None:
    """`entry` as darknet opens it (relative to the working directory, kept as written), else
    relative to `folder` (the file that names it), so that a data set can be used from
    anywhere. None when it exists in neither place."""
    candidate = Path(entry)
    if candidate.exists():
        return candidate
    if not candidate.is_absolute() and (folder / candidate).exists():
        return folder / candidate
    return None


# ----------------------------------------------------------------------------------- .data file


def _parse_data_lines(path: Path) -> dict[str, tuple[str, int]]:
    """key -> (value, line number). The first occurrence of a key wins, as in darknet
    (option_find returns the first match)."""
    options: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(read_lines(path, ".data file"), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InputError(f"expected 'key = value', found {line!r}", path=path, line=number)
        if key in options:
            log.warning("%s:%d: '%s' repeated; darknet uses the first one (line %d)",
                        path, number, key, options[key][1])
            continue
        options[key] = (value, number)
    return options


def _data_file_entry(options: dict[str, tuple[str, int]], key: str, path: Path) -> Path | None:
    if key not in options:
        return None
    value, line = options[key]
    if not value:
        raise InputError("expected a file name after '='", path=path, line=line, key=key)
    resolved = _resolve(value, path.parent)
    if resolved is None:
        raise InputError(
            f"file {value!r} not found (looked in the working directory {Path.cwd()} "
            f"and next to the .data file in {path.parent})",
            path=path, line=line, key=key,
        )
    return resolved.absolute()  # the data set stays usable if the working directory changes


def _data_file_classes(options: dict[str, tuple[str, int]], path: Path) -> int:
    if "classes" not in options:
        raise InputError("no 'classes = N' line (the number of classes)", path=path, key="classes")
    value, line = options["classes"]
    try:
        classes = int(value)
    except ValueError:
        raise InputError(f"expected a positive integer, found {value!r}",
                         path=path, line=line, key="classes") from None
    if classes <= 0:
        raise InputError(f"expected a positive integer, found {classes}",
                         path=path, line=line, key="classes")
    return classes


def read_data_file(path: str | Path) -> DataConfig:
    """Read a darknet .data file.

    `key = value` lines (spaces around `=` allowed, CRLF allowed), `#` and `;` comment lines.
    Relative paths are looked up in the working directory first (as darknet does) and then
    in the .data file's folder. Keys other than classes/valid/names/difficult are ignored.

    Raises InputError (file, line, key) for a missing `valid`, a missing or non-positive
    `classes`, a listed file that does not exist, or a line that is not `key = value`.
    """
    path = Path(path)
    options = _parse_data_lines(path)
    classes = _data_file_classes(options, path)
    if "valid" not in options:
        raise InputError("no 'valid = <list of images>' line", path=path, key="valid")
    valid = _data_file_entry(options, "valid", path)
    assert valid is not None
    return DataConfig(
        classes=classes,
        valid=valid,
        names=_data_file_entry(options, "names", path),
        difficult=_data_file_entry(options, "difficult", path),
        path=path,
    )


# ------------------------------------------------------------------------------ lists and names


@dataclass(frozen=True)
class ListedImage:
    """One entry of a darknet image list: where it was found (else the path as darknet would
    open it, from the working directory), its line, and why it cannot be used (None if it can)."""
    path: Path
    line: int
    problem: InputError | None = None


def read_image_list(path: str | Path) -> list[ListedImage]:
    """The entries of a darknet image list, in order: the one reader of `detect`, `calibrate`
    and `map`.

    Blank lines and `#` lines are skipped, CRLF and a UTF-8 BOM are fine, surrounding spaces are
    dropped. Relative entries resolve against the working directory, then against the list's
    folder. An entry found in neither place, or naming a folder, is kept with its `problem`
    (the callers report it and go on). Raises InputError when the list is missing, unreadable
    or has no entries.
    """
    path = Path(path)
    entries = []
    for number, raw in enumerate(read_lines(path, "image list"), start=1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        found = _resolve(entry, path.parent)
        problem = None
        if found is None:
            where = path.parent if str(path.parent) != "." else "the list folder"
            problem = InputError(f"listed file {entry!r} not found (looked in the working "
                                 f"directory and in {where})", path=path, line=number)
        elif found.is_dir():
            problem = InputError(f"listed entry {entry!r} is a folder, expected a file",
                                 path=path, line=number)
        entries.append(ListedImage(found if found is not None else Path(entry), number, problem))
    if not entries:
        raise InputError("empty image list: no paths in it (blank and # lines are "
                         "skipped)", path=path)
    return entries


def image_paths(entries: list[ListedImage]) -> list[Path]:
    """The paths of a list's entries, unusable ones included (reading them fails and is
    reported per image, so that parallel lists stay aligned)."""
    return [e.path for e in entries]


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (line i names class i); trailing blank lines are ignored.

    A blank line between names would shift every later class id, so it is an InputError.
    """
    path = Path(path)
    names = [line.strip() for line in read_lines(path, "names file")]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise InputError("the names file is empty", path=path)
    for number, name in enumerate(names, start=1):
        if not name:
            raise InputError(f"blank line: expected the name of class {number - 1}",
                             path=path, line=number)
    return names


# ----------------------------------------------------------------------------------- labels


def label_path(image_path: str | Path) -> Path:
    """The label file of an image, by darknet's replace_image_to_label rule.

    The folder `images` (or `JPEGImages`) nearest the file becomes `labels` and the extension,
    whatever it is and in any case, becomes `.txt`: `coco/images/train2017/x.JPG` ->
    `coco/labels/train2017/x.txt`. Without such a folder the label sits next to the image.
    (AlexeyAB's darknet replaces `/images/train2017/`, `/images/val2014/`, ... and `/JPEGImages/`;
    taking the nearest folder gives the same answer for those and also covers `images/x.jpg`.)
    """
    image_path = PurePath(image_path)
    folders = list(image_path.parent.parts)
    for index in range(len(folders) - 1, -1, -1):
        if folders[index] in _IMAGE_FOLDERS:
            folders[index] = "labels"
            break
    name = image_path.stem if image_path.suffix else image_path.name
    return Path(*folders, name + ".txt") if folders else Path(name + ".txt")


def _parse_label_line(fields: list[str], num_classes: int, path: Path, number: int
                      ) -> tuple[int, float, float, float, float]:
    expected = "expected 'class x_center y_center width height'"
    if len(fields) != _LABEL_FIELDS:
        raise InputError(f"{expected}, found {len(fields)} fields", path=path, line=number)
    try:
        class_id = int(fields[0])
    except ValueError:
        raise InputError(f"{expected}: class id {fields[0]!r} is not an integer",
                         path=path, line=number) from None
    if not 0 <= class_id < num_classes:
        raise InputError(f"class id {class_id} out of range: expected 0..{num_classes - 1}",
                         path=path, line=number)
    try:
        x, y, w, h = (float(field) for field in fields[1:])
    except ValueError:
        raise InputError(f"{expected}: coordinates must be numbers, found {' '.join(fields[1:])!r}",
                         path=path, line=number) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise InputError(f"{expected}: expected finite coordinates and width, height >= 0, "
                         f"found {' '.join(fields[1:])}", path=path, line=number)
    return class_id, x, y, w, h


def read_labels(path: str | Path, num_classes: int, image_width: int, image_height: int
                ) -> GroundTruth:
    """The objects in a YOLO label file, as xyxy pixel boxes (float64).

    Each non-blank line is `class x_center y_center width height`, coordinates relative to the
    image (0..1). A missing label file means an image without objects (darknet's behaviour).
    Raises InputError naming the file and line for a line that does not parse or a class id
    outside 0..num_classes-1. All boxes come back with difficult=False (see read_ground_truth).
    """
    path = Path(path)
    if not path.exists():
        log.debug("%s: no label file, the image has no objects", path)
        return GroundTruth.empty()
    rows = [
        _parse_label_line(line.split(), num_classes, path, number)
        for number, line in enumerate(read_lines(path, "label file"), start=1)
        if line.strip()
    ]
    if not rows:
        return GroundTruth.empty()
    table = np.array(rows, dtype=np.float64)
    centers, sizes = table[:, 1:3], table[:, 3:5]
    scale = np.array([image_width, image_height, image_width, image_height], dtype=np.float64)
    boxes = np.hstack([centers - sizes / 2, centers + sizes / 2]) * scale
    classes = table[:, 0].astype(np.int64)
    return GroundTruth(boxes, classes, np.zeros(len(rows), dtype=bool))


def read_ground_truth(image_path: str | Path, num_classes: int, image_width: int,
                      image_height: int, difficult_image_path: str | Path | None = None
                      ) -> GroundTruth:
    """The objects of one image: its labels, plus (PASCAL VOC) the boxes of the label file
    of the matching `difficult` list entry, flagged difficult."""
    truth = read_labels(label_path(image_path), num_classes, image_width, image_height)
    if difficult_image_path is None:
        return truth
    hard = read_labels(label_path(difficult_image_path), num_classes, image_width, image_height)
    return GroundTruth(
        np.concatenate([truth.boxes, hard.boxes]),
        np.concatenate([truth.classes, hard.classes]),
        np.concatenate([truth.difficult, np.ones(len(hard.classes), dtype=bool)]),
    )
