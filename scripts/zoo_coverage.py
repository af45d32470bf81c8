"""Which darknet cfgs yolo8 runs, which OpenCV dnn runs, and whether their detections agree.

    python scripts/zoo_coverage.py CFG_FOLDER [--size 256] [--only yolov7] [--json out.json]

For every *.cfg of the folder (e.g. AlexeyAB/darknet's cfg/): the cfg at SIZE x SIZE (head
`thresh` set to 0 so OpenCV keeps every score), random weights in darknet's order
(tests/oracle.py), one photo of tests/data through both engines. Detections (score > 0.1)
are compared both ways: same class, IoU >= 0.95, score within 0.02. Both engines' candidate
boxes go through the same NMS (darknet's, with the cfg's nms_kind), so the comparison is of
the networks and their box decoding. Random weights make most boxes score alike, so the
threshold is the score of OpenCV's TOP-th best candidate (at least 0.01), and a detection
within 0.02 of it may go unmatched (the other engine may have it just below). A cfg yolo8 refuses gets a weights file holding the
header only for OpenCV (it reads past the end without complaint): its status then says only
whether OpenCV loads and runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/oracle.py: the cfg rewrite and the random weights writer

import yolo8  # noqa: E402  (sets the thread-pool environment before numpy is imported)
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tests.oracle import WEIGHTS_HEADER, cfg_for_opencv, random_weights  # noqa: E402
from yolo8.errors import Yolo8Error  # noqa: E402
from yolo8.graph import load_graph  # noqa: E402
from yolo8.layers import Region, Yolo  # noqa: E402
from yolo8.postprocess import Candidates, nms, nms_rule, to_detections  # noqa: E402
from yolo8.preprocess import read_image, to_blob  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "images" / "000000000009.jpg"
MIN_THRESH, TOP, NMS, IOU, SCORE = 0.01, 300, 0.45, 0.95, 0.02


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a with every box of b (left, top, right, bottom)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def unmatched(ours: list, theirs: list, thresh: float) -> int:
    """Detections of `ours` with no partner in `theirs` (same class, IoU, score), those near
    the threshold aside."""
    count = 0
    ours = [d for d in ours if d.score > thresh + SCORE]
    for k in {d.class_id for d in ours}:
        mine = [d for d in ours if d.class_id == k]
        other = [d for d in theirs if d.class_id == k]
        if not other:
            count += len(mine)
            continue
        iou = _iou_matrix(np.array([d.box for d in mine]), np.array([d.box for d in other]))
        close = np.abs(np.array([d.score for d in mine])[:, None]
                       - np.array([d.score for d in other])[None, :]) <= SCORE
        count += int((~((iou >= IOU) & close).any(axis=1)).sum())
    return count


def yolo8_detections(model, blob_nhwc: np.ndarray, thresh: float) -> list:
    """yolo8's detections on the blob, boxes in network pixels (no letterbox correction)."""
    w, h = model.input_size
    return model.detect_prepared(blob_nhwc, [(w, h)], thresh, NMS, letterbox=False)[0]


def opencv_rows(cfg: Path, weights: Path, blob_nhwc: np.ndarray) -> np.ndarray:
    """OpenCV's decoded rows: x, y, w, h relative, objectness, objectness x class prob."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob_nhwc.transpose(0, 3, 1, 2))
    return np.concatenate([o.reshape(-1, o.shape[-1]) for o in
                           net.forward(net.getUnconnectedOutLayersNames())]).astype(np.float64)


def threshold_for(rows: np.ndarray) -> float:
    scores = np.sort(rows[:, 5:].ravel())[::-1]
    return max(MIN_THRESH, float(scores[min(TOP, len(scores) - 1)]))


def opencv_detections(rows: np.ndarray, heads: list, size: int, thresh: float) -> list:
    """OpenCV's rows through darknet's NMS."""
    probs = rows[:, 5:].copy()
    probs[probs <= thresh] = 0.0
    alive = (probs > 0).any(axis=1)
    boxes, probs = rows[alive, :4], probs[alive]
    probs = nms(boxes, probs, NMS, nms_rule(heads))
    return to_detections(Candidates(boxes, probs), size, size, thresh, [])


def opencv_runs(cfg: Path, weights: Path, size: int) -> str:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(np.zeros((1, 3, size, size), np.float32))
    net.forward(net.getUnconnectedOutLayersNames())
    return "runs"


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = [line for line in text if line.strip()]
    return (text[-1] if text else type(exc).__name__)[:110]


def survey(cfg_path: Path, work: Path, size: int) -> dict:
    cfg = work / cfg_path.name
    cfg.write_text(cfg_for_opencv(cfg_path.read_text(errors="replace"), size, size))
    weights = work / (cfg_path.stem + ".weights")
    row = {"cfg": cfg_path.name, "opencv": "", "yolo8": "", "agreement": ""}
    model = None
    try:
        graph = load_graph(cfg)
        random_weights(graph, weights)
        model = yolo8.load(cfg, weights)
        model.forward(np.zeros((1, 3, size, size), np.float32))
        row["yolo8"] = "runs"
    except Yolo8Error as exc:
        row["yolo8"] = f"refused: {short(exc)}"
        weights.write_bytes(WEIGHTS_HEADER)
    except Exception as exc:  # a crash is a bug to report, not a refusal
        row["yolo8"] = f"CRASH: {type(exc).__name__}: {short(exc)}"
        traceback.print_exc()
        weights.write_bytes(WEIGHTS_HEADER)
    try:
        row["opencv"] = opencv_runs(cfg, weights, size)
    except cv2.error as exc:
        row["opencv"] = f"fails: {short(exc)}"
    if model is not None and any(c.xnor for c in model.graph.convolutions()):
        row["agreement"] = "n/a (xnor=1 layers: OpenCV runs them as float convs)"
    elif model is not None and row["opencv"] == "runs" and row["yolo8"] == "runs":
        blob = to_blob([read_image(PHOTO)], size, size)
        rows = opencv_rows(cfg, weights, blob)
        thresh = threshold_for(rows)
        ours = yolo8_detections(model, blob, thresh)
        theirs = opencv_detections(rows, model.heads, size, thresh)
        missing, extra = unmatched(theirs, ours, thresh), unmatched(ours, theirs, thresh)
        verdict = "equal" if not missing and not extra else "DIFFER"
        row["agreement"] = (f"{verdict} ({len(ours)} yolo8 / {len(theirs)} OpenCV, "
                            f"{extra} + {missing} unmatched, score > {thresh:.3f})")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--only", default="", help="only cfgs whose name contains this")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfgs = sorted(p for p in args.folder.glob("*.cfg") if args.only in p.name)
    rows = []
    print(f"| cfg | OpenCV {cv2.__version__} | yolo8 | detections |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in cfgs:
            start = time.perf_counter()
            row = survey(cfg, Path(tmp), args.size)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(f"| {row['cfg']} | {row['opencv']} | {row['yolo8']} | {row['agreement']} |",
                  flush=True)
    both = [r for r in rows if r["opencv"] == "runs"]
    print(f"\n{len(cfgs)} cfgs: OpenCV runs {len(both)}, yolo8 runs "
          f"{sum(r['yolo8'] == 'runs' for r in rows)}, of OpenCV's yolo8 runs "
          f"{sum(r['yolo8'] == 'runs' for r in both)}; detections equal on "
          f"{sum(r['agreement'].startswith('equal') for r in rows)}, differ on "
          f"{sum(r['agreement'].startswith('DIFFER') for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
