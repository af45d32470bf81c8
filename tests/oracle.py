"""OpenCV 4.x dnn as an independent FP32 implementation of darknet models.

OpenCV decodes [yolo]/[region] outputs itself: one row per (cell, anchor) with x, y, w, h
relative to the input, objectness, and objectness x class probability.
`opencv_rows_to_darknet` undoes that so both are compared in darknet's raw layout.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yolo8.layers import Region, Yolo
from yolo8.metrics import iou_matrix
from yolo8.postprocess import Candidates, nms, nms_rule, to_detections


def cfg_for_opencv(text: str, width: int | None = None, height: int | None = None) -> str:
    """A test copy of a cfg: OpenCV zeroes class probabilities below the [yolo]/[region] key
    `thresh` (default 0.2), so set it to 0; optionally change the input size."""
    text = re.sub(r"(?m)^\s*thresh\s*=.*$", "", text)
    text = re.sub(r"(?m)^\[(yolo|region)\]\s*$", lambda m: f"[{m.group(1)}]\nthresh=0\nnms_threshold=0", text)
    if width is not None:
        text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={width}", text)
    if height is not None:
        text = re.sub(r"(?m)^\s*height\s*=.*$", f"height={height}", text)
    return text


def opencv_forward(cfg: Path, weights: Path, blob_nchw: np.ndarray) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob_nchw)
    return list(net.forward(net.getUnconnectedOutLayersNames()))


def opencv_rows_to_darknet(rows: np.ndarray, head: Yolo | Region, h: int, w: int, net_w: int,
                           net_h: int) -> np.ndarray:
    """Undo OpenCV's decoding: rows (H*W*A, 5+C) -> darknet's (A*(5+C), H, W) head output
    (x, y, objectness and classes after their activation, w and h raw)."""
    a = head.num_anchors
    per = rows.shape[1]
    v = rows.astype(np.float64).reshape(h, w, a, per)
    rows_idx, cols_idx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(v)
    out[..., 0] = v[..., 0] * w - cols_idx[..., None]
    out[..., 1] = v[..., 1] * h - rows_idx[..., None]
    scale_w, scale_h = (net_w, net_h) if isinstance(head, Yolo) else (w, h)
    with np.errstate(divide="ignore"):
        out[..., 2] = np.log(v[..., 2] * scale_w / head.anchors[:, 0])
        out[..., 3] = np.log(v[..., 3] * scale_h / head.anchors[:, 1])
        out[..., 4] = v[..., 4]
        out[..., 5:] = np.where(v[..., 4:5] > 0, v[..., 5:] / v[..., 4:5], 0.0)
    return out.transpose(2, 3, 0, 1).reshape(a * per, h, w)


# Detections compared with OpenCV's (scripts/zoo_coverage.py and the zoo tests): same class,
# IoU >= 0.95, score within 0.02, both ways. Random weights make most boxes score alike, so the
# threshold is the score of OpenCV's TOP-th best candidate (at least 0.001), and a detection
# within BORDER of it may go unmatched (the other engine may have it just below; the engines'
# scores agree to ~1e-5). Both engines' candidates go through darknet's NMS (the cfg's
# nms_kind): the networks and their box decoding are compared, not two NMS implementations.
# OpenCV's [region] layer applies NMS 0.4 itself, so region cfgs are compared at 0.4.
# Random weights also give many overlapping boxes whose scores differ by less than the engines'
# float32 rounding (~1e-6): NMS may then keep either. An unmatched detection is a near-tie
# swap, not a disagreement, when the other engine kept an overlapping (IoU > TIE_IOU) box of
# the same class whose score is within TIE of it; swaps are counted and reported.
MIN_THRESH, TOP, NMS, REGION_NMS, IOU, SCORE, BORDER = 0.001, 300, 0.45, 0.4, 0.95, 0.02, 1e-4
TIE, TIE_IOU = 1e-5, 0.3


@dataclass
class Agreement:
    ours: int      # detections found by yolo8
    theirs: int    # by OpenCV
    extra: int     # of ours without a partner in OpenCV's (away from the threshold)
    missing: int   # of OpenCV's without a partner in ours
    thresh: float
    ties: int = 0  # unmatched detections explained by a near-tie in NMS (both ways)

    @property
    def equal(self) -> bool:
        return self.extra == 0 and self.missing == 0


def comparison_input(photo: Path, width: int, height: int) -> np.ndarray:
    """The photo as a network input (NHWC), with seeded noise added: on uniform areas of a
    photo random weights give several cells exactly the same score, and NMS then keeps
    whichever comes first (darknet's qsort leaves that order unspecified), so two correct
    engines could differ there."""
    from yolo8.preprocess import read_image, to_blob

    blob = to_blob([read_image(photo)], width, height)
    noise = np.random.default_rng(0).uniform(0, 0.2, blob.shape).astype(np.float32)
    return np.clip(blob * 0.8 + noise, 0, 1)


def compare_with_opencv(model, cfg: Path, weights: Path, blob_nhwc: np.ndarray) -> Agreement:
    """yolo8's and OpenCV's detections on one prepared image (boxes in network pixels)."""
    rows = opencv_rows(cfg, weights, blob_nhwc)
    thresh = threshold_for(rows)
    nms_thresh = REGION_NMS if any(isinstance(h, Region) for h in model.heads) else NMS
    ours = yolo8_detections(model, blob_nhwc, thresh, nms_thresh)
    theirs = opencv_detections(rows, model.heads, blob_nhwc.shape[2], blob_nhwc.shape[1], thresh,
                               nms_thresh)
    extra, extra_ties = unmatched(ours, theirs, thresh)
    missing, missing_ties = unmatched(theirs, ours, thresh)
    return Agreement(len(ours), len(theirs), extra, missing, thresh, extra_ties + missing_ties)


def has_partner(det, pool: list, iou: float = IOU, score: float = SCORE) -> bool:
    """Whether `pool` holds a partner of the detection `det`: same class, IoU >= iou, score
    within `score` (the agreement rule of compare_with_opencv, without its threshold border
    and near-tie allowances)."""
    boxes = [e.box for e in pool
             if e.class_id == det.class_id and abs(det.score - e.score) <= score]
    return bool(boxes) and bool((iou_matrix(np.array([det.box]), np.array(boxes)) >= iou).any())


def compare_detections(ours, theirs, images: list[Path], thresh: float) -> dict:
    """Two models' detections at `thresh` on the images, counted both ways: how many boxes, how
    many of them have a partner on the other side (has_partner), and the fraction."""
    from yolo8.preprocess import read_image

    boxes = agreed = 0
    for path in images:
        image = read_image(path)
        a, b = ours.detect(image, thresh), theirs.detect(image, thresh)
        boxes += len(a) + len(b)
        agreed += sum(has_partner(d, b) for d in a) + sum(has_partner(d, a) for d in b)
    return {"boxes": boxes, "agreed": agreed, "fraction": agreed / boxes if boxes else 1.0}


def unmatched(ours: list, theirs: list, thresh: float) -> tuple[int, int]:
    """(detections of `ours` with no partner in `theirs` (same class, IoU, score), those near
    the threshold and near-tie swaps aside; the near-tie swaps)."""
    count = ties = 0
    ours = [d for d in ours if d.score > thresh + BORDER]
    for k in {d.class_id for d in ours}:
        mine = [d for d in ours if d.class_id == k]
        other = [d for d in theirs if d.class_id == k]
        if not other:
            count += len(mine)
            continue
        iou = iou_matrix(np.array([d.box for d in mine]), np.array([d.box for d in other]))
        gap = np.abs(np.array([d.score for d in mine])[:, None]
                     - np.array([d.score for d in other])[None, :])
        lone = ~((iou >= IOU) & (gap <= SCORE)).any(axis=1)
        tie = ((iou > TIE_IOU) & (gap <= TIE)).any(axis=1)
        count += int((lone & ~tie).sum())
        ties += int((lone & tie).sum())
    return count, ties


def yolo8_detections(model, blob_nhwc: np.ndarray, thresh: float, nms_thresh: float) -> list:
    """yolo8's detections on the blob, boxes in network pixels (no letterbox correction)."""
    w, h = model.input_size
    return model.detect_prepared(blob_nhwc, [(w, h)], thresh, nms_thresh, letterbox=False)[0]


def opencv_rows(cfg: Path, weights: Path, blob_nhwc: np.ndarray) -> np.ndarray:
    """OpenCV's decoded rows: x, y, w, h relative, objectness, objectness x class prob."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob_nhwc.transpose(0, 3, 1, 2))
    return np.concatenate([o.reshape(-1, o.shape[-1]) for o in
                           net.forward(net.getUnconnectedOutLayersNames())]).astype(np.float64)


def threshold_for(rows: np.ndarray) -> float:
    scores = np.sort(rows[:, 5:].ravel())[::-1]
    return max(MIN_THRESH, float(scores[min(TOP, len(scores) - 1)]))


def opencv_detections(rows: np.ndarray, heads: list, width: int, height: int, thresh: float,
                      nms_thresh: float) -> list:
    """OpenCV's rows through darknet's NMS."""
    probs = rows[:, 5:].copy()
    probs[probs <= thresh] = 0.0
    alive = (probs > 0).any(axis=1)
    boxes, probs = rows[alive, :4], probs[alive]
    probs = nms(boxes, probs, nms_thresh, nms_rule(heads))
    return to_detections(Candidates(boxes, probs), width, height, thresh, [])


# darknet .weights header of format 0.2 (major, minor, revision, 8-byte `seen`): 20 bytes
WEIGHTS_HEADER = np.array([0, 2, 0], dtype="<i4").tobytes() + np.zeros(1, dtype="<i8").tobytes()


def _connected_floats(layer, rng) -> np.ndarray:
    """darknet's order: biases, weights (outputs x inputs), then scales, mean, variance."""
    n, k = layer.outputs, layer.in_shape.size
    chunks = [rng.normal(0, 0.1, n), rng.normal(0, 1.0, n * k) / np.sqrt(k)]
    if layer.batch_normalize:
        chunks += [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
    return np.concatenate(chunks)


def random_weights(graph, path: Path, seed: int = 0) -> None:
    """A darknet .weights file for `graph`, its layers' floats in darknet's order (conv and
    connected layers, weighted shortcuts: load_weights_upto), with values that keep activations
    in a sane range: unit-gain convolutions, and small ones into each residual sum so deep nets
    do not explode."""
    from yolo8.layers import Connected, Shortcut

    rng = np.random.default_rng(seed)
    parts = [WEIGHTS_HEADER]
    for layer in graph.weighted_layers():  # share_index layers read nothing
        if isinstance(layer, Connected):
            parts.append(_connected_floats(layer, rng).astype("<f4").tobytes())
            continue
        if isinstance(layer, Shortcut):
            parts.append(rng.uniform(0.2, 1.2, layer.weight_floats()).astype("<f4").tobytes())
            continue
        n = layer.filters
        fan_in = layer.size * layer.size * layer.in_shape.c // layer.groups
        following = graph.layers[layer.index + 1] if layer.index + 1 < len(graph.layers) else None
        gain = 0.1 if isinstance(following, Shortcut) else 1.0
        chunks = [rng.normal(0, 0.1, n)]
        if layer.batch_normalize:
            chunks += [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
        chunks.append(rng.normal(0, 1.0, n * fan_in) * np.sqrt(gain / fan_in))
        parts.append(np.concatenate(chunks).astype("<f4").tobytes())
    path.write_bytes(b"".join(parts))


def _spatial_softmax(graph):
    """The [softmax] over an input larger than 1x1, if any (see opencv_last_output)."""
    from yolo8.layers import Softmax

    return next((layer for layer in graph.layers if isinstance(layer, Softmax)
                 and graph.layers[layer.inputs[0]].out_shape[1:] != (1, 1)), None)


def opencv_last_output(cfg: Path, weights: Path, blob_nchw: np.ndarray, graph) -> np.ndarray:
    """OpenCV's output of a classifier (its last layer), (N, values). OpenCV 4.x does not run
    darknet's [crop] as darknet does at test time, so for a cfg with one the network is read
    without it and given the centre crop mapped to x * scale + shift (darknet's
    forward_crop_layer with train = 0) instead. OpenCV's [softmax] normalises over the channels
    of each pixel, darknet's over the whole C*H*W input: where that input is more than 1x1
    (go.test.cfg, 1x19x19), OpenCV runs without the [softmax] (to the logits) and darknet's
    softmax (tests/darknet_reference.py, groups=1, temperature 1) is applied to its output."""
    from yolo8.layers import Crop

    from . import darknet_reference as ref

    crops = [layer for layer in graph.layers if isinstance(layer, Crop)]
    softmax = _spatial_softmax(graph)
    with tempfile.TemporaryDirectory() as scratch:
        text = cfg.read_text()
        if softmax is not None:
            assert softmax.groups == 1 and softmax.temperature == 1
            text = re.sub(r"(?ms)^\[softmax\]\s*$.*?(?=^\[|\Z)", "", text, count=1)
        if crops:
            crop = crops[0]
            text = re.sub(r"(?ms)^\[crop\]\s*$.*?(?=^\[)", "", text, count=1)
            h, w = crop.out_shape.h, crop.out_shape.w
            inside = blob_nchw[:, :, crop.top:crop.top + h, crop.left:crop.left + w]
            blob_nchw = np.ascontiguousarray(inside * np.float32(crop.scale) + np.float32(crop.shift))
        cfg = Path(scratch) / f"{cfg.stem}-for-opencv.cfg"
        cfg.write_text(text)
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    # One image at a time: OpenCV 4.14's [scale_channels] fails on batches of 2 or more
    # (efficientnet_b0: a shape assertion in shape_utils.hpp).
    outputs = []
    for image in blob_nchw:
        net.setInput(image[None])
        out = net.forward().reshape(-1).astype(np.float32)
        if softmax is not None:
            ref.softmax(out, 0, out.size)
        outputs.append(out)
    return np.stack(outputs)
