#!/usr/bin/env python3
"""ONNX Runtime on yolo8's exported models vs yolo8's own engines, on labelled photos.

For each backend: export the default model (INT8 with its shipped calibration, computed on the
first 64 photos of coco128-train: the last 64 are held out), run the export in ONNX Runtime
behind yolo8's own preprocessing, decoding and NMS, and compare with yolo8's engine:

- detections at --thresh (0.1): a box agrees when the other side has one of the same class
  with IoU >= 0.95 and a score within 0.02, counted both ways (tests/oracle.py: has_partner);
- mAP (`yolo8 map`'s evaluator): VOC 11-point and COCO AP@[.5:.95], in points.

`--nudge`: also yolo8 itself on inputs moved up by one float32 ulp (np.nextafter), the size of
change another engine's float rounding makes: how far the figures move without any export.

`--division-study N`: on the first N photos, how many INT8 conv inputs a plain QuantizeLinear
(x / scale with scale = threshold / 127, range [-128, 127]) would quantize differently from
yolo8 (round(x * 127 / threshold) in [-127, 127]): why the export multiplies, then clips.

    python scripts/check_onnx_export.py ../shared/data/coco128-train --last 64 [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/oracle.py: the box agreement rule and its counting

import yolo8  # noqa: E402
from accuracy import data_file  # noqa: E402
from tests.oracle import compare_detections  # noqa: E402
from yolo8.evaluate import MapOptions, run_map  # noqa: E402
from yolo8.export import ExportOptions, export_onnx  # noqa: E402
from yolo8.export.runtime import with_onnx_runtime  # noqa: E402
from yolo8.preprocess import read_image  # noqa: E402


class NudgedProgram:
    """A program run on its inputs moved one float32 ulp towards +inf."""

    def __init__(self, program) -> None:
        self.program = program

    def run(self, x, observer=None):
        import numpy as np

        return self.program.run(np.nextafter(x, np.float32(np.inf)), observer)


def nudged(model):
    twin = copy.copy(model)
    twin.program = NudgedProgram(model.program)
    return twin


def metrics(model, data: Path) -> dict:
    result = run_map(MapOptions(data=data, progress=False), model)
    return {"voc07": 100 * result.voc07, "coco": 100 * result.coco}


def division_study(images: list[Path]) -> dict:
    import numpy as np

    from yolo8.preprocess import to_blob

    model = yolo8.load(backend="int8")
    thresholds = model.program.quantization.thresholds
    values = differ = minus_128 = 0
    for path in images:
        inputs = {}
        model.program.run(to_blob([read_image(path)], *model.input_size),
                          observer=lambda layer, xs: inputs.__setitem__(layer.index, xs[0]))
        for index, threshold in thresholds.items():
            x = inputs[index]
            yolo8_q = np.clip(np.rint(x * np.float32(127 / threshold)), -127, 127)
            division_q = np.clip(np.rint(x / np.float32(threshold / 127)), -128, 127)
            values += x.size
            differ += int((yolo8_q != division_q).sum())
            minus_128 += int((division_q == -128).sum())
    return {"photos": len(images), "values": values, "differ": differ, "minus_128": minus_128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="darknet layout: images/, labels/, coco.names")
    parser.add_argument("--last", type=int, help="use the last N photos (default: all)")
    parser.add_argument("--thresh", type=float, default=0.1)
    parser.add_argument("--backends", nargs="+", default=["int8", "fp32"])
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--nudge", action="store_true")
    parser.add_argument("--division-study", type=int, metavar="N")
    args = parser.parse_args()
    images = sorted((args.dataset / "images").glob("*.jpg"))
    images = images[-args.last:] if args.last else images
    names = args.dataset / "coco.names"
    report = {"photos": len(images)}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_file(Path(tmp), images, names)
        for backend in args.backends:
            model = yolo8.load(backend=backend, names=names)
            onnx_path = export_onnx(model, Path(tmp) / f"{backend}.onnx",
                                    ExportOptions(dynamic_batch=True))
            runtime = with_onnx_runtime(model, onnx_path)
            ours, theirs = metrics(model, data), metrics(runtime, data)
            report[backend] = {
                "yolo8": ours, "onnxruntime": theirs,
                "difference": {k: theirs[k] - ours[k] for k in ours},
                "detections": compare_detections(model, runtime, images, args.thresh)}
            if args.nudge:
                moved = metrics(nudged(model), data)
                report[backend]["nudged"] = {
                    "yolo8": moved, "difference": {k: moved[k] - ours[k] for k in ours},
                    "detections": compare_detections(model, nudged(model), images, args.thresh)}
    print(f"{len(images)} photos; detections at thresh {args.thresh}, mAP in points")
    print("| backend | engine | VOC 11-point | COCO AP@[.5:.95] | boxes agreeing |")
    print("|---|---|---|---|---|")
    for backend in args.backends:
        r = report[backend]
        d = r["detections"]
        print(f"| {backend} | yolo8 | {r['yolo8']['voc07']:.2f} | {r['yolo8']['coco']:.2f} | |")
        print(f"| {backend} | ONNX Runtime | {r['onnxruntime']['voc07']:.2f} "
              f"({r['difference']['voc07']:+.2f}) | {r['onnxruntime']['coco']:.2f} "
              f"({r['difference']['coco']:+.2f}) | {d['agreed']} of {d['boxes']} "
              f"({100 * d['fraction']:.2f} %) |")
        if "nudged" in r:
            n, d = r["nudged"], r["nudged"]["detections"]
            print(f"| {backend} | yolo8, inputs + 1 ulp | {n['yolo8']['voc07']:.2f} "
                  f"({n['difference']['voc07']:+.2f}) | {n['yolo8']['coco']:.2f} "
                  f"({n['difference']['coco']:+.2f}) | {d['agreed']} of {d['boxes']} "
                  f"({100 * d['fraction']:.2f} %) |")
    if args.division_study:
        study = division_study(sorted((args.dataset / "images").glob("*.jpg"))[:args.division_study])
        report["division_study"] = study
        print(f"QuantizeLinear(x / scale) vs yolo8 on the INT8 conv inputs of {study['photos']} "
              f"photos: {study['differ']} of {study['values']} values differ "
              f"({study['minus_128']} of them -128)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
