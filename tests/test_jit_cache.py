"""numba's on-disk cache really serves the kernels (parallel ones included) to a new process:
the first process compiles, the second loads everything and compiles nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys, importlib, pkgutil
import numpy as np
import yolo8, yolo8.kernels
from numba.core.dispatcher import Dispatcher
from yolo8.preprocess import read_image
image = read_image(sys.argv[1])
for backend in ("fp32", "int8"):
    yolo8.load(backend=backend).detect(image, thresh=0.05)
hits, misses = 0, {}
modules = [importlib.import_module(f"yolo8.kernels.{m.name}")
           for m in pkgutil.iter_modules(yolo8.kernels.__path__)]
modules += [importlib.import_module(m) for m in ("yolo8.postprocess", "yolo8.quant.collect")]
for module in modules:
    for name, obj in vars(module).items():
        if isinstance(obj, Dispatcher) and obj.signatures:
            hits += sum(obj.stats.cache_hits.values())
            missed = sum(obj.stats.cache_misses.values())
            if missed:
                misses[f"{module.__name__}.{name}"] = missed
print(json.dumps({"hits": hits, "misses": misses}))
"""


def _run(cache_dir, image) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(image)], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_every_kernel_from_the_cache(tmp_path, test_images, default_weights):
    first = _run(tmp_path, test_images[0])
    assert first["misses"], "a fresh cache directory must compile"
    second = _run(tmp_path, test_images[0])
    assert second["misses"] == {}, f"compiled again: {second['misses']}"
    # kernels called only from other kernels are compiled into their callers' cache entries,
    # so the second process dispatches (and counts hits for) the top-level ones only
    assert second["hits"] >= 5
