"""XNOR (binary) convolution: darknet's `xnor=1` layers as XOR + popcount on packed bits.

Semantics (darknet's reference CPU path):

* input:   x > 0 -> +1, else -1 (so 0 and NaN -> -1); zero padding stays 0 (padded taps
  contribute nothing, they are not -1);
* weights: alpha[co] = mean(|w[co]|) over kh*kw*Cin; binary weight = +alpha if w > 0
  else -alpha (w == 0 -> -alpha);
* output:  y = float32(dot) * alpha[co] + bias[co], then the activation, where
  dot = sum over valid taps of sign(x) * sign(w) (an integer).

Bit layout: a pixel's Cin signs are packed 64 channels per uint64 word (channel c is bit
c % 64 of word c // 64, bit set = +1); pad bits beyond Cin are 0 in input and weights,
so their XOR is 0 and they never count. For one valid tap,
dot_tap = Cin - 2 * popcount(x_bits ^ w_bits).

The input is packed once per call into (N, H + 2p, W + 2p, words) whose border pixels
are all-zero words. The hot loop therefore runs over every tap without a branch and
counts popcount(0 ^ w) = popcount(w_tap) for each padded tap; the epilogue subtracts
those (per-filter, per-tap popcounts precomputed at load) for the few border positions.

The micro-kernel keeps a tile of `_TILE_POSITIONS` output positions x `LANES` output
channels in registers: LANES 64-bit counters form one LLVM vector <LANES x i64> (four
zmm registers with AVX-512), so each weight word loaded from memory is used for
`_TILE_POSITIONS` positions and each input word is broadcast across LANES channels.
numba has no vector type, so a small one is defined here, with intrinsics for the few
operations the kernel needs (LLVM lowers them to vpxorq / vpopcntq / vpaddq on AVX-512
VPOPCNTDQ CPUs, and to a shuffle-based popcount on any other x86-64).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from yolo8.kernels.activations import CODES, LEAKY, LINEAR, RELU, activate, activate_numpy

WORD_BITS = 64
# Output channels per register tile (one <LANES x i64> accumulator). 32 lanes = 4 zmm.
LANES = 32
# Output positions (along a row) per register tile: 4 x 4 zmm = 16 accumulators.
_TILE_POSITIONS = 4


# --------------------------------------------------------------------------------------
# A minimal LLVM vector type for numba: LANES uint64 counters.
# --------------------------------------------------------------------------------------
class _CounterVector(types.Type):
    def __init__(self) -> None:
        super().__init__(name=f"CounterVector{LANES}")


_counter_vector = _CounterVector()
_LLVM_VECTOR = ir.VectorType(ir.IntType(64), LANES)
_LLVM_I32 = ir.IntType(32)


@register_model(_CounterVector)
class _CounterVectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LLVM_VECTOR)


def _is_c_array(ty, dtype) -> bool:
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.layout == "C"


def _element_pointer(context, builder, array_type, array, index):
    """Pointer to element `index` of the flattened C-contiguous array (no checks)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def _zero_counters(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_LLVM_VECTOR, None)

    return _counter_vector(), codegen


@intrinsic
def _load_word(typingctx, array, index):
    """array.ravel()[index] for a C-contiguous uint64 array, without wraparound or
    bounds checks (numba's indexing adds a negative-index fix-up per access, which
    costs as much as the popcount work in the inner loop)."""
    if not (_is_c_array(array, types.uint64) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(pointer, align=8)

    return types.uint64(array, index), codegen


@intrinsic
def _accumulate_xor_popcount(typingctx, counters, word, weight_bits, offset):
    """counters + popcount(broadcast(word) ^ weight_bits[offset : offset + LANES])."""
    if not (
        counters == _counter_vector
        and word == types.uint64
        and _is_c_array(weight_bits, types.uint64)
        and isinstance(offset, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        acc, x_word, bits, index = args
        pointer = _element_pointer(context, builder, signature.args[2], bits, index)
        weights = builder.load(builder.bitcast(pointer, _LLVM_VECTOR.as_pointer()), align=8)
        undef = ir.Constant(_LLVM_VECTOR, ir.Undefined)
        one_lane = builder.insert_element(undef, x_word, ir.Constant(_LLVM_I32, 0))
        all_lanes = builder.shuffle_vector(
            one_lane, undef, ir.Constant(ir.VectorType(_LLVM_I32, LANES), [0] * LANES)
        )
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_LLVM_VECTOR, [_LLVM_VECTOR]), f"llvm.ctpop.v{LANES}i64"
        )
        return builder.add(acc, builder.call(ctpop, [builder.xor(all_lanes, weights)]))

    return _counter_vector(counters, word, weight_bits, offset), codegen


@intrinsic
def _store_counters(typingctx, array, offset, counters):
    """array.ravel()[offset : offset + LANES] = counters (int64 array, no checks)."""
    if not (
        _is_c_array(array, types.int64)
        and isinstance(offset, types.Integer)
        and counters == _counter_vector
    ):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _LLVM_VECTOR.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.none(array, offset, counters), codegen


@intrinsic
def _positive_bits64(typingctx, array, offset):
    """Bit i set iff array.ravel()[offset + i] > 0, for i in 0..63 (float32, no checks).

    One <64 x float> compare whose <64 x i1> result is bitcast to i64 (element 0 -> bit 0):
    on AVX-512 four vcmpps into mask registers and a kmovq.
    """
    if not (_is_c_array(array, types.float32) and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        float_vector = ir.VectorType(ir.FloatType(), WORD_BITS)
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        values = builder.load(builder.bitcast(pointer, float_vector.as_pointer()), align=4)
        positive = builder.fcmp_ordered(">", values, ir.Constant(float_vector, [0.0] * WORD_BITS))
        return builder.bitcast(positive, ir.IntType(WORD_BITS))

    return types.uint64(array, offset), codegen


# --------------------------------------------------------------------------------------
# Weights, packed once at load.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XnorConvWeights:
    """Binarized conv weights, packed for `conv2d_xnor`.

    bits:          (blocks, kh, kw, words, LANES) uint64; lane l of block b is output
                   channel b * LANES + l (channels beyond cout are all-zero filters).
    tap_popcounts: (blocks, kh, kw, LANES) int64, popcount of each filter tap's bits,
                   subtracted for padded taps at the borders.
    alpha:         (cout,) float32, mean |w| per filter.
    """

    bits: np.ndarray
    tap_popcounts: np.ndarray
    alpha: np.ndarray
    cout: int
    kh: int
    kw: int
    cin: int

    def __post_init__(self) -> None:
        # The kernel reads these arrays without bounds checks: make an inconsistent
        # hand-built instance fail here rather than read out of bounds.
        blocks = -(-self.cout // LANES)
        expected = {
            "bits": (self.bits, np.uint64, (blocks, self.kh, self.kw, _words_for(self.cin), LANES)),
            "tap_popcounts": (self.tap_popcounts, np.int64, (blocks, self.kh, self.kw, LANES)),
            "alpha": (self.alpha, np.float32, (self.cout,)),
        }
        for name, (array, dtype, shape) in expected.items():
            if not (isinstance(array, np.ndarray) and array.dtype == dtype and array.shape == shape
                    and array.flags.c_contiguous):
                raise ValueError(f"XnorConvWeights.{name} must be a C-contiguous {np.dtype(dtype)} "
                                 f"array of shape {shape}, got {_describe(array)}")

    @classmethod
    def from_float(cls, w: np.ndarray) -> "XnorConvWeights":
        """Binarize and pack float32 weights of shape (Cout, kh, kw, Cin)."""
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 4:
            raise ValueError(
                f"weights must be a float32 (Cout, kh, kw, Cin) array, got {_describe(w)}"
            )
        if 0 in w.shape:
            raise ValueError(f"weights have an empty dimension: shape {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("weights contain NaN or infinity")
        cout, kh, kw, cin = w.shape
        alpha = mean_abs_per_filter(w)
        words = _words_for(cin)
        blocks = -(-cout // LANES)

        signs = np.zeros((blocks * LANES, kh, kw, words * WORD_BITS), dtype=bool)
        signs[:cout, :, :, :cin] = w > 0
        # Little bit order + little-endian uint64 view: channel c -> bit c % 64 of word c // 64.
        packed = np.packbits(signs, axis=-1, bitorder="little").view("<u8").astype(np.uint64)
        bits = packed.reshape(blocks, LANES, kh, kw, words).transpose(0, 2, 3, 4, 1)

        ones_per_tap = signs.sum(axis=-1, dtype=np.int64).reshape(blocks, LANES, kh, kw)
        return cls(
            bits=np.ascontiguousarray(bits),
            tap_popcounts=np.ascontiguousarray(ones_per_tap.transpose(0, 2, 3, 1)),
            alpha=alpha,
            cout=cout,
            kh=kh,
            kw=kw,
            cin=cin,
        )


def mean_abs_per_filter(w: np.ndarray) -> np.ndarray:
    """alpha[co] = mean(|w[co]|), summed in float64 and rounded once to float32.

    darknet sums sequentially in float32 (in its (Cin, kh, kw) order), which drifts from
    this by a few ulp for small filters and up to ~40 ulp (5e-6 relative) for 3x3x1024
    ones (measured on random filters); darknet's own float32 GEMM of +-alpha then adds
    rounding of the same order.
    """
    flat = np.abs(w.astype(np.float64)).reshape(w.shape[0], -1)
    return (flat.sum(axis=1) / flat.shape[1]).astype(np.float32)


def _words_for(channels: int) -> int:
    return -(-channels // WORD_BITS)


# --------------------------------------------------------------------------------------
# Input packing (per call).
# --------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _pack_input(x, pad, packed):
    """packed[n, y + pad, x + pad, :] = sign bits of x[n, y, x, :]; border left as is."""
    n, h, w, c = x.shape
    full_words = c // WORD_BITS
    tail = c - full_words * WORD_BITS
    for row in prange(n * h):
        b = row // h
        y = row % h
        # The last, partial word goes through a zero-filled copy: its unused bits stay 0.
        tail_values = np.zeros(WORD_BITS, dtype=np.float32)
        for col in range(w):
            src = ((b * h + y) * w + col) * c
            for word in range(full_words):
                packed[b, y + pad, col + pad, word] = _positive_bits64(x, src + word * WORD_BITS)
            if tail:
                tail_values[:tail] = x[b, y, col, full_words * WORD_BITS:]
                packed[b, y + pad, col + pad, full_words] = _positive_bits64(tail_values, 0)


def pack_input_bits(x: np.ndarray, pad: int) -> np.ndarray:
    """Sign bits of an NHWC float32 tensor, zero-padded: (N, H + 2 pad, W + 2 pad, words)
    uint64, bit set where x > 0; padded pixels and pad bits beyond C are 0."""
    _check_input(x)
    _check_int("pad", pad, minimum=0)
    n, h, w, c = x.shape
    packed = np.empty((n, h + 2 * pad, w + 2 * pad, _words_for(c)), dtype=np.uint64)
    if pad:
        _zero_border(packed, pad)
    _pack_input(x, pad, packed)
    return packed


def pack_input_bits_reference(x: np.ndarray, pad: int) -> np.ndarray:
    """Plain-numpy reference of `pack_input_bits`."""
    n, h, w, c = x.shape
    words = _words_for(c)
    signs = np.zeros((n, h + 2 * pad, w + 2 * pad, words * WORD_BITS), dtype=bool)
    signs[:, pad : pad + h, pad : pad + w, :c] = x > 0
    return np.packbits(signs, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def _zero_border(packed: np.ndarray, pad: int) -> None:
    packed[:, :pad] = 0
    packed[:, -pad:] = 0
    packed[:, :, :pad] = 0
    packed[:, :, -pad:] = 0


# --------------------------------------------------------------------------------------
# The XNOR-popcount convolution.
# --------------------------------------------------------------------------------------
@njit(cache=True)
def _count_valid(start, taps, size):
    """How many of the taps start, start + 1, ..., start + taps - 1 lie in [0, size)."""
    return max(0, min(start + taps, size) - max(start, 0))


@njit(inline="always", cache=True)
def _subtract_padded_taps(counts, tap_popcounts, iy0, ix0, h, w):
    """counts[lane] -= popcounts of the filter taps that fall into the zero padding."""
    kh, kw = tap_popcounts.shape[0], tap_popcounts.shape[1]
    for ky in range(kh):
        for kx in range(kw):
            iy = iy0 + ky
            ix = ix0 + kx
            if iy < 0 or iy >= h or ix < 0 or ix >= w:
                for lane in range(counts.size):
                    counts[lane] -= tap_popcounts[ky, kx, lane]


@njit(inline="always", cache=True)
def _activate_in_place(values, activation):
    # LEAKY and RELU are written out so these loops vectorise: the generic `activate`
    # branches on the code per element, which made the epilogue slower than the
    # whole popcount kernel.
    if activation == LEAKY:
        for i in range(values.size):
            v = values[i]
            values[i] = v if v > 0 else np.float32(0.1) * v
    elif activation == RELU:
        for i in range(values.size):
            v = values[i]
            values[i] = v if v > 0 else np.float32(0.0)
    elif activation != LINEAR:
        for i in range(values.size):
            values[i] = activate(values[i], activation)


@njit(inline="always", cache=True)
def _epilogue(counts, values, out_row, ox, first, scale, shift, tap_popcounts,
              iy0, ix0, h, w, cin, activation):
    """out_row[ox, first:first + n] = activation(float32(dot) * scale + shift), n = values.size.

    counts: the position's LANES popcounts over all taps, padded taps included (consumed);
    values: scratch of n float32; scale, shift, tap_popcounts (kh, kw, LANES): the
    channel block's views; (iy0, ix0): the input pixel under the kernel's top-left tap.
    """
    kh, kw = tap_popcounts.shape[0], tap_popcounts.shape[1]
    valid_taps = _count_valid(iy0, kh, h) * _count_valid(ix0, kw, w)
    if valid_taps != kh * kw:
        _subtract_padded_taps(counts, tap_popcounts, iy0, ix0, h, w)
    valid_bits = valid_taps * cin
    for lane in range(values.size):
        values[lane] = np.float32(valid_bits - 2 * counts[lane]) * scale[lane] + shift[lane]
    _activate_in_place(values, activation)
    for lane in range(values.size):
        # An unsigned index skips numba's negative-index fix-up, which otherwise keeps
        # this loop scalar (vectorised, the epilogue costs 2x less).
        out_row[ox, np.uint64(first + lane)] = values[lane]


@njit(parallel=True, cache=True)
def _xnor_conv(xbits, wbits, tap_popcounts, alpha, bias, h, w, cin, stride, pad, activation, out):
    """out = activation(float32(dot) * alpha + bias) for packed input and weights.

    xbits (N, Hp, Wp, words) zero-bordered; wbits (blocks, kh, kw, words, LANES);
    tap_popcounts (blocks, kh, kw, LANES). One prange task = (image, output row, channel
    block); it walks the row in tiles of 4 positions x LANES channels held in 16 zmm
    registers.
    """
    n, hp, wp, words = xbits.shape
    blocks, kh, kw = wbits.shape[0], wbits.shape[1], wbits.shape[2]
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    run = kw * words  # the kw taps of one kernel row are adjacent pixels: one contiguous run
    tiles = (wo + _TILE_POSITIONS - 1) // _TILE_POSITIONS
    for task in prange(n * ho * blocks):
        block = task % blocks
        b = task // blocks // ho
        oy = task // blocks % ho
        first = block * LANES
        last = min(first + LANES, cout)
        # Views of this channel block and per-task scratch, made once per task.
        out_row = out[b, oy]
        scale = alpha[first:last]
        shift = bias[first:last]
        values = np.empty(last - first, dtype=np.float32)
        block_tap_popcounts = tap_popcounts[block]
        counts = np.empty((_TILE_POSITIONS, LANES), dtype=np.int64)
        for tile in range(tiles):
            # The last tile of a row repeats position wo - 1: recomputed, same result.
            ox0 = min(tile * _TILE_POSITIONS + 0, wo - 1)
            ox1 = min(tile * _TILE_POSITIONS + 1, wo - 1)
            ox2 = min(tile * _TILE_POSITIONS + 2, wo - 1)
            ox3 = min(tile * _TILE_POSITIONS + 3, wo - 1)
            acc0 = _zero_counters()
            acc1 = _zero_counters()
            acc2 = _zero_counters()
            acc3 = _zero_counters()
            for ky in range(kh):
                row = (b * hp + oy * stride + ky) * wp
                x0 = (row + ox0 * stride) * words
                x1 = (row + ox1 * stride) * words
                x2 = (row + ox2 * stride) * words
                x3 = (row + ox3 * stride) * words
                wofs = (block * kh + ky) * run * LANES
                for j in range(run):
                    acc0 = _accumulate_xor_popcount(acc0, _load_word(xbits, x0 + j), wbits, wofs)
                    acc1 = _accumulate_xor_popcount(acc1, _load_word(xbits, x1 + j), wbits, wofs)
                    acc2 = _accumulate_xor_popcount(acc2, _load_word(xbits, x2 + j), wbits, wofs)
                    acc3 = _accumulate_xor_popcount(acc3, _load_word(xbits, x3 + j), wbits, wofs)
                    wofs += LANES
            _store_counters(counts, 0 * LANES, acc0)
            _store_counters(counts, 1 * LANES, acc1)
            _store_counters(counts, 2 * LANES, acc2)
            _store_counters(counts, 3 * LANES, acc3)
            for slot, ox in enumerate((ox0, ox1, ox2, ox3)):
                _epilogue(counts[slot], values, out_row, ox, first, scale, shift,
                          block_tap_popcounts, oy * stride - pad, ox * stride - pad,
                          h, w, cin, activation)


def conv2d_xnor(
    x: np.ndarray,
    weights: XnorConvWeights,
    bias: np.ndarray,
    stride: int,
    pad: int,
    activation: int | str,
    groups: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """XNOR convolution of NHWC float32 `x` -> (N, Ho, Wo, Cout) float32.

    `pad` is pixels per side (zero padding, contributes nothing); `activation` an
    activations code (or its darknet name). Only groups == 1 is supported. `out`, if
    given, is a C-contiguous float32 (N, Ho, Wo, Cout) array to write into (reusing it
    between calls saves the page faults of a fresh large allocation).
    """
    code = _activation_code(activation)
    if groups != 1:
        raise ValueError(f"xnor convolution supports groups=1 only, got groups={groups}")
    ho, wo = _check_conv_args(x, weights, stride, pad)
    _check_bias(bias, weights.cout)
    shape = (x.shape[0], ho, wo, weights.cout)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
              and out.flags.c_contiguous):
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {shape}, got {_describe(out)}"
        )
    return _run(x, weights, weights.alpha, bias, stride, pad, code, out)


def conv2d_xnor_dot(x: np.ndarray, weights: XnorConvWeights, stride: int, pad: int) -> np.ndarray:
    """The integer part of `conv2d_xnor`: dot(sign x, sign w) over valid taps, int32
    (N, Ho, Wo, Cout). Same kernel, run with alpha = 1, bias = 0, linear (|dot| < 2**24,
    so float32 holds it exactly)."""
    ho, wo = _check_conv_args(x, weights, stride, pad)
    if weights.kh * weights.kw * weights.cin >= 2**24:
        raise ValueError("filter too large for an exact float32 dot count")
    ones = np.ones(weights.cout, dtype=np.float32)
    zeros = np.zeros(weights.cout, dtype=np.float32)
    out = np.empty((x.shape[0], ho, wo, weights.cout), dtype=np.float32)
    dots = _run(x, weights, ones, zeros, stride, pad, LINEAR, out)
    return dots.astype(np.int32)


def _run(x, weights, alpha, bias, stride, pad, code, out) -> np.ndarray:
    xbits = pack_input_bits(x, pad)
    _, h, w, cin = x.shape
    _xnor_conv(xbits, weights.bits, weights.tap_popcounts, alpha, bias,
               h, w, cin, stride, pad, code, out)
    return out


# --------------------------------------------------------------------------------------
# Plain-numpy references.
# --------------------------------------------------------------------------------------
def _im2col(padded: np.ndarray, kh: int, kw: int, stride: int) -> np.ndarray:
    """(N, Hp, Wp, C) -> (N, Ho, Wo, kh * kw * C), K ordered (ky, kx, c)."""
    n, hp, wp, c = padded.shape
    ho = (hp - kh) // stride + 1
    wo = (wp - kw) // stride + 1
    cols = np.empty((n, ho, wo, kh, kw, c), dtype=padded.dtype)
    for ky in range(kh):
        for kx in range(kw):
            rows = slice(ky, ky + stride * (ho - 1) + 1, stride)
            columns = slice(kx, kx + stride * (wo - 1) + 1, stride)
            cols[:, :, :, ky, kx, :] = padded[:, rows, columns, :]
    return cols.reshape(n, ho, wo, kh * kw * c)


def _binary_input_padded(x: np.ndarray, pad: int, dtype) -> np.ndarray:
    signs = np.where(x > 0, 1, -1).astype(dtype)
    return np.pad(signs, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # padding stays 0


def xnor_dot_reference(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Integer reference of the dot: sum over valid taps of sign(x) * sign(w), int64."""
    cols = _im2col(_binary_input_padded(x, pad, np.int64), w.shape[1], w.shape[2], stride)
    signs_w = np.where(w > 0, 1, -1).astype(np.int64).reshape(w.shape[0], -1)
    return cols @ signs_w.T


def conv2d_xnor_reference(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, pad: int, activation: int | str
) -> np.ndarray:
    """Plain numpy: binarize input and weights, then an ordinary zero-padded float conv.

    The conv runs in float64: every product is +-alpha and every partial sum an integer
    multiple of alpha (< 2**53 ulps), so it is exact and its float32 rounding equals
    float32(dot) * alpha. The bias is added in float32, as the kernel does.
    """
    alpha = mean_abs_per_filter(w).astype(np.float64)
    binary_w = np.where(w > 0, 1.0, -1.0) * alpha[:, None, None, None]
    cols = _im2col(_binary_input_padded(x, pad, np.float64), w.shape[1], w.shape[2], stride)
    y = (cols @ binary_w.reshape(w.shape[0], -1).T).astype(np.float32) + bias.astype(np.float32)
    return activate_numpy(y, _activation_code(activation))


# --------------------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------------------
def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _check_input(x) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        raise ValueError(f"input must be a float32 NHWC (N, H, W, C) array, got {_describe(x)}")
    if not x.flags.c_contiguous:
        raise ValueError("input must be C-contiguous")
    if 0 in x.shape:
        raise ValueError(f"input has an empty dimension: shape {x.shape}")


def _check_conv_args(x, weights, stride, pad) -> tuple[int, int]:
    """Checks input, weights and geometry; returns the output size (Ho, Wo)."""
    if not isinstance(weights, XnorConvWeights):
        raise ValueError("weights must be XnorConvWeights (use XnorConvWeights.from_float), "
                         f"got {type(weights).__name__}")
    _check_input(x)
    if x.shape[3] != weights.cin:
        raise ValueError(f"input has {x.shape[3]} channels, weights expect {weights.cin}")
    return _output_size(x.shape, weights.kh, weights.kw, stride, pad)


def _check_bias(bias, cout: int) -> None:
    if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or bias.shape != (cout,):
        raise ValueError(f"bias must be a float32 array of shape ({cout},), got {_describe(bias)}")


def _check_int(name: str, value, minimum: int) -> None:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _output_size(shape, kh: int, kw: int, stride: int, pad: int) -> tuple[int, int]:
    _check_int("stride", stride, minimum=1)
    _check_int("pad", pad, minimum=0)
    ho = (shape[1] + 2 * pad - kh) // stride + 1
    wo = (shape[2] + 2 * pad - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"a {kh}x{kw} kernel with pad {pad} does not fit a {shape[1]}x{shape[2]} input"
        )
    return ho, wo


def _activation_code(activation) -> int:
    if isinstance(activation, str):
        if activation not in CODES:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(CODES)}")
        return CODES[activation]
    if isinstance(activation, (bool, np.bool_)) or not isinstance(activation, (int, np.integer)) \
            or int(activation) not in CODES.values():
        raise ValueError(f"unknown activation code {activation!r}")
    return int(activation)
