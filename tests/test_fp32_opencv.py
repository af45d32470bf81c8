"""The FP32 engine against OpenCV's darknet importer, an independent implementation.

Bound: raw head outputs (darknet layout) agree within 1e-4 of the head's largest magnitude
(at least 1). Both engines compute in float32 with different summation orders and BN
folding, which gives differences around 1e-6 here; 1e-4 leaves room for deeper nets while
staying far below what any semantic difference produces (each test also checks the outputs
vary across cells by much more than the bound, so agreement is not agreement on a constant).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import yolo8
from yolo8.graph import load_graph
from yolo8.layers import Region
from yolo8.postprocess import decode_region, nms
from yolo8.preprocess import read_image, to_blob

from .conftest import ROOT
from .oracle import cfg_for_opencv, opencv_forward, opencv_rows_to_darknet, random_weights

RTOL = 1e-4
CFGS = sorted(p.name for p in (ROOT / "cfg").glob("*.cfg"))


def _assert_heads_match(model, ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    w, h = model.input_size
    assert len(ours) == len(theirs) == len(model.heads)
    for out, rows, head in zip(ours, theirs, model.heads):
        mine = out[0].astype(np.float64)
        if isinstance(head, Region):
            # OpenCV's region layer applies NMS (0.4) to the class probabilities inside the
            # layer; apply the same to ours before comparing.
            cands = decode_region(out[0].transpose(1, 2, 0), head, thresh=0.0)
            probs = nms(cands.boxes, cands.probs, 0.4)
            a = head.num_anchors
            v = mine.reshape(a, -1, *mine.shape[1:])
            obj = v[:, 4:5]
            kept = probs.reshape(mine.shape[1], mine.shape[2], a, -1).transpose(2, 3, 0, 1)
            v[:, 5:] = np.where(obj > 0, kept / obj, 0.0)
            mine = v.reshape(mine.shape)
        ref = opencv_rows_to_darknet(rows, head, out.shape[2], out.shape[3], w, h)
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(mine - ref).max())
        assert err <= RTOL * scale, f"layer {head.index}: max |diff| {err:.3g} > {RTOL} x {scale:.3g}"
        spread = float(ref.reshape(head.num_anchors, -1, *ref.shape[1:])[:, :5].std(axis=(2, 3)).mean())
        assert spread > 100 * RTOL * scale, "outputs barely vary: the comparison would prove little"


@pytest.fixture(scope="module")
def default_model(default_weights):
    return yolo8.load()


@pytest.fixture(scope="module")
def opencv_cfg(tmp_path_factory, default_cfg) -> Path:
    path = tmp_path_factory.mktemp("cv") / "yolov3-tiny.cfg"
    path.write_text(cfg_for_opencv(default_cfg.read_text()))
    return path


def test_default_model_raw_outputs_match_opencv(default_model, opencv_cfg, default_weights,
                                                 test_images):
    for image_path in test_images:
        blob = to_blob([read_image(image_path)], 416, 416).transpose(0, 3, 1, 2)
        _assert_heads_match(default_model, default_model.forward(blob),
                            opencv_forward(opencv_cfg, default_weights, blob))


def _opencv_detections(cfg: Path, weights: Path, image: np.ndarray, thresh: float, nms_thresh: float):
    """Detections by OpenCV alone: its decoded rows, its own per-class NMSBoxes."""
    h, w = image.shape[:2]
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False)
    rows = np.concatenate(opencv_forward(cfg, weights, blob))
    found = []
    for k in range(rows.shape[1] - 5):
        scores = rows[:, 5 + k]
        idx = np.flatnonzero(scores > thresh)
        if not len(idx):
            continue
        boxes = [[(rows[i, 0] - rows[i, 2] / 2) * w, (rows[i, 1] - rows[i, 3] / 2) * h,
                  rows[i, 2] * w, rows[i, 3] * h] for i in idx]
        keep = cv2.dnn.NMSBoxes(boxes, scores[idx].tolist(), thresh, nms_thresh)
        for j in np.asarray(keep).ravel():
            x, y, bw, bh = boxes[j]
            found.append((k, float(scores[idx[j]]), (x, y, x + bw, y + bh)))
    return found


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _clip(box, w, h):
    return (min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w),
            min(max(box[3], 0), h))


def test_default_model_detections_match_opencv(default_model, opencv_cfg, default_weights,
                                               test_images):
    """Same class, IoU >= 0.95 and score within 0.02, every detection both ways."""
    total = 0
    for image_path in test_images:
        image = read_image(image_path)
        h, w = image.shape[:2]
        # Both fed cv2.resize (OpenCV's blobFromImage): the engines are compared, not resizes.
        ours = [(d.class_id, d.score, d.box)
                for d in default_model.detect(image, thresh=0.1, resize="opencv")]
        theirs = [(k, s, _clip(b, w, h))
                  for k, s, b in _opencv_detections(opencv_cfg, default_weights, image, 0.1, 0.45)]

        def matched(a, pool):
            return any(a[0] == b[0] and abs(a[1] - b[1]) <= 0.02 and _iou(a[2], b[2]) >= 0.95
                       for b in pool)

        assert all(matched(d, theirs) for d in ours), f"{image_path.name}: ours not in OpenCV's"
        assert all(matched(d, ours) for d in theirs), f"{image_path.name}: OpenCV's not in ours"
        total += len(ours)
    assert total >= 10, "the photos should give a fair number of detections"


@pytest.mark.parametrize("name", CFGS)
def test_every_cfg_with_random_weights_matches_opencv(name, tmp_path, test_images):
    """Each shipped cfg at 224x224 (to keep CI fast), random weights written by the test."""
    cfg = tmp_path / name
    cfg.write_text(cfg_for_opencv((ROOT / "cfg" / name).read_text(), 224, 224))
    weights = tmp_path / "random.weights"
    random_weights(load_graph(cfg), weights)
    model = yolo8.load(cfg, weights)
    blob = to_blob([read_image(test_images[0])], 224, 224).transpose(0, 3, 1, 2)
    _assert_heads_match(model, model.forward(blob), opencv_forward(cfg, weights, blob))
