"""INT8 convolution in NHWC: fused quantize, implicit-GEMM VNNI kernel, fused float32 epilogue.

Semantics (the references below implement exactly this):

* weights, once: `w_scale[co] = max|w[co]| / 127` in float32 (1.0 for an all-zero channel),
  `wq = saturate(round_half_even(w / w_scale))` to [-127, 127];
* input, per call: `q = saturate(round_half_even(x * multiplier))` to [-127, 127] with
  `multiplier` a float32 (NaN quantizes to 0); zero padding is exactly 0;
* `acc = sum_k q * wq` in int32 (K ordering (ky, kx, cin) within a group);
* `y = f32(acc) * out_scale[co] + bias[co]` (a float32 multiply, then a float32 add, never an
  FMA) with `out_scale = f32(w_scale / multiplier)`, then the activation.

On the AVX2 tier, 3x3 stride-1 layers with enough channels run as an exact integer Winograd
F(2x2, 3x3) instead (winograd_int8): the same int32 sums, the same outputs bit for bit.

There is no im2col matrix: the input is quantized once into a zero-padded u8 NHWC buffer
(value + 128, channels of each group padded to a multiple of 4) and the micro-kernel reads
every kernel tap straight from it (see gemm_int8). That buffer and the tap offsets are cached
on the `Int8ConvWeights` of the layer per calling thread (a model may run in several threads at
once: each thread quantizes into a buffer of its own) and reused between that thread's calls.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit, prange

from ..jit import CACHE
from .activations import CODES, activate_numpy
from .common import conv_taps, output_size
from . import winograd_int8
from .gemm_int8 import (MAX_K, ZERO_U8, PackedB, default_variant, resolve_variant, run_tiles,
                        source_dtype, threads_for)

QMAX = 127


# ----------------------------------------------------------------------------------------------
# Quantization
# ----------------------------------------------------------------------------------------------


@njit(inline="always", cache=CACHE)
def _quantize_scalar(v, multiplier):
    """saturate(round_half_even(f32(v * multiplier))) as int32 in [-127, 127]; NaN -> 0."""
    q = np.rint(v * multiplier)
    if q > QMAX:
        q = np.float32(QMAX)
    elif q < -QMAX:
        q = np.float32(-QMAX)
    elif q != q:
        q = np.float32(0.0)
    return np.int32(q)


@njit(parallel=True, cache=CACHE, nogil=True)
def _quantize(x, multiplier, out):
    for i in prange(x.size):
        out[i] = np.int8(_quantize_scalar(x[i], multiplier))


@njit(parallel=True, cache=CACHE, nogil=True)
def _quantize_padded(x, multiplier, xq, n, h, w, pad, hp, wp, zero, groups, cg, cg4):
    """xq[img, y + pad, x + pad, g * cg4 + c] = q(x[img, y, x, g * cg + c]) + zero, on flat
    views, xq being (n, hp, wp, groups * cg4) (uint8, or int16 for the AVX2 tier: one
    compiled copy per dtype). zero: 128 for the shifted activations of the direct kernels,
    0 for Winograd's signed ones (whose buffer also extends past the bottom and right pad).

    xq's border and its channels past cg in each group are never written (they hold `zero`).
    Loops index slices by their counter only, so that LLVM vectorises them.
    """
    cin = groups * cg
    cs = groups * cg4
    for r in prange(n * h):
        img = r // h
        y = r - img * h
        src = x[r * w * cin:(r + 1) * w * cin]
        dst_start = ((img * hp + y + pad) * wp + pad) * cs
        if cg == cg4:
            # Channels are dense: the whole image row is one contiguous run.
            dst = xq[dst_start:dst_start + w * cin]
            for i in range(w * cin):
                dst[i] = _quantize_scalar(src[i], multiplier) + zero
        else:
            for xx in range(w):
                for g in range(groups):
                    s = src[xx * cin + g * cg:xx * cin + (g + 1) * cg]
                    d = xq[dst_start + xx * cs + g * cg4:dst_start + xx * cs + g * cg4 + cg]
                    for c in range(cg):
                        d[c] = _quantize_scalar(s[c], multiplier) + zero


def _as_multiplier(multiplier: float) -> np.float32:
    m = np.float32(multiplier)
    if not (math.isfinite(m) and m > 0):
        raise ValueError(f"multiplier must be a finite positive number, got {multiplier!r}")
    return m


def quantize(x: np.ndarray, multiplier: float) -> np.ndarray:
    """Fast `quantize_reference`: int8 array of x's shape (x float32, C-contiguous)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("quantize expects a C-contiguous float32 array")
    out = np.empty(x.shape, np.int8)
    _quantize(x.reshape(-1), _as_multiplier(multiplier), out.reshape(-1))
    return out


def quantize_reference(x: np.ndarray, multiplier: float) -> np.ndarray:
    """Plain numpy: saturate(round_half_even(x * float32(multiplier))) to [-127, 127], int8."""
    q = np.rint(np.asarray(x, np.float32) * np.float32(multiplier))
    q[np.isnan(q)] = 0
    return np.clip(q, -QMAX, QMAX).astype(np.int8)


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel symmetric max-abs: (wq int8 like w, w_scale float32 (Cout,)).

    Float32 throughout; an all-zero channel gets scale 1.0 (and zero weights).
    """
    w = np.asarray(w, np.float32)
    flat = w.reshape(w.shape[0], -1)
    w_scale = np.abs(flat).max(axis=1) / np.float32(QMAX)
    w_scale[w_scale == 0] = 1.0
    wq = np.clip(np.rint(flat / w_scale[:, None]), -QMAX, QMAX).astype(np.int8)
    return wq.reshape(w.shape), w_scale.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


class Int8ConvWeights:
    """A conv layer's weights quantized and packed for the INT8 kernels (do once, at load).

    wq: (Cout, kh, kw, Cin/groups) int8 in [-127, 127]; w_scale: (Cout,) float32.
    Also caches, per layer, the quantized input buffer and the output scales.
    """

    def __init__(self, wq: np.ndarray, w_scale: np.ndarray, groups: int = 1, *,
                 stride: int | None = None, out_hw: tuple[int, int] | None = None) -> None:
        """stride and out_hw (the output map of one image), when known, tell which packing
        the default tier's "auto" method will use: that one is made at load, any other on
        first use (Winograd's transformed weights are 16/9 the direct ones' size)."""
        if not isinstance(wq, np.ndarray) or wq.dtype != np.int8 or wq.ndim != 4:
            raise ValueError("wq must be an int8 array (Cout, kh, kw, Cin/groups)")
        cout, kh, kw, cg = wq.shape
        if min(wq.shape) < 1:
            raise ValueError(f"wq has an empty dimension {wq.shape}")
        if not isinstance(groups, (int, np.integer)) or groups < 1 or cout % groups:
            raise ValueError(f"groups={groups!r} must be a positive divisor of Cout={cout}")
        if kh * kw * cg > MAX_K:
            raise ValueError(f"K = kh*kw*Cin/groups = {kh * kw * cg} > {MAX_K} could overflow int32")
        if wq.min() < -QMAX:
            raise ValueError("wq must lie in [-127, 127]")
        w_scale = np.asarray(w_scale)
        if w_scale.shape != (cout,) or w_scale.dtype != np.float32:
            raise ValueError(f"w_scale must be float32 of shape ({cout},)")
        if not np.all(np.isfinite(w_scale) & (w_scale > 0)):
            raise ValueError("w_scale must be finite and positive")
        self.wq = np.ascontiguousarray(wq)
        self.w_scale = np.ascontiguousarray(w_scale)
        self.groups = int(groups)
        # Per tier, packed on first use (the tests run several tiers on one layer).
        self._packed: dict[str, PackedB] = {}
        self._per_thread = threading.local()
        if (stride is not None and out_hw is not None
                and uses_winograd(default_variant(), self, stride, groups, *out_hw)):
            self.winograd_packed()
        else:
            self.packed()  # the default tier's
        self._out_scale: tuple[np.float32, np.ndarray] | None = None
        # self._per_thread.input: this thread's input buffer (see input_buffer).

    @classmethod
    def from_float(cls, w: np.ndarray, groups: int = 1, **layout) -> Int8ConvWeights:
        """Quantize float weights (Cout, kh, kw, Cin/groups) with `quantize_weights`; layout:
        stride and out_hw as for the constructor."""
        if not isinstance(w, np.ndarray) or w.ndim != 4 or not np.issubdtype(w.dtype, np.floating):
            raise ValueError("w must be a float array (Cout, kh, kw, Cin/groups)")
        if not np.all(np.isfinite(w)):
            raise ValueError("w contains NaN or infinity")
        wq, w_scale = quantize_weights(w)
        return cls(wq, w_scale, groups, **layout)

    @property
    def cout(self) -> int:
        return self.wq.shape[0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.wq.shape[1], self.wq.shape[2]

    @property
    def cin(self) -> int:
        return self.wq.shape[3] * self.groups

    def out_scale(self, multiplier: np.float32) -> np.ndarray:
        """f32(w_scale / multiplier), computed once per multiplier."""
        cached = self._out_scale  # read once: another thread may replace it meanwhile
        if cached is None or cached[0] != multiplier:
            cached = (multiplier, np.float32(self.w_scale / multiplier))
            self._out_scale = cached
        return cached[1]

    def _packing(self, key: str, pack) -> PackedB:
        """The packing named `key`, made by pack() on first use."""
        packed = self._packed.get(key)
        if packed is None:
            packed = pack()
            self._packed[key] = packed
        return packed

    def packed(self, tier: str | None = None) -> PackedB:
        """The weights packed for `tier` (default: the best tier of the compile target)."""
        tier = tier or default_variant()
        cout, kh, kw, cg = self.wq.shape
        return self._packing(tier, lambda: PackedB(self.wq.reshape(cout, kh * kw, cg),
                                                   self.groups, tier))

    def winograd_packed(self) -> PackedB:
        """The weights transformed and packed for winograd_int8 (on first use)."""
        return self._packing("winograd", lambda: winograd_int8.pack_weights(self.wq))

    def _thread_input(self, key: tuple, make) -> tuple:
        """This thread's input buffer (and what goes with it) for `key`, made by make() when
        the thread's last call had another key: each thread has its own, so concurrent calls
        never share one, and a thread's calls of one shape allocate nothing."""
        cached = getattr(self._per_thread, "input", None)
        if cached is None or cached[0] != key:
            cached = (key, make())
            self._per_thread.input = cached
        return cached[1]

    def winograd_buffer(self, n: int, h: int, w: int, pad: int) -> tuple[np.ndarray, tuple]:
        """winograd_int8's zero-bordered int16 input buffer for this input shape (per calling
        thread, as `input_buffer`) and its shape."""
        shape = winograd_int8.buffer_shape(n, h, w, pad, self.cin)
        return self._thread_input(("winograd", shape),
                                  lambda: (np.zeros(math.prod(shape), np.int16), shape))

    @property
    def channels_padded(self) -> int:
        """Channels of a group as the kernel reads them: Cin/groups rounded up to 4."""
        return -(-self.wq.shape[3] // 4) * 4

    def input_buffer(self, n: int, h: int, w: int, pad: int,
                     tier: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """For this input shape and tier: the padded input buffer (flat, `source_dtype(tier)`;
        border and channel padding hold 128), the tap offsets into it (`conv_taps`: with one
        group a kernel row is one tap of kw pixels) and the k groups of 4 per tap. Each
        calling thread has its own, allocated on its first call with a new shape (so
        concurrent calls never share it)."""
        tier = tier or default_variant()

        def make():
            kh, kw = self.kernel_size
            cs = self.groups * self.channels_padded
            wp = w + 2 * pad
            buffer = np.full(n * (h + 2 * pad) * wp * cs, ZERO_U8, dtype=source_dtype(tier))
            taps = conv_taps(kh, kw, wp, cs, self.groups)
            return buffer, taps, self.channels_padded // 4 * (kw if self.groups == 1 else 1)

        return self._thread_input((n, h, w, pad, tier), make)


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------


def _check_conv_args(x, weights, bias, stride, pad, activation, groups) -> None:
    if not isinstance(weights, Int8ConvWeights):
        raise ValueError("weights must be an Int8ConvWeights (see Int8ConvWeights.from_float)")
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or not x.flags.c_contiguous:
        raise ValueError("x must be a C-contiguous float32 NHWC array")
    if min(x.shape) < 1:
        raise ValueError(f"x has an empty dimension {x.shape}")
    if groups != weights.groups:
        raise ValueError(f"groups={groups} but the weights were packed for groups={weights.groups}")
    if x.shape[3] != weights.cin:
        raise ValueError(f"x has {x.shape[3]} channels, the weights expect {weights.cin}")
    if (not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (weights.cout,)
            or not bias.flags.c_contiguous):
        raise ValueError(f"bias must be a contiguous float32 array of shape ({weights.cout},)")
    for name, value, low in (("stride", stride, 1), ("pad", pad, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if activation not in CODES.values():
        raise ValueError(f"unknown activation code {activation!r}")
    kh, kw = weights.kernel_size
    if output_size(x.shape[1], kh, stride, pad) < 1 or output_size(x.shape[2], kw, stride, pad) < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit the {x.shape[1]}x{x.shape[2]} input "
                         f"with pad {pad}")


METHODS = ("auto", "direct", "winograd")


def uses_winograd(variant: str, weights: Int8ConvWeights, stride: int, groups: int, ho: int,
                  wo: int, method: str = "auto") -> bool:
    """Whether conv2d_int8 runs this layer by winograd_int8 (method "auto": where it applies
    and pays)."""
    kh, kw = weights.kernel_size
    if method == "direct":
        return False
    if not winograd_int8.applies(variant, kh, kw, stride, groups, weights.cin):
        if method == "winograd":
            raise ValueError("the INT8 Winograd kernel runs 3x3 stride-1 ungrouped layers on "
                             f"the {winograd_int8.TIER} tier only")
        return False
    return method == "winograd" or winograd_int8.pays(weights.cin, ho, wo)


def conv2d_int8(x: np.ndarray, weights: Int8ConvWeights, bias: np.ndarray, multiplier: float,
                stride: int, pad: int, activation: int, groups: int = 1, *,
                variant: str = "auto", method: str = "auto") -> np.ndarray:
    """INT8 convolution of an NHWC float32 batch; returns (N, Ho, Wo, Cout) float32.

    multiplier = 127 / threshold of the input (float32); activation an `activations` code;
    variant: "auto" or a tier of gemm_int8.VARIANTS (the micro-kernel, see gemm_int8);
    method: "direct" (the implicit GEMM), "winograd" (winograd_int8: the AVX2 tier's 3x3
    stride-1 layers, the same result bit for bit) or "auto" (Winograd where it applies and
    pays, see winograd_int8.pays).
    """
    _check_conv_args(x, weights, bias, stride, pad, activation, groups)
    multiplier = _as_multiplier(multiplier)
    variant = resolve_variant(variant)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    n, h, w, _ = x.shape
    kh, kw = weights.kernel_size
    ho, wo = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    winograd = uses_winograd(variant, weights, stride, groups, ho, wo, method)
    out = np.empty((n, ho, wo, weights.cout), np.float32)
    scale = weights.out_scale(multiplier)
    cg = weights.wq.shape[3]
    with threads_for(n * ho * wo * weights.cout * kh * kw * cg) as n_threads:
        if winograd:
            xq, (_, hp, wp, cp) = weights.winograd_buffer(n, h, w, pad)
            _quantize_padded(x.reshape(-1), multiplier, xq, n, h, w, pad, hp, wp, 0, 1, cg, cp)
            winograd_int8.conv3x3_winograd_int8(xq, (n, hp, wp, cp), weights.winograd_packed(),
                                                out, scale, bias, int(activation), n_threads)
            return out
        cg4 = weights.channels_padded
        cs = groups * cg4
        hp, wp = h + 2 * pad, w + 2 * pad
        xq, taps, k4 = weights.input_buffer(n, h, w, pad, variant)
        geometry = (n * ho * wo, ho, wo, hp * wp * cs, stride * wp * cs, stride * cs, cg4)
        _quantize_padded(x.reshape(-1), multiplier, xq, n, h, w, pad, hp, wp, ZERO_U8, groups, cg,
                         cg4)
        run_tiles(xq, taps, k4, geometry, weights.packed(variant), n_threads,
                  out_f=out.reshape(-1, weights.cout), scale=scale, bias=bias,
                  act=int(activation))
    return out


def conv2d_int8_reference(x: np.ndarray, weights: Int8ConvWeights, bias: np.ndarray,
                          multiplier: float, stride: int, pad: int, activation: int,
                          groups: int = 1) -> np.ndarray:
    """Plain numpy: quantize, zero-pad, im2col, int64 matmul, float32 epilogue, activation."""
    multiplier = np.float32(multiplier)
    n, h, w, cin = x.shape
    cout, kh, kw, cg = weights.wq.shape
    cout_g = cout // groups
    ho, wo = output_size(h, kh, stride, pad), output_size(w, kw, stride, pad)
    q = np.zeros((n, h + 2 * pad, w + 2 * pad, cin), np.int64)
    q[:, pad:pad + h, pad:pad + w] = quantize_reference(x, multiplier)
    acc = np.empty((n, ho, wo, cout), np.int64)
    for g in range(groups):
        patches = [q[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride,
                     g * cg:(g + 1) * cg]
                   for ky in range(kh) for kx in range(kw)]
        cols = np.concatenate(patches, axis=3).reshape(n * ho * wo, kh * kw * cg)
        wg = weights.wq[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1).astype(np.int64)
        acc[..., g * cout_g:(g + 1) * cout_g] = (cols @ wg.T).reshape(n, ho, wo, cout_g)
    assert np.abs(acc).max() < 2**31
    out_scale = np.float32(weights.w_scale / multiplier)
    y = acc.astype(np.float32) * out_scale
    y += bias.astype(np.float32)
    return activate_numpy(y, activation)
