#!/usr/bin/env python3
"""yolo8's INT8 and FP32 convolutions on the yolov3-tiny INT8 layer shapes, one thread.

For the compile target of the environment (e.g. `NUMBA_CPU_NAME` / `NUMBA_CPU_FEATURES` from
`yolo8.kernels.common.target_env("avx2")`, with a NUMBA_CACHE_DIR of its own). CPU time of the
calling thread (`time.thread_time`), minimum of 7 alternating calls after a warm-up: the
figure least disturbed by other processes on a shared machine. Run with NUMBA_NUM_THREADS=1.

    NUMBA_NUM_THREADS=1 python scripts/int8_vs_fp32_layers.py
"""
from __future__ import annotations

import time

import numpy as np

from yolo8.kernels import gemm_int8
from yolo8.kernels.activations import LEAKY
from yolo8.kernels.conv_fp32 import Fp32Conv
from yolo8.kernels.conv_int8 import Int8ConvWeights, conv2d_int8

# (H=W, Cin, Cout, kernel size) of the layers yolo8 runs in INT8, stride 1, pad size // 2.
SHAPES = [(208, 16, 32, 3), (104, 32, 64, 3), (52, 64, 128, 3), (26, 128, 256, 3), (13, 256, 512, 3),
          (13, 512, 1024, 3), (13, 1024, 256, 1), (13, 256, 512, 3), (13, 256, 128, 1), (26, 384, 256, 3)]


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"INT8 tier {gemm_int8.default_variant()}; ms of one thread's CPU time (min of 7)")
    totals = np.zeros(2)
    for h, cin, cout, k in SHAPES:
        x = np.maximum(rng.standard_normal((1, h, h, cin)), -0.1).astype(np.float32)
        w = (rng.standard_normal((cout, k, k, cin)) * 0.05).astype(np.float32)
        b = np.zeros(cout, np.float32)
        fp32 = Fp32Conv(w, b, 1, k // 2, 1, LEAKY, out_hw=(h, h))
        int8 = Int8ConvWeights.from_float(w)
        ops = [lambda: fp32(x), lambda: conv2d_int8(x, int8, b, 127 / 4.0, 1, k // 2, LEAKY)]
        for op in ops:
            op()
            op()
        times = [[], []]
        for _ in range(7):
            for i, op in enumerate(ops):
                start = time.thread_time()
                op()
                times[i].append(time.thread_time() - start)
        best = np.array([1000 * min(t) for t in times])
        totals += best
        gmacs = h * h * cin * cout * k * k / best[1] / 1e6
        print(f"{h}x{h}x{cin}->{cout} {k}x{k} fp32 ({fp32.method}) {best[0]:7.3f}  int8 {best[1]:7.3f}"
              f"  int8/fp32 {best[1] / best[0]:5.2f}  int8 {gmacs:6.1f} GMAC/s")
    print(f"total fp32 {totals[0]:.2f}  int8 {totals[1]:.2f}  int8/fp32 {totals[1] / totals[0]:.2f}")


if __name__ == "__main__":
    main()
