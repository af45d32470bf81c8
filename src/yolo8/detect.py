"""`yolo8 detect`: run a model over inputs, print, draw, and write JSON."""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from .api import load
from .draw import draw_detections
from .errors import InputError
from .postprocess import Detection
from .preprocess import read_image

log = logging.getLogger(__name__)


@dataclass
class DetectOptions:
    inputs: list[str]
    cfg: Path | None = None
    weights: Path | None = None
    names: Path | None = None
    backend: str = "fp32"
    calibration: Path | None = None
    thresh: float = 0.25
    nms: float = 0.45
    letterbox: bool | None = None
    json_path: Path | None = None
    save_dir: Path | None = Path("predictions")
    failures: list[str] = field(default_factory=list)


def coco_result(det: Detection, path: str, frame: int | None = None) -> dict:
    """One entry of the COCO-results style JSON (category_id is darknet's 0-based class)."""
    entry = {"image_id": Path(path).stem, "file": str(path), "category_id": det.class_id,
             "name": det.name, "bbox": [round(v, 3) for v in det.xywh], "score": round(det.score, 6)}
    if frame is not None:
        entry["frame"] = frame
    return entry


def format_detection(path: str, det: Detection) -> str:
    left, top, right, bottom = (int(round(v)) for v in det.box)
    return f"{path}: {det.name} {det.score:.2f} box={left},{top},{right},{bottom}"


def _save_path(save_dir: Path, source: Path) -> Path:
    target = save_dir / source.name
    if target.resolve() == source.resolve():  # never overwrite the input
        target = save_dir / f"{source.stem}.pred{source.suffix}"
    return target


def _write_image(path: Path, image) -> None:
    ok, data = cv2.imencode(path.suffix if path.suffix else ".jpg", image)
    if not ok:
        ok, data = cv2.imencode(".png", image)
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(path)


def run_detect(opts: DetectOptions) -> list[str]:
    """Returns the inputs that failed (reported on stderr as they happen)."""
    if not opts.inputs:
        raise InputError("no input given: name one or more images")
    model = load(opts.cfg, opts.weights, opts.backend, opts.calibration, opts.names)
    results = []
    for name in opts.inputs:
        try:
            image = read_image(name)
        except InputError as exc:
            print(f"yolo8: skipped: {exc}", file=sys.stderr)
            opts.failures.append(name)
            continue
        dets = model.detect(image, opts.thresh, opts.nms, opts.letterbox)
        for det in dets:
            print(format_detection(name, det))
            results.append(coco_result(det, name))
        if opts.save_dir is not None:
            _write_image(_save_path(opts.save_dir, Path(name)), draw_detections(image, dets))
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(results, indent=1))
    return opts.failures
