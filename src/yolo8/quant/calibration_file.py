"""The calibration file (JSON).

A calibration is tied to one model by an opaque `model_id` the caller computes (e.g. a
hash of the cfg and weights); loading it for another model is refused, since thresholds
measured on one network are meaningless for another.

File layout (UTF-8 JSON):
    {"format": "yolo8-calibration", "version": 1, "model_id": "...", "method": "kl",
     "num_images": 500, "bins": 2048, "created_by": "yolo8 0.1.0", "notes": null,
     "preprocessing": {"letterbox": false, "resize": "darknet"},  # version 2 on
     "thresholds": {"1": 4.25, "2": 11.5, ...},       # layer index -> threshold of |x|
     "bias_corrections": {"2": [0.01, -0.003, ...]}}   # optional: layer -> per-channel shift
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from .. import __version__
from ..errors import CalibrationError

FORMAT_TAG = "yolo8-calibration"
FORMAT_VERSION = 2
# Version 1 files did not record their preprocessing; yolo8 then had OpenCV's resize only.
_V1_RESIZE = "opencv"
RESIZE_MODES = ("darknet", "opencv")

_REQUIRED = ("format", "version", "model_id", "thresholds", "method", "num_images", "bins",
             "created_by")


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Per-layer clipping thresholds of |x| for the INT8 layers of one model.

    thresholds: layer index -> threshold (> 0, finite); the INT8 input of that layer is
    round(x * 127 / threshold) clipped to [-127, 127].
    bias_corrections: layer index -> per-output-channel mean error of that layer's INT8
    pre-activation on the calibration images (INT8 minus FP32, same FP32 input); the INT8
    backend subtracts it from the layer's bias (empirical bias correction).
    letterbox, resize: the preprocessing the images had (activation ranges depend on it);
    None where it was not recorded (version-1 files: letterbox; resize was OpenCV's then).
    """

    model_id: str
    thresholds: Mapping[int, float]
    num_images: int
    method: str = "kl"
    bins: int = 2048
    created_by: str = field(default_factory=lambda: f"yolo8 {__version__}")
    notes: str | None = None
    bias_corrections: Mapping[int, Sequence[float]] = field(default_factory=dict)
    letterbox: bool | None = None
    resize: str | None = None

    def __post_init__(self) -> None:
        problem = (_problem_with_fields(self.model_id, self.method, self.num_images, self.bins,
                                        self.created_by, self.notes)
                   or _problem_with_preprocessing(self.letterbox, self.resize))
        if problem:
            raise ValueError(problem)
        if not self.thresholds:
            raise ValueError("thresholds is empty")
        clean: dict[int, float] = {}
        for key, value in self.thresholds.items():
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise ValueError(f"layer index {key!r} is not an int >= 0")
            problem = _problem_with_threshold(value)
            if problem:
                raise ValueError(f"layer {key}: threshold {problem}")
            clean[key] = float(value)
        object.__setattr__(self, "thresholds", dict(sorted(clean.items())))
        corrections = {}
        for key, values in self.bias_corrections.items():
            problem = _problem_with_correction(key, values)
            if problem:
                raise ValueError(problem)
            corrections[key] = tuple(float(v) for v in values)
        object.__setattr__(self, "bias_corrections", dict(sorted(corrections.items())))

    # -- file ---------------------------------------------------------------------------
    def to_json(self) -> str:
        document = {
            "format": FORMAT_TAG,
            "version": FORMAT_VERSION,
            "model_id": self.model_id,
            "method": self.method,
            "num_images": self.num_images,
            "bins": self.bins,
            "created_by": self.created_by,
            "notes": self.notes,
            # JSON keys are strings; floats are written in the shortest form that reads
            # back to the same double.
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
        }
        if self.letterbox is not None and self.resize is not None:
            document["preprocessing"] = {"letterbox": self.letterbox, "resize": self.resize}
        if self.bias_corrections:
            document["bias_corrections"] = {str(k): list(v) for k, v in self.bias_corrections.items()}
        return json.dumps(document, indent=2, allow_nan=False) + "\n"

    def save(self, path: str | PathLike) -> None:
        """Write the file atomically (a reader never sees half a file)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".calibration-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.to_json())
            os.replace(temp, path)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise

    @classmethod
    def load(cls, path: str | PathLike) -> Calibration:
        """Read a file written by `save`; any problem is a CalibrationError naming it."""
        try:
            with open(path, encoding="utf-8") as src:
                text = src.read()
        except FileNotFoundError:
            raise CalibrationError("calibration file not found", path=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"cannot read the calibration file: {exc}", path=path) from None
        return cls.from_json(text, path=path)

    @classmethod
    def from_json(cls, text: str, path: str | PathLike | None = None) -> Calibration:
        def fail(message: str, key: str | None = None) -> CalibrationError:
            return CalibrationError(message, path=path, key=key)

        try:
            document = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"not valid JSON ({exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}); the file is damaged", path=path,
                                   line=exc.lineno) from None
        except ValueError as exc:  # NaN / Infinity
            raise fail(str(exc)) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT_TAG:
            raise fail(f"not a yolo8 calibration file (expected \"format\": \"{FORMAT_TAG}\")")
        version = document.get("version")
        if not _is_int(version):
            raise fail("must be an integer", key="version")
        if version > FORMAT_VERSION:
            raise fail(f"format version {version} is newer than this yolo8 reads "
                       f"({FORMAT_VERSION}); upgrade yolo8 or calibrate again", key="version")
        if version < 1:
            raise fail(f"unknown format version {version}", key="version")
        missing = [k for k in _REQUIRED if k not in document]
        if missing:
            raise fail(f"missing field(s): {', '.join(missing)}")
        notes = document.get("notes")
        problem = _problem_with_fields(document["model_id"], document["method"],
                                       document["num_images"], document["bins"],
                                       document["created_by"], notes)
        if problem:
            raise fail(problem)
        thresholds = _parse_thresholds(document["thresholds"], fail)
        corrections = _parse_corrections(document.get("bias_corrections", {}), fail)
        letterbox, resize = _parse_preprocessing(document, version, fail)
        return cls(model_id=document["model_id"], thresholds=thresholds,
                   num_images=document["num_images"], method=document["method"],
                   bins=document["bins"], created_by=document["created_by"], notes=notes,
                   bias_corrections=corrections, letterbox=letterbox, resize=resize)

    # -- model check ----------------------------------------------------------------------
    def check_model(self, model_id: str, path: str | PathLike | None = None) -> None:
        """Raise CalibrationError unless this calibration was made for `model_id`.

        `path` is the calibration file, to name it in the message.
        """
        if model_id == self.model_id:
            return
        theirs, ours = _brief_pair(self.model_id, model_id)
        raise CalibrationError(
            f"made for another model (calibration {theirs}, this model {ours}); "
            "run `yolo8 calibrate` for this model", path=path)


    def check_preprocessing(self, letterbox: bool, resize: str,
                            path: str | PathLike | None = None) -> None:
        """Raise CalibrationError unless images are prepared as they were for this calibration
        (thresholds measured on one input distribution misfit another)."""
        made = {"letterbox": self.letterbox, "resize": self.resize}
        asked = {"letterbox": letterbox, "resize": resize}
        differ = [k for k, v in made.items() if v is not None and v != asked[k]]
        if not differ:
            return
        show = lambda d: ", ".join(f"{k}={_option(k, d[k])}" for k in differ)  # noqa: E731
        raise CalibrationError(
            f"made with {show(made)} but this run uses {show(asked)}; use the calibration's "
            f"preprocessing or run `yolo8 calibrate` with yours", path=path, key="preprocessing")


def _option(key: str, value: object) -> str:
    if key == "letterbox":
        return "on" if value else "off"
    return str(value)


# -- helpers ----------------------------------------------------------------------------------
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a calibration file")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem_with_threshold(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if not math.isfinite(value) or value <= 0:
        return f"{value!r} must be finite and > 0"
    return None


def _problem_with_fields(model_id: Any, method: Any, num_images: Any, bins: Any,
                         created_by: Any, notes: Any) -> str | None:
    if not isinstance(model_id, str) or not model_id:
        return "'model_id' must be a non-empty string"
    if not isinstance(method, str) or not method:
        return "'method' must be a non-empty string"
    if not _is_int(num_images) or num_images < 1:
        return f"'num_images' must be an integer >= 1, got {num_images!r}"
    if not _is_int(bins) or bins < 1:
        return f"'bins' must be an integer >= 1, got {bins!r}"
    if not isinstance(created_by, str):
        return "'created_by' must be a string"
    if notes is not None and not isinstance(notes, str):
        return "'notes' must be a string or null"
    return None


def _problem_with_preprocessing(letterbox: Any, resize: Any) -> str | None:
    if letterbox is not None and not isinstance(letterbox, bool):
        return f"'letterbox' must be true or false, got {letterbox!r}"
    if resize is not None and resize not in RESIZE_MODES:
        return f"'resize' must be one of {', '.join(RESIZE_MODES)}, got {resize!r}"
    return None


def _parse_preprocessing(document: dict, version: int, fail: Callable[..., CalibrationError]
                         ) -> tuple[bool | None, str | None]:
    """(letterbox, resize) as recorded; not recorded: (None, None), except that version-1 files
    were all made with OpenCV's resize."""
    if "preprocessing" not in document:
        return None, _V1_RESIZE if version == 1 else None
    raw = document["preprocessing"]
    if not isinstance(raw, dict) or set(raw) != {"letterbox", "resize"}:
        raise fail("must be {\"letterbox\": true|false, \"resize\": \"darknet\"|\"opencv\"}",
                   key="preprocessing")
    problem = _problem_with_preprocessing(raw["letterbox"], raw["resize"])
    if problem:
        raise fail(problem, key="preprocessing")
    return raw["letterbox"], raw["resize"]


def _parse_thresholds(raw: Any, fail: Callable[..., CalibrationError]) -> dict[int, float]:
    if not isinstance(raw, dict) or not raw:
        raise fail("must map layer indices to thresholds and not be empty", key="thresholds")
    thresholds: dict[int, float] = {}
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit() and str(int(key)) == key):
            raise fail(f"layer index {key!r} is not a non-negative integer", key="thresholds")
        problem = _problem_with_threshold(value)
        if problem:
            raise fail(f"layer {key}: threshold {problem}", key="thresholds")
        thresholds[int(key)] = float(value)
    return thresholds


def _problem_with_correction(key: Any, values: Any) -> str | None:
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        return f"bias correction layer index {key!r} is not an int >= 0"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        return f"layer {key}: bias corrections must be a non-empty list of numbers"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"layer {key}: bias correction {v!r} is not a finite number"
    return None


def _parse_corrections(raw: Any, fail: Callable[..., CalibrationError]) -> dict[int, list[float]]:
    if not isinstance(raw, dict):
        raise fail("must map layer indices to lists of numbers", key="bias_corrections")
    corrections: dict[int, list[float]] = {}
    for key, values in raw.items():
        if not (key.isascii() and key.isdigit() and str(int(key)) == key):
            raise fail(f"layer index {key!r} is not a non-negative integer", key="bias_corrections")
        problem = _problem_with_correction(int(key), values)
        if problem:
            raise fail(problem, key="bias_corrections")
        corrections[int(key)] = [float(v) for v in values]
    return corrections


def _brief_pair(a: str, b: str, width: int = 12) -> tuple[str, str]:
    """Both ids cut short, but long enough to show where they differ."""
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    keep = max(width, common + 4)

    def cut(s: str) -> str:
        return repr(s) if len(s) <= keep + 1 else repr(s[:keep]) + "…"

    return cut(a), cut(b)
