"""The README's accuracy table: `yolo8 map` on coco128-train, FP32 and INT8, with the default
model (yolov3-tiny) and darknet's preprocessing (or --resize opencv).

    python scripts/accuracy.py [COCO128_FOLDER] [--resize darknet|opencv]

Rows: all 128 photos (FP32; INT8 with the shipped calibration, made on the first 64), then each
half in FP32 and in INT8 calibrated on the other half (held-out photos). Prints a Markdown table
(VOC 11-point, VOC all-point, COCO AP@[.5:.95], COCO AP@.5, in %) and darknet's mean over all 80
classes (11-point). Takes about two minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "coco128-train"
METRICS = ("voc07", "voc", "coco", "coco50")


def yolo8(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "yolo8", *map(str, args)], check=True, timeout=1800,
                   stdout=subprocess.DEVNULL)


def data_file(folder: Path, images: list[Path], names: Path) -> Path:
    """A darknet .data file for `yolo8 map` (80 classes, `names`) listing `images`:
    folder/valid.txt and folder/set.data; returns the latter. Also used by the other scripts."""
    listing = folder / "valid.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    data = folder / "set.data"
    data.write_text(f"classes = 80\nvalid = {listing}\nnames = {names}\n")
    return data


def measure(folder: Path, images: list[Path], resize: str, *extra: object) -> dict:
    data = data_file(folder, images, images[0].parent.parent / "coco.names")
    out = folder / "metrics.json"
    yolo8("map", "--data", data, "--json", out, "--resize", resize, "--no-progress", *extra)
    return json.loads(out.read_text())


def calibrate(folder: Path, images: list[Path], resize: str, name: str) -> Path:
    listing, out = folder / f"{name}.txt", folder / f"{name}.calibration.json"
    listing.write_text("".join(f"{p}\n" for p in images))
    yolo8("calibrate", "--images", listing, "--out", out, "--resize", resize, "--no-progress")
    return out


def row(label: str, metrics: dict, base: dict | None = None) -> str:
    cells = []
    for key in METRICS:
        value = 100 * metrics[key]
        delta = f" ({value - 100 * base[key]:+.2f})" if base and key in ("voc07", "coco") else ""
        cells.append(f"{value:.2f}{delta}")
    return f"| {label} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--resize", choices=("darknet", "opencv"), default="darknet")
    args = parser.parse_args()
    images = sorted((args.folder / "images").glob("*.jpg"))
    first, last = images[:64], images[64:]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        on_first = calibrate(folder, first, args.resize, "first64")
        on_last = calibrate(folder, last, args.resize, "last64")
        fp32_all = measure(folder, images, args.resize)
        lines = [row("FP32, all 128 photos", fp32_all)]
        shipped = ["--backend", "int8"] if args.resize == "darknet" else [
            "--backend", "int8", "--calibration", on_first]
        lines.append(row("INT8 (calibrated on the first 64), all 128",
                         measure(folder, images, args.resize, *shipped)))
        for label, half, calibration in (("last 64", last, on_first), ("first 64", first, on_last)):
            base = measure(folder, half, args.resize)
            lines.append(row(f"FP32, {label} photos", base))
            other = "first" if label == "last 64" else "last"
            lines.append(row(f"INT8 calibrated on the {other} 64, {label}",
                             measure(folder, half, args.resize, "--backend", "int8",
                                     "--calibration", calibration), base))
    print(f"resize: {args.resize}\n")
    print("| | VOC 11-point | VOC all-point | COCO AP@[.5:.95] | COCO AP@.5 |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\ndarknet's mean over all 80 classes, FP32, 11-point: "
          f"{100 * fp32_all['voc07_all_classes']:.2f} %")


if __name__ == "__main__":
    main()
