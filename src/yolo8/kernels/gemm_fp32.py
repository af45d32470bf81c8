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
from numba.core import cgutils
from numba.extending import intrinsic

from ..jit import CACHE
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
    return TILE_VECTORS // nv, nv



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


def _intrinsic_fn(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    return cgutils.get_or_insert_function(module, ir.FunctionType(ret, args), name)


def masked_v16f32(module: ir.Module) -> tuple[ir.Function, ir.Function]:
    """LLVM's masked load and store of <16 x float> (declared once per module); the FP32
    GEMM, Winograd and XNOR micro-kernels use them for partial tiles."""
    vfp = _VF.as_pointer()
    load = _intrinsic_fn(module, "llvm.masked.load.v16f32.p0", _VF, [vfp, _I32, _VMASK, _VF])
    store = _intrinsic_fn(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                          [_VF, vfp, _I32, _VMASK])
    return load, store


def _define_fma_microkernel(module: ir.Module, mr: int, nv: int) -> ir.Function:
    """Emit (once per LLVM module) the MR x (16*nv) tile kernel

        void ukr(f32* a, i64* rows, i64* taps, i64 ntaps, i64 kc, f32* b,
                 f32* init, i64 init_ld, f32* c, i64 ldc, i64 rows_valid, i64 cols_valid,
                 i64 leaky)

    acc[i, :] = init[min(i, rows_valid - 1) * init_ld + :] (masked to cols_valid), then for
    each tap t and k < kc: acc[i, :] += a[rows[i] + taps[t] + k] * b[(t * kc + k) * NR + :];
    optionally leaky; c[i * ldc + :] = acc[i, :] for i < rows_valid, columns < cols_valid.
    Preconditions: ntaps, kc >= 1; 1 <= rows_valid <= MR; 1 <= cols_valid <= NR; all
    rows[i] address valid A rows (the caller repeats the last valid row).
    """
    name = f"yolo8_fp32_fma_{mr}x{nv}"
    if name in module.globals:
        return module.globals[name]
    f32p, i64p, vfp = _F32.as_pointer(), _I64.as_pointer(), _VF.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [f32p, i64p, i64p, _I64, _I64, f32p, f32p, _I64, f32p,
                                           _I64, _I64, _I64, _I64])
    fn = ir.Function(module, fnty, name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # one copy per module: the call costs nothing next to a tile
    (a, rows, taps, ntaps, kc, b_start, init, init_ld, c, ldc, rows_valid, cols_valid,
     leaky) = fn.args
    fmuladd = _intrinsic_fn(module, "llvm.fmuladd.v16f32", _VF, [_VF, _VF, _VF])
    masked_load, masked_store = masked_v16f32(module)

    entry = fn.append_basic_block("entry")
    tap_head = fn.append_basic_block("tap_head")
    k_loop = fn.append_basic_block("k_loop")
    tap_latch = fn.append_basic_block("tap_latch")
    epilogue = fn.append_basic_block("epilogue")
    store_blocks = [fn.append_basic_block(f"store_{i}") for i in range(mr)]
    done = fn.append_basic_block("done")
    zero = ir.Constant(_VF, None)
    undef = ir.Constant(_VF, ir.Undefined)
    splat_mask = ir.Constant(ir.VectorType(_I32, LANES), None)
    nr = LANES * nv

    b = ir.IRBuilder(entry)

    def splat_i64(value):
        vec = b.insert_element(ir.Constant(_VI64, ir.Undefined), value, _I32(0))
        return b.shuffle_vector(vec, ir.Constant(_VI64, ir.Undefined), splat_mask)

    cols = splat_i64(cols_valid)
    masks = [b.icmp_unsigned("<", ir.Constant(_VI64, [LANES * v + j for j in range(LANES)]), cols)
             for v in range(nv)]
    last_row = b.sub(rows_valid, _I64(1))
    acc_init = []
    for i in range(mr):
        row = b.select(b.icmp_signed("<", _I64(i), rows_valid), _I64(i), last_row)
        row_ptr = b.gep(init, [b.mul(row, init_ld)])
        acc_init.append([b.call(masked_load, [b.bitcast(b.gep(row_ptr, [_I64(LANES * v)]), vfp),
                                              _I32(4), masks[v], zero]) for v in range(nv)])
    row_ptrs = [b.gep(a, [b.load(b.gep(rows, [_I64(i)]))]) for i in range(mr)]
    b.branch(tap_head)

    # Per tap: the row pointers move by the tap's offset; B continues where it stopped.
    b.position_at_end(tap_head)
    tap = b.phi(_I64)
    b_tap = b.phi(f32p)
    acc_tap = [[b.phi(_VF) for _ in range(nv)] for _ in range(mr)]
    offset = b.load(b.gep(taps, [tap]))
    tap_ptrs = [b.gep(p, [offset]) for p in row_ptrs]
    b.branch(k_loop)

    # Per k: MR broadcast floats x nv B vectors -> MR * nv multiply-adds.
    b.position_at_end(k_loop)
    k = b.phi(_I64)
    b_k = b.phi(f32p)
    acc_k = [[b.phi(_VF) for _ in range(nv)] for _ in range(mr)]
    a_vecs = []
    for p in tap_ptrs:
        scalar = b.load(b.gep(p, [k]), align=4)
        a_vecs.append(b.shuffle_vector(b.insert_element(undef, scalar, _I32(0)), undef, splat_mask))
    b_vecs = [b.load(b.bitcast(b.gep(b_k, [_I64(LANES * v)]), vfp), align=4) for v in range(nv)]
    acc_new = [[b.call(fmuladd, [a_vecs[i], b_vecs[v], acc_k[i][v]]) for v in range(nv)]
               for i in range(mr)]
    b_next = b.gep(b_k, [_I64(nr)])
    k_next = b.add(k, _I64(1))
    b.cbranch(b.icmp_signed("<", k_next, kc), k_loop, tap_latch)

    b.position_at_end(tap_latch)
    tap_next = b.add(tap, _I64(1))
    b.cbranch(b.icmp_signed("<", tap_next, ntaps), tap_head, epilogue)

    # Leaky as a select (darknet: x > 0 ? x : 0.1f * x), then masked stores row by row.
    b.position_at_end(epilogue)
    use_leaky = b.icmp_signed("!=", leaky, _I64(0))
    slope = ir.Constant(_VF, [0.1] * LANES)
    results = []
    for i in range(mr):
        row = []
        for v in range(nv):
            acc = acc_new[i][v]
            positive = b.fcmp_ordered(">", acc, zero)
            row.append(b.select(use_leaky, b.select(positive, acc, b.fmul(acc, slope)), acc))
        results.append(row)
    b.branch(store_blocks[0])
    for i in range(mr):
        b.position_at_end(store_blocks[i])
        row_ptr = b.gep(c, [b.mul(_I64(i), ldc)])
        for v in range(nv):
            b.call(masked_store, [results[i][v], b.bitcast(b.gep(row_ptr, [_I64(LANES * v)]), vfp),
                                  _I32(4), masks[v]])
        if i + 1 < mr:
            b.cbranch(b.icmp_signed("<", _I64(i + 1), rows_valid), store_blocks[i + 1], done)
        else:
            b.branch(done)
    b.position_at_end(done)
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
            acc_tap[i][v].add_incoming(acc_init[i][v], entry)
            acc_tap[i][v].add_incoming(acc_new[i][v], tap_latch)
            acc_k[i][v].add_incoming(acc_tap[i][v], tap_head)
            acc_k[i][v].add_incoming(acc_new[i][v], k_loop)
    return fn


def _make_microkernel(mr: int, nv: int):
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
            arrays = [context.make_array(ty)(context, builder, val) if isinstance(ty, types.Array)
                      else val for ty, val in zip(signature.args, args)]
            (a_a, rows_a, taps_a, kc_v, b_a, b_off_v, init_a, init_off_v, init_ld_v, c_a, c_off_v,
             ldc_v, rows_valid_v, cols_valid_v, leaky_v) = arrays
            fn = _define_fma_microkernel(builder.module, mr, nv)
            f32p, i64p = _F32.as_pointer(), _I64.as_pointer()

            def at(arr, off):
                return builder.gep(builder.bitcast(arr.data, f32p), [off])

            builder.call(fn, [
                builder.bitcast(a_a.data, f32p),
                builder.bitcast(rows_a.data, i64p),
                builder.bitcast(taps_a.data, i64p),
                builder.extract_value(taps_a.shape, 0),
                kc_v, at(b_a, b_off_v), at(init_a, init_off_v), init_ld_v, at(c_a, c_off_v), ldc_v,
                rows_valid_v, cols_valid_v, leaky_v,
            ])
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


# One intrinsic per tile shape (MR, nv): MR * nv = TILE_VECTORS.
_UKR_NV1 = _make_microkernel(TILE_VECTORS, 1)
_UKR_NV2 = _make_microkernel(TILE_VECTORS // 2, 2)
_UKR_NV4 = _make_microkernel(TILE_VECTORS // 4, 4)


@njit(cache=CACHE, nogil=True)
def _microkernel(nv, a, rows, taps, kc, b, b_off, init, init_off, init_ld, c, c_off, ldc,
                 rows_valid, cols_valid, leaky):
    if nv == 4:
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
def _gemm_tiles(a, geometry, a_batch_stride, a_group_stride, taps, kc, chunk_taps,
                b, nv, n_panels, batches, groups,
                bias, c, c_batch_stride, ldc, n_per_group, act, n_threads):
    """C[batch][m, group * n_per_group + n] for every batch, group, row m and channel n.

    geometry = (m_total, ho, wo, img_stride, row_stride, col_stride): row m of A (output
    pixel (img, y, x)) starts at img*img_stride + y*row_stride + x*col_stride
    + batch*a_batch_stride + group*a_group_stride. B is [batch][group][panel][tap][k][NR].
    bias (groups * n_per_group) initialises every row of C (zeros for a plain product).
    """
    m_total, ho, wo, img_stride, row_stride, col_stride = geometry
    mr = TILE_VECTORS // nv
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
                    _microkernel(nv, a, rows, taps[t0:t1], kc, b, b_base + t0 * kc * nr,
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
                   c_batch_stride: int = 0) -> None:
    """Run `_gemm_tiles` on flat float32 views (internal: callers validate their inputs)."""
    _gemm_tiles(a, geometry, a_batch_stride, a_group_stride, taps, packed.kc,
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
