#!/usr/bin/env python3
"""Where a forward's time goes: median milliseconds per layer, yolo8's backends side by side.

Each backend runs in its own process (compiled for --target, a numba cache per target, the
`yolo8` command's thread-pool settings: scripts/bench.py's run_worker), the two in rotation
for --rounds rounds of --iters forwards; a layer's figure is the median of its per-forward
times over all rounds.

    python scripts/layer_times.py --target avx2 [--rounds 3] [--iters 10] [--backends fp32,int8,bf16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench import run_worker, target_worker_env

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "images" / "000000000009.jpg"


def worker(backend: str, iters: int) -> dict:
    import yolo8
    from yolo8.preprocess import read_image, to_blob

    model = yolo8.load(backend=backend)
    x = to_blob([read_image(PHOTO)], 416, 416)
    steps = model.program.steps
    times: dict[int, list[float]] = {i: [] for i in range(len(steps))}
    for i, step in enumerate(steps):
        def timed(*inputs, _op=step.op, _i=i):
            start = time.perf_counter()
            out = _op(*inputs)
            times[_i].append(time.perf_counter() - start)
            return out
        step.op = timed
    for _ in range(3):
        model.forward_nhwc(x)
    for t in times.values():
        t.clear()
    for _ in range(iters):
        model.forward_nhwc(x)
    rows = []
    for i, step in enumerate(steps):
        layer = step.layer
        rows.append({"index": layer.index, "kind": type(layer).__name__,
                     "shape": _describe(layer), "ms": [1000 * t for t in times[i]]})
    return {"rows": rows}


def _describe(layer) -> str:
    """in HxWxC, and for a conv ->filters kxk /stride."""
    shape = getattr(layer, "in_shape", None)
    text = "" if shape is None else f"{shape.h}x{shape.w}x{shape.c}"
    if hasattr(layer, "filters"):
        text += f"->{layer.filters} {layer.size}x{layer.size}/{layer.stride}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--target", default="native")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--backends", default="fp32,int8", help="comma-separated, fp32 first")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    env = target_worker_env(args.target)
    backends = args.backends.split(",")
    if backends[0] != "fp32":
        raise SystemExit("--backends: fp32 first (the ratios are against it)")
    per_backend: dict[str, list] = {b: [] for b in backends}
    for _ in range(args.rounds):
        for backend in per_backend:
            out = run_worker([backend, str(args.iters)], env, script=__file__)
            per_backend[backend].append(out["rows"])
    others = backends[1:]
    print(f"target {args.target}: median ms per layer over {args.rounds} x {args.iters} forwards")
    print(f"{'layer':>5s} {'kind':14s} {'shape':26s} " + " ".join(f"{b:>7s}" for b in backends)
          + " " + " ".join(f"{b + '/fp32':>9s}" for b in others))
    totals = dict.fromkeys(backends, 0.0)
    for i, row in enumerate(per_backend["fp32"][0]):
        med = {b: statistics.median(t for run in runs for t in run[i]["ms"]) for b, runs in per_backend.items()}
        for b in totals:
            totals[b] += med[b]
        print(f"{row['index']:5d} {row['kind']:14s} {row['shape']:26s} "
              + " ".join(f"{med[b]:7.2f}" for b in backends) + " "
              + " ".join(f"{med[b] / max(med['fp32'], 1e-9):9.2f}" for b in others))
    print(f"{'sum':>5s} {'':14s} {'':26s} " + " ".join(f"{totals[b]:7.2f}" for b in backends)
          + " " + " ".join(f"{totals[b] / totals['fp32']:9.2f}" for b in others))

if __name__ == "__main__":
    main()
