"""Tests of yolo8.metrics: hand-computed cases and independent evaluators.

The independent VOC evaluator below follows py-faster-rcnn's voc_eval structure (per class, per
image dicts of ground truth with a `det` flag, a voc_ap with the use_07_metric switch) without
the "+1" of pixel counting. The COCO figures are compared with a plain pycocotools run from
files written in the COCO JSON formats.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from yolo8.data import GroundTruth, ImageDetections
from yolo8.metrics import evaluate, voc07_ap, voc_ap

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train"

# COCO's precision is tp / (tp + fp + np.spacing(1)): a perfect class scores 1 - ~2e-16.
COCO_ROUNDING = 1e-12


def truth(boxes, classes, difficult=None) -> GroundTruth:
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.array(difficult, bool)
    return GroundTruth(boxes, np.array(classes, dtype=np.int64), difficult)


def dets(boxes, classes, scores) -> ImageDetections:
    return ImageDetections(np.array(boxes, dtype=np.float64).reshape(-1, 4),
                           np.array(classes, dtype=np.int64), np.array(scores, dtype=np.float64))


def no_dets() -> ImageDetections:
    return dets([], [], [])


# ----------------------------------------------------------------------------- hand-made cases


def test_perfect_detector_scores_one_everywhere():
    truths = [truth([[10, 20, 60, 90], [100, 100, 300, 260]], [0, 2]),
              truth([[5, 5, 25, 15]], [1]),
              truth([[40.5, 30.25, 400, 330]], [2])]
    detections = [dets(t.boxes, t.classes, [0.9] * len(t.classes)) for t in truths]
    result = evaluate(truths, detections, [(640, 480)] * 3, num_classes=3)
    for value in (result.voc07, result.voc, result.voc07_all_classes, result.voc_all_classes):
        assert value == 1.0
    assert result.coco == pytest.approx(1.0, abs=COCO_ROUNDING)
    assert result.coco50 == pytest.approx(1.0, abs=COCO_ROUNDING)
    rep = result.report
    assert (rep.tp, rep.fp, rep.fn, rep.precision, rep.recall, rep.f1, rep.average_iou) == (
        4, 0, 0, 1.0, 1.0, 1.0, 1.0)


def test_no_detections_scores_zero():
    truths = [truth([[10, 20, 60, 90], [0, 0, 5, 5]], [0, 1])]
    result = evaluate(truths, [no_dets()], [(100, 100)], num_classes=2)
    assert (result.voc07, result.voc, result.coco, result.coco50) == (0.0, 0.0, 0.0, 0.0)
    rep = result.report
    assert (rep.tp, rep.fp, rep.fn, rep.precision, rep.recall, rep.f1) == (0, 0, 2, 0.0, 0.0, 0.0)


def test_duplicates_are_false_positives():
    # Boxes A and B; detections by score: A (TP), A again (duplicate: FP), B (TP).
    # recall .5 .5 1, precision 1 1/2 2/3.
    # all-point: .5 * 1 + .5 * 2/3 = 5/6 (it would be 1 if the duplicate were TP or ignored).
    # 11-point: recall >= 0, .1, ..., .5 reaches precision 1 (6 points), recall >= .6 ... 1
    # reaches 2/3 (5 points): (6 + 5 * 2/3) / 11 = 28/33.
    a, b = [0, 0, 10, 10], [50, 50, 70, 70]
    result = evaluate([truth([a, b], [0, 0])], [dets([a, a, b], [0, 0, 0], [0.9, 0.8, 0.7])],
                      [(100, 100)], num_classes=1)
    assert result.voc == pytest.approx(5 / 6, abs=1e-15)
    assert result.voc07 == pytest.approx(28 / 33, abs=1e-15)
    assert (result.report.tp, result.report.fp, result.report.fn) == (2, 1, 0)


def test_difficult_boxes_neither_count_nor_penalise():
    # Class 0: a normal box A and a difficult box D; the top detection hits D, the next hits A.
    # Counting D's detection as FP would give AP 1/2; ignored, AP is 1 with one positive.
    # Class 1 has only a difficult box: no positives, so it is left out of the mean.
    box_a, box_d, box_e = [0, 0, 10, 10], [40, 40, 80, 80], [100, 0, 130, 40]
    truths = [truth([box_a, box_d, box_e], [0, 0, 1], difficult=[False, True, True])]
    detections = [dets([box_d, box_a, box_e], [0, 0, 1], [0.95, 0.9, 0.8])]
    result = evaluate(truths, detections, [(200, 100)], num_classes=2)
    assert (result.voc07, result.voc) == (1.0, 1.0)
    assert result.classes_with_ground_truth == 1
    assert (result.ground_truth, result.difficult) == (1, 2)
    per_class = result.per_class
    assert (per_class[0].ground_truth, per_class[0].ignored, per_class[0].tp, per_class[0].fp) == (
        1, 1, 1, 0)
    assert math.isnan(per_class[1].voc)
    assert (result.report.tp, result.report.fp, result.report.fn) == (1, 0, 0)
    # pycocotools sees the difficult boxes as crowd: the detection on D is ignored there too.
    assert result.coco == pytest.approx(1.0, abs=COCO_ROUNDING)


def test_11_point_and_all_point_on_a_worked_example():
    # Ten boxes of one class, seven detections by score: T F T T F F T (T = hits a new box).
    #  rank       1    2    3    4    5    6    7
    #  recall    .1   .1   .2   .3   .3   .3   .4
    #  precision  1   1/2  2/3  3/4  3/5  1/2  4/7
    #  envelope   1   3/4  3/4  3/4  3/5  4/7  4/7   (max precision from that rank on)
    # all-point: recall rises by .1 at ranks 1, 3, 4, 7:
    #   .1 * (1 + 3/4 + 3/4 + 4/7) = 43/140
    #   (darknet before #6040 dropped the first slab, .1 * 1, and gave 29/140.)
    # 11-point, darknet's points (point * 0.1 in double): t = 0 and .1 -> 1; .2 -> 3/4;
    #   3 * 0.1 = 0.30000000000000004 -> rank 4's recall of exactly .3 does not reach it: 4/7;
    #   .4 -> 4/7; .5 ... 1 -> 0: (1 + 1 + 3/4 + 4/7 + 4/7) / 11 = 109/308.
    #   (exact tenths, AlexeyAB's rule since 2019, would count rank 4 and give 57/154.)
    boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(10)]
    misses = [[0, 50, 10, 60], [30, 50, 40, 60], [60, 50, 70, 60]]
    det_boxes = [boxes[0], misses[0], boxes[1], boxes[2], misses[1], misses[2], boxes[3]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    result = evaluate([truth(boxes, [0] * 10)], [dets(det_boxes, [0] * 7, scores)],
                      [(200, 100)], num_classes=1)
    assert result.voc == pytest.approx(43 / 140, abs=1e-15)
    assert result.voc07 == pytest.approx(109 / 308, abs=1e-15)


def test_ap_of_a_single_correct_detection_is_one():
    # darknet's AUC before #6040 gave 0 here: the only recall step was the missing first slab.
    assert voc_ap(np.array([1.0]), np.array([1.0])) == 1.0
    assert voc07_ap(np.array([1.0]), np.array([1.0])) == 1.0


def test_ap_functions_reject_misuse():
    with pytest.raises(ValueError):
        voc_ap(np.array([0.5, 0.2]), np.array([1.0, 1.0]))  # recall decreasing
    with pytest.raises(ValueError):
        voc07_ap(np.array([0.5]), np.array([1.0, 1.0]))


def test_classes_without_ground_truth_leave_the_mean_but_count_for_darknet():
    # Class 0 found perfectly (AP 1), class 1 missed (AP 0), class 2 has no ground truth but a
    # false positive, class 3 has nothing. Mean over classes with ground truth: (1 + 0) / 2;
    # darknet's mean over all four classes: (1 + 0 + 0 + 0) / 4.
    box = [10, 10, 50, 50]
    truths = [truth([box, [60, 60, 90, 90]], [0, 1])]
    detections = [dets([box, [0, 60, 20, 90]], [0, 2], [0.9, 0.8])]
    result = evaluate(truths, detections, [(100, 100)], num_classes=4, names="abcd")
    assert (result.voc07, result.voc) == (0.5, 0.5)
    assert (result.voc07_all_classes, result.voc_all_classes) == (0.25, 0.25)
    assert result.coco == pytest.approx(0.5, abs=COCO_ROUNDING)
    assert result.coco50 == pytest.approx(0.5, abs=COCO_ROUNDING)
    assert result.classes_with_ground_truth == 2
    per_class = result.to_json()["per_class"]
    assert per_class["c"]["voc"] is None and per_class["c"]["detections"] == 1
    assert per_class["b"]["voc"] == 0.0
    table = result.format_table()
    assert "mean over the 2 classes with ground truth" in table
    assert "all 4 classes" in table and "25.00 %" in table


def test_report_figures_at_the_threshold():
    # thresh 0.25 (darknet counts scores strictly above it).
    # Image 1, class 0: A [0,0,10,10] found at IoU .8 by [0,0,10,8] (80 / 100), score .9 -> TP;
    #   a duplicate of A with IoU 1 but lower score .5 -> FP (the TP's IoU is .8, not 1);
    #   B [20,0,30,10] hit by [25,0,35,10], IoU 50/150 = 1/3 -> FP; B exactly, score .2 -> below.
    # Image 1, class 1: C [50,50,70,70] found by [52,50,70,70], IoU 360/400 = .9, score .3 -> TP.
    # Image 2: D [0,0,20,20] hit exactly at score .25, not above the threshold -> FN.
    # TP 2, FP 2, FN 4 - 2 = 2; precision = recall = F1 = .5; average IoU = (.8 + .9) / 4.
    truths = [truth([[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 70, 70]], [0, 0, 1]),
              truth([[0, 0, 20, 20]], [0])]
    detections = [dets([[0, 0, 10, 8], [0, 0, 10, 10], [25, 0, 35, 10], [20, 0, 30, 10],
                        [52, 50, 70, 70]], [0, 0, 0, 0, 1], [0.9, 0.5, 0.6, 0.2, 0.3]),
                  dets([[0, 0, 20, 20]], [0], [0.25])]
    result = evaluate(truths, detections, [(100, 100), (100, 100)], num_classes=2,
                      thresh_report=0.25)
    rep = result.report
    assert (rep.tp, rep.fp, rep.fn) == (2, 2, 2)
    assert (rep.precision, rep.recall, rep.f1) == (0.5, 0.5, 0.5)
    assert rep.average_iou == pytest.approx((0.8 + 0.9) / 4, abs=1e-15)
    assert [(c.tp, c.fp) for c in result.per_class] == [(1, 2), (1, 0)]
    assert result.to_json()["report"]["fn"] == 2
    assert "TP = 2, FP = 2, FN = 2, average IoU = 42.50 %" in result.format_table()


def test_iou_threshold_is_strict():
    # IoU exactly .5 (50 / 100) is not a match at iou_thresh .5 (VOC devkit: ovmax > ovthresh).
    result = evaluate([truth([[0, 0, 10, 10]], [0])], [dets([[0, 0, 10, 5]], [0], [0.9])],
                      [(20, 20)], num_classes=1, iou_thresh=0.5)
    assert result.voc == 0.0
    result = evaluate([truth([[0, 0, 10, 10]], [0])], [dets([[0, 0, 10, 5]], [0], [0.9])],
                      [(20, 20)], num_classes=1, iou_thresh=0.45)
    assert result.voc == 1.0


def test_evaluate_rejects_misuse():
    one = [truth([[0, 0, 10, 10]], [0])]
    with pytest.raises(ValueError, match="one ground truth"):
        evaluate(one, [], [(10, 10)], num_classes=1)
    with pytest.raises(ValueError, match="class ids"):
        evaluate(one, [dets([[0, 0, 1, 1]], [3], [0.5])], [(10, 10)], num_classes=2)
    with pytest.raises(ValueError, match="x2 >= x1"):
        evaluate(one, [dets([[5, 0, 1, 1]], [0], [0.5])], [(10, 10)], num_classes=1)
    with pytest.raises(ValueError, match="names"):
        evaluate(one, [no_dets()], [(10, 10)], num_classes=1, names=["a", "b"])


# ------------------------------------------------------------------ independent VOC evaluator


def reference_voc_ap(rec, prec, use_07_metric=False):
    """py-faster-rcnn's voc_ap (its np.arange(0., 1.1, 0.1) points are darknet's point * 0.1)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def reference_voc_eval(recs, det_lines, classname, ovthresh=0.5, use_07_metric=False):
    """py-faster-rcnn's voc_eval on in-memory annotations (no "+1": continuous coordinates).

    recs: {imagename: [{'name', 'bbox', 'difficult'}]}; det_lines: [(imagename, score, bbox)]
    of this class. Returns AP, or None when the class has no non-difficult object.
    """
    class_recs = {}
    npos = 0
    for imagename, objects in recs.items():
        R = [obj for obj in objects if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R]).reshape(-1, 4)
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    if npos == 0:
        return None
    image_ids = [x[0] for x in det_lines]
    confidence = np.array([x[1] for x in det_lines])
    BB = np.array([x[2] for x in det_lines]).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :]
        ovmax = -np.inf
        BBGT = R["bbox"]
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.0)
            ih = np.maximum(iymax - iymin, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0]) * (bb[3] - bb[1])
                   + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_voc_ap(rec, prec, use_07_metric)


def reference_map(truths, detections, num_classes, ovthresh, use_07_metric):
    recs = {i: [{"name": int(c), "bbox": list(b), "difficult": bool(h)}
                for b, c, h in zip(t.boxes, t.classes, t.difficult)]
            for i, t in enumerate(truths)}
    aps = []
    for c in range(num_classes):
        lines = [(i, float(s), list(b)) for i, d in enumerate(detections)
                 for b, k, s in zip(d.boxes, d.classes, d.scores) if k == c]
        ap = reference_voc_eval(recs, lines, c, ovthresh, use_07_metric)
        if ap is not None:
            aps.append(ap)
    return float(np.mean(aps))


# ----------------------------------------------------------------------- direct pycocotools


def direct_pycocotools(truths, detections, sizes, num_classes, folder: Path):
    """A plain pycocotools run from COCO JSON files: (stats, precision array)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (t, d, (w, h)) in enumerate(zip(truths, detections, sizes), start=1):
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        for (x1, y1, x2, y2), c, hard in zip(t.boxes.tolist(), t.classes.tolist(),
                                             t.difficult.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": c + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(hard)})
        for (x1, y1, x2, y2), c, s in zip(d.boxes.tolist(), d.classes.tolist(),
                                          d.scores.tolist()):
            results.append({"image_id": image_id, "category_id": c + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(num_classes)]
    gt_file, res_file = folder / "gt.json", folder / "results.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": categories}))
    res_file.write_text(json.dumps(results))
    coco_gt = COCO(str(gt_file))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval.stats, coco_eval.eval["precision"]


# --------------------------------------------------------------------------- random data sets


def synthetic_truths(rng, images=30, num_classes=6, size=(320, 240)):
    truths = []
    for _ in range(images):
        count = rng.integers(0, 8)
        wh = rng.uniform(4, 120, size=(count, 2))
        xy = rng.uniform(0, 1, size=(count, 2)) * (np.array(size) - wh)
        truths.append(truth(np.hstack([xy, xy + wh]), rng.integers(0, num_classes, count)))
    return truths, [size] * images


def coco128_truths(size=(640, 480)):
    """Real boxes of coco128 (relative coordinates), at a nominal image size: IoU does not
    depend on the scale and the COCO area ranges only need plausible pixel sizes."""
    truths = []
    for label_file in sorted((COCO128 / "labels").glob("*.txt")):
        rows = np.loadtxt(label_file, ndmin=2).reshape(-1, 5)
        xy, wh = rows[:, 1:3] * size, rows[:, 3:5] * size
        truths.append(truth(np.hstack([xy - wh / 2, xy + wh / 2]), rows[:, 0].astype(int)))
    return truths, [size] * len(truths)


def mark_difficult(rng, truths, fraction=0.1):
    return [truth(t.boxes, t.classes, rng.random(len(t.classes)) < fraction) for t in truths]


def jittered_detections(rng, truths, sizes, num_classes):
    """Per object: a jittered copy (80 %), a duplicate (15 %), a wrong class (10 %); plus a few
    random boxes per image; uniform random scores (ties have probability ~0)."""
    detections = []
    for t, (w, h) in zip(truths, sizes):
        boxes, classes = [], []
        for box, cls in zip(t.boxes, t.classes):
            extent = np.tile(box[2:] - box[:2], 2)
            for probability, label in ((0.8, cls), (0.15, cls),
                                       (0.1, (cls + 1) % num_classes)):
                if rng.random() < probability:
                    moved = box + rng.normal(0, 0.15, 4) * extent
                    boxes.append(np.concatenate([np.minimum(moved[:2], moved[2:]),
                                                 np.maximum(moved[:2], moved[2:])]))
                    classes.append(label)
        for _ in range(rng.integers(0, 4)):
            x1, y1 = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
            boxes.append([x1, y1, x1 + rng.uniform(2, w - x1), y1 + rng.uniform(2, h - y1)])
            classes.append(rng.integers(0, num_classes))
        detections.append(dets(boxes, classes, rng.random(len(classes))))
    return detections


def check_against_references(truths, detections, sizes, num_classes, tmp_path, iou_thresh):
    result = evaluate(truths, detections, sizes, num_classes, iou_thresh=iou_thresh)
    # Same arithmetic in another order (cumulative sums, envelope): rounding only, << 1e-9.
    assert result.voc07 == pytest.approx(
        reference_map(truths, detections, num_classes, iou_thresh, True), abs=1e-9)
    assert result.voc == pytest.approx(
        reference_map(truths, detections, num_classes, iou_thresh, False), abs=1e-9)
    stats, precision = direct_pycocotools(truths, detections, sizes, num_classes, tmp_path)
    # The same pycocotools code on the same numbers (JSON round-trips floats exactly).
    assert result.coco == pytest.approx(stats[0], abs=1e-12)
    assert result.coco50 == pytest.approx(stats[1], abs=1e-12)
    for c, per_class in enumerate(result.per_class):
        # COCOeval.summarize's reduction: area 'all' (index 0), maxDets 100 (index 2), the
        # entries > -1; iouThrs[0] is .5.
        for ours, p in ((per_class.coco, precision[:, :, c, 0, 2]),
                        (per_class.coco50, precision[0, :, c, 0, 2])):
            if np.any(p > -1):
                assert ours == pytest.approx(np.mean(p[p > -1]), abs=1e-12)
            else:
                assert math.isnan(ours)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_reference_evaluators_on_synthetic_data(seed, tmp_path, capsys):
    rng = np.random.default_rng(seed)
    truths, sizes = synthetic_truths(rng)
    truths = mark_difficult(rng, truths)
    detections = jittered_detections(rng, truths, sizes, num_classes=6)
    result = check_against_references(truths, detections, sizes, 6, tmp_path,
                                      iou_thresh=[0.5, 0.3, 0.5, 0.65][seed])
    assert 0.05 < result.voc < 0.95  # the data exercises both TPs and FPs


def test_coco_by_size_matches_all_twelve_pycocotools_stats(tmp_path, capsys):
    rng = np.random.default_rng(5)
    truths, sizes = synthetic_truths(rng, images=40)
    truths = mark_difficult(rng, truths)
    detections = jittered_detections(rng, truths, sizes, num_classes=6)
    result = evaluate(truths, detections, sizes, 6, coco_by_size=True)
    stats, _ = direct_pycocotools(truths, detections, sizes, 6, tmp_path)
    ours = list(result.coco_stats.values())
    assert len(ours) == 12
    for mine, theirs in zip(ours, stats):
        assert (math.isnan(mine) and theirs == -1) or mine == pytest.approx(theirs, abs=1e-12)
    # without by_size only the area-'all' figures are reported, and they are the same
    default = evaluate(truths, detections, sizes, 6).coco_stats
    assert list(default) == ["AP", "AP50", "AP75", "AR1", "AR10", "AR100"]
    assert all(default[k] == result.coco_stats[k] for k in default)


@pytest.mark.skipif(not (COCO128 / "labels").is_dir(),
                    reason="needs ../shared/data/coco128-train (real COCO boxes)")
@pytest.mark.parametrize("seed", [10, 11])
def test_matches_reference_evaluators_on_coco128_boxes(seed, tmp_path, capsys):
    rng = np.random.default_rng(seed)
    truths, sizes = coco128_truths()
    truths = mark_difficult(rng, truths, fraction=0.05 * (seed - 10))
    detections = jittered_detections(rng, truths, sizes, num_classes=80)
    check_against_references(truths, detections, sizes, 80, tmp_path, iou_thresh=0.5)


def test_pycocotools_output_stays_out_of_stdout(capsys):
    evaluate([truth([[0, 0, 10, 10]], [0])], [dets([[0, 0, 10, 10]], [0], [0.9])],
             [(20, 20)], num_classes=1)
    assert capsys.readouterr().out == ""
