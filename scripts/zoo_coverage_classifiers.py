#!/usr/bin/env python3
"""Which darknet classifier cfgs yolo8 runs, and whether its top-5 equals OpenCV dnn's.

For every cfg of CFG_FOLDER without a detection head ([yolo], [region], [detection],
[Gaussian_yolo]): a copy at a small input size (--size; [crop] sizes scaled along), random
weights (tests/oracle.py), one photo through yolo8's FP32 engine and through OpenCV's darknet
importer (an independent implementation), and the top-5 of both. OpenCV does not run [crop] as
darknet does at test time; for such cfgs it runs without the [crop] section on the input
cropped and mapped to 2x - 1 outside, as darknet's crop layer does ("ok, crop outside").

    python scripts/zoo_coverage_classifiers.py CFG_FOLDER [--size 64] [--divide 8]
    python scripts/zoo_coverage_classifiers.py CFG_FOLDER --shrink-into tests/data/cfg NAME...

--divide N divides every filters= and output= by N (keeps the structure, N^2 fewer weights);
--shrink-into writes those copies (for the tests) instead of measuring.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PHOTO = ROOT / "tests" / "data" / "images" / "000000000025.jpg"
HEADS = re.compile(r"(?mi)^\s*\[(yolo|region|detection|gaussian_yolo)\]")


SECTION = re.compile(r"(?m)^\s*\[")


def _setting(text: str, key: str, value) -> str:
    """`key=<int>` set to value(old) (a callable) or value, in every line that has it."""
    change = value if callable(value) else (lambda _: value)
    return re.sub(rf"(?m)^(\s*{key}\s*=\s*)(\d+)", lambda m: f"{m.group(1)}{change(int(m.group(2)))}",
                  text)


def shrink(text: str, size: int, divide: int) -> str:
    """The cfg at input size x size ([crop] to size - size // 8), the filters=, output= and
    conv groups= / divide, except the last weighted layer's (the classes)."""
    starts = [m.start() for m in SECTION.finditer(text)]
    parts = [text[:starts[0]]] + [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    weighted = [i for i, part in enumerate(parts) if re.search(r"(?m)^\s*(filters|output)\s*=", part)]
    smaller = lambda n: max(1, n // divide)  # noqa: E731
    for i, part in enumerate(parts):
        name = part.strip().split("]", 1)[0].lstrip("[").lower()
        if name in ("net", "network"):
            part = _setting(_setting(part, "width", size), "height", size)
        elif name == "crop":
            part = _setting(_setting(part, "crop_width", size - size // 8), "crop_height",
                            size - size // 8)
        elif name in ("convolutional", "conv", "connected", "conn") and i != weighted[-1]:
            part = _setting(_setting(part, "filters", smaller), "output", smaller)
            if name in ("convolutional", "conv"):
                part = _setting(part, "groups", smaller)
        parts[i] = part
    return "".join(parts)


def top5(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-scores.ravel(), kind="stable")[:5]]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    lines = [line for line in text if "error:" in line] or text or [type(exc).__name__]
    return lines[-1].strip().split("/")[-1][:110]  # the cfg's name, not the temporary folder


def measure(cfg_text: str, folder: Path, name: str) -> tuple[str, str, str]:
    import yolo8
    from yolo8.graph import load_graph
    from yolo8.preprocess import read_image, to_blob
    from tests.oracle import opencv_last_output, random_weights

    cfg, weights = folder / name, folder / "model.weights"
    cfg.write_text(cfg_text)
    try:
        graph = load_graph(cfg)
        random_weights(graph, weights)
        model = yolo8.load(cfg, weights)
        w, h = model.input_size
        blob = to_blob([read_image(PHOTO)], w, h, crop=True,
                       channels=model.graph.net.channels).transpose(0, 3, 1, 2).copy()
        ours = model.forward(blob)[0].reshape(1, -1)
    except Exception as exc:  # reported, the survey goes on
        return f"refused: {first_line(exc)}", "not tried (no weights)", "-"
    try:
        theirs = opencv_last_output(cfg, weights, blob, graph)
        status = "ok, crop outside" if "[crop]" in cfg_text else "ok"
    except cv2.error as exc:
        return "ok", f"fails: {first_line(exc)}", "-"
    if re.search(r"(?m)^\s*temperature\s*=\s*(?!1\s*$)", cfg_text):
        status += " (ignores temperature)"
    if re.search(r"(?m)^\s*xnor\s*=\s*1", cfg_text):
        return "ok", status + " (runs xnor=1 as a float conv)", "not comparable"
    if theirs.shape != ours.shape:
        return "ok", status, f"shapes differ {ours.shape} {theirs.shape}"
    same = top5(ours[0]) == top5(theirs[0])
    gap = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-30))
    return "ok", status, f"{'equal' if same else 'DIFFERENT'} (max rel. diff {gap:.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("names", nargs="*", help="only these cfgs (file names)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--divide", type=int, default=8)
    parser.add_argument("--shrink-into", type=Path)
    args = parser.parse_intermixed_args()
    cfgs = [p for p in sorted(args.folder.glob("*.cfg")) if not HEADS.search(p.read_text())]
    if args.names:
        cfgs = [p for p in cfgs if p.name in args.names]
    if args.shrink_into:
        for path in cfgs:
            note = (f"# {path.name} of AlexeyAB/darknet's cfg/ folder, shrunk for the tests by "
                    f"scripts/zoo_coverage_classifiers.py: input {args.size}x{args.size}, "
                    f"filters and outputs / {args.divide}\n")
            (args.shrink_into / path.name).write_text(
                note + shrink(path.read_text(), args.size, args.divide))
        return
    print(f"cfg | OpenCV {cv2.__version__} | yolo8 | top-5 ({args.size}x{args.size}, random "
          f"weights, filters / {args.divide})")
    print("---|---|---|---")
    with tempfile.TemporaryDirectory() as tmp:
        for path in cfgs:
            ours, theirs, agreement = measure(shrink(path.read_text(), args.size, args.divide),
                                              Path(tmp), path.name)
            print(f"{path.name} | {theirs} | {ours} | {agreement}", flush=True)


if __name__ == "__main__":
    main()
