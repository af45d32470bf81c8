"""bf16 against FP32: `yolo8 map` on coco128-train (all 128 photos, then each half), the default
model and darknet's preprocessing. bf16 has no calibration, so every photo is held out.

    python scripts/accuracy_bf16.py [COCO128_FOLDER] [--resize darknet|opencv] [--all-bf16]

Prints a Markdown table (VOC 11-point, VOC all-point, COCO AP@[.5:.95], COCO AP@.5, in %), with
bf16's difference to FP32 on the same photos (the backend's default: the first conv and the
convs feeding the heads in FP32). --all-bf16 adds rows with every conv in bf16.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from accuracy import DEFAULT_DATA, data_file, measure, row


def measure_all_bf16(folder: Path, images: list[Path], resize: str) -> dict:
    """Every conv in bf16 (in this process: the CLI has no option for it)."""
    import json

    import yolo8
    from yolo8.backends import bf16
    from yolo8.evaluate import MapOptions, run_map

    data = data_file(folder, images, images[0].parent.parent / "coco.names")
    out = folder / "metrics.json"
    model = yolo8.load(backend="bf16", resize=resize)
    model.program = bf16.build(model.graph, keep_fp32=())
    run_map(MapOptions(data=data, resize=resize, json_path=out, progress=False), model)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--resize", choices=("darknet", "opencv"), default="darknet")
    parser.add_argument("--all-bf16", action="store_true")
    args = parser.parse_args()
    images = sorted((args.folder / "images").glob("*.jpg"))
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, subset in (("all 128", images), ("first 64", images[:64]),
                              ("last 64", images[64:])):
            base = measure(Path(tmp), subset, args.resize)
            lines.append(row(f"FP32, {label}", base))
            lines.append(row(f"bf16, {label}",
                             measure(Path(tmp), subset, args.resize, "--backend", "bf16"), base))
            if args.all_bf16:
                lines.append(row(f"bf16, every conv, {label}",
                                 measure_all_bf16(Path(tmp), subset, args.resize), base))
    print(f"resize: {args.resize}\n")
    print("| | VOC 11-point | VOC all-point | COCO AP@[.5:.95] | COCO AP@.5 |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
