"""Detection metrics: PASCAL VOC AP (11-point and all-point), COCO AP, darknet's report.

`evaluate` matches the detections of a whole data set to its ground truth once and derives:

* `voc07` / `voc`: PASCAL VOC AP at `iou_thresh` (VOC2007 11-point, VOC2010+ all-point), with the
  VOC devkit's matching rules (see `evaluate`);
* `coco` / `coco50`: AP@[.5:.95] and AP@.5 computed by pycocotools' COCOeval itself, on in-memory
  COCO objects built from the same boxes;
* darknet's `detector map` report at a confidence threshold: TP, FP, FN, precision, recall, F1,
  average IoU.

All means are over the classes that have (non-difficult) ground truth, the VOC devkit's and
pycocotools' convention; darknet divides by the number of classes instead, which
`voc07_all_classes` / `voc_all_classes` reproduce for comparison.

Boxes are xyxy in pixels on continuous coordinates: IoU = intersection / union with widths
x2 - x1 (darknet's and pycocotools' convention, not the VOC devkit's "+1" pixel-count one).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from yolo8.data import GroundTruth, ImageDetections

log = logging.getLogger(__name__)

_FP, _TP, _IGNORED = 0, 1, -1
# darknet's 11 recall points, `double cur_recall = point * 0.1` (see voc07_ap): 3 * 0.1 is
# 0.30000000000000004, so a recall of exactly 0.3 (or 0.6, 0.7) does not reach its point.
_VOC07_RECALL_POINTS = np.arange(11) * 0.1


# ------------------------------------------------------------------------------ AP from a curve


def _check_curve(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall and precision must be 1-D of the same length, got shapes "
                         f"{recall.shape} and {precision.shape}")
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must be non-decreasing (detections sorted by score descending)")
    return recall, precision


def _precision_envelope(precision: np.ndarray) -> np.ndarray:
    """envelope[k] = max(precision[k:]): the best precision reachable at recall >= recall[k]."""
    return np.maximum.accumulate(precision[::-1])[::-1]


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC2007 11-point interpolated AP of a precision/recall curve.

    The curve is given per detection in score order (recall non-decreasing). AP is the mean over
    t = point * 0.1 (point = 0..10, in double) of the highest precision at any recall >= t (0 when
    recall never reaches t). The points are darknet's own, `double cur_recall = point * 0.1` in
    validate_detector_map (AlexeyAB's darknet from its first mAP code until March 2019, and
    yolo2_light, whose figures we compare with): 3 * 0.1 = 0.30000000000000004, so a recall of exactly 0.3 (or 0.6,
    0.7) does not count for that point. py-faster-rcnn's np.arange(0., 1.1, 0.1) gives the same
    points. (AlexeyAB's darknet computes point / 10.0 since then: exact tenths.)
    """
    recall, precision = _check_curve(recall, precision)
    if recall.size == 0:
        return 0.0
    envelope = _precision_envelope(precision)
    first_reaching = np.searchsorted(recall, _VOC07_RECALL_POINTS, side="left")
    reached = first_reaching < recall.size
    return float(envelope[first_reaching[reached]].sum() / len(_VOC07_RECALL_POINTS))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point AP (PASCAL VOC2010+, ImageNet): the area under the monotone precision envelope.

    Each rise of recall, from 0 up, is weighted by the envelope's precision there. darknet's AUC
    loop (before AlexeyAB/darknet#6040, fixed by PR #6151) started at the top-scored detection's
    recall and summed only the steps between consecutive detections, so the first slab, from
    recall 0 to the recall of the first detection, was missing whenever that detection was a
    true positive: a class with a single correct detection got AP 0. Here the first step is the
    rise from 0 like every other.
    """
    recall, precision = _check_curve(recall, precision)
    steps = np.diff(recall, prepend=0.0)
    return float(np.sum(steps * _precision_envelope(precision)))


# ------------------------------------------------------------------------------------ matching


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), xyxy, continuous coords."""
    inter_w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _best_truth(truth: GroundTruth, dets: ImageDetections) -> tuple[np.ndarray, np.ndarray]:
    """For each detection: the index of the same-class ground truth box with the highest IoU
    (the first one on ties, -1 when the image has none of that class) and that IoU."""
    count = len(dets.scores)
    if count == 0 or len(truth.classes) == 0:
        return np.full(count, -1, dtype=np.int64), np.zeros(count)
    iou = iou_matrix(dets.boxes, truth.boxes)
    iou[dets.classes[:, None] != truth.classes[None, :]] = -1.0
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(count), best]
    best[best_iou < 0] = -1
    return best.astype(np.int64), np.maximum(best_iou, 0.0)


@dataclass
class _Matched:
    """All detections of the data set, sorted by (class, score descending), with outcomes."""

    classes: np.ndarray
    scores: np.ndarray
    outcome: np.ndarray  # _TP, _FP or _IGNORED
    iou: np.ndarray  # IoU with the best same-class ground truth box
    class_starts: np.ndarray  # detections of class c are [class_starts[c], class_starts[c+1])


def _by_class_then_score(classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Stable order by (class, score descending): equal scores keep data-set order (image,
    then position in the image), as MATLAB's sort in the VOC devkit and pycocotools'
    mergesort do."""
    order = np.argsort(-scores, kind="stable")
    return order[np.argsort(classes[order], kind="stable")]


def _voc_outcomes(truth: GroundTruth, dets: ImageDetections, iou_thresh: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """VOC devkit matching of one image: each detection's outcome and best IoU, in the
    image's detection order.

    Every detection keeps its best same-class ground truth box (whether or not that box is
    taken); it is a candidate TP when the IoU is above the threshold. Walking detections by
    score, the first candidate of a box takes it and later ones are duplicates (FP), so the TPs
    are exactly the first occurrences of each box among the candidates in score order. A box
    belongs to one image, so this is decided image by image: the data-set order restricted to
    one image is the image's own (class, score, position) order.
    """
    best, iou = _best_truth(truth, dets)
    order = _by_class_then_score(dets.classes, dets.scores)
    best_sorted, iou_sorted = best[order], iou[order]
    above = (best_sorted >= 0) & (iou_sorted > iou_thresh)
    on_difficult = np.zeros_like(above)
    on_difficult[above] = truth.difficult[best_sorted[above]]
    candidates = np.flatnonzero(above & ~on_difficult)
    _, first = np.unique(best_sorted[candidates], return_index=True)
    outcome_sorted = np.full(len(order), _FP, dtype=np.int8)
    outcome_sorted[on_difficult] = _IGNORED
    outcome_sorted[candidates[first]] = _TP
    outcome = np.empty_like(outcome_sorted)
    outcome[order] = outcome_sorted
    return outcome, iou


def _merge(matches: Sequence[ImageMatch], num_classes: int) -> _Matched:
    """The images' outcomes as one data set, sorted by (class, score descending)."""
    classes = np.concatenate([m.classes for m in matches])
    scores = np.concatenate([m.scores for m in matches])
    order = _by_class_then_score(classes, scores)
    classes_sorted = classes[order]
    class_starts = np.searchsorted(classes_sorted, np.arange(num_classes + 1), side="left")
    return _Matched(classes_sorted, scores[order],
                    np.concatenate([m.outcome for m in matches])[order],
                    np.concatenate([m.iou for m in matches])[order], class_starts)


def _class_aps(outcome: np.ndarray, positives: int) -> tuple[float, float]:
    """(voc07, voc) AP of one class from its outcomes in score order; NaN without positives."""
    if positives == 0:
        return math.nan, math.nan
    is_tp = outcome[outcome != _IGNORED] == _TP
    tp = np.cumsum(is_tp)
    recall = tp / positives
    precision = tp / np.arange(1, len(is_tp) + 1)  # ignored detections already removed
    return voc07_ap(recall, precision), voc_ap(recall, precision)


# ------------------------------------------------------------------------------------- COCO

_COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


@dataclass
class _CocoOutcome:
    stats: dict[str, float]
    per_class: np.ndarray  # AP@[.5:.95] per class, NaN without ground truth
    per_class50: np.ndarray  # AP@.5 per class


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])


def _coco_datasets(truths: Sequence[GroundTruth], detections: Sequence[ImageDetections],
                   image_sizes: Sequence[tuple[int, int]], num_classes: int
                   ) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset and result list, ids from 1 (pycocotools treats a match id
    of 0 as "unmatched", so ids must not be 0); category id = class id + 1."""
    images = [{"id": i + 1, "width": int(w), "height": int(h)}
              for i, (w, h) in enumerate(image_sizes)]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    annotations: list[dict] = []
    results: list[dict] = []
    for image_id, (truth, dets) in enumerate(zip(truths, detections), start=1):
        for box, cls, hard in zip(_xywh(truth.boxes).tolist(), truth.classes.tolist(),
                                  truth.difficult.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cls + 1, "bbox": box, "area": box[2] * box[3],
                                "iscrowd": int(hard)})
        for box, cls, score in zip(_xywh(dets.boxes).tolist(), dets.classes.tolist(),
                                   dets.scores.tolist()):
            results.append({"image_id": image_id, "category_id": cls + 1, "bbox": box,
                            "score": score})
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _coco_results(truth_coco, results: list[dict]):
    """What COCO.loadRes builds for bbox results (area = w*h, iscrowd = 0, ids from 1), made
    directly: loadRes cannot take an empty result list and copies what it does not need."""
    from pycocotools.coco import COCO

    for result_id, result in enumerate(results, start=1):
        result.update(id=result_id, area=result["bbox"][2] * result["bbox"][3], iscrowd=0)
    coco = COCO()
    coco.dataset = {"images": truth_coco.dataset["images"],
                    "categories": truth_coco.dataset["categories"], "annotations": results}
    coco.createIndex()
    return coco


def _per_class_coco(evaluator, iou: float | None) -> np.ndarray:
    """Per-class AP from COCOeval's precision array, reduced as COCOeval.summarize reduces
    it (area 'all', maxDets 100, mean over entries > -1)."""
    params = evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"),
                                            params.maxDets.index(100)]
    if iou is not None:
        precision = precision[np.where(params.iouThrs == iou)[0]]
    aps = np.full(precision.shape[2], math.nan)
    for k in range(precision.shape[2]):
        values = precision[:, :, k]
        if np.any(values > -1):
            aps[k] = float(np.mean(values[values > -1]))
    return aps


def _restrict_areas(params, by_size: bool) -> None:
    """Unless `by_size`, COCOeval runs on the area range 'all' alone (see _coco_image_evals)."""
    if not by_size:
        params.areaRng = [params.areaRng[params.areaRngLbl.index("all")]]
        params.areaRngLbl = ["all"]


def _coco_image_evals(truth: GroundTruth, dets: ImageDetections, size: tuple[int, int],
                      num_classes: int, by_size: bool) -> tuple[np.ndarray, ...]:
    """pycocotools' COCOeval.evaluate on one image: per (category, area range) with ground
    truth or detections, what COCOeval.accumulate reads (the scores, per IoU threshold whether
    each detection is matched or ignored, which ground truth is ignored), flattened: keys
    (E, 4) = category, area range, detections, ground truths; scores; flags (T, detections)
    = 1 matched | 2 ignored; ground truth ignored. COCOeval evaluates every image on its own
    (matching, maxDets=100 per image and category), so this equals its data-set run.

    Unless `by_size`, only the area range 'all' is evaluated: COCOeval's per-image matching is
    a pure-Python loop run once per (image, class, area range), so this is about 4x faster, and
    the 'all' figures (AP, AP50, AP75, AR1/10/100) are the very same computation as in a full
    run (each area range is evaluated independently). by_size adds small/medium/large.

    Difficult boxes become iscrowd=1: COCOeval._prepare sets each box's `ignore` from `iscrowd`
    (overwriting any `ignore` given), so crowd is its only ignore mechanism. pycocotools then
    lets any number of detections match a crowd box, without TP or FP, and measures their
    overlap with it as intersection / detection area.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset, results = _coco_datasets([truth], [dets], [size], num_classes)
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):  # pycocotools prints its progress
        truth_coco = COCO()
        truth_coco.dataset = dataset
        truth_coco.createIndex()
        evaluator = COCOeval(truth_coco, _coco_results(truth_coco, results), "bbox")
        _restrict_areas(evaluator.params, by_size)
        evaluator.evaluate()
    thresholds, areas = len(evaluator.params.iouThrs), len(evaluator.params.areaRng)
    keys, scores, flags, truth_ignored = [], [np.zeros(0)], [np.zeros((thresholds, 0), np.uint8)], \
        [np.zeros(0, bool)]
    for position, entry in enumerate(evaluator.evalImgs):  # [category][area range][image]
        if entry is None:  # neither ground truth nor detections
            continue
        category, area = divmod(position, areas)
        keys.append((category, area, len(entry["dtScores"]), len(entry["gtIgnore"])))
        scores.append(np.asarray(entry["dtScores"], np.float64))
        flags.append((np.asarray(entry["dtMatches"]) != 0).astype(np.uint8)
                     | (np.asarray(entry["dtIgnore"], bool).astype(np.uint8) << 1))
        truth_ignored.append(np.asarray(entry["gtIgnore"], bool))
    return (np.array(keys, np.int64).reshape(-1, 4), np.concatenate(scores),
            np.concatenate(flags, axis=1), np.concatenate(truth_ignored))


def _coco_accumulate(matches: Sequence[ImageMatch], num_classes: int, by_size: bool
                     ) -> _CocoOutcome:
    """COCOeval.accumulate and summarize over the images' per-image evaluations, in data-set
    order (its mergesort keeps that order between equal scores): pycocotools' own figures."""
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(iouType="bbox")
    params = evaluator.params
    params.imgIds = list(range(1, len(matches) + 1))  # ids from 1, as _coco_datasets
    params.catIds = list(range(1, num_classes + 1))
    _restrict_areas(params, by_size)
    evaluator._paramsEval = copy.deepcopy(params)
    images, areas = len(matches), len(params.areaRng)
    evaluations: list[dict | None] = [None] * (num_classes * areas * images)
    for index, match in enumerate(matches):
        for (category, area), entry in match.coco_entries():
            evaluations[(category * areas + area) * images + index] = entry
    evaluator.evalImgs = evaluations
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter):
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools:\n%s", chatter.getvalue())
    stats = {name: (float(v) if v > -1 else math.nan)
             for name, v in zip(_COCO_STAT_NAMES, evaluator.stats)
             if by_size or not name.endswith(("_small", "_medium", "_large"))}
    return _CocoOutcome(stats, _per_class_coco(evaluator, None), _per_class_coco(evaluator, 0.5))


# ------------------------------------------------------------------------------ one image


_PACKED_FIELDS = (("classes", "<i4"), ("scores", "<f8"), ("outcome", "i1"), ("iou", "<f8"),
                  ("truth_classes", "<i4"), ("truth_difficult", "?"), ("coco_keys", "<i4"),
                  ("coco_scores", "<f8"), ("coco_flags", "u1"), ("coco_truth_ignored", "?"))


@dataclass(frozen=True, eq=False)
class ImageMatch:
    """One image's share of the metrics (`match_image`), computable where the image is (a
    worker of a cluster): its detections' VOC outcomes, its ground truth's classes, and
    pycocotools' per-image evaluation. `evaluate_matches` over the images in data-set order
    gives exactly what `evaluate` gives (which is built on it); `to_bytes` is a compact form
    (about 40 bytes a detection, no boxes)."""

    classes: np.ndarray  # (D,) detection classes, in the image's detection order
    scores: np.ndarray  # (D,) float64
    outcome: np.ndarray  # (D,) _TP, _FP or _IGNORED (VOC rules at the iou_thresh used)
    iou: np.ndarray  # (D,) IoU with the best same-class ground truth box
    truth_classes: np.ndarray  # (G,)
    truth_difficult: np.ndarray  # (G,) bool
    coco_keys: np.ndarray  # (E, 4): category, area range, detections, ground truths
    coco_scores: np.ndarray  # the E entries' detection scores, one after the other
    coco_flags: np.ndarray  # (IoU thresholds, detections): 1 matched | 2 ignored
    coco_truth_ignored: np.ndarray  # the E entries' ground truth ignore flags

    def coco_entries(self) -> Iterator[tuple[tuple[int, int], dict]]:
        """((category, area range), COCOeval's evalImgs entry, the parts accumulate reads)."""
        dets_at = truths_at = 0
        for category, area, dets, truths in self.coco_keys.tolist():
            flags = self.coco_flags[:, dets_at:dets_at + dets]
            yield (category, area), {
                "dtScores": self.coco_scores[dets_at:dets_at + dets],
                "dtMatches": (flags & 1).astype(bool), "dtIgnore": (flags & 2).astype(bool),
                "gtIgnore": self.coco_truth_ignored[truths_at:truths_at + truths]}
            dets_at, truths_at = dets_at + dets, truths_at + truths

    def to_bytes(self) -> bytes:
        arrays = [np.ascontiguousarray(getattr(self, name), dtype) for name, dtype in
                  _PACKED_FIELDS]
        header = [len(arrays)]
        for array in arrays:
            header += [array.ndim, *array.shape]
        return b"".join([np.array(header, "<i8").tobytes(), *(a.tobytes() for a in arrays)])

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageMatch:
        count = int(np.frombuffer(data, "<i8", 1)[0])
        at, shapes = 8, []
        for _ in range(count):
            ndim = int(np.frombuffer(data, "<i8", 1, at)[0])
            shapes.append(tuple(int(v) for v in np.frombuffer(data, "<i8", ndim, at + 8)))
            at += 8 * (ndim + 1)
        fields = {}
        for (name, dtype), shape in zip(_PACKED_FIELDS, shapes):
            size = int(np.prod(shape)) if shape else 1
            fields[name] = np.frombuffer(data, dtype, size, at).reshape(shape)
            at += size * np.dtype(dtype).itemsize
        return cls(**fields)


def match_image(truth: GroundTruth, dets: ImageDetections, image_size: tuple[int, int],
                num_classes: int, iou_thresh: float = 0.5, coco_by_size: bool = False
                ) -> ImageMatch:
    """One image's share of `evaluate` (same arguments, for one image)."""
    _check_inputs([truth], [dets], [image_size], num_classes, None)
    (truth,), (dets,) = _as_float64([truth], [dets])
    return _match_image(truth, dets, image_size, num_classes, iou_thresh, coco_by_size)


def _match_image(truth: GroundTruth, dets: ImageDetections, image_size: tuple[int, int],
                 num_classes: int, iou_thresh: float, coco_by_size: bool) -> ImageMatch:
    outcome, iou = _voc_outcomes(truth, dets, iou_thresh)
    coco = _coco_image_evals(truth, dets, image_size, num_classes, coco_by_size)
    return ImageMatch(dets.classes.astype(np.int64), dets.scores, outcome, iou,
                      truth.classes.astype(np.int64), truth.difficult, *coco)


# ------------------------------------------------------------------------------------ results


def _fraction(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def _json_number(value: float) -> float | None:
    """NaN (undefined, e.g. AP of a class without ground truth) becomes JSON null."""
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass(frozen=True)
class ThresholdReport:
    """darknet's `detector map` figures for the detections scoring above `thresh`.

    TP: detections matched to a not yet matched ground truth box (IoU > iou_thresh); FP: the
    other detections above the threshold; FN = ground truth boxes - TP. average_iou is darknet's:
    the sum of the TPs' IoUs divided by TP + FP (false positives count as IoU 0). Precision,
    recall and F1 are 0 (not NaN) when their denominator is 0.
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    average_iou: float

    @classmethod
    def from_counts(cls, thresh: float, tp: int, fp: int, positives: int, iou_sum: float
                    ) -> ThresholdReport:
        precision = _fraction(tp, tp + fp)
        recall = _fraction(tp, positives)
        return cls(thresh, tp, fp, positives - tp, precision, recall,
                   _fraction(2 * precision * recall, precision + recall),
                   _fraction(iou_sum, tp + fp))

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ClassResult:
    """One class: counts, AP by each convention (NaN without ground truth), report TP/FP."""

    class_id: int
    name: str
    ground_truth: int  # non-difficult boxes: the positives
    difficult: int
    detections: int
    ignored: int  # detections whose best match is a difficult box (neither TP nor FP)
    voc07: float
    voc: float
    coco: float
    coco50: float
    tp: int  # at the report threshold
    fp: int

    def to_json(self) -> dict:
        return {key: _json_number(value) for key, value in self.__dict__.items()}


@dataclass(frozen=True)
class MapResult:
    """Everything `evaluate` measured. Fractions in [0, 1]; NaN where undefined."""

    voc07: float
    voc: float
    coco: float
    coco50: float
    voc07_all_classes: float
    voc_all_classes: float
    iou_thresh: float
    images: int
    num_classes: int
    classes_with_ground_truth: int
    ground_truth: int
    difficult: int
    detections: int
    per_class: tuple[ClassResult, ...]
    report: ThresholdReport
    coco_stats: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict; undefined values (NaN) become None. `iou_thresh` applies to the
        VOC figures and the report; COCO uses its own thresholds (.5:.95, and .5 for coco50)."""
        summary = {key: _json_number(getattr(self, key)) for key in (
            "voc07", "voc", "coco", "coco50", "voc07_all_classes", "voc_all_classes",
            "iou_thresh", "images", "num_classes", "classes_with_ground_truth",
            "ground_truth", "difficult", "detections")}
        per_class: dict[str, dict] = {}
        for result in self.per_class:
            key = result.name
            if key in per_class:  # duplicate names in the names file: keep both
                key = f"{result.name} ({result.class_id})"
            per_class[key] = result.to_json()
        return {**summary, "per_class": per_class, "report": self.report.to_json(),
                "coco_stats": {k: _json_number(v) for k, v in self.coco_stats.items()}}

    def format_table(self) -> str:
        """The per-class table (AP in %) and the summary lines."""
        def pct(value: float) -> str:
            return "      -" if math.isnan(value) else f"{100 * value:7.2f}"

        width = max([len("class")] + [len(r.name) for r in self.per_class])
        header = (f"{'id':>4}  {'class':<{width}}  {'gt':>6}  {'dets':>7}  {'AP07':>7}  "
                  f"{'AP':>7}  {'AP50':>7}  {'AP5095':>7}  {'TP':>6}  {'FP':>6}")
        lines = [header, "-" * len(header)]
        for r in self.per_class:
            lines.append(f"{r.class_id:>4}  {r.name:<{width}}  {r.ground_truth:>6}  "
                         f"{r.detections:>7}  {pct(r.voc07)}  {pct(r.voc)}  {pct(r.coco50)}  "
                         f"{pct(r.coco)}  {r.tp:>6}  {r.fp:>6}")
        rep = self.report
        lines += [
            "-" * len(header),
            f"AP07: VOC2007 11-point, AP: all-point (area under the curve), both at IoU > "
            f"{self.iou_thresh:.2f}; AP50, AP5095: COCO (pycocotools) AP@.5 and AP@[.5:.95]; "
            f"TP, FP at conf > {rep.thresh:.2f}.",
            f"{self.images} images, {self.ground_truth} objects (+{self.difficult} difficult), "
            f"{self.detections} detections.",
            f"mAP = mean over the {self.classes_with_ground_truth} classes with ground truth:",
            f"  VOC2007 11-point mAP@{self.iou_thresh:.2f} = {pct(self.voc07).strip()} %",
            f"  VOC all-point    mAP@{self.iou_thresh:.2f} = {pct(self.voc).strip()} %",
            f"  COCO AP@[.5:.95]        = {pct(self.coco).strip()} %",
            f"  COCO AP@.5              = {pct(self.coco50).strip()} %",
            f"darknet's mean over all {self.num_classes} classes (a class without ground truth "
            f"counts as 0): 11-point {pct(self.voc07_all_classes).strip()} %, "
            f"all-point {pct(self.voc_all_classes).strip()} %",
            f"for conf_thresh = {rep.thresh:.2f}: precision = {rep.precision:.2f}, recall = "
            f"{rep.recall:.2f}, F1-score = {rep.f1:.2f}",
            f"for conf_thresh = {rep.thresh:.2f}: TP = {rep.tp}, FP = {rep.fp}, FN = {rep.fn}, "
            f"average IoU = {100 * rep.average_iou:.2f} %",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ evaluate


def _check_inputs(truths: Sequence[GroundTruth], detections: Sequence[ImageDetections],
                  image_sizes: Sequence[tuple[int, int]], num_classes: int,
                  names: Sequence[str] | None) -> None:
    if not (len(truths) == len(detections) == len(image_sizes)):
        raise ValueError(f"one ground truth, detection set and size per image: got "
                         f"{len(truths)}, {len(detections)} and {len(image_sizes)}")
    if len(truths) == 0:
        raise ValueError("no images to evaluate")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    for index, (truth, dets, size) in enumerate(zip(truths, detections, image_sizes)):
        _check_boxes(f"image {index} ground truth", truth.boxes, truth.classes, num_classes)
        _check_boxes(f"image {index} detections", dets.boxes, dets.classes, num_classes)
        if truth.difficult.shape != truth.classes.shape or truth.difficult.dtype != np.bool_:
            raise ValueError(f"image {index} ground truth: difficult must be bool, shape "
                             f"{truth.classes.shape}")
        if dets.scores.shape != dets.classes.shape or not np.all(np.isfinite(dets.scores)):
            raise ValueError(f"image {index} detections: scores must be finite, shape "
                             f"{dets.classes.shape}")
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"image {index}: size must be (width, height) > 0, got {size}")


def _check_boxes(what: str, boxes: np.ndarray, classes: np.ndarray, num_classes: int) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4 or classes.shape != (len(boxes),):
        raise ValueError(f"{what}: expected boxes (N, 4) and classes (N,), got "
                         f"{boxes.shape} and {classes.shape}")
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"{what}: class ids must be integers, got {classes.dtype}")
    if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"{what}: class ids must be in 0..{num_classes - 1}")
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2:] < boxes[:, :2]):
        raise ValueError(f"{what}: boxes must be finite xyxy with x2 >= x1 and y2 >= y1")


def _as_float64(truths: Sequence[GroundTruth], detections: Sequence[ImageDetections]
                ) -> tuple[list[GroundTruth], list[ImageDetections]]:
    truths = [GroundTruth(np.asarray(t.boxes, np.float64).reshape(-1, 4),
                          np.asarray(t.classes), np.asarray(t.difficult)) for t in truths]
    detections = [ImageDetections(np.asarray(d.boxes, np.float64).reshape(-1, 4),
                                  np.asarray(d.classes), np.asarray(d.scores, np.float64))
                  for d in detections]
    return truths, detections


def _mean_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def evaluate(truths: Sequence[GroundTruth], detections: Sequence[ImageDetections],
             image_sizes: Sequence[tuple[int, int]], num_classes: int, iou_thresh: float = 0.5,
             thresh_report: float = 0.25, names: Sequence[str] | None = None,
             coco_by_size: bool = False) -> MapResult:
    """All detection metrics of a data set (one GroundTruth, ImageDetections, (width, height)
    per image; boxes xyxy in pixels).

    Matching (PASCAL VOC devkit rules), per class over all images: detections are taken by score,
    highest first (ties in data-set order); each is compared with the ground truth boxes of its
    class in its image and keeps the one with the highest IoU (IoU on continuous pixel
    coordinates, no VOC "+1"). IoU > iou_thresh and that box not matched yet: TP; matched already:
    FP (duplicate); IoU <= iou_thresh or no box of the class: FP. When the best box is difficult
    the detection is neither TP nor FP, and difficult boxes are not counted as positives.

    The report at `thresh_report` uses the same matching restricted to scores > thresh_report
    (darknet's strict '>'). It differs from darknet's own in two corner cases: a detection of a
    difficult object is ignored (darknet counts it FP), and when several detections above the
    threshold hit one box the highest-scored is the TP whose IoU enters the average (darknet
    takes the first in network output order). TP/FP/FN counts are otherwise darknet's.

    COCO figures come from pycocotools (see _coco_image_evals); there difficult boxes are crowd.
    `coco_by_size` adds COCO's small/medium/large AP and AR to `coco_stats` (slower).
    """
    _check_inputs(truths, detections, image_sizes, num_classes, names)
    truths, detections = _as_float64(truths, detections)
    matches = [_match_image(truth, dets, size, num_classes, iou_thresh, coco_by_size)
               for truth, dets, size in zip(truths, detections, image_sizes)]
    return evaluate_matches(matches, num_classes, iou_thresh, thresh_report, names, coco_by_size)


def evaluate_matches(matches: Sequence[ImageMatch], num_classes: int, iou_thresh: float = 0.5,
                     thresh_report: float = 0.25, names: Sequence[str] | None = None,
                     coco_by_size: bool = False) -> MapResult:
    """`evaluate` from the images' `match_image` results, in data-set order (each made with
    these iou_thresh and coco_by_size): the data-set part of the metrics (sorting, AP, COCO's
    accumulation), cheap next to the per-image part."""
    if len(matches) == 0:
        raise ValueError("no images to evaluate")
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{len(names)} names for {num_classes} classes")
    matched = _merge(matches, num_classes)
    coco = _coco_accumulate(matches, num_classes, coco_by_size)

    truth_classes = np.concatenate([m.truth_classes for m in matches]).astype(np.int64)
    truth_difficult = np.concatenate([m.truth_difficult for m in matches]).astype(bool)
    positives = np.bincount(truth_classes[~truth_difficult], minlength=num_classes)
    difficult = np.bincount(truth_classes[truth_difficult], minlength=num_classes)
    above = matched.scores > thresh_report
    tp_above = above & (matched.outcome == _TP)
    fp_above = above & (matched.outcome == _FP)

    per_class = []
    for c in range(num_classes):
        span = slice(matched.class_starts[c], matched.class_starts[c + 1])
        outcome = matched.outcome[span]
        ap07, ap = _class_aps(outcome, int(positives[c]))
        per_class.append(ClassResult(
            class_id=c, name=names[c] if names is not None else str(c),
            ground_truth=int(positives[c]), difficult=int(difficult[c]),
            detections=len(outcome), ignored=int(np.count_nonzero(outcome == _IGNORED)),
            voc07=ap07, voc=ap, coco=float(coco.per_class[c]), coco50=float(coco.per_class50[c]),
            tp=int(np.count_nonzero(tp_above[span])), fp=int(np.count_nonzero(fp_above[span])),
        ))

    voc07s = np.array([r.voc07 for r in per_class])
    vocs = np.array([r.voc for r in per_class])
    report = ThresholdReport.from_counts(
        thresh_report, int(tp_above.sum()), int(fp_above.sum()), int(positives.sum()),
        float(matched.iou[tp_above].sum()))
    return MapResult(
        voc07=_mean_defined(voc07s), voc=_mean_defined(vocs),
        coco=coco.stats["AP"], coco50=coco.stats["AP50"],
        # darknet: sum over all classes / classes, a class without ground truth adding 0
        voc07_all_classes=float(np.nansum(voc07s) / num_classes),
        voc_all_classes=float(np.nansum(vocs) / num_classes),
        iou_thresh=float(iou_thresh), images=len(matches), num_classes=num_classes,
        classes_with_ground_truth=int(np.count_nonzero(positives)),
        ground_truth=int(positives.sum()), difficult=int(difficult.sum()),
        detections=len(matched.scores), per_class=tuple(per_class), report=report,
        coco_stats=coco.stats,
    )
