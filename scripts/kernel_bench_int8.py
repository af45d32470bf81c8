"""Per-layer speed of conv2d_int8 against an FP32 im2col + numpy sgemm of the same shape.

Both run side by side in this process on the yolov3-tiny 416x416 conv shapes (batch 1,
leaky), in alternating blocks; medians of the calls, printed as ratios (FP32 / INT8 time).
Minima are printed too: on a shared machine they show what the code does when left alone.
With --asm, prints instead what the hot kernels compile to (a fresh compile, no cache).

Usage: python scripts/kernel_bench_int8.py [--rounds 5] [--block 5] [--variant auto|avx512vnni|avxvnni|avx2|portable]
                                           [--clock wall|thread]
       python scripts/kernel_bench_int8.py --asm
Thread counts come from the environment (NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS).

Two OpenMP settings default to values set here (override them in the environment to see
the difference), both for numba's OpenMP thread pool, as observed on the 2-vCPU dev VM:
* OMP_PROC_BIND=true: unbound, the worker often wakes up on the main thread's CPU after an
  idle pause, and both then share one core for many calls (INT8 at single-thread speed,
  wall time == CPU time);
* GOMP_SPINCOUNT=300000: by default the worker fell asleep between parallel regions, and
  waking it cost 50-100 us per region (13x13x1024->256: 300 us per call instead of 145 us).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import time

import numpy as np

# Read when numba starts its OpenMP threads, i.e. must be set before the first parallel call.
os.environ.setdefault("OMP_PROC_BIND", "true")
os.environ.setdefault("GOMP_SPINCOUNT", "300000")

# (H=W, Cin, Cout, kernel size), stride 1, pad size // 2.
SHAPES = [
    (208, 16, 32, 3), (104, 32, 64, 3), (52, 64, 128, 3), (26, 128, 256, 3), (13, 256, 512, 3),
    (13, 512, 1024, 3), (13, 1024, 256, 1), (13, 256, 512, 3), (13, 256, 128, 1), (26, 384, 256, 3),
]


class Fp32Im2colConv:
    """The FP32 baseline: zero-pad, im2col by strided copies, sgemm, bias, leaky (all numpy),
    with every buffer allocated once."""

    def __init__(self, w: np.ndarray, bias: np.ndarray, h: int, pad: int) -> None:
        cout, self.size, _, cin = w.shape
        self.w_t = np.ascontiguousarray(w.reshape(cout, -1).T)
        self.bias, self.pad = bias, pad
        self.ho = h + 2 * pad - self.size + 1
        self.padded = np.zeros((1, h + 2 * pad, h + 2 * pad, cin), np.float32)
        self.cols = np.empty((self.ho * self.ho, self.size * self.size * cin), np.float32)
        self.out = np.empty((self.ho * self.ho, cout), np.float32)
        self.tmp = np.empty_like(self.out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.size == 1 and self.pad == 0:
            cols = x.reshape(-1, x.shape[3])
        else:
            p, ho, s = self.pad, self.ho, self.size
            self.padded[:, p:p + x.shape[1], p:p + x.shape[2]] = x
            blocks = self.cols.reshape(ho, ho, s, s, -1)
            for ky in range(s):
                for kx in range(s):
                    blocks[:, :, ky, kx] = self.padded[0, ky:ky + ho, kx:kx + ho]
            cols = self.cols
        np.matmul(cols, self.w_t, out=self.out)
        self.out += self.bias
        np.multiply(self.out, np.float32(0.1), out=self.tmp)
        np.maximum(self.out, self.tmp, out=self.out)
        return self.out


# Idle OpenBLAS threads keep spinning for ~0.1 s after an sgemm (and OpenMP's for a shorter
# while after a numba parallel region), taking a core from whatever runs next.
SETTLE_SECONDS = float(os.environ.get("BENCH_SETTLE", "0.2"))


def time_side_by_side(run_a, run_b, rounds: int, block: int, clock=time.perf_counter
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-call times of run_a and run_b, measured in alternating blocks of `block` calls.

    Blocks separated by a pause rather than single alternating calls: the INT8 kernels run
    on numba's OpenMP threads and sgemm on OpenBLAS's, and each pool spins for a while after
    its work, which would slow whichever of the two runs right after the other (measured:
    INT8 runs at half speed for ~0.1 s after an sgemm). Each block thus measures its kernel
    in steady state, with its own pool awake (the first call of a block is not timed).
    """
    times_a, times_b = [], []
    for _ in range(rounds):
        for run, times in ((run_a, times_a), (run_b, times_b)):
            time.sleep(SETTLE_SECONDS)
            run()
            for _ in range(block):
                start = clock()
                run()
                times.append(clock() - start)
    return np.array(times_a), np.array(times_b)


def benchmark(rounds: int, block: int, variant: str, clock_name: str) -> None:
    import numba

    from yolo8.kernels.activations import LEAKY
    from yolo8.kernels.conv_int8 import Int8ConvWeights, conv2d_int8
    from yolo8.kernels.gemm_int8 import resolve_variant

    variant = resolve_variant(variant)
    clock = time.perf_counter if clock_name == "wall" else time.thread_time
    rng = np.random.default_rng(0)
    print(f"int8 variant: {variant}, {numba.get_num_threads()} numba threads "
          f"(OMP_PROC_BIND={os.environ['OMP_PROC_BIND']}, GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}), "
          f"{clock_name} clock; "
          f"medians (and minima) of {rounds} alternating blocks of {block} calls")
    print(f"{'layer':>26} {'fp32 ms':>8} {'int8 ms':>8} {'fp32/int8':>9} {'int8 GMAC/s':>11} "
          f"{'min fp32':>8} {'min int8':>8} {'min ratio':>9}")
    totals = np.zeros(4)
    for h, cin, cout, size in SHAPES:
        pad = size // 2
        x = np.maximum(rng.standard_normal((1, h, h, cin)), -0.1).astype(np.float32)
        w = (rng.standard_normal((cout, size, size, cin)) * 0.05).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        fp32 = Fp32Im2colConv(w, bias, h, pad)
        weights = Int8ConvWeights.from_float(w)
        multiplier = np.float32(127 / 4.0)

        def run_int8():
            conv2d_int8(x, weights, bias, multiplier, 1, pad, LEAKY, variant=variant)

        times_fp32, times_int8 = time_side_by_side(lambda: fp32(x), run_int8, rounds, block, clock)
        row = np.array([np.median(times_fp32), np.median(times_int8), times_fp32.min(), times_int8.min()])
        totals += row
        macs = h * h * cout * size * size * cin
        name = f"{h}x{h}x{cin}->{cout} {size}x{size}"
        print(f"{name:>26} {row[0] * 1e3:8.3f} {row[1] * 1e3:8.3f} {row[0] / row[1]:9.2f} "
              f"{macs / row[1] / 1e9:11.1f} {row[2] * 1e3:8.3f} {row[3] * 1e3:8.3f} {row[2] / row[3]:9.2f}")
    print(f"{'total':>26} {totals[0] * 1e3:8.3f} {totals[1] * 1e3:8.3f} {totals[0] / totals[1]:9.2f} "
          f"{'':>11} {totals[2] * 1e3:8.3f} {totals[3] * 1e3:8.3f} {totals[2] / totals[3]:9.2f}")


def instruction_histogram(dispatcher, top: int = 12) -> str:
    asm = dispatcher.inspect_asm(dispatcher.signatures[0])
    counts = collections.Counter(
        f"{op} {reg}" for op, reg in re.findall(r"\n\s+(v\w+)\s+[^\n]*?%([xyz]mm)", asm))
    fma = sum(n for key, n in counts.items() if "fmadd" in key or "fmsub" in key)
    shown = ", ".join(f"{key} x{n}" for key, n in counts.most_common(top))
    return f"{shown}; FMA instructions: {fma}"


def show_assembly() -> None:
    """Compile every hot kernel once (no cache: cached code cannot be inspected) and print
    the vector instructions it contains."""
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="yolo8-asm-")
    from yolo8.kernels import conv_int8, gemm_int8
    from yolo8.kernels.activations import LEAKY

    rng = np.random.default_rng(0)
    for groups in (1, 2):  # groups=2 with 3 channels per group also runs the strided quantize
        weights = conv_int8.Int8ConvWeights.from_float(
            rng.standard_normal((40, 3, 3, 3)).astype(np.float32), groups)
        x = rng.standard_normal((1, 9, 9, 3 * groups)).astype(np.float32)
        for variant in [t for t in gemm_int8.VARIANTS if gemm_int8.tier_available(t)]:
            conv_int8.conv2d_int8(x, weights, np.zeros(40, np.float32), 10.0, 1, 1, LEAKY,
                                  groups, variant=variant)
    conv_int8.quantize(x, 10.0)
    kernels = [("_tiles (tile loop, the tiers' IR micro-kernels and epilogues)", gemm_int8._tiles),
               ("_microkernel_portable", gemm_int8._microkernel_portable),
               ("_store_float (epilogue)", gemm_int8._store_float),
               ("_quantize_padded", conv_int8._quantize_padded),
               ("_quantize", conv_int8._quantize)]
    for name, dispatcher in kernels:
        print(f"{name}:\n  {instruction_histogram(dispatcher)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--variant", default="auto", choices=["auto", "avx512vnni", "avxvnni", "avx2", "portable"])
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="thread: CPU time of the calling thread, immune to other processes "
                             "but only meaningful with NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1")
    parser.add_argument("--asm", action="store_true", help="print the hot kernels' instructions")
    args = parser.parse_args()
    if args.asm:
        show_assembly()
    else:
        benchmark(args.rounds, args.block, args.variant, args.clock)


if __name__ == "__main__":
    main()
