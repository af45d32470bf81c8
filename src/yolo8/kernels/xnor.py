"""XNOR (binary) convolution: darknet's `xnor=1` layers as XOR + popcount on packed bits.

Semantics (darknet's reference CPU path):

* input:   x > 0 -> +1, else -1 (so 0 and NaN -> -1); zero padding stays 0 (padded taps
  contribute nothing, they are not -1);
* weights: alpha[co] = mean(|w[co]|) over kh*kw*Cin; binary weight = +alpha if w > 0
  else -alpha (w == 0 -> -alpha);
* output:  y = float32(dot) * alpha[co] + bias[co] (a float32 multiply, then a float32 add,
  never an FMA), then the activation, where dot = sum over valid taps of
  sign(x) * sign(w) (an integer).

Bit layout: a pixel's Cin signs are packed 32 channels per uint32 word (channel c is bit
c % 32 of word c // 32, bit set = +1); pad bits beyond Cin are 0 in input and weights,
so their XOR is 0 and they never count. For one valid tap,
dot_tap = Cin - 2 * popcount(x_bits ^ w_bits). 32-bit words (not 64) leave no padding
bits in a 32-channel layer (yolov3-tiny's 208x208x32): its 3x3 window is 9 full words.

Each call packs the input into zero-bordered rows (one buffer per work item: the rows its
output positions read), so the hot loop runs over every tap without a branch and counts
popcount(0 ^ w) = popcount(w_tap) for each padded tap; a position's "base"
(valid_bits + 2 * those popcounts, from prefix sums of the tap popcounts computed at load)
cancels them: dot = base - 2 * count. With one group the kw taps of a kernel row are
adjacent pixels, so a window is kh runs of kw * words contiguous words.

The micro-kernel (`_define_microkernel`) is the shared GEMM skeleton of tile_ir
(`define_tile_kernel`, as the FP32, bf16 and INT8 kernels) with the XNOR step
(`tile_ir.xnor_step`) and an outer loop over the tiles of an image row. It computes tiles of
4 output positions x 64 channels (8 x 32 for layers of at most 32 filters): 16 <16 x i32>
accumulators in zmm registers. Its taps are the kh kernel rows, its K steps the kw * words
words of a row's run; per word it broadcasts one word of each position, loads the weight
vectors and issues xor + popcount + add per accumulator (vpxord, vpopcntd, vpaddd with
AVX-512 VPOPCNTDQ; a shuffle-based popcount on other x86-64): 3 vector ops per 16 channels
x 32 taps, the bound of this kernel. Its prologue starts the accumulators at 0 or at
-base / 2; its epilogue runs on the registers (accumulators that start at -base / 2 make it
float32(acc) * (-2 alpha) + bias, exact), applies leaky or relu and stores; other
activations are applied by numba on the stored tile. One parallel region per call; its
threads take work items (ranges of output positions) from a shared counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import llvmlite.ir as ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..jit import CACHE
from .activations import CODES, LEAKY, LINEAR, RELU, activate_numpy
from .common import aligned_empty
from . import tile_ir
from .gemm_fp32 import _F32, _I32, _I64, _VF, _activate_tile

WORD_BITS = 32
# Register tiles, by channel block width ("lanes", output channels per block): lanes ->
# (positions, <16 x i32> vectors per position). Both keep 16 accumulators in zmm registers
# and leave room for the weight vectors and the broadcast words, which LLVM loads at the
# top of the loop (24 accumulators made it spill). 64 lanes (4 x 4) is used from 33
# output channels on: it broadcasts half as many input words as 8 x 2 and was 2-7% faster
# (single thread) on the five 3x3 layers of issue 5; 32 lanes for layers of <= 32 filters.
TILE_SHAPES = {64: (4, 4), 32: (8, 2)}
_POSITIONS_64, _POSITIONS_32 = TILE_SHAPES[64][0], TILE_SHAPES[32][0]  # numba reads ints
# Work items (see _work_items): from GUIDED_MIN_TILES tiles per thread on, each takes
# 1 / (GUIDED_SHARE * threads) of the tiles left, and at least MIN_ITEM_TILES.
GUIDED_SHARE = 2
MIN_ITEM_TILES = 16
GUIDED_MIN_TILES = 128

# Epilogue modes of the micro-kernel: the activation it applies itself (others: numba),
# | _HALVED when its accumulators start at -base / 2 (see _define_microkernel).
_EPILOGUE_LINEAR, _EPILOGUE_LEAKY, _EPILOGUE_RELU = 0, 1, 2
_HALVED = 4

_VI = ir.VectorType(_I32, 16)


# --------------------------------------------------------------------------------------
# Weights, packed once at load.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class XnorConvWeights:
    """Binarized conv weights, packed for `conv2d_xnor`.

    bits:          (blocks, kh, kw, words, lanes) uint32; lane l of block b is output
                   channel b * lanes + l (channels beyond cout are all-zero filters);
                   lanes = lanes_for(cout) (a key of TILE_SHAPES);
                   words = ceil(cin / 32).
    tap_popcounts: (blocks, kh, kw, lanes) int32, popcount of each filter tap's bits,
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
    # Derived in __post_init__: (blocks, kh + 1, kw + 1, lanes) int32 2-D prefix sums of
    # tap_popcounts over (ky, kx), for the border positions' corrections.
    tap_sums: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The kernel reads these arrays without bounds checks: make an inconsistent
        # hand-built instance fail here rather than read out of bounds.
        lanes = lanes_for(self.cout)
        blocks = -(-self.cout // lanes)
        expected = {
            "bits": (self.bits, np.uint32, (blocks, self.kh, self.kw, words_for(self.cin), lanes)),
            "tap_popcounts": (self.tap_popcounts, np.int32, (blocks, self.kh, self.kw, lanes)),
            "alpha": (self.alpha, np.float32, (self.cout,)),
        }
        for name, (array, dtype, shape) in expected.items():
            if not (isinstance(array, np.ndarray) and array.dtype == dtype and array.shape == shape
                    and array.flags.c_contiguous):
                raise ValueError(f"XnorConvWeights.{name} must be a C-contiguous {np.dtype(dtype)} "
                                 f"array of shape {shape}, got {_describe(array)}")
        sums = np.zeros((blocks, self.kh + 1, self.kw + 1, lanes), dtype=np.int32)
        sums[:, 1:, 1:] = self.tap_popcounts.cumsum(axis=1).cumsum(axis=2)
        object.__setattr__(self, "tap_sums", sums)  # frozen dataclass: set once, here

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
        words = words_for(cin)
        lanes = lanes_for(cout)
        blocks = -(-cout // lanes)

        signs = np.zeros((blocks * lanes, kh, kw, words * WORD_BITS), dtype=bool)
        signs[:cout, :, :, :cin] = w > 0
        bits = _pack_signs(signs).reshape(blocks, lanes, kh, kw, words).transpose(0, 2, 3, 4, 1)
        ones_per_tap = signs.sum(axis=-1, dtype=np.int32).reshape(blocks, lanes, kh, kw)
        return cls(
            bits=_aligned_copy(bits),
            tap_popcounts=np.ascontiguousarray(ones_per_tap.transpose(0, 2, 3, 1)),
            alpha=mean_abs_per_filter(w),
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


def lanes_for(cout: int) -> int:
    """Output channels per block (and register tile) for a layer of `cout` filters."""
    return 32 if cout <= 32 else 64


def words_for(channels: int) -> int:
    """uint32 words per pixel for `channels` sign bits."""
    return -(-channels // WORD_BITS)


def _pack_signs(signs: np.ndarray) -> np.ndarray:
    """Bool (..., 32 * words) -> uint32 (..., words), element i -> bit i % 32 of word i // 32."""
    return np.packbits(signs, axis=-1, bitorder="little").view("<u4").astype(np.uint32)


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` on a 64-byte boundary (each weight vector of the
    micro-kernel is then one cache line)."""
    out = aligned_empty(a.size, a.dtype).reshape(a.shape)
    out[...] = a
    return out


# --------------------------------------------------------------------------------------
# Input packing (per call).
# --------------------------------------------------------------------------------------
@intrinsic
def _positive_bits32(typingctx, array, offset, count):
    """Bit i set iff array.ravel()[offset + i] > 0, for i < count (1 <= count <= 32);
    bits count..31 are 0. float32 C-contiguous array, no bounds checks.

    A masked <32 x float> load (lanes >= count are neither read nor set), one compare whose
    <32 x i1> result is bitcast to i32 (element 0 -> bit 0): on AVX-512 two vcmpps into
    mask registers and a kunpck.
    """
    if not (isinstance(array, types.Array) and array.dtype == types.float32
            and array.layout == "C" and isinstance(offset, types.Integer)
            and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        vector = ir.VectorType(_F32, WORD_BITS)
        pointer = tile_ir.array_data(context, builder, signature.args[0], args[0], _F32, args[1])
        count = context.cast(builder, args[2], signature.args[2], types.int32)
        lanes = ir.Constant(ir.VectorType(_I32, WORD_BITS), list(range(WORD_BITS)))
        counts = tile_ir.splat(builder, count, ir.VectorType(_I32, WORD_BITS))
        mask = builder.icmp_unsigned("<", lanes, counts)
        zeros = ir.Constant(vector, None)
        values = tile_ir.masked_load(builder, pointer, mask, zeros)
        positive = builder.fcmp_ordered(">", values, zeros)
        return builder.bitcast(positive, _I32)

    return types.uint32(array, offset, count), codegen


@njit(inline="always", cache=CACHE)
def _pack_row(flat, src, dst, dst_start, w, c, words):
    """dst[dst_start + (col * words + word)] = sign bits of the C channels of pixel `col` of
    the image row starting at flat[src], for col < w (flat float32, dst uint32)."""
    if c % WORD_BITS == 0:
        # Whole words only: the row is one run of w * words words (unsigned indices skip
        # numba's negative-index fix-up in this loop).
        for i in range(w * words):
            dst[np.uint64(dst_start + i)] = _positive_bits32(flat, src + i * WORD_BITS, WORD_BITS)
    else:
        for col in range(w):
            for word in range(words):
                first = word * WORD_BITS
                dst[np.uint64(dst_start + col * words + word)] = _positive_bits32(
                    flat, src + col * c + first, min(WORD_BITS, c - first))


def pack_input_bits(x: np.ndarray, pad: int) -> np.ndarray:
    """Sign bits of an NHWC float32 tensor, zero-padded: (N, H + 2 pad, W + 2 pad, words)
    uint32, bit set where x > 0; padded pixels and pad bits beyond C are 0. The packing
    `conv2d_xnor` does per work item (`_pack_rows`), here over the whole tensor."""
    _check_input(x)
    _check_int("pad", pad, minimum=0)
    n, h, w, c = x.shape
    words = words_for(c)
    packed = np.zeros((n, h + 2 * pad, w + 2 * pad, words), dtype=np.uint32)
    _pack_rows(x.reshape(-1), packed.reshape(-1), 0, n * (h + 2 * pad), h, w, c, pad, words)
    return packed


def pack_input_bits_reference(x: np.ndarray, pad: int) -> np.ndarray:
    """Plain-numpy reference of `pack_input_bits`."""
    n, h, w, c = x.shape
    signs = np.zeros((n, h + 2 * pad, w + 2 * pad, words_for(c) * WORD_BITS), dtype=bool)
    signs[:, pad : pad + h, pad : pad + w, :c] = x > 0
    return _pack_signs(signs)


# --------------------------------------------------------------------------------------
# The micro-kernel, in LLVM IR.
# --------------------------------------------------------------------------------------
def _define_microkernel(module: ir.Module, positions: int, nv: int) -> ir.Function:
    """Emit (once per LLVM module), on the shared tile skeleton (`tile_ir.define_tile_kernel`,
    tiled, with the XNOR step), the kernel for `ntiles` tiles along an image row

        void tiles(i8* x, i64* pos, i64* row_offsets, i64 kh, i64 run_words, i8* w,
                   i64 ntiles, i64 x_step, i32* bases, i64* base_rows, f32* alpha, f32* bias,
                   f32* out, i64 ldo, i64 rows_valid, i64 cols_valid, i64 mode, i64 out_step)

    (x and w point at uint32 words; pos, row_offsets and x_step count words). For tile
    i < ntiles, with x_i = x + i * x_step and out_i = out + i * out_step, and B[p] =
    bases[base_rows[p] * NR :] (a row of NR = 16 * nv int32): acc[p, :] = init[p] + sum over
    kernel rows r < kh and words j < run_words of popcount(x_i[pos[p] + row_offsets[r] + j]
    ^ w[(r * run_words + j) * NR :][:NR]) for p < positions; then, for p < rows_valid and
    lanes < cols_valid, out_i[p * ldo + :] = act(float32(dot) * alpha + bias), a float32
    multiply and a float32 add, where

    * mode & _HALVED (every base even): init = B[p] = -base / 2, so dot = base - 2 * count
      = -2 * acc and float32(dot) * alpha = float32(acc) * (-2 alpha) exactly (scaling by
      -2 is exact: the caller checks that -2 alpha does not overflow);
    * otherwise: init = 0, B[p] = base, dot = fma(float32(acc), -2, float32(base)), exact
      (an integer below 2**24).

    act = mode & 3: _EPILOGUE_LINEAR, _EPILOGUE_LEAKY (y > 0 ? y : 0.1f * y) or
    _EPILOGUE_RELU (y > 0 ? y : 0).
    Preconditions: kh, run_words, ntiles >= 1; 1 <= rows_valid <= positions; 1 <= cols_valid
    <= NR; every pos[p] (also p >= rows_valid) addresses a valid window in every tile.
    """
    def start_counts(b, extra, tile):
        bases, base_rows, *_, mode, _ = extra
        return _emit_start_counts(b, bases, base_rows, mode, positions, nv)

    def store(b, fn, acc, extra, tile, next_tile):
        bases, base_rows, alpha, bias, out, ldo, rows_valid, cols_valid, mode, out_step = extra
        out_tile = b.gep(out, [b.mul(tile, out_step)])
        _emit_epilogues(b, fn, acc, bases, base_rows, alpha, bias, out_tile, ldo, rows_valid,
                        cols_valid, mode, next_tile)

    i32p, i64p, f32p = _I32.as_pointer(), _I64.as_pointer(), _F32.as_pointer()
    return tile_ir.define_tile_kernel(
        module, f"yolo8_xnor_tiles_{positions}x{nv}", tile_ir.xnor_step(16), positions, nv,
        [i32p, i64p, f32p, f32p, f32p, _I64, _I64, _I64, _I64, _I64], start_counts, store,
        a_element=_I32, tiled=True)


def _emit_start_counts(b: ir.IRBuilder, bases, base_rows, mode, positions: int, nv: int):
    """The accumulators' start: B[p] (= -base / 2) if mode & _HALVED, else 0; a branch per
    tile to a block of loads, then one phi per accumulator."""
    halved = b.icmp_signed("!=", b.and_(mode, _I64(_HALVED)), _I64(0))
    from_zero = b.block
    from_bases = b.function.append_basic_block("init_from_bases")
    start = b.function.append_basic_block("init_done")
    b.cbranch(halved, from_bases, start)
    b.position_at_end(from_bases)
    loaded = []
    for p in range(positions):
        row = _base_row(b, bases, base_rows, p, 16 * nv)
        loaded.append([tile_ir.load_vector(b, b.gep(row, [_I64(16 * v)]), _VI, 4)
                       for v in range(nv)])
    b.branch(start)
    b.position_at_end(start)
    acc = [[b.phi(_VI) for _ in range(nv)] for _ in range(positions)]
    for acc_row, loaded_row in zip(acc, loaded):
        for phi, value in zip(acc_row, loaded_row):
            phi.add_incoming(ir.Constant(_VI, None), from_zero)
            phi.add_incoming(value, from_bases)
    return acc


def _base_row(b: ir.IRBuilder, bases: ir.Value, base_rows: ir.Value, p: int, nr: int) -> ir.Value:
    """Pointer to position p's row of the bases table."""
    return b.gep(bases, [b.mul(b.load(b.gep(base_rows, [_I64(p)])), _I64(nr))])


def _emit_epilogues(b: ir.IRBuilder, fn: ir.Function, acc, bases, base_rows, alpha, bias,
                    out_tile, ldo, rows_valid, cols_valid, mode, exit_block) -> None:
    """The stores of one tile, in one copy per mode (one branch per tile, not per vector):
    a chain of blocks per mode, one block per position, leaving at rows_valid."""
    module = fn.module
    positions, nv = len(acc), len(acc[0])
    nr = 16 * nv
    fma = tile_ir.overloaded(module, "llvm.fma", _VF, [_VF, _VF, _VF], [_VF])
    zero = ir.Constant(_VF, None)
    minus_two = ir.Constant(_VF, [-2.0] * 16)
    slope = ir.Constant(_VF, [0.1] * 16)

    lanes = b.trunc(cols_valid, _I32)
    masks = [b.icmp_signed("<", ir.Constant(_VI, list(range(16 * v, 16 * v + 16))),
                           tile_ir.splat(b, lanes, _VI)) for v in range(nv)]
    alphas = [tile_ir.masked_load(b, b.gep(alpha, [_I64(16 * v)]), masks[v], zero)
              for v in range(nv)]
    biases = [tile_ir.masked_load(b, b.gep(bias, [_I64(16 * v)]), masks[v], zero)
              for v in range(nv)]

    def activate(y: ir.Value, kind: int) -> ir.Value:
        # y > t ? y : t is exactly x86's maxps(y, t): leaky's y > 0 ? y : 0.1f * y (the
        # two tests agree for every y, NaN and signed zeros included), relu's y > 0 ? y : 0.
        if kind == _EPILOGUE_LINEAR:
            return y
        t = b.fmul(y, slope) if kind == _EPILOGUE_LEAKY else zero
        return b.select(b.fcmp_ordered(">", y, t), y, t)

    chains = {}
    for halved in (False, True):
        for kind in (_EPILOGUE_LINEAR, _EPILOGUE_LEAKY, _EPILOGUE_RELU):
            code = kind | (_HALVED if halved else 0)

            def scales(halved=halved):
                return [b.fmul(a, minus_two) for a in alphas] if halved else alphas

            def store_position(p, scales, halved=halved, kind=kind):
                row = b.gep(out_tile, [b.mul(_I64(p), ldo)])
                base = None if halved else _base_row(b, bases, base_rows, p, nr)
                for v in range(nv):
                    counts = b.sitofp(acc[p][v], _VF)
                    if halved:
                        scaled = b.fmul(counts, scales[v])  # = float32(dot) * alpha, exactly
                    else:
                        base_v = b.load(b.bitcast(b.gep(base, [_I64(16 * v)]), _VI.as_pointer()),
                                        align=4)
                        dot = b.call(fma, [counts, minus_two, b.sitofp(base_v, _VF)])
                        scaled = b.fmul(dot, alphas[v])
                    y = activate(b.fadd(scaled, biases[v]), kind)
                    tile_ir.masked_store(b, y, b.gep(row, [_I64(16 * v)]), masks[v])

            chains[code] = tile_ir.row_chain(b, fn, positions, rows_valid, exit_block,
                                             f"store_{code}", store_position, scales)
    switch = b.switch(mode, chains[_EPILOGUE_LINEAR])
    for code, first in chains.items():
        if code != _EPILOGUE_LINEAR:
            switch.add_case(_I64(code), first)


def _make_tiles_intrinsic(positions: int, nv: int):
    """A numba intrinsic calling the (positions x 16*nv) IR kernel on numba arrays:
    w = wbits.ravel()[w_offset:], alpha and bias from their element 0 (pass slices),
    out = out.ravel()[out_offset:], kh = row_offsets.size; the other arguments as in
    `_define_microkernel`."""

    @intrinsic
    def tiles(typingctx, xbits, pos, row_offsets, run_words, wbits, w_offset, bases, base_rows,
              alpha, bias, out, out_offset, ldo, rows_valid, cols_valid, mode, ntiles, x_step,
              out_step):
        i64 = types.int64
        sig = types.void(xbits, pos, row_offsets, i64, wbits, i64, bases, base_rows, alpha, bias,
                         out, *([i64] * 8))

        def codegen(context, builder, signature, args):
            (x_v, pos_v, offsets_v, run_words_v, w_v, w_off_v, bases_v, rows_v, alpha_v, bias_v,
             out_v, out_off_v, ldo_v, rows_valid_v, cols_valid_v, mode_v, ntiles_v, x_step_v,
             out_step_v) = args
            ty = signature.args
            fn = _define_microkernel(builder.module, positions, nv)

            def data(index, value, element, at=None):
                return tile_ir.array_data(context, builder, ty[index], value, element, at)

            i8p = tile_ir.I8.as_pointer()
            builder.call(fn, [
                builder.bitcast(data(0, x_v, _I32), i8p), data(1, pos_v, _I64),
                data(2, offsets_v, _I64), tile_ir.array_length(context, builder, ty[2], offsets_v),
                run_words_v, builder.bitcast(data(4, w_v, _I32, w_off_v), i8p), ntiles_v, x_step_v,
                data(6, bases_v, _I32), data(7, rows_v, _I64), data(8, alpha_v, _F32),
                data(9, bias_v, _F32), data(10, out_v, _F32, out_off_v), ldo_v, rows_valid_v,
                cols_valid_v, mode_v, out_step_v,
            ])
            return context.get_dummy_value()

        return sig, codegen

    return tiles


_tiles_4x4 = _make_tiles_intrinsic(*TILE_SHAPES[64])
_tiles_8x2 = _make_tiles_intrinsic(*TILE_SHAPES[32])


# --------------------------------------------------------------------------------------
# The tile loop.
# --------------------------------------------------------------------------------------
@njit(inline="always", cache=CACHE)
def _valid_range(start, taps, size):
    """(lo, hi): the taps lo..hi-1 of start, start + 1, ..., start + taps - 1 that lie in
    [0, size); lo == hi when none does."""
    lo = min(max(0, -start), taps)
    return lo, max(lo, min(taps, size - start))


@njit(cache=CACHE, nogil=True)
def _border_base(row, tap_sums, iy0, ix0, h, w, cin, halved):
    """The base of a position for each lane: valid_bits + 2 * (popcounts of the lane's taps
    in the zero padding), or -base / 2 if `halved` (the accumulators' start then).

    The kernel's count includes popcount(0 ^ w_tap) = popcount(w_tap) for each padded tap,
    which this cancels: dot = base - 2 * count. tap_sums (kh + 1, kw + 1, lanes) are the
    2-D prefix sums of the block's tap popcounts, so the valid taps' sum is a rectangle.
    """
    kh, kw = tap_sums.shape[0] - 1, tap_sums.shape[1] - 1
    y0, y1 = _valid_range(iy0, kh, h)
    x0, x1 = _valid_range(ix0, kw, w)
    valid_bits = (y1 - y0) * (x1 - x0) * cin
    total, a, b = tap_sums[kh, kw], tap_sums[y1, x1], tap_sums[y0, x1]
    c, d = tap_sums[y1, x0], tap_sums[y0, x0]
    for lane in range(row.size):
        base = valid_bits + 2 * (total[lane] - (a[lane] - b[lane] - c[lane] + d[lane]))
        row[lane] = -(base // 2) if halved else base


@njit(inline="always", cache=CACHE)
def _edge_class(o, lo, hi):
    """Class of output row (or column) o: all of lo..hi (no padded tap) share class lo;
    every other one has its own (o < lo: o; o > hi: lo + o - hi)."""
    if o > hi:
        return lo + o - hi
    return min(o, lo)


@njit(inline="always", cache=CACHE)
def _class_representative(cls, lo, hi):
    """An output row (or column) of class cls (for an unused class, a harmless one)."""
    return cls if cls <= lo else hi + cls - lo


@njit(cache=CACHE, nogil=True)
def _fill_bases(bases, tap_sums, ny, nx, oy_lo, oy_hi, ox_lo, ox_hi, stride, pad, h, w, cin,
                halved):
    """bases[cy * nx + cx] = the base row (see _border_base) of the positions of class
    (cy, cx) (_edge_class of the output row and column) for one channel block."""
    for cy in range(ny):
        iy0 = _class_representative(cy, oy_lo, oy_hi) * stride - pad
        for cx in range(nx):
            ix0 = _class_representative(cx, ox_lo, ox_hi) * stride - pad
            _border_base(bases[cy * nx + cx], tap_sums, iy0, ix0, h, w, cin, halved)


@njit(cache=CACHE, nogil=True)
def _pack_rows(flat, buffer, g0, g1, h, w, c, pad, words):
    """Pack the padded input rows g0..g1-1 (global index image * Hp + padded row) into
    buffer (zeroed, (g1 - g0) rows of Wp * words): the rows one chunk of positions reads."""
    hp, wp = h + 2 * pad, w + 2 * pad
    for g in range(g0, g1):
        img = g // hp
        y = g - img * hp - pad
        if 0 <= y < h:
            _pack_row(flat, (img * h + y) * w * c, buffer, ((g - g0) * wp + pad) * words, w, c,
                      words)


@njit(inline="always", cache=CACHE)
def _split(m, ho, wo):
    """Output position m -> (image, row, column)."""
    img = m // (ho * wo)
    oy = (m - img * ho * wo) // wo
    return img, oy, m - (img * ho + oy) * wo


@njit(cache=CACHE, nogil=True)
def _row_offsets(kh, words, wp):
    """Offset of each kernel row's first word from the window's first word (rows are
    Wp * words apart); each kernel row is one run of kw * words contiguous words (adjacent
    pixels), the kernel's K steps."""
    return np.arange(kh) * (wp * words)


@njit(cache=CACHE, nogil=True)
def _epilogue_mode(activation, halved):
    mode = _HALVED if halved else 0
    if activation == LEAKY:
        return mode | _EPILOGUE_LEAKY
    if activation == RELU:
        return mode | _EPILOGUE_RELU
    return mode | _EPILOGUE_LINEAR  # LINEAR, or numba applies the activation afterwards


@njit(cache=CACHE, nogil=True)
def _can_halve(cin, alpha):
    """Whether the halved epilogue is exact: every base is even (valid taps * cin + an even
    correction) and -2 * alpha does not overflow."""
    if cin % 2:
        return False
    for a in alpha:
        if not abs(a) < np.float32(2.0**127):
            return False
    return True


@intrinsic
def _fetch_add(typingctx, array, index, value):
    """Atomically array[index] += value (int64 array, no bounds check); returns the old
    value: the work counter the threads of `_xnor_conv` share."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64
            and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        value = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(data, [args[1]]), value, "seq_cst")

    return types.int64(array, index, value), codegen


@njit(cache=CACHE, nogil=True)
def _work_items(m_total, positions, n_threads):
    """Start positions of the work items (and m_total at the end), in whole tiles.

    With enough tiles, "guided" sizes: each item takes 1 / (GUIDED_SHARE * threads) of the
    tiles left, at least MIN_ITEM_TILES; big items first, small ones at the end, so the
    threads finish within a small item of each other although one starts late (a sleeping
    pool thread takes 10-30 us to wake) or runs slower. Every item packs its rows (halo
    included) and reloads every block's weights, hence the minimum; below
    GUIDED_MIN_TILES tiles per thread (small maps with many channels, whose work is mostly
    weights), one equal item per thread does better.
    """
    tiles = (m_total + positions - 1) // positions
    bounds = np.empty(tiles + 1, np.int64)
    bounds[0] = 0
    count = 0
    done = 0
    guided = tiles >= GUIDED_MIN_TILES * n_threads
    while done < tiles:
        if guided:
            size = max(MIN_ITEM_TILES, (tiles - done) // (GUIDED_SHARE * n_threads))
        else:
            size = (tiles + n_threads - 1) // n_threads
        done = min(tiles, done + size)
        count += 1
        bounds[count] = min(m_total, done * positions)
    return bounds[:count + 1]


@njit(cache=CACHE, nogil=True)
def _list_positions(pos, base_rows, m0, rows, img, oy, ox, geometry, stride, pad, g0, words):
    """Fill pos / base_rows for positions m0..m0+rows-1 one by one (at (img, oy, ox) now;
    border classes, row and image changes); the tile's unused slots repeat the last
    position (computed, never stored). Returns the (img, oy, ox) after the last one."""
    h, w, cin, ho, wo, cout, kh, oy_lo, oy_hi, ox_lo, ox_hi, ny, nx = geometry
    hp, wp = h + 2 * pad, w + 2 * pad
    for p in range(rows):
        if ox == wo:
            img, oy, ox = _split(m0 + p, ho, wo)
        pos[p] = ((img * hp + oy * stride - g0) * wp + ox * stride) * words
        base_rows[p] = _edge_class(oy, oy_lo, oy_hi) * nx + _edge_class(ox, ox_lo, ox_hi)
        ox += 1
    for p in range(rows, pos.size):
        pos[p] = pos[rows - 1]
        base_rows[p] = base_rows[rows - 1]
    return img, oy, ox


@njit(cache=CACHE, nogil=True)
def _walk_block(xbits, g0, block, m_lo, m_hi, wbits, alpha, bias, out_flat, activation, mode,
                stride, pad, geometry, row_offsets, pos, base_rows, bases):
    """One channel block over output positions m_lo..m_hi-1, in tiles of pos.size
    positions. Whole tiles within one image row and off the border go to the IR kernel in
    one call per row; the others (border, row change, end of range) one tile per call."""
    h, w, cin, ho, wo, cout, kh, oy_lo, oy_hi, ox_lo, ox_hi, ny, nx = geometry
    blocks, _, kw, words, lanes = wbits.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    positions = pos.size
    col_step = stride * words  # words between horizontally adjacent positions
    run_words = kw * words  # per kernel row (row_offsets)
    first = block * lanes
    cols = min(lanes, cout - first)
    w_flat = wbits.reshape(wbits.size)
    fused = activation == LINEAR or activation == LEAKY or activation == RELU
    img, oy, ox = _split(m_lo, ho, wo)
    m0 = m_lo
    while m0 < m_hi:
        run_tiles = 0
        if oy_lo <= oy <= oy_hi and ox_lo <= ox:
            run_tiles = min((ox_hi - ox + 1) // positions, (m_hi - m0) // positions)
        if run_tiles > 0:
            start = ((img * hp + oy * stride - g0) * wp + ox * stride) * words
            for p in range(positions):
                pos[p] = start + p * col_step
                base_rows[p] = oy_lo * nx + ox_lo  # the interior class
            rows = run_tiles * positions
            ox += rows
        else:
            run_tiles = 1
            rows = min(positions, m_hi - m0)
            img, oy, ox = _list_positions(pos, base_rows, m0, rows, img, oy, ox, geometry,
                                          stride, pad, g0, words)
        if ox == wo and m0 + rows < m_hi:
            img, oy, ox = _split(m0 + rows, ho, wo)
        tail = (out_flat, m0 * cout + first, cout, min(rows, positions), cols, mode, run_tiles,
                positions * col_step, positions * cout)
        if lanes == 64:
            _tiles_4x4(xbits, pos, row_offsets, run_words, w_flat, block * (w_flat.size // blocks),
                       bases, base_rows, alpha[first:], bias[first:], *tail)
        else:
            _tiles_8x2(xbits, pos, row_offsets, run_words, w_flat, block * (w_flat.size // blocks),
                       bases, base_rows, alpha[first:], bias[first:], *tail)
        if not fused:
            _activate_tile(out_flat, m0 * cout + first, cout, rows, cols, activation)
        m0 += rows


@njit(cache=CACHE, nogil=True)
def _run_item(flat, wbits, tap_sums, alpha, bias, stride, pad, activation, out_flat, m_lo, m_hi,
              geometry, row_offsets, halved, pos, base_rows, bases):
    """Output positions m_lo..m_hi-1, every channel block: pack the padded input rows they
    read into a zero-bordered buffer, then block by block (one block's weights stay in
    L1/L2 over the range) fill the block's base rows and walk the range."""
    h, w, cin, ho, wo, cout, kh, oy_lo, oy_hi, ox_lo, ox_hi, ny, nx = geometry
    words = wbits.shape[3]
    hp, wp = h + 2 * pad, w + 2 * pad
    # The padded input rows this range reads: g0..g1-1 (image * Hp + row).
    img, oy, _ = _split(m_lo, ho, wo)
    g0 = img * hp + oy * stride
    img, oy, _ = _split(m_hi - 1, ho, wo)
    g1 = img * hp + oy * stride + kh
    xbits = np.zeros((g1 - g0) * wp * words, np.uint32)
    _pack_rows(flat, xbits, g0, g1, h, w, cin, pad, words)
    mode = _epilogue_mode(activation, halved)
    for block in range(wbits.shape[0]):
        _fill_bases(bases, tap_sums[block], ny, nx, oy_lo, oy_hi, ox_lo, ox_hi, stride, pad,
                    h, w, cin, halved)
        _walk_block(xbits, g0, block, m_lo, m_hi, wbits, alpha, bias, out_flat, activation, mode,
                    stride, pad, geometry, row_offsets, pos, base_rows, bases)


@njit(parallel=True, cache=CACHE, nogil=True)
def _xnor_conv(x, wbits, tap_sums, alpha, bias, stride, pad, activation, out, n_threads):
    """out = activation(float32(dot) * alpha + bias): packing, popcount tiles, epilogue.

    One parallel region of n_threads workers; each takes work items (ranges of output
    positions in (image, row, column) order, `_work_items`, `_run_item`) from a shared
    counter until none is left, so a thread that starts late or runs slower does less.
    wbits (blocks, kh, kw, words, lanes); tap_sums (blocks, kh + 1, kw + 1, lanes) prefix
    sums of the tap popcounts.
    """
    n, h, w, cin = x.shape
    _, kh, kw, words, lanes = wbits.shape
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    m_total = n * ho * wo
    positions = _POSITIONS_64 if lanes == 64 else _POSITIONS_32
    # Output rows / columns whose window has no padded tap: lo..hi; the border classes of
    # the others (_edge_class) select a base row per position.
    oy_lo = ox_lo = (pad + stride - 1) // stride
    oy_hi = (h + pad - kh) // stride
    ox_hi = (w + pad - kw) // stride
    ny = oy_lo + 1 + max(0, ho - 1 - oy_hi)
    nx = ox_lo + 1 + max(0, wo - 1 - ox_hi)
    geometry = (h, w, cin, ho, wo, cout, kh, oy_lo, oy_hi, ox_lo, ox_hi, ny, nx)
    row_offsets = _row_offsets(kh, words, w + 2 * pad)
    halved = _can_halve(cin, alpha)
    flat = x.reshape(x.size)
    out_flat = out.reshape(out.size)
    bounds = _work_items(m_total, positions, n_threads)
    n_items = bounds.size - 1
    next_item = np.empty(1, np.int64)  # (np.zeros here would be a parallel loop of its own)
    next_item[0] = 0
    for _ in prange(min(n_threads, n_items)):
        pos = np.empty(positions, np.int64)
        base_rows = np.empty(positions, np.int64)
        bases = np.empty((ny * nx, lanes), np.int32)
        item = _fetch_add(next_item, 0, 1)
        while item < n_items:
            _run_item(flat, wbits, tap_sums, alpha, bias, stride, pad, activation, out_flat,
                      bounds[item], bounds[item + 1], geometry, row_offsets, halved, pos,
                      base_rows, bases)
            item = _fetch_add(next_item, 0, 1)


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
    return _run(x, weights, weights.alpha, np.ascontiguousarray(bias), stride, pad, code, out)


def conv2d_xnor_dot(x: np.ndarray, weights: XnorConvWeights, stride: int, pad: int) -> np.ndarray:
    """The integer part of `conv2d_xnor`: dot(sign x, sign w) over valid taps, int32
    (N, Ho, Wo, Cout). Same kernel, run with alpha = 1, bias = 0, linear (|dot| < 2**24,
    so float32 holds it exactly)."""
    ho, wo = _check_conv_args(x, weights, stride, pad)
    ones = np.ones(weights.cout, dtype=np.float32)
    zeros = np.zeros(weights.cout, dtype=np.float32)
    out = np.empty((x.shape[0], ho, wo, weights.cout), dtype=np.float32)
    dots = _run(x, weights, ones, zeros, stride, pad, LINEAR, out)
    return dots.astype(np.int32)


def _run(x, weights, alpha, bias, stride, pad, code, out) -> np.ndarray:
    _xnor_conv(x, weights.bits, weights.tap_sums, alpha, bias, stride, pad, code, out,
               numba.get_num_threads())
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
    if weights.kh * weights.kw * weights.cin >= 2**24:
        # The epilogue converts dot-sized integers to float32, exactly only below 2**24.
        raise ValueError("filter too large for an exact float32 dot count")
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
