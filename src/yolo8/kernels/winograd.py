"""Winograd convolution F(m x m, 3 x 3), m = 2 or 4, stride 1, NHWC float32.

Each output tile of m x m pixels comes from an (m+2) x (m+2) input tile d:

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

so the 9 * m^2 multiply-adds per channel pair of a direct convolution become (m+2)^2 (4x
fewer for m = 4, 2.25x for m = 2): the elementwise products, summed over input channels, are
(m+2)^2 independent GEMMs V_k (tiles x Cin) @ U_k (Cin x Cout), run by gemm_fp32's
micro-kernel on U = G g G^T transformed and packed once at load (`WinogradWeights`).

The tile transforms are written in LLVM IR (`_define_input_transform`,
`_define_output_transform`): one block of 16 channels of a whole tile at a time, the
(m+2)^2 vectors in registers, masked loads and stores for the last block and for the pixels
of a border tile that fall outside the output. The output transform adds the bias and
applies leaky (other activations: numba, on the stored tile). V and M are tile-major
([tile][k][channel]) so that both transforms touch one contiguous block per tile.

Two schedules (`conv3x3_winograd`):

* fused: each thread takes a contiguous range of tiles and, block by block (V and M of a
  block within half of L2), transforms its input tiles, runs the (m+2)^2 GEMMs and the
  output transform. One parallel region; U is re-read for every block, which pays while a
  block has enough rows (large maps, few channels).
* phased: for a band of tiles, all input transforms, then the GEMMs split over threads by
  point and panel (U read once), then the output transforms. Small maps, many channels.

Rounding: the transforms multiply magnitudes (F(4x4): B^T has entries up to 5, A^T up to 8,
G fractions 1/24..1/4), so F(4x4) loses about one more decimal digit than a direct sum;
F(2x2) (entries 0, +-1, +-1/2) about as much as a direct sum. The tests bound both by the
same computation done on absolute values.
"""
from __future__ import annotations

import llvmlite.ir as ir
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..jit import CACHE
from . import tile_ir
from .activations import LEAKY, LINEAR, activate, activate_numpy
from .gemm_fp32 import (_F32, _I64, _VF, _VMASK, LANES, MAX_ROWS, STEP_FMA, TILE_VECTORS,
                        PackedWeights, _microkernel, rows_per_tile, run_gemm_tiles)

# Transform matrices (interpolation points 0, +-1, +-2 and infinity for F(4x4); 0, +-1 for
# F(2x2)): Y = A^T [(G g G^T) (.) (B^T d B)] A.
_BT = {
    2: np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], dtype=np.float64),
    4: np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64),
}
_G = {
    2: np.array([[1, 0, 0],
                 [1 / 2, 1 / 2, 1 / 2],
                 [1 / 2, -1 / 2, 1 / 2],
                 [0, 0, 1]], dtype=np.float64),
    4: np.array([[1 / 4, 0, 0],
                 [-1 / 6, -1 / 6, -1 / 6],
                 [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6],
                 [1 / 24, -1 / 12, 1 / 6],
                 [0, 0, 1]], dtype=np.float64),
}
_AT = {
    2: np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], dtype=np.float64),
    4: np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64),
}
TILE_SIZES = (2, 4)

# Phased schedule: V and M of one band of tiles together stay below this many floats (4 MiB).
_BAND_FLOATS = 1 << 20
# Fused schedule: a thread's block of V and M stays below this many floats (512 KiB, half of
# the 1 MiB L2 of a core here).
_BLOCK_FLOATS = 1 << 17


def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3), float64."""
    if m not in TILE_SIZES:
        raise ValueError(f"Winograd tile size must be one of {TILE_SIZES}, got {m}")
    return _BT[m], _G[m], _AT[m]


class WinogradWeights:
    """3x3 weights (Cout, 3, 3, Cin) transformed once (U = G g G^T, computed in float64) and
    packed as (m+2)^2 GEMM operands of (Cin, Cout)."""

    __slots__ = ("m", "cin", "cout", "packed")

    def __init__(self, weights: np.ndarray, m: int) -> None:
        if weights.ndim != 4 or weights.shape[1:3] != (3, 3):
            raise ValueError(f"Winograd weights must be (Cout, 3, 3, Cin), got {weights.shape}")
        _, g, _ = transform_matrices(m)
        cout, _, _, cin = weights.shape
        a = m + 2
        # U[i, j] = sum over taps (y, x) of G[i, y] G[j, x] w[:, y, x, :]: one (a*a, 9) matrix
        coef = np.einsum("iy,jx->ijyx", g, g).reshape(a * a, 9)

        def transformed(lo: int, hi: int) -> np.ndarray:
            """U for output channels lo..hi-1, as (a*a, hi - lo, 1, Cin) float32."""
            w9 = weights[lo:hi].astype(np.float64).reshape(hi - lo, 9, cin)
            u = np.matmul(coef, w9)                                   # (hi - lo, a*a, Cin)
            return u.astype(np.float32).transpose(1, 0, 2)[:, :, None, :]

        self.m, self.cin, self.cout = m, cin, cout
        self.packed = PackedWeights.from_channels(transformed, a * a, cout, 1, cin)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes


# ----------------------------------------------------------------------------------------------
# Tile transforms in LLVM IR: one 16-channel block of a whole tile at a time, in registers.
# (numba's loops over channel slices paid ~100 cycles of set-up per line of a tile, which is
# most of the work when a layer has 16 or 32 channels.)
# ----------------------------------------------------------------------------------------------


def _splat(value: float) -> ir.Constant:
    return ir.Constant(_VF, [value] * LANES)


def _bt_ir(b: ir.IRBuilder, m: int, d: list) -> list:
    """B^T d on a line of a + 2 vectors (the algebra of _BT, factored)."""
    if m == 2:
        x0, x1, x2, x3 = d
        return [b.fsub(x0, x2), b.fadd(x1, x2), b.fsub(x2, x1), b.fsub(x1, x3)]
    x0, x1, x2, x3, x4, x5 = d
    four, five, two = _splat(4.0), _splat(5.0), _splat(2.0)
    p = b.fsub(x4, b.fmul(four, x2))
    q = b.fsub(x3, b.fmul(four, x1))
    e = b.fsub(x4, x2)
    u = b.fmul(two, b.fsub(x3, x1))
    r0 = b.fadd(b.fsub(b.fmul(four, x0), b.fmul(five, x2)), x4)
    r5 = b.fadd(b.fsub(b.fmul(four, x1), b.fmul(five, x3)), x5)
    return [r0, b.fadd(p, q), b.fsub(p, q), b.fadd(e, u), b.fsub(e, u), r5]


def _at_ir(b: ir.IRBuilder, m: int, s: list) -> list:
    """A^T s on a line of m + 2 vectors (the algebra of _AT, factored)."""
    if m == 2:
        m0, m1, m2, m3 = s
        return [b.fadd(b.fadd(m0, m1), m2), b.fsub(b.fsub(m1, m2), m3)]
    m0, m1, m2, m3, m4, m5 = s
    p, q = b.fadd(m1, m2), b.fsub(m1, m2)
    e, u = b.fadd(m3, m4), b.fsub(m3, m4)
    return [b.fadd(b.fadd(m0, p), e), b.fadd(q, b.fmul(_splat(2.0), u)),
            b.fadd(p, b.fmul(_splat(4.0), e)), b.fadd(b.fadd(q, b.fmul(_splat(8.0), u)), m5)]


def channel_loop(fn: ir.Function, c: ir.Value, body, lanes: int = LANES) -> None:
    """Emit `for ch0 in range(0, c, lanes): body(builder, ch0, mask)` as the whole function
    body (c >= 1), mask = the lanes ch0 + lane < c. The full blocks get an all-true constant
    mask, so their masked loads and stores fold into plain ones (on AVX2 a masked store is
    vmaskmovps, many times slower than a store on AMD's cores); only a last partial block
    is masked."""
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("full_blocks")
    tail_check = fn.append_basic_block("tail_check")
    tail = fn.append_basic_block("tail")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    full_end = b.mul(b.sdiv(c, _I64(lanes)), _I64(lanes))
    b.cbranch(b.icmp_signed(">", full_end, _I64(0)), loop, tail_check)

    b.position_at_end(loop)
    ch0 = b.phi(_I64)
    body(b, ch0, ir.Constant(tile_ir.vector(tile_ir.I1, lanes), [1] * lanes))
    nxt = b.add(ch0, _I64(lanes))
    ch0.add_incoming(_I64(0), entry)
    ch0.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, full_end), loop, tail_check)

    b.position_at_end(tail_check)
    b.cbranch(b.icmp_signed("<", full_end, c), tail, done)
    b.position_at_end(tail)
    body(b, full_end, tile_ir.lane_mask(b, 0, b.sub(c, full_end), lanes))
    b.branch(done)

    b.position_at_end(done)
    b.ret_void()


def _define_input_transform(module: ir.Module, m: int) -> ir.Function:
    """void in(f32* src, i64 row_stride, f32* dst, i64 c): for an a x a tile whose pixel
    (i, j) starts at src + i*row_stride + j*c, dst[(i*a + j)*c + ch] = (B^T d B)[i, j, ch]."""
    name = f"yolo8_winograd_in_f{m}"
    if name in module.globals:
        return module.globals[name]
    f32p = _F32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32p, _I64, f32p, _I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # one copy per module: the call costs nothing next to a tile
    src, row_stride, dst, c = fn.args
    a = m + 2
    zero = ir.Constant(_VF, None)

    def body(b, ch0, mask):
        d = [[tile_ir.masked_load(b, b.gep(src, [b.add(b.add(b.mul(_I64(i), row_stride),
                                                             b.mul(_I64(j), c)), ch0)]),
                                  mask, zero) for j in range(a)] for i in range(a)]
        rows = [_bt_ir(b, m, d[i]) for i in range(a)]                    # along x
        cols = [_bt_ir(b, m, [rows[i][j] for i in range(a)]) for j in range(a)]  # along y
        for i in range(a):
            for j in range(a):
                ptr = b.gep(dst, [b.add(b.mul(_I64(i * a + j), c), ch0)])
                tile_ir.masked_store(b, cols[j][i], ptr, mask)

    channel_loop(fn, c, body)
    return fn


def _define_output_transform(module: ir.Module, m: int) -> ir.Function:
    """void out(f32* src, i64 c, f32* bias, f32* dst, i64 row_stride, i64 rows_valid,
    i64 cols_valid, i64 leaky): y = A^T M A + bias for M[i, j, ch] = src[(i*a + j)*c + ch],
    optionally leaky, stored at dst + i*row_stride + j*c for i < rows_valid, j < cols_valid."""
    name = f"yolo8_winograd_out_f{m}"
    if name in module.globals:
        return module.globals[name]
    f32p = _F32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [f32p, _I64, f32p, f32p, _I64, _I64,
                                                             _I64, _I64]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # one copy per module: the call costs nothing next to a tile
    src, c, bias, dst, row_stride, rows_valid, cols_valid, leaky = fn.args
    a = m + 2
    zero = ir.Constant(_VF, None)
    no_lanes = ir.Constant(_VMASK, None)

    def body(b, ch0, mask):
        mv = [[tile_ir.masked_load(b, b.gep(src, [b.add(b.mul(_I64(i * a + j), c), ch0)]),
                                   mask, zero) for j in range(a)] for i in range(a)]
        rows = [_at_ir(b, m, mv[i]) for i in range(a)]                    # along x: a x m
        cols = [_at_ir(b, m, [rows[i][j] for i in range(a)]) for j in range(m)]  # along y
        bias_v = tile_ir.masked_load(b, b.gep(bias, [ch0]), mask, zero)
        use_leaky = b.icmp_signed("!=", leaky, _I64(0))
        for i in range(m):
            row_ok = b.icmp_signed("<", _I64(i), rows_valid)
            for j in range(m):
                y = b.fadd(cols[j][i], bias_v)
                negative = b.fcmp_ordered("<", y, zero)
                y = b.select(use_leaky, b.select(negative, b.fmul(y, _splat(0.1)), y), y)
                ok = b.and_(row_ok, b.icmp_signed("<", _I64(j), cols_valid))
                ptr = b.gep(dst, [b.add(b.add(b.mul(_I64(i), row_stride), b.mul(_I64(j), c)), ch0)])
                tile_ir.masked_store(b, y, ptr, b.select(ok, mask, no_lanes))

    channel_loop(fn, c, body)
    return fn


def _array_ptr(context, builder, ty, value, offset):
    return tile_ir.array_data(context, builder, ty, value, _F32, offset)


def _make_input_transform(m: int):
    @intrinsic
    def transform(typingctx, src, src_off, row_stride, dst, dst_off, c):
        """(B^T d B) of the tile at src[src_off:] (rows row_stride apart) into dst[dst_off:]."""
        sig = types.void(src, types.int64, types.int64, dst, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            fn = _define_input_transform(builder.module, m)
            builder.call(fn, [_array_ptr(context, builder, signature.args[0], args[0], args[1]),
                              args[2],
                              _array_ptr(context, builder, signature.args[3], args[3], args[4]),
                              args[5]])
            return context.get_dummy_value()

        return sig, codegen

    return transform


def _make_output_transform(m: int):
    @intrinsic
    def transform(typingctx, src, src_off, c, bias, dst, dst_off, row_stride, rows_valid,
                  cols_valid, leaky):
        """A^T M A + bias (leaky if asked) from src[src_off:] to dst[dst_off:]."""
        sig = types.void(src, types.int64, types.int64, bias, dst, types.int64, types.int64,
                         types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            fn = _define_output_transform(builder.module, m)
            builder.call(fn, [_array_ptr(context, builder, signature.args[0], args[0], args[1]),
                              args[2],
                              _array_ptr(context, builder, signature.args[3], args[3], _I64(0)),
                              _array_ptr(context, builder, signature.args[4], args[4], args[5]),
                              args[6], args[7], args[8], args[9]])
            return context.get_dummy_value()

        return sig, codegen

    return transform


_IN_F2, _IN_F4 = _make_input_transform(2), _make_input_transform(4)
_OUT_F2, _OUT_F4 = _make_output_transform(2), _make_output_transform(4)


@njit(cache=CACHE, nogil=True)
def _gather_border_tile(x, img, y0, x0, d):
    """d[i, j, :] = x[img, y0 + i, x0 + j, :] for a tile crossing the image border, zero
    outside the image."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    a = d.shape[0]
    d[:] = 0.0
    xs, xe = max(x0, 0), min(x0 + a, w)
    for i in range(a):
        y = y0 + i
        if 0 <= y < h and xe > xs:
            src = x[img, y, xs:xe].reshape((xe - xs) * c)
            dst = d[i, xs - x0:xe - x0].reshape((xe - xs) * c)
            for k in range(src.size):
                dst[k] = src[k]


@njit(cache=CACHE, nogil=True)
def _input_tile(x, pad, m, tiles_y, tiles_x, t, d, v, v_off):
    """v[v_off:] ([i][j][c]) = B^T d B for tile t = (img, ty, tx); d: (a, a, c) scratch."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    a = m + 2
    img = t // (tiles_y * tiles_x)
    ty = (t // tiles_x) % tiles_y
    tx = t % tiles_x
    y0, x0 = ty * m - pad, tx * m - pad
    if y0 >= 0 and x0 >= 0 and y0 + a <= h and x0 + a <= w:
        off, row_stride = ((img * h + y0) * w + x0) * c, w * c
        if m == 4:
            _IN_F4(x, off, row_stride, v, v_off, c)
        else:
            _IN_F2(x, off, row_stride, v, v_off, c)
    else:
        _gather_border_tile(x, img, y0, x0, d)
        if m == 4:
            _IN_F4(d, 0, a * c, v, v_off, c)
        else:
            _IN_F2(d, 0, a * c, v, v_off, c)


@njit(cache=CACHE, nogil=True)
def _output_tile(mm, mm_off, bias, act, m, tiles_y, tiles_x, t, out):
    """out[img, ty*m + i, tx*m + j, :] = activate((A^T M A)[i, j] + bias) for tile t, inside
    the output only; M = mm[mm_off:] ([i][j][cout])."""
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    img = t // (tiles_y * tiles_x)
    ty = (t // tiles_x) % tiles_y
    tx = t % tiles_x
    rows_valid = min(m, ho - ty * m)
    cols_valid = min(m, wo - tx * m)
    off = ((img * ho + ty * m) * wo + tx * m) * cout
    leaky = 1 if act == LEAKY else 0
    if m == 4:
        _OUT_F4(mm, mm_off, cout, bias, out, off, wo * cout, rows_valid, cols_valid, leaky)
    else:
        _OUT_F2(mm, mm_off, cout, bias, out, off, wo * cout, rows_valid, cols_valid, leaky)
    if act != LEAKY and act != LINEAR:
        for i in range(rows_valid):
            for j in range(cols_valid):
                px = out[img, ty * m + i, tx * m + j]
                for k in range(cout):
                    px[k] = activate(px[k], act)


# ----------------------------------------------------------------------------------------------
# Two schedules
# ----------------------------------------------------------------------------------------------


@njit(parallel=True, cache=CACHE, nogil=True)
def _input_transform(x, pad, m, tiles_y, tiles_x, t0, tb, v, n_threads):
    """v[t - t0] = B^T d B for tiles t0..t0+tb-1 (v: (tiles, a, a, c))."""
    c = x.shape[3]
    a = m + 2
    n_chunks = min(n_threads, tb)
    for chunk in prange(n_chunks):
        d = np.empty((a, a, c), np.float32)
        for tl in range(chunk * tb // n_chunks, (chunk + 1) * tb // n_chunks):
            _input_tile(x, pad, m, tiles_y, tiles_x, t0 + tl, d, v, tl * a * a * c)


@njit(parallel=True, cache=CACHE, nogil=True)
def _output_transform(mm, bias, act, m, tiles_y, tiles_x, t0, tb, out, n_threads):
    """Output tiles t0..t0+tb-1 from mm (tiles, a, a, cout)."""
    cout = out.shape[3]
    a = m + 2
    n_chunks = min(n_threads, tb)
    for chunk in prange(n_chunks):
        for tl in range(chunk * tb // n_chunks, (chunk + 1) * tb // n_chunks):
            _output_tile(mm, tl * a * a * cout, bias, act, m, tiles_y, tiles_x, t0 + tl, out)


@njit(parallel=True, cache=CACHE, nogil=True)
def _winograd_fused(x, pad, m, tiles_y, tiles_x, block, u, nv, n_panels, zero_bias, bias, act,
                    out, n_threads):
    """The whole convolution, each thread on its own contiguous range of tiles, block by
    block: input transform, the a*a GEMMs of the block (micro-kernel), output transform, with
    the block's V and M in the thread's L2."""
    n, c, cout = x.shape[0], x.shape[3], out.shape[3]
    a = m + 2
    aa = a * a
    mr = min(MAX_ROWS, TILE_VECTORS // nv)
    nr = LANES * nv
    total = n * tiles_y * tiles_x
    n_chunks = min(n_threads, total)
    taps = np.zeros(1, np.int64)
    for chunk in prange(n_chunks):
        d = np.empty((a, a, c), np.float32)
        v = np.empty(block * aa * c, np.float32)
        mm = np.empty(block * aa * cout, np.float32)
        rows = np.empty(mr, np.int64)
        first = chunk * total // n_chunks
        last = (chunk + 1) * total // n_chunks
        for b0 in range(first, last, block):
            tb = min(block, last - b0)
            for tl in range(tb):
                _input_tile(x, pad, m, tiles_y, tiles_x, b0 + tl, d, v, tl * aa * c)
            for k in range(aa):
                for panel in range(n_panels):
                    cols_valid = min(nr, cout - panel * nr)
                    b_off = (k * n_panels + panel) * c * nr
                    for r0 in range(0, tb, mr):
                        rows_valid = min(mr, tb - r0)
                        for i in range(mr):
                            rows[i] = (r0 + min(i, rows_valid - 1)) * aa * c + k * c
                        _microkernel(STEP_FMA, nv, v, rows, taps, c, u, b_off, zero_bias,
                                     panel * nr, 0, mm, r0 * aa * cout + k * cout + panel * nr,
                                     aa * cout, rows_valid, cols_valid, 0)
            for tl in range(tb):
                _output_tile(mm, tl * aa * cout, bias, act, m, tiles_y, tiles_x, b0 + tl, out)


# ----------------------------------------------------------------------------------------------
# The convolution
# ----------------------------------------------------------------------------------------------


def band_tiles(m: int, cin: int, cout: int) -> int:
    """Tiles per band of the phased schedule: V and M of a band within _BAND_FLOATS."""
    a = m + 2
    return max(1, _BAND_FLOATS // (a * a * (cin + cout)))


def block_tiles(m: int, cin: int, cout: int, nv: int) -> int:
    """Tiles per block of the fused schedule: V and M of a block within _BLOCK_FLOATS, a
    multiple of the micro-kernel's rows."""
    a = m + 2
    mr = rows_per_tile(nv)
    return max(mr, _BLOCK_FLOATS // (a * a * (cin + cout)) // mr * mr)


def use_fused(m: int, cin: int, cout: int, nv: int) -> bool:
    """The fused schedule re-reads all of U for every block of a thread's tiles; it wins
    while a block holds at least two micro-kernel tiles of rows (else U is streamed from L3
    for too few rows, and the phased schedule, which reads U once, is faster)."""
    return block_tiles(m, cin, cout, nv) >= 2 * rows_per_tile(nv)


def conv3x3_winograd(x: np.ndarray, weights: WinogradWeights, bias: np.ndarray, pad: int,
                     act: int, schedule: str = "auto") -> np.ndarray:
    """3x3 stride-1 convolution of an NHWC float32 batch with zero padding `pad` per side,
    then bias and activation, by Winograd F(m x m, 3 x 3). schedule: "auto", "fused" (each
    thread transforms and multiplies its own blocks of tiles) or "phased" (all tiles of a
    band transformed, then the GEMMs split over threads, then the output transform)."""
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("conv3x3_winograd expects a C-contiguous NHWC float32 array")
    n, h, w, c = x.shape
    if c != weights.cin:
        raise ValueError(f"conv3x3_winograd: input has {c} channels, the weights expect "
                         f"{weights.cin}")
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if bias.shape != (weights.cout,):
        raise ValueError(f"conv3x3_winograd: bias must have shape ({weights.cout},)")
    if schedule not in ("auto", "fused", "phased"):
        raise ValueError(f"unknown Winograd schedule {schedule!r}")
    m, a, cout = weights.m, weights.m + 2, weights.cout
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    out = np.empty((n, max(ho, 0), max(wo, 0), cout), dtype=np.float32)
    if out.size == 0:
        return out
    tiles_y, tiles_x = -(-ho // m), -(-wo // m)
    total = n * tiles_y * tiles_x
    zero_bias = np.zeros(cout, np.float32)
    threads = numba.get_num_threads()
    packed = weights.packed
    if schedule == "fused" or (schedule == "auto" and use_fused(m, c, cout, packed.nv)):
        block = block_tiles(m, c, cout, packed.nv)
        _winograd_fused(x, pad, m, tiles_y, tiles_x, block, packed.packed, packed.nv,
                        packed.n_panels, zero_bias, bias, act, out, threads)
        return out
    band = min(total, band_tiles(m, c, cout))
    v = np.empty((band, a, a, c), np.float32)
    mm = np.empty((band, a, a, cout), np.float32)
    taps = np.zeros(1, np.int64)
    for t0 in range(0, total, band):
        tb = min(band, total - t0)
        _input_transform(x, pad, m, tiles_y, tiles_x, t0, tb, v, threads)
        # a*a GEMMs: row t of batch k starts at V[t, k]; its result goes to M[t, k].
        geometry = (tb, 1, tb, 0, 0, a * a * c)
        run_gemm_tiles(v.reshape(-1), geometry, taps, packed, zero_bias, mm.reshape(-1),
                       a * a * cout, LINEAR, a_batch_stride=c, c_batch_stride=cout)
        _output_transform(mm, bias, act, m, tiles_y, tiles_x, t0, tb, out, threads)
    return out


def conv3x3_winograd_reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, pad: int,
                               act: int, m: int, absolute: bool = False) -> np.ndarray:
    """Plain numpy, float64: the same tiles and transforms, as matrix products. With
    `absolute`, the same computation on |x|, |weights|, |bias| and |transform matrices|: the
    magnitude that bounds its rounding errors (see the tests)."""
    bt, g, at = transform_matrices(m)
    if absolute:
        bt, g, at = np.abs(bt), np.abs(g), np.abs(at)
        x, weights, bias = np.abs(x), np.abs(weights), np.abs(bias)
    a = m + 2
    n, h, w, c = x.shape
    ho, wo = h + 2 * pad - 2, w + 2 * pad - 2
    ty, tx = -(-ho // m), -(-wo // m)
    xp = np.zeros((n, ty * m + 2, tx * m + 2, c))
    xp[:, pad:pad + h, pad:pad + w] = x            # ty*m + 2 >= ho + 2 = h + 2*pad
    u = np.einsum("ay,oyxc,bx->aboc", g, weights.astype(np.float64), g)
    out = np.zeros((n, ty * m, tx * m, weights.shape[0]))
    for i in range(ty):
        for j in range(tx):
            d = xp[:, i * m:i * m + a, j * m:j * m + a]                      # (n, a, a, c)
            v = np.einsum("ay,nyxc,bx->nabc", bt, d, bt)
            prod = np.einsum("nabc,aboc->nabo", v, u)
            y = np.einsum("ia,nabo,jb->nijo", at, prod, at)
            out[:, i * m:(i + 1) * m, j * m:(j + 1) * m] = y
    return activate_numpy((out[:, :ho, :wo] + bias).astype(np.float32), act)
