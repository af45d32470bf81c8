"""Which darknet cfgs yolo8 runs, which OpenCV dnn runs, and whether their detections agree.

    python scripts/zoo_coverage.py CFG_FOLDER [--size 256] [--only yolov7] [--json out.json]

For every *.cfg of the folder (e.g. AlexeyAB/darknet's cfg/): the cfg at SIZE x SIZE (head
`thresh` set to 0 so OpenCV keeps every score), random weights in darknet's order
(tests/oracle.py), one photo of tests/data (plus seeded noise) through both engines, and
their detections compared both ways: same class, IoU >= 0.95, score within 0.02 (the
threshold, NMS and near-tie rules are tests/oracle.py's compare_with_opencv). A cfg yolo8
refuses gets a weights file holding the header only for OpenCV (it reads past the end
without complaint): its status then says only whether OpenCV loads and runs it.
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

from tests.oracle import (WEIGHTS_HEADER, cfg_for_opencv, compare_with_opencv,  # noqa: E402
                          comparison_input, random_weights)
from yolo8.errors import Yolo8Error  # noqa: E402
from yolo8.graph import load_graph  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "images" / "000000000009.jpg"


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
        model = None
        weights.write_bytes(WEIGHTS_HEADER)
    except Exception as exc:  # a crash is a bug to report, not a refusal
        row["yolo8"] = f"CRASH: {type(exc).__name__}: {short(exc)}"
        traceback.print_exc()
        model = None
        weights.write_bytes(WEIGHTS_HEADER)
    try:
        row["opencv"] = opencv_runs(cfg, weights, size)
    except cv2.error as exc:
        row["opencv"] = f"fails: {short(exc)}"
    convs = model.graph.convolutions() if model is not None else []
    if model is not None and not model.graph.is_detector:
        row["agreement"] = "n/a (no detection head: scripts/zoo_coverage_classifiers.py)"
    elif any(c.xnor for c in convs):
        row["agreement"] = "n/a (xnor=1 layers: OpenCV runs them as float convs)"
    elif any(c.dilation > 1 or c.shares_weights_of is not None for c in convs):
        row["agreement"] = "n/a (OpenCV ignores dilation and share_index)"
    elif row["opencv"] == "runs" and row["yolo8"] == "runs":
        blob = comparison_input(PHOTO, size, size)
        found = compare_with_opencv(model, cfg, weights, blob)
        verdict = "equal" if found.equal else "DIFFER"
        row["agreement"] = (f"{verdict} ({found.ours} yolo8 / {found.theirs} OpenCV, "
                            f"{found.extra} + {found.missing} unmatched, {found.ties} near-tie "
                            f"swaps, score > {found.thresh:.3f})")
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
