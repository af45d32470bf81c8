"""Benchmark: XNOR conv vs yolo8's FP32 conv of the same layer, in the same process.

`conv2d_xnor` (input packing and epilogue included, allocating its output, as the network
calls it) against `Fp32Conv(w, b, stride, pad, 1, LEAKY)` with its automatic method
(Winograd for 3x3 stride 1, else the implicit GEMM). Both run in this process, interleaved
in rounds (A B A B ...: a burst of load on the machine hits both); each round times
`--repeats` calls of each and the table gives the medians over all calls and the median
of the per-round ratios.

--single-thread runs both on one thread (NUMBA_NUM_THREADS = OPENBLAS_NUM_THREADS = 1)
and times process CPU time instead of wall time: a per-core ratio that stays meaningful
when other jobs share the machine.

--baseline FILE adds a column for another xnor.py (e.g. the previous version:
`git show HEAD~1:src/yolo8/kernels/xnor.py > /tmp/xnor_old.py`), timed in the same rounds;
xnor and baseline take turns running first after fp32 (F X B, F B X, ...).

--ghz F adds the share of the popcount bound each xnor call reaches: 3 vector ops (xor,
popcount, add) per 16 channels x 32-bit word of every window, at 2 zmm ops per cycle per
core (AVX-512 on Zen 4) and F GHz.

Usage: python scripts/kernel_bench_xnor.py [--rounds R] [--repeats K] [--single-thread]
                                            [--baseline FILE] [--ghz F]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

if __name__ == "__main__" and "--single-thread" in sys.argv:
    # Must be set before numpy (OpenBLAS) and numba start their thread pools.
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = "1"

import numba  # noqa: E402
import numpy as np  # noqa: E402

from yolo8.kernels import xnor  # noqa: E402
from yolo8.kernels.activations import LEAKY  # noqa: E402
from yolo8.kernels.conv_fp32 import Fp32Conv  # noqa: E402

# (H, W, Cin, Cout, size, stride): the five 3x3 layers of issue 5 first, then others.
SHAPES = [
    (52, 52, 128, 256, 3, 1),
    (26, 26, 256, 512, 3, 1),
    (13, 13, 512, 1024, 3, 1),
    (104, 104, 64, 128, 3, 1),
    (208, 208, 32, 64, 3, 1),
    (208, 208, 16, 32, 3, 1),
    (13, 13, 1024, 256, 1, 1),
    (52, 52, 128, 256, 3, 2),
]


def load_module(path: str):
    """Import an xnor.py from a file path as its own module, inside yolo8.kernels (its
    relative imports, `from ..jit import CACHE`, resolve there)."""
    spec = importlib.util.spec_from_file_location("yolo8.kernels.xnor_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int, clock) -> list[float]:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def popcount_bound_ms(h: int, w: int, cin: int, cout: int, size: int, stride: int,
                      ghz: float, threads: int) -> float:
    pad = size // 2
    ho = (h + 2 * pad - size) // stride + 1
    wo = (w + 2 * pad - size) // stride + 1
    words = size * size * -(-cin // 32)
    vector_ops = 3 * ho * wo * -(-cout // 16) * words
    return vector_ops / 2 / (ghz * 1e9) / threads * 1e3


def bench_shape(shape, args, clock, baseline) -> dict:
    h, w, cin, cout, size, stride = shape
    pad = size // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, h, w, cin), dtype=np.float32)
    wf = (rng.standard_normal((cout, size, size, cin), dtype=np.float32) * 0.05).astype(np.float32)
    bias = rng.standard_normal(cout, dtype=np.float32)
    fp32 = Fp32Conv(wf, bias, stride, pad, 1, LEAKY)
    packed = xnor.XnorConvWeights.from_float(wf)
    runs = {
        "fp32": lambda: fp32(x),
        "xnor": lambda: xnor.conv2d_xnor(x, packed, bias, stride, pad, LEAKY),
    }
    if baseline is not None:
        old_packed = baseline.XnorConvWeights.from_float(wf)
        runs["baseline"] = lambda: baseline.conv2d_xnor(x, old_packed, bias, stride, pad, LEAKY)
    for run in runs.values():  # compile or load from the cache, warm up
        run()
        run()
    times = {name: [] for name in runs}
    ratios = []
    for round_index in range(args.rounds):
        medians = {}
        # xnor and baseline take turns right after fp32, whose buffers leave the caches cold.
        order = list(runs) if round_index % 2 == 0 else ["fp32", *reversed(list(runs)[1:])]
        for name in order:
            block = timed(runs[name], args.repeats, clock)
            times[name] += block
            medians[name] = statistics.median(block)
        ratios.append(medians["fp32"] / medians["xnor"])
    result = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    result["xnor_min"] = min(times["xnor"]) * 1e3
    result["ratio"] = statistics.median(ratios)
    result["method"] = fp32.method
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--single-thread", action="store_true")
    parser.add_argument("--baseline", help="another xnor.py to time alongside")
    parser.add_argument("--ghz", type=float, help="core clock, for the popcount-bound column")
    parser.add_argument("--shapes", type=int, nargs="*", help="indices into SHAPES")
    args = parser.parse_args()
    clock = time.process_time if args.single_thread else time.perf_counter
    threads = numba.get_num_threads()
    baseline = load_module(args.baseline) if args.baseline else None
    shapes = [SHAPES[i] for i in args.shapes] if args.shapes else SHAPES
    print(f"# {platform.machine()}, {threads} thread(s), clock {clock.__name__}, "
          f"numpy {np.__version__}, numba {numba.__version__}, uptime load "
          f"{os.getloadavg()[0]:.2f}")
    print("# medians in ms; ratio = median over rounds of fp32 / xnor (same process, "
          "interleaved)")
    header = f"{'layer':>28} {'fp32':>14} {'xnor':>7} {'min':>7} {'ratio':>6}"
    if baseline is not None:
        header += f" {'baseline':>9} {'ratio':>6}"
    if args.ghz:
        header += f" {'bound':>6} {'share':>6}"
    print(header)
    for shape in shapes:
        h, w, cin, cout, size, stride = shape
        r = bench_shape(shape, args, clock, baseline)
        name = f"{h}x{w}x{cin}->{cout} {size}x{size}/{stride}"
        line = (f"{name:>28} {r['fp32']:7.3f} {r['method']:>6} {r['xnor']:7.3f}"
                f" {r['xnor_min']:7.3f} {r['ratio']:6.2f}")
        if baseline is not None:
            line += f" {r['baseline']:9.3f} {r['fp32'] / r['baseline']:6.2f}"
        if args.ghz:
            bound = popcount_bound_ms(*shape, args.ghz, threads)
            line += f" {bound:6.3f} {bound / r['xnor_min']:6.0%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
