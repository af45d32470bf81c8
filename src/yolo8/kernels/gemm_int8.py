"""Exact int8 x int8 -> int32 GEMM kernels, as an implicit GEMM shared with the INT8 convolution.

One register-tile kernel (`tile_ir.define_tile_kernel`), one multiply-accumulate step per x86
tier, chosen from numba's compile target (`default_variant`; NUMBA_CPU_NAME/FEATURES select
another tier on a bigger CPU):

* `avx512vnni`: `vpdpbusd` on zmm, 24 accumulators of 16 int32 (64 multiply-adds per instruction);
* `avxvnni`: the VEX `vpdpbusd` on ymm (Alder Lake and later, Zen 5), 12 accumulators of 8;
* `avx2`: `vpmaddwd` + `vpaddd` on int16 operands, 10 accumulators of 8. `vpmaddubsw` (u8 x s8)
  would add pairs of products into *saturating* int16 (2 * 255 * 127 > 32767) and could only be
  made exact with a second multiply per step or 7-bit weights; `vpmaddwd` is exact as it is,
  and its int16 operands also take Winograd's transformed values: the AVX2 tier runs most 3x3
  layers as an exact integer Winograd F(2x2, 3x3) on this micro-kernel (winograd_int8);
* `portable`: plain numba, any CPU.

vpdpbusd multiplies *unsigned* bytes by signed bytes, so activations are stored shifted by
+128 (u8 = s8 + 128; int16 = s8 + 128 for AVX2) and each output channel subtracts
`128 * sum_k w[n, k]` afterwards. All int32 arithmetic wraps modulo 2**32, so the shifted sum
minus the correction equals the true sum of products whenever that sum fits in int32, which
`MAX_K` guarantees for any int8 inputs: every tier gives the same int32 bit for bit.

Layouts (`A` is the activation matrix, `B` the weights, `C = A @ B.T`):

* A is never materialised as an im2col matrix. Row m of A is found in a source buffer at
  `rows[m] + taps[t] + c` for kernel tap t and input channel c (K ordering (tap, channel)),
  which describes a plain (M, K) matrix (one tap at offset 0) as well as the padded NHWC
  input of a convolution (one tap per (ky, kx)). The channel count per tap is padded to a
  multiple of 4 (`kc4`): every step consumes k in groups of four.
* B is packed once per tier into panels of NR = lanes * nv output channels (`PackedB`),
  zero-padded in k and in the channels past N, so the micro-kernel reads it sequentially.
* The micro-kernel computes an MR x NR tile in registers: per group of four k it broadcasts
  four values of each of the MR rows, loads nv vectors of B and issues MR * nv steps.

The tile loop `_tiles` runs in parallel over contiguous chunks of tiles (one per thread; calls
below SERIAL_MAX_MACS stay on the calling thread). The IR micro-kernels end each tile in
registers: int32 `acc - corr` stored (`gemm_s8s8s32`), or the convolution's float32 epilogue
(`y = f32(acc - corr) * scale + bias`, leaky as a select; other activations by numba on the
stored tile), with masked stores for partial tiles. The portable kernel fills a scratch tile
that `_store_int32` / `_store_float` finish.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import llvmlite.ir as ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..jit import CACHE
from . import tile_ir
from .activations import LEAKY, LINEAR, activate
from .common import ALIGN, aligned_empty, row_offsets, target_features
from .gemm_fp32 import _activate_tile

logger = logging.getLogger(__name__)

# |sum_k a*b| <= K * 128 * 128 must stay below 2**31 for the int32 result to exist.
MAX_K = (1 << 31) // (128 * 128) - 1

# Below this many multiply-adds a call runs on the calling thread only: waking numba's
# OpenMP workers costs 5-100 us (on the 2-vCPU dev VM the upper end), more than the work.
SERIAL_MAX_MACS = 8_000_000
# Packed weights and scratch tiles are 64-byte aligned so that every B vector is one line.
_ALIGN = ALIGN

# The packed activations store s8 + 128 (as u8, or as int16 for the AVX2 tier); padding
# (image border, channels past Cin) is the shifted zero.
ZERO_U8 = 128


# ----------------------------------------------------------------------------------------------
# Tiers: one multiply-accumulate step per instruction set, on the shared tile skeleton
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """How one instruction set runs the tile: `lanes` int32 accumulators per vector,
    `accumulators` vectors per tile (room left for the B vectors and the broadcast), the
    bytes of one packed activation or weight value (`value_bytes`: 1 = u8/s8, 2 = int16),
    the tile widths nv it offers, the target features it needs (any one of `needs`), and the
    multiply-accumulate step (None: the plain-numba portable kernel)."""

    name: str
    code: int
    lanes: int
    accumulators: int
    value_bytes: int
    widths: tuple[int, ...]
    needs: tuple[frozenset[str], ...]
    step: tile_ir.MacStep | None


# 32 zmm registers: 24 accumulators. 16 ymm registers: 12 accumulators, 2 B vectors and the
# broadcast row for AVX-VNNI; AVX2 also needs a register for each vpmaddwd product, and with
# 12 accumulators LLVM spilled one of them in the inner loop: 10 there (5 x 2, 10 x 1).
TIERS = {tier.name: tier for tier in (
    Tier("avx512vnni", 0, 16, 24, 1, (1, 2, 4),
         (frozenset({"+avx512f", "+avx512bw", "+avx512vnni"}),), tile_ir.dpbusd_step(16)),
    Tier("avxvnni", 1, 8, 12, 1, (1, 2),
         (frozenset({"+avxvnni"}), frozenset({"+avx512vnni", "+avx512vl"})), tile_ir.dpbusd_step(8)),
    Tier("avx2", 2, 8, 10, 2, (1, 2), (frozenset({"+avx2"}),), tile_ir.pmaddwd_step(8)),
    Tier("portable", 3, 16, 24, 1, (1, 2, 4), (frozenset(),), None),
)}
# Rows per tile at most: each row of A needs a pointer in a general-purpose register (16 of
# them, 3-4 taken by the loop); with 24 rows LLVM reloaded row pointers from the stack in the
# inner loop, one load per multiply-accumulate (measured in the assembly).
MAX_ROWS = 12
VARIANTS = tuple(TIERS)  # best first
MAX_TILE_INT32 = max(t.lanes * t.accumulators for t in TIERS.values())


def tier_available(name: str) -> bool:
    """True when numba's compile target (NUMBA_CPU_FEATURES, else the host's features) has
    what the tier needs, i.e. its kernel can be compiled and run."""
    features = target_features()
    return any(need <= features for need in TIERS[name].needs)


@functools.lru_cache(maxsize=None)
def default_variant() -> str:
    """The fastest tier the compile target runs (cached: numba's target is fixed at import)."""
    best = next(name for name in VARIANTS if tier_available(name))
    logger.debug("int8 kernels: %s tier", best)
    return best


def resolve_variant(variant: str) -> str:
    """"auto" -> the best tier this CPU runs; else check that the tier `variant` can run here."""
    if variant == "auto":
        return default_variant()
    if variant not in TIERS:
        raise ValueError(f"unknown int8 kernel variant {variant!r}; expected 'auto' or one of {VARIANTS}")
    if not tier_available(variant):
        raise ValueError(f"the {variant!r} int8 kernel needs CPU features this compile target "
                         f"lacks ({' or '.join(','.join(sorted(n)) for n in TIERS[variant].needs)})")
    return variant


@contextlib.contextmanager
def threads_for(macs: int) -> Iterator[int]:
    """Yield the thread count for a call of `macs` multiply-adds; for a small call, limit
    numba's parallel regions inside the block to the calling thread."""
    available = numba.get_num_threads()
    if macs >= SERIAL_MAX_MACS or available == 1:
        yield available
        return
    numba.set_num_threads(1)
    try:
        yield 1
    finally:
        numba.set_num_threads(available)


def tile_shape(n_per_group: int, tier: str = "avx512vnni") -> tuple[int, int]:
    """(MR, nv) for a GEMM with this many output channels (per group) on this tier: the
    widest tile that does not mostly multiply padding, MR * nv = the tier's accumulators
    (MR at most MAX_ROWS)."""
    t = TIERS[tier]
    nv = next((w for w in t.widths if n_per_group <= w * t.lanes), t.widths[-1])
    return min(MAX_ROWS, t.accumulators // nv), nv


# ----------------------------------------------------------------------------------------------
# Micro-kernels
# ----------------------------------------------------------------------------------------------


# Epilogue modes of the IR micro-kernels.
STORE_INT32, STORE_LINEAR, STORE_LEAKY = 0, 1, 2


def _define_microkernel(module: ir.Module, tier: Tier, mr: int, nv: int) -> ir.Function:
    """`void ukr(i8* src, i64* rows, i64* taps, i64 ntaps, i64 k4, i8* b, i32* corr, f32* scale,
    f32* bias, i8* out, i64 ldo, i64 rows_valid, i64 cols_valid, i64 mode)` on the shared
    skeleton: acc[i, :] = sum over taps t and groups of 4 k of the tier's step for an
    MR x (lanes * nv) tile, then, for rows < rows_valid and columns < cols_valid (masked):

    * mode STORE_INT32: out (int32, rows ldo elements apart) = acc - corr;
    * STORE_LINEAR / STORE_LEAKY: out (float32) = f32(acc - corr) * scale + bias (a multiply
      then an add, two roundings: no fast-math flag lets LLVM fuse them), then leaky as
      darknet's select (y > 0 ? y : 0.1f * y).

    acc - corr wraps in int32: acc itself may have wrapped, the difference is the true sum.
    """
    lanes, acc_ty = tier.lanes, tier.step.acc
    f32_ty = tile_ir.vector(tile_ir.F32, lanes)

    def zeros(builder, extra):
        return [[ir.Constant(acc_ty, None)] * nv for _ in range(mr)]

    def store(b, fn, acc, extra):
        *_, cols_valid, mode = extra
        # Two copies of the stores: a tile of full width with plain vector loads and stores
        # (an all-true constant mask folds away), a partial one with masked ones. On AVX2
        # a masked store is vmaskmovps, many times slower than a store on AMD's cores.
        partial_masks = [tile_ir.lane_mask(b, lanes * v, cols_valid, lanes) for v in range(nv)]
        all_lanes = ir.Constant(tile_ir.vector(tile_ir.I1, lanes), [1] * lanes)
        done = fn.append_basic_block("done")
        dispatch = b.block
        chains = {}
        for full in (False, True):
            masks = [all_lanes] * nv if full else partial_masks
            for kind in (STORE_INT32, STORE_LINEAR, STORE_LEAKY):
                chains[full, kind] = _store_chain(b, fn, kind, acc, masks, extra, done)
        b.position_at_end(dispatch)
        switches = []
        for full in (False, True):
            block = fn.append_basic_block(f"dispatch_{'full' if full else 'partial'}")
            switches.append(block)
            b.position_at_end(block)
            switch = b.switch(mode, chains[full, STORE_INT32])
            switch.add_case(tile_ir.I64(STORE_LINEAR), chains[full, STORE_LINEAR])
            switch.add_case(tile_ir.I64(STORE_LEAKY), chains[full, STORE_LEAKY])
        b.position_at_end(dispatch)
        b.cbranch(b.icmp_signed("==", cols_valid, tile_ir.I64(lanes * nv)), switches[1],
                  switches[0])
        b.position_at_end(done)
        b.ret_void()

    def _store_chain(b, fn, kind, acc, masks, extra, done):
        """The blocks storing rows 0..rows_valid-1 of the tile in mode `kind`; returns the
        first."""
        corr, scale, bias, out, ldo, rows_valid, _, _ = extra
        element = tile_ir.I32 if kind == STORE_INT32 else tile_ir.F32

        def vectors(pointer, ty):
            return [tile_ir.masked_load(b, tile_ir.offset(b, pointer, lanes * v), masks[v],
                                        ir.Constant(ty, None)) for v in range(nv)]

        def start():  # corrections (and scales, biases) of the tile's columns
            corrs = vectors(corr, acc_ty)
            if kind == STORE_INT32:
                return corrs, None, None, b.bitcast(out, element.as_pointer())
            return corrs, vectors(scale, f32_ty), vectors(bias, f32_ty), b.bitcast(
                out, element.as_pointer())

        def store_row(i, shared):
            corrs, scales, biases, out_typed = shared
            row = b.gep(out_typed, [b.mul(tile_ir.I64(i), ldo)])
            for v in range(nv):
                y = b.sub(acc[i][v], corrs[v])
                if kind != STORE_INT32:
                    y = b.fadd(b.fmul(b.sitofp(y, f32_ty), scales[v]), biases[v])
                if kind == STORE_LEAKY:
                    slope = ir.Constant(f32_ty, [0.1] * lanes)
                    y = b.select(b.fcmp_ordered(">", y, ir.Constant(f32_ty, None)), y,
                                 b.fmul(y, slope))
                tile_ir.masked_store(b, y, tile_ir.offset(b, row, lanes * v), masks[v])

        return tile_ir.row_chain(b, fn, mr, rows_valid, done, f"store_{kind}", store_row, start)

    i64, f32p = tile_ir.I64, tile_ir.F32.as_pointer()
    return tile_ir.define_tile_kernel(
        module, f"yolo8_int8_{tier.name}_{mr}x{nv}", tier.step, mr, nv,
        [tile_ir.I32.as_pointer(), f32p, f32p, tile_ir.I8.as_pointer(), i64, i64, i64, i64],
        zeros, store)


def _make_microkernel(tier: Tier, mr: int, nv: int):
    """A numba intrinsic `ukr(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale,
    bias, vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)` calling the tier's IR
    kernel: src and packed uint8 arrays (rows, taps, b_offset in bytes), corr int32, scale and
    bias float32 (from elements corr_off and vec_off), out int32 or float32 (from element
    out_off, rows ldo elements apart).

    On a compile target without the tier's instructions the intrinsic compiles to a trap (the
    instruction could not be selected there); `_tiles` only calls it when `tier_available`.
    """

    @intrinsic
    def microkernel(typingctx, src, rows, taps, k4, packed, b_offset, corr, corr_off, scale,
                    bias, vec_off, out, out_off, ldo, rows_valid, cols_valid, mode):
        i64 = types.int64
        sig = types.void(src, rows, taps, i64, packed, i64, corr, i64, scale, bias, i64, out,
                         i64, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            (src_v, rows_v, taps_v, k4_v, packed_v, b_off_v, corr_v, corr_off_v, scale_v, bias_v,
             vec_off_v, out_v, out_off_v, ldo_v, rows_valid_v, cols_valid_v, mode_v) = args
            ty = signature.args
            if not tier_available(tier.name):
                tile_ir.trap_with_message(
                    builder, f"yolo8: {tier.name} micro-kernel called on a CPU without it")
                return context.get_dummy_value()
            fn = _define_microkernel(builder.module, tier, mr, nv)

            def data(index, value, element=tile_ir.I8, at=None):
                return tile_ir.array_data(context, builder, ty[index], value, element, at)

            out_element = tile_ir.I32 if ty[11].dtype == types.int32 else tile_ir.F32
            builder.call(fn, [
                data(0, src_v), data(1, rows_v, tile_ir.I64), data(2, taps_v, tile_ir.I64),
                tile_ir.array_length(context, builder, ty[2], taps_v), k4_v,
                data(4, packed_v, at=b_off_v),
                data(6, corr_v, tile_ir.I32, corr_off_v),
                data(8, scale_v, tile_ir.F32, vec_off_v), data(9, bias_v, tile_ir.F32, vec_off_v),
                builder.bitcast(data(11, out_v, out_element, out_off_v), tile_ir.I8.as_pointer()),
                ldo_v, rows_valid_v, cols_valid_v, mode_v,
            ])
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


def _tier_kernels(name: str) -> tuple:
    """The tier's intrinsics for nv = 1, 2, 4 (a missing width repeats the widest)."""
    tier = TIERS[name]
    kernels = {nv: _make_microkernel(tier, min(MAX_ROWS, tier.accumulators // nv), nv)
               for nv in tier.widths}
    return tuple(kernels.get(nv, kernels[tier.widths[-1]]) for nv in (1, 2, 4))


_AVX512VNNI_NV1, _AVX512VNNI_NV2, _AVX512VNNI_NV4 = _tier_kernels("avx512vnni")
_AVXVNNI_NV1, _AVXVNNI_NV2, _ = _tier_kernels("avxvnni")
_AVX2_NV1, _AVX2_NV2, _ = _tier_kernels("avx2")
_TIER_AVX512VNNI, _TIER_AVXVNNI, _TIER_AVX2, _TIER_PORTABLE = (
    TIERS[n].code for n in ("avx512vnni", "avxvnni", "avx2", "portable"))


@njit(cache=CACHE, nogil=True)
def _microkernel_portable(src, rows, taps, k4, packed, b_offset, c, mr, nr):
    """Plain-numba micro-kernel with the same contract as the IR ones (the fallback).

    Slices keep every index a plain loop counter, so numba emits no negative-index
    wrap-around and LLVM vectorises the j loop.
    """
    c[: mr * nr] = 0
    kb = b_offset
    for t in range(taps.size):
        for kk in range(k4):
            b_block = packed[kb:kb + 4 * nr]
            for i in range(mr):
                a = src[rows[i] + taps[t] + 4 * kk:]
                a0 = np.int32(a[0])
                a1 = np.int32(a[1])
                a2 = np.int32(a[2])
                a3 = np.int32(a[3])
                c_row = c[i * nr:(i + 1) * nr]
                for j in range(nr):
                    # np.int32(...) keeps the arithmetic in 32-bit lanes (numba widens to int64).
                    # packed is the uint8 view of int8 weights: view them back as signed.
                    c_row[j] = np.int32(
                        c_row[j]
                        + a0 * np.int32(np.int8(b_block[4 * j]))
                        + a1 * np.int32(np.int8(b_block[4 * j + 1]))
                        + a2 * np.int32(np.int8(b_block[4 * j + 2]))
                        + a3 * np.int32(np.int8(b_block[4 * j + 3])))
            kb += 4 * nr


@njit(inline="always", cache=CACHE, nogil=True)
def _microkernel(tier, nv, src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                 vec_off, out, out_off, ldo, rows_valid, cols_valid, mode):
    """The tier's IR micro-kernel with its fused epilogue (see _define_microkernel).

    Inlined into its callers: a call of a jitted function passes each array as a struct of
    seven values and updates its reference count, which cost as much as the multiplies of a
    tile with K = 32 (Winograd's GEMMs ran 1.5-2x faster at K = 16-64 once inlined)."""
    if tier == _TIER_AVX512VNNI:
        if nv == 4:
            _AVX512VNNI_NV4(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                            vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
        elif nv == 2:
            _AVX512VNNI_NV2(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                            vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
        else:
            _AVX512VNNI_NV1(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                            vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
    elif tier == _TIER_AVXVNNI:
        if nv == 2:
            _AVXVNNI_NV2(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                         vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
        else:
            _AVXVNNI_NV1(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                         vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
    else:
        if nv == 2:
            _AVX2_NV2(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                      vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)
        else:
            _AVX2_NV1(src, rows, taps, k4, packed, b_offset, corr, corr_off, scale, bias,
                      vec_off, out, out_off, ldo, rows_valid, cols_valid, mode)


# ----------------------------------------------------------------------------------------------
# Tile loop (shared by the GEMM and the convolution)
# ----------------------------------------------------------------------------------------------


@njit(cache=CACHE, nogil=True)
def _store_int32(tile, nr, rows_valid, cols_valid, corr, out_i, m0, col0):
    for i in range(rows_valid):
        acc = tile[i * nr:i * nr + cols_valid]
        dst = out_i[m0 + i, col0:col0 + cols_valid]
        for j in range(cols_valid):
            dst[j] = acc[j] - corr[j]


@njit(cache=CACHE, nogil=True)
def _store_float(tile, nr, rows_valid, cols_valid, corr, out_f, m0, col0, scale, bias, act):
    """y = f32(acc) * scale + bias (two float32 roundings, never an FMA), then activation.

    corr, scale and bias are already sliced to this tile's columns; the loops index slices
    by their counter only, which lets LLVM vectorise them. acc - corr wraps in int32 (numba
    would widen it to int64): acc itself may have wrapped, the difference is the true sum.
    """
    for i in range(rows_valid):
        acc = tile[i * nr:i * nr + cols_valid]
        dst = out_f[m0 + i, col0:col0 + cols_valid]
        if act == LEAKY:
            for j in range(cols_valid):
                y = np.float32(np.int32(acc[j] - corr[j])) * scale[j] + bias[j]
                dst[j] = y if y > 0 else np.float32(0.1) * y
        elif act == LINEAR:
            for j in range(cols_valid):
                dst[j] = np.float32(np.int32(acc[j] - corr[j])) * scale[j] + bias[j]
        else:
            for j in range(cols_valid):
                dst[j] = activate(np.float32(np.int32(acc[j] - corr[j])) * scale[j] + bias[j], act)


@njit(parallel=True, cache=CACHE, nogil=True)
def _tiles(src, taps, k4, m_total, ho, wo, img_stride, row_stride, col_stride, group_stride,
           packed, tier, mr, nv, nr, n_panels, panel_bytes, n_per_group, corr,
           out_i, out_f, scale, bias, act, float_out, n_threads):
    """All tiles of C for every group, in n_threads contiguous chunks (one per thread).

    Tile order is (group, panel, row tile) with row tiles innermost, so each thread walks one
    packed B panel (panel_bytes, L2-resident) over many row tiles. Offsets are in bytes.
    """
    n_row_tiles = (m_total + mr - 1) // mr
    groups = corr.size // (n_panels * nr)
    ldo = out_f.shape[1] if float_out else out_i.shape[1]
    flat_f = out_f.reshape(-1)
    flat_i = out_i.reshape(-1)
    other_act = act != LEAKY and act != LINEAR
    mode = STORE_LEAKY if act == LEAKY else STORE_LINEAR
    n_tiles = groups * n_panels * n_row_tiles
    n_chunks = min(n_threads, n_tiles)
    for chunk in prange(n_chunks):
        rows = np.empty(mr, np.int64)
        raw = np.empty(MAX_TILE_INT32 + 16, np.int32)
        # 64-byte aligned tile (the IR stores aligned vectors).
        start = ((64 - raw.ctypes.data % 64) % 64) // 4
        tile = raw[start:start + MAX_TILE_INT32]
        first = chunk * n_tiles // n_chunks
        last = (chunk + 1) * n_tiles // n_chunks
        for t in range(first, last):
            row_tile = t % n_row_tiles
            panel = (t // n_row_tiles) % n_panels
            group = t // (n_row_tiles * n_panels)
            m0 = row_tile * mr
            row_offsets(rows, m0, mr, m_total, ho, wo, img_stride, row_stride, col_stride,
                         group * group_stride)
            b_offset = (group * n_panels + panel) * panel_bytes
            rows_valid = min(mr, m_total - m0)
            cols_valid = min(nr, n_per_group - panel * nr)
            corr0 = (group * n_panels + panel) * nr
            col0 = group * n_per_group + panel * nr
            if tier != _TIER_PORTABLE:
                if float_out:
                    _microkernel(tier, nv, src, rows, taps, k4, packed, b_offset, corr, corr0,
                                 scale, bias, col0, flat_f, m0 * ldo + col0, ldo, rows_valid,
                                 cols_valid, mode)
                    if other_act:
                        _activate_tile(flat_f, m0 * ldo + col0, ldo, rows_valid, cols_valid, act)
                else:
                    _microkernel(tier, nv, src, rows, taps, k4, packed, b_offset, corr, corr0,
                                 scale, bias, col0, flat_i, m0 * ldo + col0, ldo, rows_valid,
                                 cols_valid, STORE_INT32)
                continue
            _microkernel_portable(src, rows, taps, k4, packed, b_offset, tile, mr, nr)
            tile_corr = corr[corr0:corr0 + cols_valid]
            if float_out:
                _store_float(tile, nr, rows_valid, cols_valid, tile_corr, out_f, m0, col0,
                             scale[col0:col0 + cols_valid], bias[col0:col0 + cols_valid], act)
            else:
                _store_int32(tile, nr, rows_valid, cols_valid, tile_corr, out_i, m0, col0)


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------


class PackedB:
    """B (N, taps, K per tap) int8 packed for one tier's micro-kernel, with its +128
    correction. `packed` is a uint8 view (of int8, or of int16 for the AVX2 tier)."""

    __slots__ = ("packed", "corr", "tier", "mr", "nv", "nr", "n_panels", "n_per_group",
                 "groups", "ntaps", "k4", "panel_bytes")

    def __init__(self, b: np.ndarray, groups: int = 1, tier: str = "avx512vnni",
                 input_zero: int = ZERO_U8) -> None:
        """b: (N, ntaps, kc) int8 (int16 for a tier of 2-byte values: Winograd's transformed
        weights), output channels of group g are rows [g*N/groups, ...). input_zero: the
        shift of the activations the kernel will read (ZERO_U8, or 0 for signed ones).

        Layout per (group, panel of NR channels, tap, group of 4 k): [NR][4] int8 for the
        byte tiers (vpdpbusd's operand), [2][NR][2] int16 for AVX2 (two vpmaddwd operands).
        """
        n, ntaps, kc = b.shape
        n_g = n // groups
        t = TIERS[tier]
        if b.dtype != np.int8 and not (b.dtype == np.int16 and t.value_bytes == 2):
            raise ValueError(f"the {tier} tier packs int8 weights, got {b.dtype}")
        mr, nv = tile_shape(n_g, tier)
        nr = t.lanes * nv
        n_panels = -(-n_g // nr)
        kc4 = -(-kc // 4) * 4
        padded = np.zeros((groups, n_panels * nr, ntaps, kc4), dtype=b.dtype)
        padded[:, :n_g, :, :kc] = b.reshape(groups, n_g, ntaps, kc)
        if t.value_bytes == 1:
            # [group][panel][NR][tap][k4][4] -> [group][panel][tap][k4][NR][4]
            blocked = padded.reshape(groups, n_panels, nr, ntaps, kc4 // 4, 4).transpose(
                0, 1, 3, 4, 2, 5)
        else:
            # [group][panel][NR][tap][k4][2][2] -> [group][panel][tap][k4][2][NR][2], int16
            blocked = padded.reshape(groups, n_panels, nr, ntaps, kc4 // 4, 2, 2).transpose(
                0, 1, 3, 4, 5, 2, 6).astype(np.int16, copy=False)  # int8 widened; int16 as is
        packed = aligned_empty(blocked.size, blocked.dtype)
        packed.reshape(blocked.shape)[...] = blocked  # one copy of the transposed view
        self.packed = packed.view(np.uint8)
        # int32, as the kernels read it (|128 * sum_k w| < 2**31 by MAX_K)
        self.corr = (input_zero * padded.astype(np.int64).sum(axis=(2, 3))).reshape(-1).astype(np.int32)
        self.tier, self.mr, self.nv, self.nr = tier, mr, nv, nr
        self.n_panels, self.n_per_group = n_panels, n_g
        self.groups, self.ntaps, self.k4 = groups, ntaps, kc4 // 4
        self.panel_bytes = ntaps * kc4 * nr * t.value_bytes


def source_dtype(tier: str) -> np.dtype:
    """dtype of the shifted activations (s8 + 128) the tier reads: uint8, or int16 (AVX2)."""
    return np.dtype(np.uint8 if TIERS[tier].value_bytes == 1 else np.int16)


# Stand-ins for the outputs a call does not use (never indexed, only typed).
_NO_INT32_OUT = np.empty((0, 1), np.int32)
_NO_FLOAT_OUT = np.empty((0, 1), np.float32)
_NO_VECTOR = np.empty(0, np.float32)


def run_tiles(src: np.ndarray, taps: np.ndarray, k4: int, geometry: tuple[int, ...],
              packed: PackedB, n_threads: int, *, out_i: np.ndarray | None = None,
              out_f: np.ndarray | None = None, scale: np.ndarray | None = None,
              bias: np.ndarray | None = None, act: int = LINEAR) -> None:
    """Run `_tiles` on packed's tier (internal: used by gemm_s8s8s32 and conv2d_int8, which
    validate inputs and resolve the tier).

    src: flat, of `source_dtype(packed.tier)`. taps and geometry count elements of src (they
    are scaled to bytes here). taps * 4*k4 must equal packed.ntaps * 4*packed.k4 (taps that
    are adjacent in memory may be merged into one longer tap). geometry = (m_total, ho, wo,
    img_stride, row_stride, col_stride, group_stride). Exactly one of out_i (int32 (M, N))
    and out_f (float32 (M, N), with scale, bias, act).
    """
    assert taps.size * k4 == packed.ntaps * packed.k4
    assert src.dtype == source_dtype(packed.tier) and src.ndim == 1
    float_out = out_f is not None
    if float_out:
        out_i = _NO_INT32_OUT
    else:
        out_f, scale, bias = _NO_FLOAT_OUT, _NO_VECTOR, _NO_VECTOR
    size = src.itemsize
    m_total, ho, wo, *strides = geometry
    tier = TIERS[packed.tier]
    _tiles(src.view(np.uint8), taps * size, k4, m_total, ho, wo, *(s * size for s in strides),
           packed.packed, tier.code, packed.mr, packed.nv, packed.nr, packed.n_panels,
           packed.panel_bytes, packed.n_per_group, packed.corr, out_i, out_f, scale, bias, act,
           float_out, n_threads)


# ----------------------------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------------------------


def _check_gemm_operands(a: np.ndarray, b: np.ndarray) -> None:
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, np.ndarray) or m.dtype != np.int8 or m.ndim != 2:
            raise ValueError(f"gemm_s8s8s32: {name} must be a 2-D int8 array")
        if m.size and m.shape[1] > 1 and m.strides[1] != 1:
            raise ValueError(f"gemm_s8s8s32: {name} must be contiguous along K (strides[1] == 1)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"gemm_s8s8s32: K differs, a is {a.shape} and b is {b.shape}")
    if a.shape[1] > MAX_K:
        raise ValueError(f"gemm_s8s8s32: K={a.shape[1]} > {MAX_K} could overflow int32")


def gemm_s8s8s32(a: np.ndarray, b: np.ndarray, *, variant: str = "auto") -> np.ndarray:
    """C = a @ b.T exactly, in int32: a (M, K) int8, b (N, K) int8, both contiguous along K.

    variant: "auto" (the best tier the compile target runs) or one of VARIANTS.
    Packs b on every call; the convolution packs its weights once instead.
    """
    _check_gemm_operands(a, b)
    variant = resolve_variant(variant)
    m, k = a.shape
    if a.size == 0 or b.size == 0:
        return np.zeros((m, b.shape[0]), np.int32)  # empty, or K = 0: sums of nothing
    k4 = -(-k // 4) * 4
    src = np.full((m, k4), ZERO_U8, dtype=source_dtype(variant))
    src[:, :k] = a
    src[:, :k] += ZERO_U8  # s8 + 128, as u8 (wrapping) or int16
    packed = PackedB(b.reshape(b.shape[0], 1, k), tier=variant)
    taps = np.zeros(1, np.int64)
    # A plain matrix is a 1 x M "image" with one tap: row m starts at m * k4.
    geometry = (m, 1, m, m * k4, 0, k4, 0)
    out = np.empty((m, b.shape[0]), np.int32)
    with threads_for(m * b.shape[0] * k) as n_threads:
        run_tiles(src.reshape(-1), taps, packed.k4, geometry, packed, n_threads, out_i=out)
    return out


def gemm_s8s8s32_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain numpy: int64 matmul, checked to fit int32."""
    c = a.astype(np.int64) @ b.astype(np.int64).T
    if c.size and (c.max() > np.iinfo(np.int32).max or c.min() < np.iinfo(np.int32).min):
        raise ValueError("gemm_s8s8s32_reference: result does not fit int32")
    return c.astype(np.int32)
