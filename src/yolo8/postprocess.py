"""From head outputs to detections, as darknet's `detector test` does it.

Decoding follows get_yolo_detections / get_region_detections, boxes are corrected for the
image (and letterbox) as in correct_yolo_boxes, NMS is do_nms_sort (per class, greedy, by
score) or, for AlexeyAB's `nms_kind=greedynms/diounms`, the same with DIoU in place of IoU
(diounms_sort), and a box is reported once for every class above the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .darknet.wordtree import WordTree
from .jit import CACHE
from .layers import GaussianYolo, Region, Yolo
from .preprocess import letterbox_geometry


@dataclass(frozen=True)
class Detection:
    class_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]  # left, top, right, bottom in image pixels

    @property
    def xywh(self) -> list[float]:
        left, top, right, bottom = self.box
        return [left, top, right - left, bottom - top]


@dataclass
class Candidates:
    """Boxes of one image before NMS: centre format, relative to the image."""

    boxes: np.ndarray  # (D, 4) x, y, w, h
    probs: np.ndarray  # (D, classes) objectness x class probability, 0 where <= thresh

    @classmethod
    def empty(cls, classes: int) -> "Candidates":
        return cls(np.zeros((0, 4)), np.zeros((0, classes)))


def _grid(h: int, w: int, a: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (np.broadcast_to(cols[..., None], (h, w, a)).astype(np.float64),
            np.broadcast_to(rows[..., None], (h, w, a)).astype(np.float64))


def decode_yolo(out: np.ndarray, layer: Yolo, net_w: int, net_h: int, thresh: float) -> Candidates:
    """One image's [yolo] output (H, W, A*(5+C)), activations applied, to candidates."""
    h, w, _ = out.shape
    a, per = layer.num_anchors, 5 + layer.classes
    v = out.reshape(h, w, a, per)
    keep = v[..., 4] > thresh  # darknet skips boxes whose objectness is not above thresh
    if not keep.any():
        return Candidates.empty(layer.detected_classes)
    cols, rows = _grid(h, w, a)
    anchors = np.broadcast_to(layer.anchors, (h, w, a, 2))
    sel = v[keep].astype(np.float64)
    # get_yolo_box: exp(t) * anchor, or with new_coords t * t * 4 * anchor
    size = sel[:, 2:4] * sel[:, 2:4] * 4 if layer.new_coords else np.exp(sel[:, 2:4])
    boxes = np.stack([(cols[keep] + sel[:, 0]) / w,
                      (rows[keep] + sel[:, 1]) / h,
                      size[:, 0] * anchors[keep][:, 0] / net_w,
                      size[:, 1] * anchors[keep][:, 1] / net_h], axis=1)
    probs = (v[keep][:, 4:5] * v[keep][:, 5:]).astype(np.float64)  # float32 product, as darknet
    probs[probs <= thresh] = 0.0
    return Candidates(boxes, probs)


def decode_gaussian_yolo(out: np.ndarray, layer: GaussianYolo, net_w: int, net_h: int,
                         thresh: float) -> Candidates:
    """get_gaussian_yolo_detections: x, y, w, h at entries 0, 2, 4, 6 (their uncertainties at
    1, 3, 5, 7), objectness at 8; a class's score is objectness x class x (1 - the mean
    uncertainty), the box's centre moved by half its size for yolo_point corners."""
    h, w, _ = out.shape
    a = layer.num_anchors
    v = out.reshape(h, w, a, GaussianYolo.ENTRIES + layer.classes)
    keep = v[..., 8] > thresh
    if not keep.any():
        return Candidates.empty(layer.detected_classes)
    cols, rows = _grid(h, w, a)
    anchors = np.broadcast_to(layer.anchors, (h, w, a, 2))[keep]
    sel = v[keep]
    bw = np.exp(sel[:, 4].astype(np.float64)) * anchors[:, 0] / net_w
    bh = np.exp(sel[:, 6].astype(np.float64)) * anchors[:, 1] / net_h
    boxes = np.stack([(cols[keep] + sel[:, 0]) / w + layer.point_shift * bw,
                      (rows[keep] + sel[:, 2]) / h + layer.point_shift * bh, bw, bh], axis=1)
    # darknet: float uc_aver, (1.0 - uc_aver) in double, the product stored as float
    uncertainty = (sel[:, 1] + sel[:, 3] + sel[:, 5] + sel[:, 7]) / np.float32(4.0)
    confidence = (sel[:, 8:9] * sel[:, 9:]).astype(np.float64) * (1.0 - uncertainty[:, None])
    probs = confidence.astype(np.float32).astype(np.float64)
    probs[probs <= thresh] = 0.0
    return Candidates(boxes, probs)


# darknet's `-hier` default: how sure a WordTree walk must stay to go one level deeper
HIER_THRESH = 0.5


def hierarchy_predictions(classes: np.ndarray, tree: WordTree) -> np.ndarray:
    """darknet's hierarchy_predictions on rows of tree-softmaxed class values: each node times
    its parent's value, in node order (see WordTree.levels for a parent listed later)."""
    out = classes.copy()
    for depth, (nodes, parents) in enumerate(tree.levels):
        factor = out if depth else classes
        has_parent = parents >= 0
        out[:, nodes[has_parent]] = classes[:, nodes[has_parent]] * factor[:, parents[has_parent]]
    return out


def hierarchy_top_prediction(pred: np.ndarray, tree: WordTree, thresh: float) -> int:
    """darknet's hierarchy_top_prediction on one box's path probabilities: from the root group
    down, the best sibling while the running product (of already multiplied values, as darknet
    does) stays above thresh; where it stops, the parent of that group."""
    p, group = np.float32(1.0), 0
    for _ in range(len(tree.group_size)):  # darknet loops forever on a cyclic tree
        vals = pred[tree.group_offset[group]:tree.group_offset[group] + tree.group_size[group]]
        best = int(np.argmax(vals)) if len(vals) else 0
        top = vals[best] if len(vals) and vals[best] > 0 else np.float32(0.0)
        top_i = int(tree.group_offset[group]) + best if top > 0 else 0  # darknet's max_i = 0 start
        if p * top > np.float32(thresh):
            p, group = p * top, int(tree.child[top_i])
            if group < 0:
                return top_i
        elif group == 0:
            return top_i
        else:
            return int(tree.parent[tree.group_offset[group]])
    return 0


def _flat_probs(scale: np.ndarray, classes: np.ndarray, layer: Region, thresh: float) -> np.ndarray:
    probs = (scale[:, None] * classes).astype(np.float64)  # float32 product, as darknet
    probs[probs <= thresh] = 0.0
    return probs


def _mapped_probs(scale: np.ndarray, classes: np.ndarray, layer: Region, thresh: float
                  ) -> np.ndarray:
    """With a tree and a map: objectness x the path probability of each mapped node. darknet
    loops over 200 map entries whatever the map's length (past the end of coco9k.map's 80);
    yolo8 reads the map's own entries."""
    hier = hierarchy_predictions(classes, layer.tree)
    return _flat_probs(scale, hier[:, layer.class_map], layer, thresh)


def _top_probs(scale: np.ndarray, classes: np.ndarray, layer: Region, thresh: float
               ) -> np.ndarray:
    """With a tree and no map: one class per box, the node hierarchy_top_prediction picks,
    scored with the box's objectness (not the class's probability), as darknet does."""
    hier = hierarchy_predictions(classes, layer.tree)
    probs = np.zeros(classes.shape, dtype=np.float64)
    for row in np.flatnonzero(scale > thresh):
        probs[row, hierarchy_top_prediction(hier[row], layer.tree, HIER_THRESH)] = scale[row]
    return probs


# get_region_detections' class rule, by (has a tree, has a map)
REGION_CLASS_RULES = {(False, False): _flat_probs, (True, True): _mapped_probs,
                      (True, False): _top_probs}


def decode_region(out: np.ndarray, layer: Region, thresh: float) -> Candidates:
    """One image's [region] output to candidates (darknet's get_region_detections); anchors
    are in grid cells."""
    h, w, _ = out.shape
    a, per = layer.num_anchors, layer.coords + 1 + layer.classes
    v = out.reshape(h, w, a, per)
    cols, rows = _grid(h, w, a)
    anchors = np.broadcast_to(layer.anchors, (h, w, a, 2))
    vv = v[..., :4].astype(np.float64)
    boxes = np.stack([(cols + vv[..., 0]) / w, (rows + vv[..., 1]) / h,
                      np.exp(vv[..., 2]) * anchors[..., 0] / w,
                      np.exp(vv[..., 3]) * anchors[..., 1] / h], axis=-1).reshape(-1, 4)
    rule = REGION_CLASS_RULES[(layer.tree is not None, layer.class_map is not None)]
    probs = rule(v[..., 4].reshape(-1), v[..., 5:].reshape(-1, layer.classes), layer, thresh)
    return Candidates(boxes, probs)


def correct_boxes(boxes: np.ndarray, image_w: int, image_h: int, net_w: int, net_h: int,
                  letterbox: bool) -> np.ndarray:
    """darknet's correct_yolo_boxes: undo the letterbox so boxes are relative to the image."""
    if not letterbox:
        return boxes
    new_w, new_h = letterbox_geometry(image_w, image_h, net_w, net_h)
    out = boxes.copy()
    out[:, 0] = (boxes[:, 0] - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    out[:, 1] = (boxes[:, 1] - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    out[:, 2] = boxes[:, 2] * net_w / new_w
    out[:, 3] = boxes[:, 3] * net_h / new_h
    return out


@njit(cache=CACHE, nogil=True)
def _overlap(a, b, diou_beta):
    """darknet's box_iou on centre-format boxes; with diou_beta >= 0, AlexeyAB's DIoU:
    IoU - (d^2 / c^2) ** diou_beta, d the distance between the centres, c the diagonal of
    the smallest box enclosing both (plain IoU when c is 0)."""
    iw = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ih = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    iou = 0.0
    if iw > 0 and ih > 0:
        union = a[2] * a[3] + b[2] * b[3] - iw * ih
        if union > 0:
            iou = iw * ih / union
    if diou_beta < 0:
        return iou
    cw = max(a[0] + a[2] / 2, b[0] + b[2] / 2) - min(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ch = max(a[1] + a[3] / 2, b[1] + b[3] / 2) - min(a[1] - a[3] / 2, b[1] - b[3] / 2)
    c = cw * cw + ch * ch
    if c == 0:
        return iou
    d = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    return iou - (d / c) ** diou_beta


@njit(cache=CACHE, nogil=True)
def _nms_sorted(boxes, order, thresh, diou_beta, keep):
    """Greedy suppression over `order` (by score, descending)."""
    for oi in range(order.shape[0]):
        i = order[oi]
        if not keep[i]:
            continue
        for oj in range(oi + 1, order.shape[0]):
            j = order[oj]
            if keep[j] and _overlap(boxes[i], boxes[j], diou_beta) > thresh:
                keep[j] = False


def box_iou_reference(a: np.ndarray, b: np.ndarray) -> float:
    """darknet's box_iou on centre-format boxes (plain Python, for tests)."""
    iw = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ih = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    if iw <= 0 or ih <= 0:
        return 0.0
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union > 0 else 0.0


def box_diou_reference(a: np.ndarray, b: np.ndarray, beta: float) -> float:
    """AlexeyAB's box_diounms from corner coordinates (plain Python, for tests)."""
    al, ar, at, ab = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bl, br, bt, bb = b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2
    diagonal = (max(ar, br) - min(al, bl)) ** 2 + (max(ab, bb) - min(at, bt)) ** 2
    iou = box_iou_reference(a, b)
    if diagonal == 0:
        return iou
    return iou - (((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / diagonal) ** beta


def nms_reference(boxes: np.ndarray, probs: np.ndarray, thresh: float,
                  diou_beta: float | None = None) -> np.ndarray:
    """do_nms_sort / diounms_sort written plainly: per class, by score, zero the overlapping
    lower ones."""
    def overlap(a, b):
        return box_iou_reference(a, b) if diou_beta is None else box_diou_reference(a, b, diou_beta)

    probs = probs.copy()
    for k in range(probs.shape[1]):
        order = sorted(range(len(boxes)), key=lambda i: -probs[i, k])
        for a, i in enumerate(order):
            if probs[i, k] == 0:
                continue
            for j in order[a + 1:]:
                if overlap(boxes[i], boxes[j]) > thresh:
                    probs[j, k] = 0
    return probs


def nms(boxes: np.ndarray, probs: np.ndarray, thresh: float,
        diou_beta: float | None = None) -> np.ndarray:
    """Per-class NMS; returns probs with suppressed entries zeroed: darknet's do_nms_sort, or
    AlexeyAB's DIoU-NMS with distance exponent `diou_beta` (see layers/yolo.py)."""
    probs = probs.copy()
    if thresh <= 0 or len(boxes) == 0:
        return probs
    if diou_beta is not None and not diou_beta >= 0:
        raise ValueError("diou_beta must be None or >= 0")
    beta = -1.0 if diou_beta is None else float(diou_beta)
    boxes = np.ascontiguousarray(boxes, dtype=np.float64)
    for k in np.flatnonzero((probs > 0).any(axis=0)):
        candidates = np.flatnonzero(probs[:, k] > 0)
        order = candidates[np.argsort(-probs[candidates, k], kind="stable")]
        keep = np.ones(len(boxes), dtype=np.bool_)
        _nms_sorted(boxes, order, thresh, beta, keep)
        probs[~keep, k] = 0.0
    return probs


def nms_rule(heads: list[Yolo | Region | GaussianYolo]) -> float | None:
    """The DIoU exponent of the image's NMS (None: classic IoU), from the last head as
    AlexeyAB's detector reads it."""
    return getattr(heads[-1], "diou_nms_beta", None) if heads else None


def to_detections(cands: Candidates, image_w: int, image_h: int, thresh: float,
                  names: list[str]) -> list[Detection]:
    """One Detection per (box, class) above thresh, boxes clamped to the image, best first."""
    rows, classes = np.nonzero(cands.probs > thresh)
    dets = []
    for r, k in zip(rows, classes):
        x, y, w, h = cands.boxes[r]
        left = min(max((x - w / 2) * image_w, 0.0), image_w)
        right = min(max((x + w / 2) * image_w, 0.0), image_w)
        top = min(max((y - h / 2) * image_h, 0.0), image_h)
        bottom = min(max((y + h / 2) * image_h, 0.0), image_h)
        name = names[k] if k < len(names) else str(k)
        dets.append(Detection(int(k), name, float(cands.probs[r, k]),
                              (float(left), float(top), float(right), float(bottom))))
    dets.sort(key=lambda d: -d.score)
    return dets


# How each head kind's output becomes candidate boxes: decode(out, layer, net_w, net_h, thresh).
DECODERS = {Yolo: decode_yolo, GaussianYolo: decode_gaussian_yolo,
            Region: lambda out, layer, net_w, net_h, thresh: decode_region(out, layer, thresh)}


def detections_from_heads(head_outputs: list[np.ndarray], heads: list[Yolo | Region | GaussianYolo], net_w: int,
                          net_h: int, image_w: int, image_h: int, thresh: float, nms_thresh: float,
                          letterbox: bool, names: list[str]) -> list[Detection]:
    """One image: head outputs (H, W, channels each) -> final detections."""
    parts = [DECODERS[type(layer)](out, layer, net_w, net_h, thresh)
             for out, layer in zip(head_outputs, heads)]
    classes = max(layer.detected_classes for layer in heads)
    boxes = np.concatenate([p.boxes for p in parts]) if parts else np.zeros((0, 4))
    probs = np.concatenate([p.probs for p in parts]) if parts else np.zeros((0, classes))
    alive = (probs > 0).any(axis=1)  # all-zero rows can neither suppress nor be reported
    boxes, probs = correct_boxes(boxes[alive], image_w, image_h, net_w, net_h, letterbox), probs[alive]
    probs = nms(boxes, probs, nms_thresh, nms_rule(heads))
    return to_detections(Candidates(boxes, probs), image_w, image_h, thresh, names)
