"""Benchmark: XNOR conv (input packing included) vs the same layer in FP32 (im2col + numpy sgemm).

Both run in this process, interleaved in rounds (the OpenBLAS and numba thread pools
spin for a while after their calls, so each side is timed in blocks and the medians
over all blocks are compared).

--single-thread runs both on one thread (NUMBA_NUM_THREADS = OPENBLAS_NUM_THREADS = 1)
and times process CPU time instead of wall time: a per-core ratio that stays meaningful
when other jobs share the machine (wall times then come in scheduler slices).

Usage: python scripts/kernel_bench_xnor.py [--rounds R] [--repeats K] [--single-thread]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

if __name__ == "__main__" and "--single-thread" in sys.argv:
    # Must be set before numpy (OpenBLAS) and numba start their thread pools.
    for var in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402

from yolo8.kernels.activations import LEAKY  # noqa: E402
from yolo8.kernels.xnor import (  # noqa: E402
    XnorConvWeights,
    _xnor_conv,
    conv2d_xnor,
    pack_input_bits,
)

# (H, W, Cin, Cout, size, stride)
SHAPES = [
    (52, 52, 128, 256, 3, 1),
    (26, 26, 256, 512, 3, 1),
    (13, 13, 512, 1024, 3, 1),
    (104, 104, 64, 128, 3, 1),
    (208, 208, 16, 32, 3, 1),
    (13, 13, 1024, 256, 1, 1),
    (52, 52, 128, 256, 3, 2),
]


def fp32_conv(x: np.ndarray, w2d: np.ndarray, size: int, stride: int, pad: int) -> np.ndarray:
    """The FP32 baseline: numpy im2col, then one sgemm."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (h + 2 * pad - size) // stride + 1
    wo = (w + 2 * pad - size) // stride + 1
    cols = np.empty((n, ho, wo, size, size, c), dtype=np.float32)
    for ky in range(size):
        for kx in range(size):
            rows = slice(ky, ky + stride * ho, stride)
            columns = slice(kx, kx + stride * wo, stride)
            cols[:, :, :, ky, kx, :] = padded[:, rows, columns, :]
    y = cols.reshape(n * ho * wo, -1) @ w2d
    return y.reshape(n, ho, wo, -1)


def timed(fn, repeats: int, clock=time.perf_counter) -> list[float]:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single-thread", action="store_true")
    args = parser.parse_args()
    clock = time.process_time if args.single_thread else time.perf_counter
    threads = 1 if args.single_thread else os.cpu_count()
    print(f"# {platform.machine()}, {threads} thread(s), clock {clock.__name__}, "
          f"numpy {np.__version__}")
    print("# xnor: conv2d_xnor (packing included, allocates its output); +out: writing into a")
    print("# reused output; pack / kern: pack_input_bits / the popcount kernel + epilogue alone")
    print(f"{'layer':>30} {'fp32 ms':>9} {'xnor ms':>9} {'+out ms':>8} {'pack ms':>8}"
          f" {'kern ms':>8} {'ratio':>6} {'+out':>6}")
    rng = np.random.default_rng(0)
    total_fp32 = total_xnor = total_out = 0.0
    for h, w, cin, cout, size, stride in SHAPES:
        pad = size // 2
        x = rng.standard_normal((1, h, w, cin), dtype=np.float32)
        wf = rng.standard_normal((cout, size, size, cin), dtype=np.float32)
        bias = rng.standard_normal(cout, dtype=np.float32)
        w2d = np.ascontiguousarray(wf.reshape(cout, -1).T)
        packed_w = XnorConvWeights.from_float(wf)
        xbits = pack_input_bits(x, pad)
        out = conv2d_xnor(x, packed_w, bias, stride, pad, LEAKY)  # compile / load cache

        reused = np.empty_like(out)

        def run_xnor():
            conv2d_xnor(x, packed_w, bias, stride, pad, LEAKY)

        def run_xnor_reusing_out():
            conv2d_xnor(x, packed_w, bias, stride, pad, LEAKY, out=reused)

        def run_kernel():
            _xnor_conv(xbits, packed_w.bits, packed_w.tap_popcounts, packed_w.alpha, bias,
                       h, w, cin, stride, pad, LEAKY, out)

        fp32, xnor, xnor_out, pack, kern = [], [], [], [], []
        for _ in range(args.rounds):
            fp32 += timed(lambda: fp32_conv(x, w2d, size, stride, pad), args.repeats, clock)
            xnor += timed(run_xnor, args.repeats, clock)
            xnor_out += timed(run_xnor_reusing_out, args.repeats, clock)
            pack += timed(lambda: pack_input_bits(x, pad), args.repeats, clock)
            kern += timed(run_kernel, args.repeats, clock)
        t_fp32, t_xnor = statistics.median(fp32), statistics.median(xnor)
        total_fp32 += t_fp32
        total_xnor += t_xnor
        name = f"{h}x{w}x{cin}->{cout} {size}x{size}/{stride}"
        t_out = statistics.median(xnor_out)
        total_out += t_out
        print(f"{name:>30} {t_fp32*1e3:9.3f} {t_xnor*1e3:9.3f} {t_out*1e3:8.3f}"
              f" {statistics.median(pack)*1e3:8.3f} {statistics.median(kern)*1e3:8.3f}"
              f" {t_fp32/t_xnor:6.1f} {t_fp32/t_out:6.1f}")
    print(f"{'total':>30} {total_fp32*1e3:9.3f} {total_xnor*1e3:9.3f} {total_out*1e3:8.3f}"
          f" {'':>8} {'':>8} {total_fp32/total_xnor:6.1f} {total_fp32/total_out:6.1f}")


if __name__ == "__main__":
    main()
