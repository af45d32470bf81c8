"""FP32 convolution in NHWC: implicit GEMM or Winograd, bias and activation fused.

Two ways, chosen per layer when the weights are prepared (`choose_method`):

* "gemm": an implicit GEMM (gemm_fp32). The input is copied once into a zero-padded NHWC
  buffer (none when pad = 0) and the FMA micro-kernel reads every kernel tap straight from
  it: no im2col matrix. Bias and activation are applied to each tile as it is stored.
* "winograd4" / "winograd2": 3x3 stride-1 layers by Winograd F(m x m, 3 x 3) (winograd.py),
  4x (m = 4) or 2.25x (m = 2) fewer multiply-adds than the direct sum, at the price of
  4x (m = 4) or 16/9x (m = 2) the weights' memory (see `choose_method`).

There is no "direct" kernel for thin layers any more: the implicit GEMM runs the first layer
(3 -> 16 channels, K = 27) at vector speed (one zmm of 16 output channels per pixel row of
the tile, 24 pixels per tile), faster than the old direct loop and than im2col + sgemm.

`conv2d_reference` (plain numpy, float64) is what the tests compare both with.
"""
from __future__ import annotations

import logging

import numpy as np
from numba import njit, prange

from ..jit import CACHE
from .activations import activate_numpy
from .common import conv_taps, output_size
from .gemm_fp32 import PackedWeights, run_gemm_tiles
from .winograd import WinogradWeights, conv3x3_winograd

logger = logging.getLogger(__name__)

METHODS = ("auto", "gemm", "winograd2", "winograd4")

# Winograd F(4x4) keeps (4x4+2)^2 = 36 transformed values per 3x3 filter (4x the weights),
# F(2x2) 16 (16/9x). F(4x4) is faster, F(2x2) lighter: F(4x4) is used while its weights stay
# below this size, F(2x2) above (yolov3-tiny: F(4x4) up to 128 -> 256 channels, F(2x2) from
# 256 -> 512 on; every weight of the model in F(4x4) would cost ~100 MB more memory).
WINOGRAD4_MAX_BYTES = 8 << 20
# Below this many F(2x2) tiles per image the transformed weights would be read for too few
# pixels (and the transforms' cost would not pay back): the implicit GEMM is used.
WINOGRAD_MIN_TILES = 9
# The implicit GEMM's zero-padded copy of its input holds at most this many floats (4 MiB) or
# one image: a batch is padded and multiplied a few images at a time.
_PAD_CHUNK_FLOATS = 1 << 20


def choose_method(size: int, stride: int, groups: int, cin_g: int, cout: int,
                  out_hw: tuple[int, int] | None) -> str:
    """The method for a layer: Winograd for 3x3 stride-1 ungrouped layers with at least 8
    input channels (the GEMMs' K) and enough output tiles, F(4x4) while its transformed
    weights stay small (WINOGRAD4_MAX_BYTES), else F(2x2); the implicit GEMM otherwise.
    out_hw is the output map of one image, or None when unknown."""
    if size != 3 or stride != 1 or groups != 1 or cin_g < 8:
        return "gemm"
    if out_hw is not None and -(-out_hw[0] // 2) * -(-out_hw[1] // 2) < WINOGRAD_MIN_TILES:
        return "gemm"
    return "winograd4" if 36 * cin_g * cout * 4 <= WINOGRAD4_MAX_BYTES else "winograd2"


@njit(parallel=True, cache=CACHE, nogil=True)
def _pad_copy(x, pad, xp):
    """xp[:, pad:pad+h, pad:pad+w] = x; xp's border is zero already and never written."""
    n, h, w, c = x.shape
    for r in prange(n * h):
        img = r // h
        y = r - img * h
        src = x[img, y].reshape(w * c)
        dst = xp[img, y + pad, pad:pad + w].reshape(w * c)
        for i in range(w * c):
            dst[i] = src[i]


def checked_layer(weights: np.ndarray, bias: np.ndarray, stride: int, pad: int,
                  groups: int) -> tuple[int, int, int, np.ndarray]:
    """(Cout, k, Cin/groups, bias as contiguous float32) of a conv layer's arguments, after
    checking its geometry (the FP32 and bf16 layers share these checks)."""
    if weights.ndim != 4 or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"conv weights must be (Cout, k, k, Cin/groups), got {weights.shape}")
    cout, size, _, cin_g = weights.shape
    if groups < 1 or cout % groups or stride < 1 or pad < 0:
        raise ValueError(f"bad conv geometry: Cout={cout} groups={groups} stride={stride} "
                         f"pad={pad}")
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if bias.shape != (cout,):
        raise ValueError(f"conv bias must have shape ({cout},), got {bias.shape}")
    return cout, size, cin_g, bias


def check_input(x: np.ndarray, kind: str, channels: int) -> None:
    """A conv layer's input must be NHWC float32 with the layer's channel count."""
    if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError(f"{kind} expects an NHWC float32 array")
    if x.shape[3] != channels:
        raise ValueError(f"conv input has {x.shape[3]} channels, the layer expects {channels}")


class Fp32Conv:
    """A conv layer prepared for FP32 execution (weights packed once for its method).

    weights (Cout, kh, kw, Cin/groups) float32, bias (Cout,), darknet geometry (pad pixels
    per side). `method` is "auto" (choose_method, with `out_hw` the expected output map if
    known), "gemm", "winograd2" or "winograd4" (3x3 stride-1 ungrouped layers only).
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int, groups: int,
                 activation: int, method: str = "auto",
                 out_hw: tuple[int, int] | None = None) -> None:
        cout, size, cin_g, self.bias = checked_layer(weights, bias, stride, pad, groups)
        if method not in METHODS:
            raise ValueError(f"unknown conv method {method!r}; expected one of {METHODS}")
        self.size, self.stride, self.pad, self.groups = size, stride, pad, groups
        self.activation = activation
        self.cout, self.cin_g = cout, cin_g
        if method == "auto":
            method = choose_method(size, stride, groups, cin_g, cout, out_hw)
        elif method != "gemm" and (size != 3 or stride != 1 or groups != 1):
            raise ValueError(f"{method} needs a 3x3 stride-1 ungrouped conv")
        self.method = method
        weights = np.asarray(weights, dtype=np.float32)
        if method == "gemm":
            # Taps (ky, kx) in K order (ky, kx, c): with one group the kx taps of a row are
            # adjacent in the NHWC input, so a row of the kernel is one tap of size * Cin.
            taps = size if groups == 1 else size * size
            self.packed = PackedWeights(weights.reshape(cout, taps, -1), groups)
            self.winograd = None
        else:
            self.winograd = WinogradWeights(weights, int(method[-1]))
            self.packed = None
        logger.debug("conv %dx%d/%d %d -> %d (groups %d, output %s): %s, %.1f MB of weights",
                     size, size, stride, cin_g * groups, cout, groups, out_hw, method,
                     self.nbytes / 1e6)

    @property
    def nbytes(self) -> int:
        """Bytes of prepared weights this layer holds."""
        held = self.packed if self.packed is not None else self.winograd
        return held.nbytes + self.bias.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        check_input(x, "Fp32Conv", self.cin_g * self.groups)
        x = np.ascontiguousarray(x)
        if self.winograd is not None:
            return conv3x3_winograd(x, self.winograd, self.bias, self.pad, self.activation)
        return self._implicit_gemm(x)

    def _implicit_gemm(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        size, stride, pad = self.size, self.stride, self.pad
        ho, wo = output_size(h, size, stride, pad), output_size(w, size, stride, pad)
        out = np.empty((n, max(ho, 0), max(wo, 0), self.cout), dtype=np.float32)
        if out.size == 0:
            return out
        hp, wp = h + 2 * pad, w + 2 * pad
        taps = conv_taps(size, size, wp, c, self.groups)
        # Images in chunks whose padded copy stays within _PAD_CHUNK_FLOATS (one image at
        # least): one buffer, its zero border written once, reused for every chunk.
        per_image = hp * wp * c
        chunk = max(1, _PAD_CHUNK_FLOATS // per_image) if pad else n
        padded = np.zeros((min(chunk, n), hp, wp, c), dtype=np.float32) if pad else None
        for i0 in range(0, n, chunk):
            i1 = min(n, i0 + chunk)
            if pad:
                src = padded[:i1 - i0]
                _pad_copy(x[i0:i1], pad, src)
            else:
                src = x[i0:i1]
            geometry = ((i1 - i0) * ho * wo, ho, wo, per_image, stride * wp * c, stride * c)
            run_gemm_tiles(src.reshape(-1), geometry, taps, self.packed, self.bias,
                           out[i0:i1].reshape(-1), self.cout, self.activation,
                           a_group_stride=self.cin_g)
        return out


def conv2d_reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int,
                     groups: int, activation: int) -> np.ndarray:
    """Plain numpy, float64, direct loops over kernel taps: the tests' reference."""
    n, h, w, c = x.shape
    cout, size, _, cin_g = weights.shape
    ho, wo = output_size(h, size, stride, pad), output_size(w, size, stride, pad)
    xp = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=np.float64)
    xp[:, pad:pad + h, pad:pad + w] = x
    out = np.zeros((n, ho, wo, cout), dtype=np.float64)
    cout_g = cout // groups
    for g in range(groups):
        wg = weights[g * cout_g:(g + 1) * cout_g].astype(np.float64)
        for ky in range(size):
            for kx in range(size):
                patch = xp[:, ky:ky + stride * (ho - 1) + 1:stride,
                           kx:kx + stride * (wo - 1) + 1:stride, g * cin_g:(g + 1) * cin_g]
                out[..., g * cout_g:(g + 1) * cout_g] += patch @ wg[:, ky, kx, :].T
    return activate_numpy((out + bias).astype(np.float32), activation)
