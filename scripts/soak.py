#!/usr/bin/env python3
"""Soak test: many detections from several threads on one shared model; RSS must stay flat.

    python scripts/soak.py [--backend int8] [--forwards 10000] [--threads 4] [--max-growth-mb 30]

Every result is compared with the sequential result for the same image (any difference is an
error), and the process's resident memory is sampled as it goes. Exit status 1 when a result
differs, a call raises, or RSS grows by more than --max-growth-mb between the end of the
warm-up (the first 10 % of the calls: allocator pools and per-thread buffers fill up) and the end.
Not part of the test suite (it takes minutes); the README quotes its output.
"""
from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

import yolo8

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Current resident set size in MB (from /proc; ru_maxrss would only give the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--forwards", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-growth-mb", type=float, default=30.0)
    args = parser.parse_args()

    images = [cv2.imread(str(p)) for p in sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))]
    model = yolo8.load(backend=args.backend)
    key = lambda dets: [(d.class_id, d.score, d.box) for d in dets]  # noqa: E731
    expected = [key(model.detect(im)) for im in images]

    lock = threading.Lock()
    state = {"done": 0, "differ": 0, "errors": 0}
    samples: list[tuple[int, float]] = []
    warmup = max(1, args.forwards // 10)

    def one(i: int) -> None:
        try:
            same = key(model.detect(images[i % len(images)])) == expected[i % len(images)]
        except Exception as exc:  # counted and reported: the soak must see every failure
            print(f"call {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
            same, failed = False, True
        else:
            failed = False
        with lock:
            state["done"] += 1
            state["differ"] += not same and not failed
            state["errors"] += failed
            if state["done"] % 500 == 0 or state["done"] == warmup:
                samples.append((state["done"], rss_mb()))

    start = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, range(args.forwards)))
    elapsed = time.perf_counter() - start
    samples.append((state["done"], rss_mb()))

    after_warmup = next(mb for n, mb in samples if n >= warmup)
    growth = samples[-1][1] - after_warmup
    print(f"{args.backend}, {args.threads} threads, {state['done']} detections in {elapsed:.0f} s "
          f"({state['done'] / elapsed:.1f}/s): {state['differ']} differ from sequential, "
          f"{state['errors']} raised")
    print("RSS MB by calls done: " + ", ".join(f"{n}: {mb:.0f}" for n, mb in samples))
    print(f"RSS after warm-up ({warmup} calls) {after_warmup:.1f} MB, at the end "
          f"{samples[-1][1]:.1f} MB: growth {growth:+.1f} MB (bound {args.max_growth_mb} MB)")
    ok = state["differ"] == 0 and state["errors"] == 0 and growth <= args.max_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
