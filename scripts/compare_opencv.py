#!/usr/bin/env python3
"""How often `yolo8 detect --json` and OpenCV's dnn module (an independent implementation of
darknet models) find the same detections, both ways.

A detection agrees when the other side has one of the same class with IoU >= 0.95 and a score
within 0.02. OpenCV's side: its darknet importer decodes the [yolo] outputs (class probabilities
times objectness), then per class `cv2.dnn.NMSBoxes` at the same NMS threshold.

    python scripts/compare_opencv.py ../shared/data/coco128-train/images --thresh 0.1
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np


def opencv_detections(net, image: np.ndarray, size: int, thresh: float, nms: float) -> list:
    h, w = image.shape[:2]
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (size, size), swapRB=True, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    found = []
    for k in range(rows.shape[1] - 5):
        idx = np.flatnonzero(rows[:, 5 + k] > thresh)
        if not len(idx):
            continue
        boxes = [[float((rows[i, 0] - rows[i, 2] / 2) * w), float((rows[i, 1] - rows[i, 3] / 2) * h),
                  float(rows[i, 2] * w), float(rows[i, 3] * h)] for i in idx]
        scores = rows[idx, 5 + k].astype(float).tolist()
        for j in np.asarray(cv2.dnn.NMSBoxes(boxes, scores, thresh, nms)).ravel():
            x, y, bw, bh = boxes[j]
            box = (max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h))
            found.append((k, scores[j], box))
    return found


def iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def agreed(det, pool) -> bool:
    return any(det[0] == o[0] and abs(det[1] - o[1]) <= 0.02 and iou(det[2], o[2]) >= 0.95
               for o in pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="a folder of images")
    parser.add_argument("--thresh", type=float, default=0.1)
    parser.add_argument("--nms", type=float, default=0.45)
    args = parser.parse_args()

    from yolo8 import models
    from yolo8.inputs import list_folder

    paths = [args.images / p for p in list_folder(args.images)]  # what `yolo8 detect` reads
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dets.json"
        subprocess.run([sys.executable, "-m", "yolo8", "detect", str(args.images), "--no-save",
                        "--quiet", "--thresh", str(args.thresh), "--nms", str(args.nms),
                        "--json", str(out), "--resize", "opencv"],  # OpenCV's input, as below
                       check=True)
        ours_json = json.loads(out.read_text())
        # OpenCV zeroes class probabilities below the cfg's [yolo] `thresh` (default 0.2)
        cfg = Path(tmp) / "model.cfg"
        text = re.sub(r"(?m)^\[yolo\]\s*$", "[yolo]\nthresh=0", models.default_cfg().read_text())
        cfg.write_text(text)
        net = cv2.dnn.readNetFromDarknet(str(cfg), str(models.default_weights()))
    ours_by_file: dict[str, list] = {}
    for e in ours_json:
        x, y, w, h = e["bbox"]
        ours_by_file.setdefault(Path(e["file"]).name, []).append((e["category_id"], e["score"],
                                                                   (x, y, x + w, y + h)))
    total_ours = total_theirs = agree_ours = agree_theirs = 0
    for path in paths:
        ours = ours_by_file.get(path.name, [])
        theirs = opencv_detections(net, cv2.imread(str(path)), 416, args.thresh, args.nms)
        total_ours += len(ours)
        total_theirs += len(theirs)
        agree_ours += sum(agreed(d, theirs) for d in ours)
        agree_theirs += sum(agreed(d, ours) for d in theirs)
    print(f"{len(paths)} images, thresh {args.thresh}, nms {args.nms}")
    print(f"yolo8 detections found by OpenCV: {agree_ours}/{total_ours} = "
          f"{100 * agree_ours / max(total_ours, 1):.2f} %")
    print(f"OpenCV detections found by yolo8: {agree_theirs}/{total_theirs} = "
          f"{100 * agree_theirs / max(total_theirs, 1):.2f} %")


if __name__ == "__main__":
    main()
