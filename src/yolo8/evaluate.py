"""`yolo8 map`: a model's accuracy on a darknet data set (.data file)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .api import Model, load
from .data import (GroundTruth, ImageDetections, image_paths, read_data_file, read_ground_truth,
                   read_image_list)
from .detect import coco_result
from .errors import InputError, Yolo8Error
from .files import atomic_write_bytes
from .metrics import ImageMatch, MapResult, evaluate_matches, match_image
from .pipeline import Item, batched, load_images
from .postprocess import Detection
from .progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class MapOptions:
    data: Path
    cfg: Path | None = None
    weights: Path | None = None
    backend: str = "fp32"
    calibration: Path | None = None
    thresh: float = 0.005        # darknet's `detector map` default
    iou_thresh: float = 0.5
    thresh_report: float = 0.25
    nms: float = 0.45
    letterbox: bool | None = None
    resize: str = "darknet"      # darknet's resize_image, or "opencv" (cv2.resize)
    json_path: Path | None = None
    save_detections: Path | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    batch: int = 4
    skipped: list[str] = field(default_factory=list)  # filled by run_map: images left out
    cluster: dict | None = None  # filled by a run on a Ray cluster: who did the work


def _as_arrays(dets: list[Detection]) -> ImageDetections:
    if not dets:
        return ImageDetections.empty()
    return ImageDetections(np.array([d.box for d in dets], dtype=np.float64),
                           np.array([d.class_id for d in dets], dtype=np.int64),
                           np.array([d.score for d in dets], dtype=np.float64))


@dataclass
class _Collected:
    """What a run gathers: each image's share of the metrics (`metrics.match_image`, in
    data-set order), the detections as COCO results, the images left out."""
    matches: list[ImageMatch] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _skip(out: _Collected, error: Yolo8Error) -> None:
    """An image left out of the metrics (unreadable image or label file), named at once."""
    log.warning("skipped: %s", error)
    out.skipped.append(str(error))


def _with_truths(batch: list[Item], difficult: list[Path] | None, classes: int, out: _Collected
                 ) -> list[tuple[Item, GroundTruth]]:
    """The batch's images whose ground truth reads; the others are skipped (a metric over
    silently truncated labels could not be trusted, so a bad label file drops its image)."""
    kept = []
    for item in batch:
        height, width = item.image.shape[:2]
        hard = difficult[item.index] if difficult is not None else None
        try:
            kept.append((item, read_ground_truth(item.path, classes, width, height, hard)))
        except InputError as exc:
            _skip(out, exc)
    return kept


def _run(model: Model, images: list[Path], difficult: list[Path] | None, classes: int,
         opts: MapOptions, preprocessing: tuple[bool, str]) -> _Collected:
    """Every image's results; `preprocessing`: (letterbox, resize) as run_map resolved them."""
    letterbox, resize = preprocessing
    out = _Collected()
    items = load_images(images, prepare=model.preparer(letterbox, resize))
    with progress_bar(len(images), "map", opts.progress) as bar:
        for batch in batched(items, opts.batch):
            if batch[0].error is not None:
                _skip(out, batch[0].error)
                bar.update(1)
                continue
            kept = _with_truths(batch, difficult, classes, out)
            if kept:
                blob = np.stack([item.prepared for item, _ in kept])
                sizes = [(item.image.shape[1], item.image.shape[0]) for item, _ in kept]
                found = model.detect_prepared(blob, sizes, opts.thresh, opts.nms, letterbox)
                for (item, truth), size, dets in zip(kept, sizes, found):
                    out.matches.append(match_image(truth, _as_arrays(dets), size, classes,
                                                   opts.iou_thresh))
                    out.results.extend(coco_result(d, str(item.path)) for d in dets)
            bar.update(len(batch))
    return out


def run_map(opts: MapOptions, model: Model | None = None,
            collect: Callable[..., _Collected] | None = None) -> MapResult:
    """The metrics of opts' model (or of `model`, already loaded) on opts.data; `collect`
    gathers the images' results instead of `_run` (same signature; e.g. on a Ray cluster)."""
    config = read_data_file(opts.data)
    images = image_paths(read_image_list(config.valid))
    difficult = (image_paths(read_image_list(config.difficult)) if config.difficult is not None
                 else None)
    if difficult is not None and len(difficult) != len(images):
        raise InputError(f"the difficult list has {len(difficult)} images but valid= has "
                         f"{len(images)}: they must be parallel, line by line", path=config.difficult)
    if model is None:
        model = load(opts.cfg, opts.weights, opts.backend, opts.calibration, config.names,
                     resize=opts.resize)
    letterbox, resize = model.preprocessing(opts.letterbox)  # checked against calibration
    model.require(detector=True, message="has no [yolo] or [region] layer: map measures detectors")
    if model.heads[0].detected_classes != config.classes:
        raise InputError(f"classes={config.classes}, but the model detects "
                         f"{model.heads[0].detected_classes} classes", path=config.path,
                         key="classes")
    got = (collect or _run)(model, images, difficult, config.classes, opts, (letterbox, resize))
    opts.skipped[:] = got.skipped
    if not got.matches:
        raise InputError(f"none of the {len(images)} images listed could be read (with their "
                         f"labels); first: {got.skipped[0]}", path=config.valid)
    if got.skipped:
        log.warning("%d of %d images could not be read (named above) and are left out of the "
                    "metrics", len(got.skipped), len(images))
    result = evaluate_matches(got.matches, config.classes, opts.iou_thresh, opts.thresh_report,
                              model.names[:config.classes])
    if opts.json_path is not None:
        payload = result.to_json()
        payload.update(backend=opts.backend, model=model.model_id, skipped_images=len(got.skipped),
                       letterbox=letterbox, resize=resize)
        if opts.cluster is not None:
            payload["cluster"] = opts.cluster
        _write_json(opts.json_path, payload)
    if opts.save_detections is not None:
        _write_json(opts.save_detections, got.results)
    return result


def _write_json(path: Path, payload) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1).encode())
