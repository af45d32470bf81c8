"""Exact int8 x int8 -> int32 GEMM kernels, as an implicit GEMM shared with the INT8 convolution.

The hot loop is AVX-512 VNNI `vpdpbusd`, which multiplies *unsigned* bytes by signed bytes and
adds groups of four products into int32 lanes (64 multiply-adds per instruction, twice what
the `vpdpwssd` that numba auto-vectorises to does). Activations are therefore stored shifted
by +128 (u8 = s8 + 128) and each output channel subtracts `128 * sum_k w[n, k]` afterwards.
All int32 arithmetic wraps modulo 2**32, so the shifted sum minus the correction equals the
true sum of products whenever that sum fits in int32, which `MAX_K` guarantees for any int8
inputs: the intermediate wrap-around cannot change the result.

Layouts (`A` is the activation matrix, `B` the weights, `C = A @ B.T`):

* A is never materialised as an im2col matrix. Row m of A is found in a u8 source buffer at
  `rows[m] + taps[t] + c` for kernel tap t and input channel c (K ordering (tap, channel)),
  which describes a plain (M, K) matrix (one tap at offset 0) as well as the padded NHWC
  input of a convolution (one tap per (ky, kx)). The channel count per tap is padded to a
  multiple of 4 (`kc4`) because VNNI consumes k in groups of four bytes.
* B is packed once into panels of NR = 16 * nv output channels:
  `[group][panel][tap][k4][NR][4]` int8, zero-padded in k and in the channels past N, so
  the micro-kernel reads it strictly sequentially.
* The micro-kernel computes an MR x NR tile (MR * nv = 24 zmm accumulators): per group of
  four k it broadcasts one dword of each of the MR rows, loads nv vectors of B and issues
  MR * nv `vpdpbusd`. It is written in LLVM IR (`_define_vnni_microkernel`), because numba
  never emits `vpdpbusd` by itself; `_microkernel_portable` is the plain-numba fallback used on
  CPUs without AVX-512 VNNI (and by the tests everywhere).

The tile loop `_tiles` runs in parallel over contiguous chunks of tiles (one per thread, each
with its own scratch; calls below SERIAL_MAX_MACS stay on the calling thread) and ends each
tile either by storing int32 (`gemm_s8s8s32`) or by the fused float32 epilogue of the
convolution (`y = f32(acc) * scale + bias`, then activation).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import llvmlite.ir as ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import CACHE
from .activations import LEAKY, LINEAR, activate
from .common import ALIGN, aligned_empty, row_offsets, target_features

logger = logging.getLogger(__name__)

# |sum_k a*b| <= K * 128 * 128 must stay below 2**31 for the int32 result to exist.
MAX_K = (1 << 31) // (128 * 128) - 1

# Tile shapes: nv zmm vectors of 16 output channels (NR = 16 * nv) times MR = 24 // nv rows,
# i.e. 24 accumulator registers out of 32 in every shape.
TILE_ACCUMULATORS = 24
VARIANTS = ("vnni", "portable")
# Below this many multiply-adds a call runs on the calling thread only: waking numba's
# OpenMP workers costs 5-100 us (on the 2-vCPU dev VM the upper end), more than the work.
SERIAL_MAX_MACS = 8_000_000
# Packed weights and scratch tiles are 64-byte aligned so that every B vector is one line.
_ALIGN = ALIGN

# The packed activations store s8 + 128 as u8; padding (image border, channels past Cin) is
# the shifted zero.
ZERO_U8 = 128


@functools.lru_cache(maxsize=None)
def vnni_available() -> bool:
    """True when numba's compile target has AVX-512 VNNI, i.e. the `vnni` variant can run.

    The target is numba's: NUMBA_CPU_FEATURES if set, else the host's features. Cached (the
    configuration is fixed once numba is imported).
    """
    available = "+avx512vnni" in target_features()
    logger.debug("int8 kernels: AVX-512 VNNI %s", "available" if available else "not available")
    return available


def default_variant() -> str:
    return "vnni" if vnni_available() else "portable"


def resolve_variant(variant: str) -> str:
    """"auto" -> the best variant this CPU runs; else check that `variant` can run here."""
    if variant == "auto":
        return default_variant()
    if variant not in VARIANTS:
        raise ValueError(f"unknown int8 kernel variant {variant!r}; expected 'auto' or one of {VARIANTS}")
    if variant == "vnni" and not vnni_available():
        raise ValueError("the 'vnni' int8 kernel needs AVX-512 VNNI, which this CPU lacks")
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


def tile_shape(n_per_group: int) -> tuple[int, int]:
    """(MR, nv) for a GEMM with this many output channels (per group): the widest tile that
    does not mostly multiply padding."""
    if n_per_group <= 16:
        nv = 1
    elif n_per_group <= 32:
        nv = 2
    else:
        nv = 4
    return TILE_ACCUMULATORS // nv, nv


# ----------------------------------------------------------------------------------------------
# Micro-kernels
# ----------------------------------------------------------------------------------------------

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16 = ir.VectorType(_I32, 16)


def _define_vnni_microkernel(module: ir.Module, mr: int, nv: int) -> ir.Function:
    """Emit (once per LLVM module) `void ukr(u8* src, i64* rows, i64* taps, i64 ntaps,
    i64 k4, i8* b, i32* c)`: c[i, :] = sum over taps t, k < 4*k4 of
    src[rows[i] + taps[t] + k] * b[...] for an MR x (16*nv) tile, accumulators in registers.

    ntaps and k4 must be >= 1. The 16 x i32 operand form of the intrinsic is the one every
    LLVM since 8 accepts (newer ones auto-upgrade it to the 64 x i8 form).
    """
    name = f"yolo8_vnni_microkernel_{mr}x{nv}"
    if name in module.globals:
        return module.globals[name]
    i8p, i32p, i64p, v16p = _I8.as_pointer(), _I32.as_pointer(), _I64.as_pointer(), _V16.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i64p, i64p, _I64, _I64, i8p, i32p])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    src, rows, taps, ntaps, k4, b_start, c_out = fn.args
    dpbusd = cgutils.get_or_insert_function(
        module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")

    entry = fn.append_basic_block("entry")
    tap_head = fn.append_basic_block("tap_head")
    k_loop = fn.append_basic_block("k_loop")
    tap_latch = fn.append_basic_block("tap_latch")
    done = fn.append_basic_block("done")
    zero = ir.Constant(_V16, None)
    splat_mask = ir.Constant(_V16, None)
    undef = ir.Constant(_V16, ir.Undefined)

    b = ir.IRBuilder(entry)
    row_ptrs = [b.gep(src, [b.load(b.gep(rows, [_I64(i)]))]) for i in range(mr)]
    b.branch(tap_head)

    # Per tap: the row pointers move by the tap's offset; B continues where it stopped.
    b.position_at_end(tap_head)
    tap = b.phi(_I64)
    b_tap = b.phi(i8p)
    acc_tap = [[b.phi(_V16) for _ in range(nv)] for _ in range(mr)]
    offset = b.load(b.gep(taps, [tap]))
    tap_ptrs = [b.gep(p, [offset]) for p in row_ptrs]
    b.branch(k_loop)

    # Per group of four k: MR broadcast dwords x nv B vectors -> MR * nv vpdpbusd.
    b.position_at_end(k_loop)
    k = b.phi(_I64)
    b_k = b.phi(i8p)
    acc_k = [[b.phi(_V16) for _ in range(nv)] for _ in range(mr)]
    byte = b.shl(k, _I64(2))
    row_dwords = []
    for p in tap_ptrs:
        dword = b.load(b.bitcast(b.gep(p, [byte]), i32p), align=1)
        row_dwords.append(b.shuffle_vector(b.insert_element(undef, dword, _I32(0)), undef, splat_mask))
    b_vecs = [b.load(b.bitcast(b.gep(b_k, [_I64(64 * v)]), v16p), align=_ALIGN) for v in range(nv)]
    acc_new = [[b.call(dpbusd, [acc_k[i][v], row_dwords[i], b_vecs[v]]) for v in range(nv)]
               for i in range(mr)]
    b_next = b.gep(b_k, [_I64(64 * nv)])
    k_next = b.add(k, _I64(1))
    b.cbranch(b.icmp_signed("<", k_next, k4), k_loop, tap_latch)

    b.position_at_end(tap_latch)
    tap_next = b.add(tap, _I64(1))
    b.cbranch(b.icmp_signed("<", tap_next, ntaps), tap_head, done)

    b.position_at_end(done)
    for i in range(mr):
        for v in range(nv):
            dst = b.bitcast(b.gep(c_out, [_I64((i * nv + v) * 16)]), v16p)
            b.store(acc_new[i][v], dst, align=_ALIGN)
    b.ret_void()

    tap.add_incoming(_I64(0), entry)
    tap.add_incoming(tap_next, tap_latch)
    b_tap.add_incoming(b_start, entry)
    b_tap.add_incoming(b_next, tap_latch)
    k.add_incoming(_I64(0), tap_head)
    k.add_incoming(k_next, k_loop)
    b_k.add_incoming(b_tap, tap_head)
    b_k.add_incoming(b_next, k_loop)
    for i in range(mr):
        for v in range(nv):
            acc_tap[i][v].add_incoming(zero, entry)
            acc_tap[i][v].add_incoming(acc_new[i][v], tap_latch)
            acc_k[i][v].add_incoming(acc_tap[i][v], tap_head)
            acc_k[i][v].add_incoming(acc_new[i][v], k_loop)
    return fn


def _make_vnni_microkernel(mr: int, nv: int):
    """A numba intrinsic `ukr(src, rows, taps, k4, packed, b_offset, c)` calling the IR kernel.

    On a compile target without VNNI the intrinsic compiles to a trap instead (the instruction
    could not be selected there); `_tiles` only calls it when `vnni_available()`.
    """

    @intrinsic
    def microkernel(typingctx, src, rows, taps, k4, packed, b_offset, c):
        sig = types.void(src, rows, taps, types.int64, packed, types.int64, c)

        def codegen(context, builder, signature, args):
            src_a, rows_a, taps_a, k4_v, packed_a, b_off_v, c_a = (
                context.make_array(ty)(context, builder, val) if isinstance(ty, types.Array) else val
                for ty, val in zip(signature.args, args))
            if not vnni_available():
                cgutils.printf(builder, "yolo8: VNNI micro-kernel called on a CPU without VNNI\n")
                builder.call(cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.trap"), [])
                return context.get_dummy_value()
            fn = _define_vnni_microkernel(builder.module, mr, nv)
            ntaps = builder.extract_value(taps_a.shape, 0)
            b_ptr = builder.gep(builder.bitcast(packed_a.data, _I8.as_pointer()), [b_off_v])
            builder.call(fn, [
                builder.bitcast(src_a.data, _I8.as_pointer()),
                builder.bitcast(rows_a.data, _I64.as_pointer()),
                builder.bitcast(taps_a.data, _I64.as_pointer()),
                ntaps, k4_v, b_ptr,
                builder.bitcast(c_a.data, _I32.as_pointer()),
            ])
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


_vnni_24x1 = _make_vnni_microkernel(24, 1)
_vnni_12x2 = _make_vnni_microkernel(12, 2)
_vnni_6x4 = _make_vnni_microkernel(6, 4)


@njit(cache=CACHE, nogil=True)
def _microkernel_portable(src, rows, taps, k4, packed, b_offset, c, mr, nr):
    """Plain-numba micro-kernel with the same contract as the VNNI one (the fallback).

    Slices keep every index a plain loop counter, so numba emits no negative-index
    wrap-around and LLVM vectorises the j loop (into vpdpwssd on this CPU).
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
                    c_row[j] = np.int32(
                        c_row[j]
                        + a0 * np.int32(b_block[4 * j]) + a1 * np.int32(b_block[4 * j + 1])
                        + a2 * np.int32(b_block[4 * j + 2]) + a3 * np.int32(b_block[4 * j + 3]))
            kb += 4 * nr


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
           packed, nv, n_panels, n_per_group, corr,
           out_i, out_f, scale, bias, act, float_out, use_vnni, n_threads):
    """All tiles of C for every group, in n_threads contiguous chunks (one per thread).

    Tile order is (group, panel, row tile) with row tiles innermost, so each thread walks one
    packed B panel (taps * 4*k4 * NR bytes, L2-resident) over many row tiles.
    """
    mr = TILE_ACCUMULATORS // nv
    nr = 16 * nv
    n_row_tiles = (m_total + mr - 1) // mr
    groups = corr.size // (n_panels * nr)
    n_tiles = groups * n_panels * n_row_tiles
    panel_bytes = taps.size * 4 * k4 * nr
    n_chunks = min(n_threads, n_tiles)
    for chunk in prange(n_chunks):
        rows = np.empty(mr, np.int64)
        raw = np.empty(TILE_ACCUMULATORS * 16 + 16, np.int32)
        # 64-byte aligned tile (the IR stores aligned zmm vectors).
        start = ((64 - raw.ctypes.data % 64) % 64) // 4
        tile = raw[start:start + TILE_ACCUMULATORS * 16]
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
            if use_vnni:
                if nv == 4:
                    _vnni_6x4(src, rows, taps, k4, packed, b_offset, tile)
                elif nv == 2:
                    _vnni_12x2(src, rows, taps, k4, packed, b_offset, tile)
                else:
                    _vnni_24x1(src, rows, taps, k4, packed, b_offset, tile)
            else:
                _microkernel_portable(src, rows, taps, k4, packed, b_offset, tile, mr, nr)
            rows_valid = min(mr, m_total - m0)
            cols_valid = min(nr, n_per_group - panel * nr)
            corr0 = (group * n_panels + panel) * nr
            tile_corr = corr[corr0:corr0 + cols_valid]
            col0 = group * n_per_group + panel * nr
            if float_out:
                _store_float(tile, nr, rows_valid, cols_valid, tile_corr, out_f, m0, col0,
                             scale[col0:col0 + cols_valid], bias[col0:col0 + cols_valid], act)
            else:
                _store_int32(tile, nr, rows_valid, cols_valid, tile_corr, out_i, m0, col0)


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------


class PackedB:
    """B (N, taps, K per tap) int8 packed for the micro-kernel, with its +128 correction."""

    __slots__ = ("packed", "corr", "nv", "n_panels", "n_per_group", "groups", "ntaps", "k4")

    def __init__(self, b: np.ndarray, groups: int = 1) -> None:
        """b: (N, ntaps, kc) int8, output channels of group g are rows [g*N/groups, ...)."""
        n, ntaps, kc = b.shape
        n_g = n // groups
        _, nv = tile_shape(n_g)
        nr = 16 * nv
        n_panels = -(-n_g // nr)
        kc4 = -(-kc // 4) * 4
        padded = np.zeros((groups, n_panels * nr, ntaps, kc4), dtype=np.int8)
        padded[:, :n_g, :, :kc] = b.reshape(groups, n_g, ntaps, kc)
        # [group][panel][NR][tap][k4][4] -> [group][panel][tap][k4][NR][4]
        blocked = padded.reshape(groups, n_panels, nr, ntaps, kc4 // 4, 4).transpose(0, 1, 3, 4, 2, 5)
        self.packed = aligned_empty(blocked.size, np.int8)
        self.packed.reshape(blocked.shape)[...] = blocked  # one copy of the transposed view
        self.corr = (ZERO_U8 * padded.astype(np.int32).sum(axis=(2, 3))).reshape(-1)
        self.nv, self.n_panels, self.n_per_group = nv, n_panels, n_g
        self.groups, self.ntaps, self.k4 = groups, ntaps, kc4 // 4


# Stand-ins for the outputs a call does not use (never indexed, only typed).
_NO_INT32_OUT = np.empty((0, 1), np.int32)
_NO_FLOAT_OUT = np.empty((0, 1), np.float32)
_NO_VECTOR = np.empty(0, np.float32)


def run_tiles(src: np.ndarray, taps: np.ndarray, k4: int, geometry: tuple[int, ...],
              packed: PackedB, variant: str, n_threads: int, *, out_i: np.ndarray | None = None,
              out_f: np.ndarray | None = None, scale: np.ndarray | None = None,
              bias: np.ndarray | None = None, act: int = LINEAR) -> None:
    """Run `_tiles` (internal: used by gemm_s8s8s32 and conv2d_int8, which validate inputs
    and resolve `variant`).

    taps * 4*k4 must equal packed.ntaps * 4*packed.k4 (taps that are adjacent in memory may
    be merged into one longer tap). geometry = (m_total, ho, wo, img_stride, row_stride,
    col_stride, group_stride). Exactly one of out_i (int32 (M, N)) and out_f (float32 (M, N),
    with scale, bias, act).
    """
    assert taps.size * k4 == packed.ntaps * packed.k4
    float_out = out_f is not None
    if float_out:
        out_i = _NO_INT32_OUT
    else:
        out_f, scale, bias = _NO_FLOAT_OUT, _NO_VECTOR, _NO_VECTOR
    _tiles(src, taps, k4, *geometry, packed.packed, packed.nv, packed.n_panels,
           packed.n_per_group, packed.corr, out_i, out_f, scale, bias, act, float_out,
           variant == "vnni", n_threads)


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

    variant: "auto" (VNNI where the CPU has it, else portable), "vnni" or "portable".
    Packs b on every call; the convolution packs its weights once instead.
    """
    _check_gemm_operands(a, b)
    variant = resolve_variant(variant)
    m, k = a.shape
    if a.size == 0 or b.size == 0:
        return np.zeros((m, b.shape[0]), np.int32)  # empty, or K = 0: sums of nothing
    k4 = -(-k // 4) * 4
    src = np.full((m, k4), ZERO_U8, dtype=np.uint8)
    np.bitwise_xor(a.view(np.uint8), np.uint8(0x80), out=src[:, :k])  # s8 + 128 as u8
    packed = PackedB(b.reshape(b.shape[0], 1, k))
    taps = np.zeros(1, np.int64)
    # A plain matrix is a 1 x M "image" with one tap: row m starts at m * k4.
    geometry = (m, 1, m, m * k4, 0, k4, 0)
    out = np.empty((m, b.shape[0]), np.int32)
    with threads_for(m * b.shape[0] * k) as n_threads:
        run_tiles(src.reshape(-1), taps, packed.k4, geometry, packed, variant, n_threads, out_i=out)
    return out


def gemm_s8s8s32_vnni(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`gemm_s8s8s32` forced onto the AVX-512 VNNI micro-kernel (ValueError without VNNI)."""
    return gemm_s8s8s32(a, b, variant="vnni")


def gemm_s8s8s32_portable(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`gemm_s8s8s32` on the plain-numba micro-kernel (any CPU)."""
    return gemm_s8s8s32(a, b, variant="portable")


def gemm_s8s8s32_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain numpy: int64 matmul, checked to fit int32."""
    c = a.astype(np.int64) @ b.astype(np.int64).T
    if c.size and (c.max() > np.iinfo(np.int32).max or c.min() < np.iinfo(np.int32).min):
        raise ValueError("gemm_s8s8s32_reference: result does not fit int32")
    return c.astype(np.int32)
