"""Exact INT8 Winograd F(2x2, 3x3) for the AVX2 tier: the direct kernel's int32 sums, 2.25x
fewer multiplies.

Why it is exact. With the quantized input q (int8, zero padding 0) and weights wq (int8):

    4 * acc = A^T [ U (.) V ] A,   U = (2G) wq (2G)^T,   V = B^T q B

where B^T, A^T (entries 0, +-1) and 2G (entries 0, 1, +-1, 2) are the F(2x2, 3x3) matrices
with G scaled by 2 so that every transform has integer entries. So |V| <= 4 * 127 = 508 and
|U| <= 9 * 127 = 1143 are int16, their products are exact in `vpmaddwd` (the AVX2 tier's
step), and everything after is additions. int32 additions wrap modulo 2**32, so the result
is exact whenever the true value 4 * acc fits int32, whatever the intermediate sums did:
|acc| <= 9 * Cin * 127 * 127, i.e. Cin <= MAX_CIN. `>> 2` then gives acc bit for bit, and
the float epilogue is the direct kernel's (f32(acc) * scale + bias, a multiply then an add).

Why only the AVX2 tier: V needs 10 bits, so it cannot feed `vpdpbusd` (u8 x s8); on the
VNNI tiers the direct kernel's 64 (zmm) or 32 (ymm) byte products per instruction beat
Winograd's int16 multiplies. On AVX2 both run `vpmaddwd` (16 int16 products), and Winograd
needs 16 products per channel pair for 4 output pixels instead of 36.

Data flow, per block of tiles (`conv3x3_winograd_int8`):

* the input is quantized (by conv_int8, signed, no +128 shift) into an int16 NHWC buffer
  padded on every side so that every 4x4 input tile lies inside it;
* the input transform (LLVM IR, 16 channels at a time) writes V[tile][point][channel];
* the 16 GEMMs V_p (tiles x Cin) @ U_p (Cin x Cout) run on gemm_int8's AVX2 micro-kernel
  with the 16 points as 16 groups (int32 M[tile][point][channel]);
* the output transform (LLVM IR, 8 channels at a time) computes A^T M A >> 2 and the float
  epilogue with leaky (other activations by numba on the stored tile).

Two schedules, as for float32 Winograd: "fused" (each thread transforms, multiplies and
finishes its own blocks of tiles, V and M within L2; large maps, few channels) and "phased"
(all input transforms of a band, then the GEMMs split over threads by point and panel so
that U is read once, then the output transforms; small maps, many channels).
"""
from __future__ import annotations

import llvmlite.ir as ir
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..jit import CACHE
from . import tile_ir
from .activations import LEAKY, LINEAR, activate
from .gemm_int8 import STORE_INT32, TIERS, PackedB, _microkernel, run_tiles
from .winograd import channel_loop

TIER = "avx2"
POINTS = 16  # (2 + 2)^2 points of a 4x4 input tile
# 4 * 9 * Cin * 127**2 must fit int32 (see the module docstring).
MAX_CIN = (2**31 - 1) // (4 * 9 * 127 * 127)
MIN_CIN_PAYS = 32
MIN_MAP_PAYS = 10

# F(2x2, 3x3) with G doubled: every entry an integer.
BT = np.array([[1, 0, -1, 0],
               [0, 1, 1, 0],
               [0, -1, 1, 0],
               [0, 1, 0, -1]], dtype=np.int64)
G2 = np.array([[2, 0, 0],
               [1, 1, 1],
               [1, -1, 1],
               [0, 0, 2]], dtype=np.int64)
AT = np.array([[1, 1, 1, 0],
               [0, 1, -1, -1]], dtype=np.int64)

# Fused schedule: a thread's block of V and M stays below this many bytes (half of the
# 1 MiB L2 of a core here). Phased: a band's V and M below _BAND_BYTES.
_BLOCK_BYTES = 1 << 19
_BAND_BYTES = 1 << 22
# Fused schedule with small blocks: transformed weights up to this size (the L3 cache here
# is 32 MiB).
_FUSED_MAX_U_BYTES = 20 << 20
# Output channels transformed at a time at load.
_TRANSFORM_CHANNELS = 64

_I16, _I32, _I64, _F32 = tile_ir.I16, tile_ir.I32, tile_ir.I64, tile_ir.F32
_IN_LANES, _OUT_LANES = 16, 8  # one ymm of int16 / of int32 and float32


def applies(tier: str, kh: int, kw: int, stride: int, groups: int, cin: int) -> bool:
    """True for the layers this kernel runs exactly: 3x3, stride 1, one group, Cin <= MAX_CIN,
    on the AVX2 tier."""
    return (tier == TIER and (kh, kw) == (3, 3) and stride == 1 and groups == 1
            and cin <= MAX_CIN)


def pays(cin: int, ho: int, wo: int) -> bool:
    """Whether Winograd beats the direct kernel on a layer it applies to. Each output
    element of the 16 GEMMs sums only Cin products (each micro-kernel call has a fixed cost)
    and V and M move 4x the data of the direct kernel's input and output: with 16 input
    channels that costs more than the multiplies saved. Measured on yolov3-tiny's layers,
    one thread, AVX2 tier (AMD Zen 5): 16 channels 1.06x the direct kernel's time, 32
    0.75x, 64 0.60x, 128 0.56x, 512 0.65x. Small maps waste part of their border tiles and
    have few rows per GEMM: a 7x7 map (1024 -> 2048 channels) took 1.07x the direct time,
    13x13 maps 0.6-0.85x; the cut is between them."""
    return cin >= MIN_CIN_PAYS and min(ho, wo) >= MIN_MAP_PAYS


def transform_weights(wq: np.ndarray) -> np.ndarray:
    """U = (2G) wq (2G)^T per (Cout, Cin) pair, exact: int16 (POINTS, Cout, Cin), point
    p = 4 * i + j."""
    cout, kh, kw, cin = wq.shape
    if (kh, kw) != (3, 3) or wq.dtype != np.int8:
        raise ValueError(f"Winograd INT8 weights must be int8 (Cout, 3, 3, Cin), got {wq.shape}")
    coef = np.einsum("iy,jx->ijyx", G2, G2).reshape(POINTS, 9).astype(np.int32)
    u = np.empty((POINTS, cout, cin), np.int16)
    for lo in range(0, cout, _TRANSFORM_CHANNELS):  # in chunks: no large int32 temporaries
        w9 = wq[lo:lo + _TRANSFORM_CHANNELS].astype(np.int32).reshape(-1, 9, cin)
        chunk = np.matmul(coef, w9)  # (channels, POINTS, Cin), |values| <= 9 * 127
        assert np.abs(chunk).max(initial=0) <= 9 * 127
        u[:, lo:lo + _TRANSFORM_CHANNELS] = chunk.transpose(1, 0, 2)
    return u


def pack_weights(wq: np.ndarray) -> PackedB:
    """The 16 transformed weight matrices packed for the AVX2 micro-kernel as 16 groups (one
    per point); the activations are signed (no +128 shift, so no correction)."""
    u = transform_weights(wq)
    return PackedB(u.reshape(POINTS * wq.shape[0], 1, wq.shape[3]), POINTS, TIER, input_zero=0)


def buffer_shape(n: int, h: int, w: int, pad: int, cin: int) -> tuple[int, int, int, int]:
    """(n, hp, wp, cp) of the padded int16 input: every 4x4 tile of every 2x2 output tile
    inside it (the bottom and right borders grow to a whole tile), channels rounded up to 4."""
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    return n, 2 * (-(-ho // 2)) + 2, 2 * (-(-wo // 2)) + 2, -(-cin // 4) * 4


# ----------------------------------------------------------------------------------------------
# Tile transforms in LLVM IR
# ----------------------------------------------------------------------------------------------


def _bt_line(b: ir.IRBuilder, d: list) -> list:
    """B^T d on a line of 4 vectors."""
    x0, x1, x2, x3 = d
    return [b.sub(x0, x2), b.add(x1, x2), b.sub(x2, x1), b.sub(x1, x3)]


def _at_line(b: ir.IRBuilder, s: list) -> list:
    """A^T s on a line of 4 vectors (wrapping int32 additions)."""
    m0, m1, m2, m3 = s
    return [b.add(b.add(m0, m1), m2), b.sub(b.sub(m1, m2), m3)]


def _define_input_transform(module: ir.Module) -> ir.Function:
    """void in(i16* src, i64 row_stride, i16* dst, i64 c): for the 4x4 tile whose pixel (i, j)
    starts at src + i*row_stride + j*c, dst[(4i + j)*c + ch] = (B^T d B)[i, j, ch]."""
    name = "yolo8_winograd_int8_in"
    if name in module.globals:
        return module.globals[name]
    i16p = _I16.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i16p, _I64, i16p, _I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    src, row_stride, dst, c = fn.args
    zero = ir.Constant(tile_ir.vector(_I16, _IN_LANES), None)

    def body(b, ch0, mask):
        d = [[tile_ir.masked_load(b, b.gep(src, [b.add(b.add(b.mul(_I64(i), row_stride),
                                                             b.mul(_I64(j), c)), ch0)]),
                                  mask, zero, align=2) for j in range(4)] for i in range(4)]
        rows = [_bt_line(b, d[i]) for i in range(4)]                        # along x
        cols = [_bt_line(b, [rows[i][j] for i in range(4)]) for j in range(4)]  # along y
        for i in range(4):
            for j in range(4):
                ptr = b.gep(dst, [b.add(b.mul(_I64(4 * i + j), c), ch0)])
                tile_ir.masked_store(b, cols[j][i], ptr, mask, align=2)

    channel_loop(fn, c, body, _IN_LANES)
    return fn


def _define_output_transform(module: ir.Module) -> ir.Function:
    """void out(i32* m, i64 c, f32* scale, f32* bias, f32* dst, i64 row_stride, i64 rows_valid,
    i64 cols_valid, i64 leaky): acc = (A^T M A) >> 2 for M[i, j, ch] = m[(4i + j)*c + ch],
    y = f32(acc) * scale + bias (leaky if asked: y > 0 ? y : 0.1f * y, the direct kernel's
    select), stored at dst + i*row_stride + j*c for i < rows_valid, j < cols_valid."""
    name = "yolo8_winograd_int8_out"
    if name in module.globals:
        return module.globals[name]
    i32p, f32p = _I32.as_pointer(), _F32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i32p, _I64, f32p, f32p, f32p, _I64,
                                                             _I64, _I64, _I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    src, c, scale, bias, dst, row_stride, rows_valid, cols_valid, leaky = fn.args
    vi = tile_ir.vector(_I32, _OUT_LANES)
    vf = tile_ir.vector(_F32, _OUT_LANES)
    zero_i, zero_f = ir.Constant(vi, None), ir.Constant(vf, None)
    no_lanes = ir.Constant(tile_ir.vector(tile_ir.I1, _OUT_LANES), None)

    def body(b, ch0, mask):
        mv = [[tile_ir.masked_load(b, b.gep(src, [b.add(b.mul(_I64(4 * i + j), c), ch0)]),
                                   mask, zero_i) for j in range(4)] for i in range(4)]
        rows = [_at_line(b, mv[i]) for i in range(4)]                       # along x: 4 x 2
        cols = [_at_line(b, [rows[i][j] for i in range(4)]) for j in range(2)]  # along y
        scale_v = tile_ir.masked_load(b, b.gep(scale, [ch0]), mask, zero_f)
        bias_v = tile_ir.masked_load(b, b.gep(bias, [ch0]), mask, zero_f)
        use_leaky = b.icmp_signed("!=", leaky, _I64(0))
        two = ir.Constant(vi, [2] * _OUT_LANES)
        for i in range(2):
            row_ok = b.icmp_signed("<", _I64(i), rows_valid)
            for j in range(2):
                acc = b.ashr(cols[j][i], two)  # exact: the sum is 4 * acc
                y = b.fadd(b.fmul(b.sitofp(acc, vf), scale_v), bias_v)
                leaked = b.select(b.fcmp_ordered(">", y, zero_f), y,
                                  b.fmul(y, ir.Constant(vf, [0.1] * _OUT_LANES)))
                y = b.select(use_leaky, leaked, y)
                ok = b.and_(row_ok, b.icmp_signed("<", _I64(j), cols_valid))
                ptr = b.gep(dst, [b.add(b.add(b.mul(_I64(i), row_stride), b.mul(_I64(j), c)), ch0)])
                tile_ir.masked_store(b, y, ptr, b.select(ok, mask, no_lanes))

    channel_loop(fn, c, body, _OUT_LANES)
    return fn


@intrinsic
def _input_transform_ir(typingctx, src, src_off, row_stride, dst, dst_off, c):
    """B^T d B of the tile at src[src_off:] (int16 elements, rows row_stride apart) into
    dst (int16 elements from dst_off; dst may be a byte view)."""
    sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ty = signature.args
        builder.call(_define_input_transform(builder.module), [
            tile_ir.array_data(context, builder, ty[0], args[0], _I16, args[1]), args[2],
            tile_ir.array_data(context, builder, ty[3], args[3], _I16, args[4]), args[5]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _output_transform_ir(typingctx, mm, mm_off, c, scale, bias, dst, dst_off, row_stride,
                         rows_valid, cols_valid, leaky):
    """The output transform and epilogue of the tile at mm[mm_off:] into dst[dst_off:]."""
    i64 = types.int64
    sig = types.void(mm, i64, i64, scale, bias, dst, i64, i64, i64, i64, i64)

    def codegen(context, builder, signature, args):
        ty = signature.args
        (mm_v, mm_off_v, c_v, scale_v, bias_v, dst_v, dst_off_v, stride_v, rows_v, cols_v,
         leaky_v) = args
        builder.call(_define_output_transform(builder.module), [
            tile_ir.array_data(context, builder, ty[0], mm_v, _I32, mm_off_v), c_v,
            tile_ir.array_data(context, builder, ty[3], scale_v, _F32),
            tile_ir.array_data(context, builder, ty[4], bias_v, _F32),
            tile_ir.array_data(context, builder, ty[5], dst_v, _F32, dst_off_v),
            stride_v, rows_v, cols_v, leaky_v])
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------------------
# Per tile
# ----------------------------------------------------------------------------------------------


@njit(cache=CACHE, nogil=True)
def _input_tile(xq, hp, wp, cp, tiles_y, tiles_x, t, v, v_off):
    """v[v_off:] ([point][channel], int16) = B^T d B of tile t = (img, ty, tx)."""
    img = t // (tiles_y * tiles_x)
    ty = (t // tiles_x) % tiles_y
    tx = t % tiles_x
    _input_transform_ir(xq, ((img * hp + 2 * ty) * wp + 2 * tx) * cp, wp * cp, v, v_off, cp)


@njit(cache=CACHE, nogil=True)
def _output_tile(mm, mm_off, scale, bias, act, tiles_y, tiles_x, t, out):
    """out[img, 2ty + i, 2tx + j, :] for tile t from M = mm[mm_off:] ([point][channel])."""
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    img = t // (tiles_y * tiles_x)
    ty = (t // tiles_x) % tiles_y
    tx = t % tiles_x
    rows_valid = min(2, ho - 2 * ty)
    cols_valid = min(2, wo - 2 * tx)
    flat = out.reshape(-1)
    off = ((img * ho + 2 * ty) * wo + 2 * tx) * cout
    _output_transform_ir(mm, mm_off, cout, scale, bias, flat, off, wo * cout, rows_valid,
                         cols_valid, 1 if act == LEAKY else 0)
    if act != LEAKY and act != LINEAR:
        for i in range(rows_valid):
            for j in range(cols_valid):
                px = flat[off + (i * wo + j) * cout:off + (i * wo + j + 1) * cout]
                for k in range(cout):
                    px[k] = activate(px[k], act)


# ----------------------------------------------------------------------------------------------
# Two schedules
# ----------------------------------------------------------------------------------------------


@njit(parallel=True, cache=CACHE, nogil=True)
def _fused(xq, hp, wp, cp, tiles_y, tiles_x, block, packed, corr, tier, mr, nv, nr, n_panels,
           panel_bytes, scale, bias, act, out, n_threads):
    """The whole convolution, each thread on a contiguous range of tiles, block by block:
    input transforms, the 16 GEMMs of the block (the tier's micro-kernel, int32 out),
    output transforms; the block's V and M stay in the thread's L2. Offsets of the
    micro-kernel's source rows and of B are in bytes."""
    n, cout = out.shape[0], out.shape[3]
    total = n * tiles_y * tiles_x
    n_chunks = min(n_threads, total)
    taps = np.zeros(1, np.int64)
    k4 = cp // 4
    for chunk in prange(n_chunks):
        v = np.empty(block * POINTS * cp, np.int16)
        v_bytes = v.view(np.uint8)
        mm = np.empty(block * POINTS * cout, np.int32)
        rows = np.empty(mr, np.int64)
        first = chunk * total // n_chunks
        last = (chunk + 1) * total // n_chunks
        for b0 in range(first, last, block):
            tb = min(block, last - b0)
            for tl in range(tb):
                _input_tile(xq, hp, wp, cp, tiles_y, tiles_x, b0 + tl, v, tl * POINTS * cp)
            for p in range(POINTS):
                for panel in range(n_panels):
                    cols_valid = min(nr, cout - panel * nr)
                    b_offset = (p * n_panels + panel) * panel_bytes
                    for r0 in range(0, tb, mr):
                        rows_valid = min(mr, tb - r0)
                        for i in range(mr):
                            rows[i] = 2 * ((r0 + min(i, rows_valid - 1)) * POINTS * cp + p * cp)
                        _microkernel(tier, nv, v_bytes, rows, taps, k4, packed, b_offset, corr,
                                     (p * n_panels + panel) * nr, scale, bias, 0, mm,
                                     r0 * POINTS * cout + p * cout + panel * nr, POINTS * cout,
                                     rows_valid, cols_valid, STORE_INT32)
            for tl in range(tb):
                _output_tile(mm, tl * POINTS * cout, scale, bias, act, tiles_y, tiles_x, b0 + tl,
                             out)


@njit(parallel=True, cache=CACHE, nogil=True)
def _input_band(xq, hp, wp, cp, tiles_y, tiles_x, t0, tb, v, n_threads):
    """v[t - t0] = B^T d B for tiles t0..t0+tb-1 (v: flat (tiles, POINTS, cp) int16)."""
    n_chunks = min(n_threads, tb)
    for chunk in prange(n_chunks):
        for tl in range(chunk * tb // n_chunks, (chunk + 1) * tb // n_chunks):
            _input_tile(xq, hp, wp, cp, tiles_y, tiles_x, t0 + tl, v, tl * POINTS * cp)


@njit(parallel=True, cache=CACHE, nogil=True)
def _output_band(mm, scale, bias, act, tiles_y, tiles_x, t0, tb, out, n_threads):
    """Output tiles t0..t0+tb-1 from mm (tiles, POINTS * cout) int32."""
    cout = out.shape[3]
    n_chunks = min(n_threads, tb)
    for chunk in prange(n_chunks):
        for tl in range(chunk * tb // n_chunks, (chunk + 1) * tb // n_chunks):
            _output_tile(mm.reshape(-1), tl * POINTS * cout, scale, bias, act, tiles_y, tiles_x,
                         t0 + tl, out)


def _tile_bytes(cp: int, cout: int) -> int:
    """Bytes of one tile's V (int16) and M (int32)."""
    return POINTS * (2 * cp + 4 * cout)


def block_tiles(cp: int, cout: int, mr: int) -> int:
    """Tiles per block of the fused schedule: V and M within _BLOCK_BYTES, a multiple of the
    micro-kernel's rows."""
    return max(mr, _BLOCK_BYTES // _tile_bytes(cp, cout) // mr * mr)


def use_fused(cp: int, cout: int, mr: int) -> bool:
    """The fused schedule re-reads all of U for every block; it wins while a block holds a few
    micro-kernel tiles of rows, or while U stays in the L3 cache (measured, one thread:
    13x13 maps 512 -> 1024 channels, U 16 MiB, 5-tile blocks: fused 0.96x the phased
    time; 1024 -> 1024, U 32 MiB: 1.35x)."""
    u_bytes = POINTS * cp * cout * 2
    return block_tiles(cp, cout, mr) >= 2 * mr or u_bytes <= _FUSED_MAX_U_BYTES


def conv3x3_winograd_int8(xq: np.ndarray, shape: tuple[int, int, int, int], packed: PackedB,
                          out: np.ndarray, scale: np.ndarray, bias: np.ndarray, act: int,
                          n_threads: int, schedule: str = "auto") -> None:
    """out (N, Ho, Wo, Cout) float32 = the INT8 convolution, from xq: the signed quantized
    input, flat int16 of `shape` = buffer_shape(...) with the input at (pad, pad) and zeros
    around it; packed = pack_weights(wq). Internal: conv_int8.conv2d_int8 validates."""
    n, hp, wp, cp = shape
    assert packed.tier == TIER and packed.groups == POINTS and packed.k4 * 4 == cp
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    tiles_y, tiles_x = -(-ho // 2), -(-wo // 2)
    assert (hp, wp) == (2 * tiles_y + 2, 2 * tiles_x + 2)
    total = n * tiles_y * tiles_x
    if schedule not in ("auto", "fused", "phased"):
        raise ValueError(f"unknown Winograd schedule {schedule!r}")
    if schedule == "fused" or (schedule == "auto" and use_fused(cp, cout, packed.mr)):
        _fused(xq, hp, wp, cp, tiles_y, tiles_x, block_tiles(cp, cout, packed.mr),
               packed.packed, packed.corr, TIERS[TIER].code, packed.mr, packed.nv, packed.nr,
               packed.n_panels, packed.panel_bytes, scale, bias, act, out, n_threads)
        return
    band = max(1, min(total, _BAND_BYTES // _tile_bytes(cp, cout)))
    v = np.empty(band * POINTS * cp, np.int16)
    mm = np.empty((band, POINTS * cout), np.int32)
    taps = np.zeros(1, np.int64)
    for t0 in range(0, total, band):
        tb = min(band, total - t0)
        _input_band(xq, hp, wp, cp, tiles_y, tiles_x, t0, tb, v, n_threads)
        # Row t of point p's GEMM starts at V[t, p]; its result goes to M[t, p].
        geometry = (tb, 1, tb, tb * POINTS * cp, 0, POINTS * cp, cp)
        run_tiles(v[:tb * POINTS * cp], taps, packed.k4, geometry, packed, n_threads,
                  out_i=mm[:tb])
        _output_band(mm[:tb], scale, bias, act, tiles_y, tiles_x, t0, tb, out, n_threads)


def conv3x3_winograd_int8_reference(q: np.ndarray, wq: np.ndarray, pad: int) -> np.ndarray:
    """Plain numpy, int64: acc of a 3x3 stride-1 convolution of the quantized input q (N, H, W,
    Cin) by wq (Cout, 3, 3, Cin), computed through the same tiles and integer transforms
    (4 * acc, divided by 4 at the end; asserted exact)."""
    n, h, w, cin = q.shape
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    ty, tx = -(-ho // 2), -(-wo // 2)
    qp = np.zeros((n, 2 * ty + 2, 2 * tx + 2, cin), np.int64)
    qp[:, pad:pad + h, pad:pad + w] = q
    u = np.einsum("ay,oyxc,bx->aboc", G2, wq.astype(np.int64), G2)
    acc4 = np.zeros((n, 2 * ty, 2 * tx, wq.shape[0]), np.int64)
    for i in range(ty):
        for j in range(tx):
            d = qp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4]
            v = np.einsum("ay,nyxc,bx->nabc", BT, d, BT)
            prod = np.einsum("nabc,aboc->nabo", v, u)
            acc4[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = np.einsum("ia,nabo,jb->nijo", AT, prod, AT)
    assert not np.any(acc4 % 4)
    return acc4[:, :ho, :wo] // 4
