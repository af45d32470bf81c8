"""A model shared by several threads gives what sequential calls give (issue: the INT8 layers
once quantized every call into one buffer per layer, so concurrent calls corrupted each other),
and the threads share the kernel thread budget instead of oversubscribing the cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from .conftest import BACKENDS, PHOTOS



def _variants() -> list[np.ndarray]:
    """24 different network inputs from the 5 test photos (flips, scales, crops)."""
    images = []
    for path in PHOTOS:
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        images += [image, image[:, ::-1].copy(), cv2.resize(image, (w // 2, h // 2)),
                   image[h // 4:, w // 5:].copy(), np.ascontiguousarray(image[::-1])]
    return images[:24]


def _key(dets) -> list[tuple]:
    return [(d.class_id, d.score, tuple(d.box)) for d in dets]


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_threads_give_the_sequential_results(backend, default_weights):
    import yolo8

    model = yolo8.load(backend=backend)
    images = _variants() * 3  # 72 detections, each input three times
    sequential = [_key(model.detect(im, thresh=0.1)) for im in images]
    assert sum(map(len, sequential)) > 50, "too few detections to compare"
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda im: _key(model.detect(im, thresh=0.1)), images))
    differ = [i for i, (a, b) in enumerate(zip(sequential, concurrent)) if a != b]
    assert not differ, f"{len(differ)} of {len(images)} results differ from sequential calls"


def test_concurrent_forwards_split_the_thread_budget():
    from yolo8 import threads

    budget = threads.get_num_threads()
    with threads.kernel_threads() as alone:
        assert alone == budget
    barrier = threading.Barrier(2, timeout=30)
    shares = []

    def forward() -> None:
        with threads.kernel_threads() as share:
            shares.append(share)
            barrier.wait()  # both are in flight here

    workers = [threading.Thread(target=forward) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sorted(shares) == [max(1, budget // 2)] * 2 or sorted(shares) == [max(1, budget // 2), budget]


def test_set_num_threads_checks_its_argument():
    import numba

    import yolo8

    before = yolo8.get_num_threads()
    try:
        yolo8.set_num_threads(1)
        assert yolo8.get_num_threads() == 1
        for bad in (0, numba.config.NUMBA_NUM_THREADS + 1, 1.5, True):
            with pytest.raises(ValueError, match="number of threads"):
                yolo8.set_num_threads(bad)
    finally:
        yolo8.set_num_threads(before)


WORKQUEUE_SCRIPT = r"""
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor
import cv2, yolo8
from yolo8 import threads
images = [cv2.imread(p) for p in sys.argv[1:]] * 4
model = yolo8.load(backend="int8")
seq = [[(d.class_id, d.score) for d in model.detect(im)] for im in images]
with ThreadPoolExecutor(4) as pool:
    par = list(pool.map(lambda im: [(d.class_id, d.score) for d in model.detect(im)], images))
print(json.dumps({"layer": threads.threading_layer(), "same": seq == par}))
"""


def test_workqueue_layer_serialises_calls_instead_of_aborting(tmp_path, default_weights):
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue",
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    out = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT, *map(str, PHOTOS[:3])],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"layer": "workqueue", "same": True}
