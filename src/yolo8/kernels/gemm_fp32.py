"""FP32 implicit GEMM for convolutions: an FMA micro-kernel in LLVM IR and its tile loop.

`C[m, n] = init[m, n] + sum over taps t, k < kc of A[rows[m] + taps[t] + k] * B[t, k, n]`

* A is never an im2col matrix: row m of A starts at `rows[m]` in a flat float32 source, and
  each kernel tap adds its own offset (`taps`), so one description covers a plain (M, K)
  matrix (one tap at 0), a zero-padded NHWC input of a convolution (one tap per (ky, kx),
  kc = channels per group) and the Winograd-transformed tiles (one tap, a batch per point).
* B is packed once into panels of NR = 16 * nv output channels, `[batch][group][panel][tap]
  [k][NR]` float32, zero past N, so the micro-kernel reads it strictly sequentially.
* The micro-kernel holds an MR x NR tile of C in MR * nv = 24 vector registers (<16 x float>,
  one zmm each on AVX-512): per k it broadcasts one float of each of the MR rows, loads nv
  vectors of B and issues MR * nv multiply-adds (`llvm.fmuladd`, which LLVM fuses into
  vfmadd231ps where the CPU has FMA). numba does not keep an accumulator tile in registers by
  itself (its arrays live in memory), hence the IR. The tile starts from `init` (the bias
  broadcast over rows, or C itself when K is split into chunks), may end with darknet's leaky
  (`x > 0 ? x : 0.1 * x`, as a select) and is stored with masks, so no tile ever needs a
  scratch copy: rows past `rows_valid` are not stored, columns past `cols_valid` neither.

`_gemm_tiles` runs all tiles in parallel, one contiguous range of (batch, group, panel, row
tile) per thread. K is split into chunks of taps so that a chunk of a B panel stays in L2
while the thread walks its row tiles. Activations other than linear and leaky are applied to
each finished tile by numba code while it is still in L1.
"""
from __future__ import annotations

from typing import Callable

import llvmlite.ir as ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..jit import CACHE
from . import tile_ir
from .activations import LEAKY, LINEAR, activate, activate_numpy
from .common import aligned_empty, row_offsets, target_features

# Accumulator registers of a tile. AVX-512 has 32 vector registers: 24 accumulators leave
# room for the nv B vectors and the broadcast. With 16 registers (AVX2) a <16 x float> value
# takes two, so the tile shrinks to 6 vectors there (12 ymm, one vector of B: 6 x 16 tiles).
_TILE_VECTORS_AVX512 = 24
_TILE_VECTORS_OTHER = 6
LANES = 16
# A packed B chunk (taps x kc x NR floats) is kept at most this big so that it stays in L2
# (1 MiB per core here) next to the A rows of a run of row tiles.
_B_CHUNK_FLOATS = 1 << 16


def has_avx512() -> bool:
    """True when numba's compile target has AVX-512F (NUMBA_CPU_FEATURES or the host's)."""
    return "+avx512f" in target_features()


TILE_VECTORS = _TILE_VECTORS_AVX512 if has_avx512() else _TILE_VECTORS_OTHER
# Rows per tile at most: each row of A needs a pointer in a general-purpose register (16, a
# few taken by the loop); 24 rows had LLVM reload row pointers from the stack in the K loop.
MAX_ROWS = 12


def rows_per_tile(nv: int) -> int:
    return min(MAX_ROWS, TILE_VECTORS // nv)


def tile_shape(n_per_group: int) -> tuple[int, int]:
    """(MR, nv) for this many output channels per group: the widest NR = 16 * nv that does
    not mostly multiply padding, and MR = TILE_VECTORS // nv rows."""
    if n_per_group <= 16:
        nv = 1
    elif n_per_group <= 32:
        nv = 2
    else:
        nv = 4
    nv = min(nv, max(1, TILE_VECTORS // 6))  # at least 6 rows per tile
    return rows_per_tile(nv), nv



# ----------------------------------------------------------------------------------------------
# Micro-kernel
# ----------------------------------------------------------------------------------------------

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, LANES)
_VI64 = ir.VectorType(_I64, LANES)
_VMASK = ir.VectorType(_I1, LANES)


# Multiply-accumulate steps of the float tile: FMA on float32 A and B, or vdpbf16ps on bf16
# pairs (conv_bf16: A and B then hold two bf16 values in each 4-byte word, kc counts pairs).
STEP_FMA, STEP_BF16 = 0, 1
_STEPS = {STEP_FMA: (tile_ir.fma_step, frozenset()),
          STEP_BF16: (tile_ir.bf16_step, frozenset({"+avx512f", "+avx512bf16"}))}


def step_available(step: int) -> bool:
    """True when numba's compile target has the instructions of this step."""
    return _STEPS[step][1] <= target_features()


def _define_float_microkernel(module: ir.Module, step: int, mr: int, nv: int) -> ir.Function:
    """Emit (once per LLVM module), on the shared tile skeleton with the FMA step (or the
    bf16 step, reading 4-byte words of two bf16 instead of floats), the
    MR x (16*nv) tile kernel

        void ukr(i8* a, i64* rows, i64* taps, i64 ntaps, i64 kc, i8* b,
                 f32* init, i64 init_ld, f32* c, i64 ldc, i64 rows_valid, i64 cols_valid,
                 i64 leaky)

    (a and b point at float32; rows and taps count floats)
    acc[i, :] = init[min(i, rows_valid - 1) * init_ld + :] (masked to cols_valid), then for
    each tap t and k < kc: acc[i, :] += a[rows[i] + taps[t] + k] * b[(t * kc + k) * NR + :];
    optionally leaky; c[i * ldc + :] = acc[i, :] for i < rows_valid, columns < cols_valid.
    Preconditions: ntaps, kc >= 1; 1 <= rows_valid <= MR; 1 <= cols_valid <= NR; all
    rows[i] address valid A rows (the caller repeats the last valid row).
    """
    zero = ir.Constant(_VF, None)
    masks = []  # set in the entry block, used again by the epilogue (which it dominates)

    def load_init(b, extra):
        init, init_ld, _, _, rows_valid, cols_valid, _ = extra
        masks.extend(tile_ir.lane_mask(b, LANES * v, cols_valid, LANES) for v in range(nv))
        last_row = b.sub(rows_valid, _I64(1))
        acc = []
        for i in range(mr):
            row = b.select(b.icmp_signed("<", _I64(i), rows_valid), _I64(i), last_row)
            row_ptr = b.gep(init, [b.mul(row, init_ld)])
            acc.append([tile_ir.masked_load(b, b.gep(row_ptr, [_I64(LANES * v)]), masks[v], zero)
                        for v in range(nv)])
        return acc

    def leaky_and_store(b, fn, acc, extra):
        # Leaky as a select (darknet: x > 0 ? x : 0.1f * x), then the stores row by row: plain
        # ones for a tile of full width (an all-true constant mask folds away), masked ones for
        # a partial tile (on AVX2 a masked store is vmaskmovps, many times slower than a store
        # on AMD's cores).
        _, _, c, ldc, rows_valid, cols_valid, leaky = extra
        use_leaky = b.icmp_signed("!=", leaky, _I64(0))
        slope = ir.Constant(_VF, [0.1] * LANES)
        results = [[b.select(use_leaky, b.select(b.fcmp_ordered(">", x, zero), x, b.fmul(x, slope)), x)
                    for x in row] for row in acc]
        done = fn.append_basic_block("done")
        all_lanes = ir.Constant(_VMASK, [1] * LANES)
        full_chain = _store_rows(b, fn, results, c, ldc, rows_valid, [all_lanes] * nv, done)
        partial_chain = _store_rows(b, fn, results, c, ldc, rows_valid, masks, done)
        b.cbranch(b.icmp_signed("==", cols_valid, _I64(LANES * nv)), full_chain, partial_chain)
        b.position_at_end(done)
        b.ret_void()

    def _store_rows(b, fn, results, c, ldc, rows_valid, row_masks, done):
        """Blocks storing rows 0..rows_valid-1 with these masks; returns the first block and
        leaves the builder where it was."""
        def store_row(i, _):
            row_ptr = b.gep(c, [b.mul(_I64(i), ldc)])
            for v in range(nv):
                tile_ir.masked_store(b, results[i][v], b.gep(row_ptr, [_I64(LANES * v)]),
                                     row_masks[v])

        return tile_ir.row_chain(b, fn, mr, rows_valid, done, "store", store_row)

    f32p = _F32.as_pointer()
    mac = _STEPS[step][0](LANES)
    prefix = "fp32_fma" if step == STEP_FMA else "bf16"
    return tile_ir.define_tile_kernel(
        module, f"yolo8_{prefix}_{mr}x{nv}", mac, mr, nv,
        [f32p, _I64, f32p, _I64, _I64, _I64, _I64], load_init, leaky_and_store, a_element=_F32)


def _make_microkernel(mr: int, nv: int, step: int = STEP_FMA):
    """A numba intrinsic `ukr(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off,
    ldc, rows_valid, cols_valid, leaky)` calling the IR kernel (offsets in floats; taps is a
    1-D int64 array whose length is the tap count)."""

    @intrinsic
    def microkernel(typingctx, a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off,
                    ldc, rows_valid, cols_valid, leaky):
        sig = types.void(a, rows, taps, types.int64, b, types.int64, init, types.int64,
                         types.int64, c, types.int64, types.int64, types.int64, types.int64,
                         types.int64)

        def codegen(context, builder, signature, args):
            (a_v, rows_v, taps_v, kc_v, b_v, b_off_v, init_v, init_off_v, init_ld_v, c_v, c_off_v,
             ldc_v, rows_valid_v, cols_valid_v, leaky_v) = args
            ty = signature.args
            if not step_available(step):  # never called there (the backends check first)
                tile_ir.trap_with_message(
                    builder, "yolo8: bf16 micro-kernel called on a CPU without avx512_bf16")
                return context.get_dummy_value()
            fn = _define_float_microkernel(builder.module, step, mr, nv)
            i8p = tile_ir.I8.as_pointer()

            def data(index, value, element=_F32, at=None):
                return tile_ir.array_data(context, builder, ty[index], value, element, at)

            builder.call(fn, [
                builder.bitcast(data(0, a_v), i8p), data(1, rows_v, _I64), data(2, taps_v, _I64),
                tile_ir.array_length(context, builder, ty[2], taps_v),
                kc_v, builder.bitcast(data(4, b_v, at=b_off_v), i8p), data(6, init_v, at=init_off_v),
                init_ld_v, data(9, c_v, at=c_off_v), ldc_v, rows_valid_v, cols_valid_v, leaky_v,
            ])
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


# One intrinsic per tile shape (MR, nv): MR * nv = TILE_VECTORS (at most MAX_ROWS rows).
_UKR_NV1 = _make_microkernel(rows_per_tile(1), 1)
_UKR_NV2 = _make_microkernel(rows_per_tile(2), 2)
_UKR_NV4 = _make_microkernel(rows_per_tile(4), 4)
_BF16_NV1 = _make_microkernel(rows_per_tile(1), 1, STEP_BF16)
_BF16_NV2 = _make_microkernel(rows_per_tile(2), 2, STEP_BF16)
_BF16_NV4 = _make_microkernel(rows_per_tile(4), 4, STEP_BF16)


@njit(inline="always", cache=CACHE, nogil=True)  # inlined: see gemm_int8._microkernel
def _microkernel(step, nv, a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc,
                 rows_valid, cols_valid, leaky):
    if step == STEP_BF16:
        if nv == 4:
            _BF16_NV4(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc,
                      rows_valid, cols_valid, leaky)
        elif nv == 2:
            _BF16_NV2(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc,
                      rows_valid, cols_valid, leaky)
        else:
            _BF16_NV1(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc,
                      rows_valid, cols_valid, leaky)
    elif nv == 4:
        _UKR_NV4(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc, rows_valid,
                 cols_valid, leaky)
    elif nv == 2:
        _UKR_NV2(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc, rows_valid,
                 cols_valid, leaky)
    else:
        _UKR_NV1(a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc, rows_valid,
                 cols_valid, leaky)


# ----------------------------------------------------------------------------------------------
# Tile loop
# ----------------------------------------------------------------------------------------------


@njit(cache=CACHE, nogil=True)
def _activate_tile(c, c_off, ldc, rows_valid, cols_valid, act):
    for i in range(rows_valid):
        row = c[c_off + i * ldc:c_off + i * ldc + cols_valid]
        for j in range(cols_valid):
            row[j] = activate(row[j], act)


@njit(parallel=True, cache=CACHE, nogil=True)
def _gemm_tiles(step, a, geometry, a_batch_stride, a_group_stride, taps, kc, chunk_taps,
                b, nv, n_panels, batches, groups,
                bias, c, c_batch_stride, ldc, n_per_group, act, n_threads):
    """C[batch][m, group * n_per_group + n] for every batch, group, row m and channel n.

    geometry = (m_total, ho, wo, img_stride, row_stride, col_stride): row m of A (output
    pixel (img, y, x)) starts at img*img_stride + y*row_stride + x*col_stride
    + batch*a_batch_stride + group*a_group_stride. B is [batch][group][panel][tap][k][NR].
    bias (groups * n_per_group) initialises every row of C (zeros for a plain product).
    """
    m_total, ho, wo, img_stride, row_stride, col_stride = geometry
    mr = min(MAX_ROWS, TILE_VECTORS // nv)
    nr = LANES * nv
    ntaps = taps.size
    n_row_tiles = (m_total + mr - 1) // mr
    n_runs = batches * groups * n_panels
    n_items = n_runs * n_row_tiles
    panel_floats = ntaps * kc * nr
    leaky_code = 1 if act == LEAKY else 0
    other_act = act != LEAKY and act != LINEAR
    n_chunks = min(n_threads, n_items)
    for chunk in prange(n_chunks):
        rows = np.empty(mr, np.int64)
        first = chunk * n_items // n_chunks
        last = (chunk + 1) * n_items // n_chunks
        item = first
        while item < last:
            # A run: consecutive row tiles of this thread sharing one (batch, group, panel).
            run = item // n_row_tiles
            run_end = min(last, (run + 1) * n_row_tiles)
            panel = run % n_panels
            group = (run // n_panels) % groups
            batch = run // (n_panels * groups)
            a_base = batch * a_batch_stride + group * a_group_stride
            b_base = run * panel_floats
            col0 = group * n_per_group + panel * nr
            cols_valid = min(nr, n_per_group - panel * nr)
            c_base = batch * c_batch_stride + col0
            for t0 in range(0, ntaps, chunk_taps):
                t1 = min(ntaps, t0 + chunk_taps)
                last_chunk = t1 == ntaps
                for it in range(item, run_end):
                    m0 = (it - run * n_row_tiles) * mr
                    rows_valid = min(mr, m_total - m0)
                    row_offsets(rows, m0, mr, m_total, ho, wo, img_stride, row_stride,
                                 col_stride, a_base)
                    c_off = c_base + m0 * ldc
                    if t0 == 0:
                        init, init_off, init_ld = bias, col0, 0
                    else:
                        init, init_off, init_ld = c, c_off, ldc
                    _microkernel(step, nv, a, rows, taps[t0:t1], kc, b, b_base + t0 * kc * nr,
                                 init, init_off, init_ld, c, c_off, ldc, rows_valid, cols_valid,
                                 leaky_code if last_chunk else 0)
                    if other_act and last_chunk:
                        _activate_tile(c, c_off, ldc, rows_valid, cols_valid, act)
            item = run_end


# ----------------------------------------------------------------------------------------------
# Packing and the Python-level entry
# ----------------------------------------------------------------------------------------------


class PackedWeights:
    """B (batches, N, taps, kc) float32 packed into [batch][group][panel][tap][k][NR] panels.

    Output channels of group g are rows [g * N / groups, (g + 1) * N / groups) of each batch.
    `from_channels` packs from a function giving B for a range of output channels, so that a
    caller computing B (the Winograd transform of the weights) holds one panel of it at most.
    """

    __slots__ = ("packed", "nv", "n_panels", "n_per_group", "groups", "batches", "ntaps", "kc")

    def __init__(self, b: np.ndarray, groups: int = 1) -> None:
        if b.ndim == 3:
            b = b[None]
        self._pack(lambda lo, hi: b[:, lo:hi], *b.shape, groups)

    @classmethod
    def from_channels(cls, source: Callable[[int, int], np.ndarray], batches: int, n: int,
                      ntaps: int, kc: int, groups: int = 1) -> "PackedWeights":
        """Pack B from source(lo, hi) = B[:, lo:hi], a (batches, hi - lo, ntaps, kc) array."""
        self = cls.__new__(cls)
        self._pack(source, batches, n, ntaps, kc, groups)
        return self

    def _pack(self, source: Callable[[int, int], np.ndarray], batches: int, n: int, ntaps: int,
              kc: int, groups: int) -> None:
        n_g = n // groups
        _, nv = tile_shape(n_g)
        nr = LANES * nv
        n_panels = -(-n_g // nr)
        self.packed = aligned_empty(batches * groups * n_panels * ntaps * kc * nr, np.float32)
        self.packed.fill(0)
        panels = self.packed.reshape(batches, groups, n_panels, ntaps, kc, nr)
        for g in range(groups):
            for p in range(n_panels):
                lo = g * n_g + p * nr
                hi = min(lo + nr, (g + 1) * n_g)
                block = source(lo, hi)
                if block.shape != (batches, hi - lo, ntaps, kc):
                    raise ValueError(f"PackedWeights: channels {lo}:{hi} came as {block.shape}, "
                                     f"expected {(batches, hi - lo, ntaps, kc)}")
                # [batch][n][tap][k] -> [batch][tap][k][n]; channels past hi stay zero
                panels[:, g, p, :, :, :hi - lo] = block.transpose(0, 2, 3, 1)
        self.nv, self.n_panels, self.n_per_group = nv, n_panels, n_g
        self.groups, self.batches, self.ntaps, self.kc = groups, batches, ntaps, kc

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes


def chunk_taps(ntaps: int, kc: int, nv: int) -> int:
    """Taps per K chunk: as many as keep a chunk of a B panel within _B_CHUNK_FLOATS."""
    return max(1, min(ntaps, _B_CHUNK_FLOATS // (kc * LANES * nv)))


def run_gemm_tiles(a: np.ndarray, geometry: tuple[int, ...], taps: np.ndarray,
                   packed: PackedWeights, bias: np.ndarray, c: np.ndarray, ldc: int, act: int,
                   a_batch_stride: int = 0, a_group_stride: int = 0,
                   c_batch_stride: int = 0, step: int = STEP_FMA) -> None:
    """Run `_gemm_tiles` on flat float32 views (internal: callers validate their inputs).
    With step=STEP_BF16, a and packed hold bf16 pairs in float32 words (conv_bf16)."""
    _gemm_tiles(step, a, geometry, a_batch_stride, a_group_stride, taps, packed.kc,
                chunk_taps(packed.ntaps, packed.kc, packed.nv), packed.packed, packed.nv,
                packed.n_panels, packed.batches, packed.groups, bias, c, c_batch_stride, ldc,
                packed.n_per_group, act, numba.get_num_threads())


def gemm_bias_act(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                  act: int = LINEAR) -> np.ndarray:
    """activate(a @ w.T + bias) in float32: a (M, K), w (N, K), bias (N,) or None.

    Packs w on every call (the convolution packs its weights once instead).
    """
    for name, m in (("a", a), ("w", w)):
        if not isinstance(m, np.ndarray) or m.dtype != np.float32 or m.ndim != 2:
            raise ValueError(f"gemm_bias_act: {name} must be a 2-D float32 array")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"gemm_bias_act: K differs, a is {a.shape} and w is {w.shape}")
    m, k = a.shape
    n = w.shape[0]
    bias = np.zeros(n, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    if bias.shape != (n,):
        raise ValueError(f"gemm_bias_act: bias must have shape ({n},), got {bias.shape}")
    out = np.empty((m, n), np.float32)
    if m == 0 or n == 0:
        return out
    if k == 0:
        out[:] = activate_numpy(np.broadcast_to(bias, (m, n)).copy(), act)
        return out
    a = np.ascontiguousarray(a)
    packed = PackedWeights(w.reshape(n, 1, k))
    # A plain matrix is a 1 x M "image" with one tap: row i starts at i * k.
    geometry = (m, 1, m, m * k, 0, k)
    run_gemm_tiles(a.reshape(-1), geometry, np.zeros(1, np.int64), packed, bias, out.reshape(-1),
                   n, act)
    return out


def gemm_bias_act_reference(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                            act: int = LINEAR) -> np.ndarray:
    """Plain numpy: float64 product, float32 rounding, then the activation."""
    out = a.astype(np.float64) @ w.astype(np.float64).T
    if bias is not None:
        out = out + bias
    return activate_numpy(out.astype(np.float32), act)
