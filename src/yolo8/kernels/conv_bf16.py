"""bf16 convolution in NHWC: bfloat16 inputs and weights, float32 accumulation (`vdpbf16ps`).

The FP32 implicit GEMM (gemm_fp32) with the bf16 step of the shared tile skeleton instead of
FMA. Each 4-byte word of A and B holds a pair of bf16 values adjacent along K (the low half
first), so the tile loop, row addressing, packing and epilogue are the FP32 ones with K
counted in pairs:

* the weights are rounded to bf16 once at load, each group's input channels padded with a
  zero to an even count, and packed into FP32's panels of words ([tap][pair][NR]);
* the input is rounded to bf16 (round to nearest even, as `vcvtne2ps2bf16`) while it is
  copied into the zero-padded buffer ([pixel][group][channels, padded to even]);
* bias and activation are applied in float32 to the float32 accumulators, as in FP32.

Products of two bf16 values (8-bit significands) are exact in float32, so the result differs
from a float64 sum of the same bf16-rounded products only by float32 additions
(`conv2d_bf16_reference`). vdpbf16ps treats bf16 denormals (|x| < 1.2e-38) as zero.
"""
from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from numba import config, njit, prange

from ..errors import Yolo8Error
from ..jit import CACHE
from .common import conv_taps, output_size, target_features
from .conv_fp32 import _PAD_CHUNK_FLOATS, check_input, checked_layer, conv2d_reference
from .gemm_fp32 import STEP_BF16, PackedWeights, run_gemm_tiles, step_available

REQUIRED_FEATURE = "avx512_bf16"


def check_bf16_target() -> None:
    """Refuse (one clear line) when numba's compile target cannot run vdpbf16ps."""
    if step_available(STEP_BF16):
        return
    missing = [f for f in ("+avx512f", "+avx512bf16") if f not in target_features()]
    cpu = config.CPU_NAME or llvm_binding.get_host_cpu_name()
    raise Yolo8Error(f"the bf16 backend needs the {REQUIRED_FEATURE} feature (vdpbf16ps), which "
                     f"numba's compile target ({cpu}) lacks ({', '.join(missing)} not in its "
                     f"features); use --backend fp32 or int8")


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays a quiet NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
               >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((u >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), rounded)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """The float32 values of x rounded to bf16 (round to nearest even)."""
    return (to_bf16_bits(x).astype(np.uint32) << np.uint32(16)).view(np.float32)


@njit(cache=CACHE, nogil=True, inline="always")
def _bf16_bits(u):
    """The bf16 bit pattern (as uint32) of float32 bits u: round to nearest even, a NaN kept
    quiet (a select, so that loops of it vectorise)."""
    rne = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    quiet = (u >> np.uint32(16)) | np.uint32(0x40)
    return quiet if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rne


@njit(parallel=True, cache=CACHE, nogil=True)
def _pad_convert(x, pad, groups, cin_g2, xp):
    """xp[img, y + pad, x + pad, g * cin_g2 + j] = bf16(x[img, y, x, g * cin_g + j]) (round to
    nearest even); xp's border and channel padding are zero already and never written."""
    n, h, w, c = x.shape
    cin_g = c // groups
    contiguous = groups * cin_g2 == c  # no channel padding: a row is one run
    for r in prange(n * h):
        img = r // h
        y = r - img * h
        src = x[img, y].reshape(w * c).view(np.uint32)
        dst = xp[img, y + pad]
        if contiguous:
            flat = dst[pad:pad + w].reshape(w * c)
            for i in range(w * c):
                flat[i] = np.uint16(_bf16_bits(src[i]))
            continue
        for px in range(w):
            row = dst[px + pad]
            for g in range(groups):
                for j in range(cin_g):
                    row[g * cin_g2 + j] = np.uint16(_bf16_bits(src[px * c + g * cin_g + j]))


def _even(n: int) -> int:
    return n + (n & 1)


class Bf16Conv:
    """A conv layer prepared for bf16 execution: weights (Cout, k, k, Cin/groups) float32
    rounded to bf16 and packed once, bias (Cout,) float32, darknet geometry (pad pixels per
    side), the activation fused as in FP32 (leaky in the tile, others on the stored tile)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int,
                 groups: int, activation: int) -> None:
        check_bf16_target()
        cout, size, cin_g, self.bias = checked_layer(weights, bias, stride, pad, groups)
        self.size, self.stride, self.pad, self.groups = size, stride, pad, groups
        self.activation, self.cout, self.cin_g = activation, cout, cin_g
        self.cin_g2 = _even(cin_g)
        padded = np.zeros((cout, size, size, self.cin_g2), np.float32)
        padded[..., :cin_g] = weights
        # Taps as in FP32 (a kernel row is one tap with one group), K in pairs of bf16.
        taps = size if groups == 1 else size * size
        words = to_bf16_bits(padded).reshape(cout, -1).view(np.float32)
        self.packed = PackedWeights(words.reshape(cout, taps, -1), groups)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.bias.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        check_input(x, "Bf16Conv", self.cin_g * self.groups)
        n, h, w, _ = x.shape
        size, stride, pad = self.size, self.stride, self.pad
        ho, wo = output_size(h, size, stride, pad), output_size(w, size, stride, pad)
        out = np.empty((n, max(ho, 0), max(wo, 0), self.cout), dtype=np.float32)
        if out.size == 0:
            return out
        x = np.ascontiguousarray(x)
        hp, wp = h + 2 * pad, w + 2 * pad
        cw = self.groups * self.cin_g2 // 2  # 4-byte words (bf16 pairs) per pixel
        taps = conv_taps(size, size, wp, cw, self.groups)
        per_image = hp * wp * cw
        chunk = max(1, _PAD_CHUNK_FLOATS // per_image)
        buffer = np.zeros((min(chunk, n), hp, wp, 2 * cw), dtype=np.uint16)
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            src = buffer[:i1 - i0]
            _pad_convert(x[i0:i1], pad, self.groups, self.cin_g2, src)
            geometry = ((i1 - i0) * ho * wo, ho, wo, per_image, stride * wp * cw, stride * cw)
            run_gemm_tiles(src.reshape(-1).view(np.float32), geometry, taps, self.packed,
                           self.bias, out[i0:i1].reshape(-1), self.cout, self.activation,
                           a_group_stride=self.cin_g2 // 2, step=STEP_BF16)
        return out


def conv2d_bf16_reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, stride: int,
                          pad: int, groups: int, activation: int) -> np.ndarray:
    """Plain numpy: inputs and weights rounded to bf16, products and sums in float64, then
    bias, float32 rounding and the activation (conv_fp32's reference on bf16 operands)."""
    return conv2d_reference(round_to_bf16(x), round_to_bf16(weights), bias, stride, pad,
                            groups, activation)
