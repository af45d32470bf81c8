#!/usr/bin/env python3
"""`yolo8 map` throughput on one machine vs `--ray` with 1 and 2 actors of 1 thread.

Starts one Ray cluster of this machine on 127.0.0.1 (a head node with all the CPUs; RAY_TMPDIR
in a temporary folder), then runs, in rotation for `--rounds` rounds:

* `yolo8 map --data D` (the single-machine path: 2 decode threads, all cores for the kernels);
* `yolo8 map --data D --ray ADDRESS --ray-actors 1 --threads 1`;
* `yolo8 map --data D --ray ADDRESS --ray-actors 2 --threads 1`.

Each run is timed whole (process start to exit: Python, model load, the cluster's actors
starting, the metrics). For the Ray runs the driver's summary line also gives the rate after
the first result (the actors up and the model loaded), the steady throughput a long run
approaches. The data set is coco128-train repeated `--repeat` times when ../shared has it,
else tests/data's 5 photos repeated 25x as many times. Medians over the rounds.

    python scripts/bench_ray.py [--rounds 3] [--repeat 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import accuracy

ROOT = Path(__file__).resolve().parent.parent
SHARED_COCO = ROOT.parent / "shared" / "data" / "coco128-train"
NAMES = ROOT / "src" / "yolo8" / "cfg" / "coco.names"


def data_file(folder: Path, repeat: int) -> tuple[Path, int]:
    images = sorted((SHARED_COCO / "images").glob("*.jpg"))
    if not images:
        images = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
        repeat *= 25
    return accuracy.data_file(folder, images * repeat, NAMES), len(images) * repeat


def timed(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "yolo8", *args], capture_output=True,
                            text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"yolo8 {' '.join(args)} failed:\n{result.stderr}")
    return elapsed, result.stderr


def steady_rate(stderr: str) -> float | None:
    found = re.search(r"([\d.]+) after the first results\)", stderr)
    return float(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="y8b", dir="/tmp"))
    os.environ.update(RAY_TMPDIR=str(base), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    from ray.cluster_utils import Cluster

    data, images = data_file(base, args.repeat)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=os.cpu_count(), node_ip_address="127.0.0.1", include_dashboard=False,
        object_store_memory=200 * 2**20))
    runs = {"single machine": ["map", "--data", str(data)],
            "--ray, 1 actor x 1 thread": ["map", "--data", str(data), "--ray", cluster.address,
                                          "--ray-actors", "1", "--threads", "1"],
            "--ray, 2 actors x 1 thread": ["map", "--data", str(data), "--ray", cluster.address,
                                           "--ray-actors", "2", "--threads", "1"]}
    walls: dict[str, list[float]] = {name: [] for name in runs}
    steady: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for round_ in range(args.rounds):
            for name, command in runs.items():
                elapsed, stderr = timed(command)
                walls[name].append(elapsed)
                if (rate := steady_rate(stderr)) is not None:
                    steady[name].append(rate)
                print(f"round {round_ + 1}: {name}: {elapsed:.1f} s", file=sys.stderr)
    finally:
        cluster.shutdown()
        shutil.rmtree(base, ignore_errors=True)

    print(f"`yolo8 map` over {images} images; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; medians of {args.rounds} rounds\n")
    print("| | whole command | images/s | images/s after the first result |")
    print("|---|---|---|---|")
    figures = {}
    for name in runs:
        wall = statistics.median(walls[name])
        rate = statistics.median(steady[name]) if steady[name] else None
        figures[name] = {"seconds": walls[name], "images_per_s": images / wall,
                         "steady_images_per_s": steady[name]}
        shown = f"{rate:.1f}" if rate is not None else "-"
        print(f"| {name} | {wall:.1f} s | {images / wall:.1f} | {shown} |")
    if args.json:
        args.json.write_text(json.dumps({"images": images, "runs": figures}, indent=1))


if __name__ == "__main__":
    main()
