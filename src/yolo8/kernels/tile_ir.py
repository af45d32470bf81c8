"""The LLVM IR the hand-written kernels share: typed intrinsic declarations, splats, masked
vector loads and stores, numba-array-to-pointer plumbing, and the GEMM micro-kernel skeleton.

The skeleton (`define_tile_kernel`) is written once, in the style of ONNX Runtime's MLAS: an
MR x (nv vectors) register tile of accumulators, a loop over kernel taps (each moving the MR
row pointers by the tap's offset) around a loop over K steps, and an epilogue; optionally an
outer loop over a run of equally spaced tiles. What differs between kernels and instruction
sets is only the multiply-accumulate step (`MacStep`) and the prologue / epilogue callbacks:

* `fma_step`: float32 FMA (gemm_fp32);
* `bf16_step`: `vdpbf16ps`, AVX512-BF16 (conv_bf16, through gemm_fp32);
* `dpbusd_step`: `vpdpbusd` on zmm or ymm, AVX-512 VNNI / AVX-VNNI (gemm_int8);
* `pmaddwd_step`: `vpmaddwd` + `vpaddd`, AVX2 (gemm_int8);
* `xnor_step`: xor + popcount + add, `vpopcntd` with AVX512-VPOPCNTDQ (xnor, tiled).

Adding an instruction set means adding a step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import llvmlite.ir as ir
from numba.core import cgutils

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()


class _BFloatType(ir.Type):
    """LLVM's `bfloat` (llvmlite.ir has no class for it): the element type of the AVX512-BF16
    intrinsics' operands since LLVM 17. Values are only ever bitcast to and from it."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloatType)

    def __hash__(self) -> int:
        return hash("bfloat")


BF16 = _BFloatType()


def vector(element: ir.Type, lanes: int) -> ir.VectorType:
    return ir.VectorType(element, lanes)


def type_suffix(ty: ir.Type) -> str:
    """LLVM's overload suffix of a type: <16 x float> -> v16f32, i32 -> i32, a pointer -> p0."""
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{type_suffix(ty.element)}"
    if isinstance(ty, ir.IntType):
        return f"i{ty.width}"
    if isinstance(ty, ir.FloatType):
        return "f32"
    if isinstance(ty, ir.DoubleType):
        return "f64"
    if isinstance(ty, ir.PointerType):
        return "p0"
    raise TypeError(f"no intrinsic suffix for {ty}")


def bits(ty: ir.VectorType) -> int:
    """Width of a vector of integers or floats in bits (x86 intrinsics are named by it)."""
    element = ty.element
    if isinstance(element, ir.IntType):
        width = element.width
    else:
        width = {_BFloatType: 16, ir.FloatType: 32}.get(type(element), 64)
    return ty.count * width


def declare(module: ir.Module, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
    """Declare (once per module) the function or intrinsic `name`."""
    return cgutils.get_or_insert_function(module, ir.FunctionType(ret, list(args)), name)


def overloaded(module: ir.Module, base: str, ret: ir.Type, args: Sequence[ir.Type],
               overload_types: Sequence[ir.Type]) -> ir.Function:
    """An overloaded LLVM intrinsic, its name built from its types:
    overloaded(m, "llvm.fmuladd", v, [v, v, v], [v]) declares llvm.fmuladd.v16f32."""
    name = ".".join([base, *(type_suffix(t) for t in overload_types)])
    return declare(module, name, ret, args)


def x86(module: ir.Module, base: str, ret: ir.VectorType, args: Sequence[ir.Type]) -> ir.Function:
    """An x86 intrinsic named by its vector width: x86(m, "llvm.x86.avx512.vpdpbusd", <8 x i32>,
    ...) declares llvm.x86.avx512.vpdpbusd.256 (AVX-VNNI's VEX form, or AVX512VL's)."""
    return declare(module, f"{base}.{bits(ret)}", ret, args)


def splat(builder: ir.IRBuilder, value: ir.Value, vector_type: ir.VectorType) -> ir.Value:
    """`value` in every lane (insertelement + shufflevector: LLVM's broadcast idiom)."""
    undef = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undef, value, I32(0))
    return builder.shuffle_vector(one, undef, ir.Constant(vector(I32, vector_type.count), None))


def lane_mask(builder: ir.IRBuilder, first: int, count: ir.Value, lanes: int) -> ir.Value:
    """<lanes x i1>: lane j set iff first + j < count (count an i64)."""
    indices = ir.Constant(vector(I64, lanes), [first + j for j in range(lanes)])
    return builder.icmp_signed("<", indices, splat(builder, count, vector(I64, lanes)))


def masked_load(builder: ir.IRBuilder, pointer: ir.Value, mask: ir.Value,
                passthru: ir.Value, align: int = 4) -> ir.Value:
    """llvm.masked.load of passthru's vector type at `pointer` (any pointer type)."""
    ty = passthru.type
    fn = overloaded(builder.module, "llvm.masked.load", ty,
                    [ty.as_pointer(), I32, mask.type, ty], [ty, ty.as_pointer()])
    return builder.call(fn, [builder.bitcast(pointer, ty.as_pointer()), I32(align), mask, passthru])


def masked_store(builder: ir.IRBuilder, value: ir.Value, pointer: ir.Value, mask: ir.Value,
                 align: int = 4) -> None:
    ty = value.type
    fn = overloaded(builder.module, "llvm.masked.store", ir.VoidType(),
                    [ty, ty.as_pointer(), I32, mask.type], [ty, ty.as_pointer()])
    builder.call(fn, [value, builder.bitcast(pointer, ty.as_pointer()), I32(align), mask])


def load_vector(builder: ir.IRBuilder, pointer: ir.Value, ty: ir.VectorType, align: int) -> ir.Value:
    return builder.load(builder.bitcast(pointer, ty.as_pointer()), align=align)


def offset(builder: ir.IRBuilder, pointer: ir.Value, n: ir.Value | int) -> ir.Value:
    """pointer + n elements (n an i64 value or a Python int)."""
    return builder.gep(pointer, [I64(n) if isinstance(n, int) else n])


def array_data(context, builder, ty, value, element: ir.Type = I8, at: ir.Value | None = None):
    """Pointer to element `at` (default 0) of a numba array argument, as `element*`."""
    data = builder.bitcast(context.make_array(ty)(context, builder, value).data,
                           element.as_pointer())
    return data if at is None else builder.gep(data, [at])


def array_length(context, builder, ty, value) -> ir.Value:
    return builder.extract_value(context.make_array(ty)(context, builder, value).shape, 0)


def trap_with_message(builder: ir.IRBuilder, message: str) -> None:
    """Print `message` and trap: the code of a kernel the compile target cannot run."""
    cgutils.printf(builder, message + "\n")
    builder.call(declare(builder.module, "llvm.trap", ir.VoidType(), []), [])


def row_chain(builder: ir.IRBuilder, fn: ir.Function, rows: int, rows_valid: ir.Value,
              exit_block: ir.Block, name: str, store_row: Callable,
              start: Callable | None = None) -> ir.Block:
    """The stores of a tile's rows, one block per row: row i's block runs store_row(i, s)
    and goes on to row i + 1 while i + 1 < rows_valid, else to exit_block (one branch per
    row, not per vector). s = start() is emitted first, in row 0's block (loads every row
    uses), or None. Returns row 0's block; the builder is left in the block it was in."""
    here = builder.block
    blocks = [fn.append_basic_block(f"{name}_{i}") for i in range(rows)]
    builder.position_at_end(blocks[0])
    shared = start() if start is not None else None
    for i in range(rows):
        builder.position_at_end(blocks[i])
        store_row(i, shared)
        if i + 1 < rows:
            builder.cbranch(builder.icmp_signed("<", I64(i + 1), rows_valid), blocks[i + 1],
                            exit_block)
        else:
            builder.branch(exit_block)
    builder.position_at_end(here)
    return blocks[0]


# ----------------------------------------------------------------------------------------------
# The micro-kernel skeleton
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacStep:
    """One K step of a register tile for one instruction set.

    acc: the accumulator vector type. a_bytes: bytes of each A row a step consumes (the row
    pointers advance by it). b_bytes: bytes of packed B per accumulator vector and step (B
    advances by nv * b_bytes). emit(builder, acc, a_pointers, b_pointer) returns the new
    accumulators acc[i][v] (lists of MR lists of nv values), the A row pointers and B pointer
    being i8* at the step's first byte.
    """

    name: str
    acc: ir.VectorType
    a_bytes: int
    b_bytes: int
    emit: Callable


def _broadcast_dword(builder, pointer, at: int, ty: ir.VectorType):
    """The i32 at byte `at` of a row, in every lane of `ty` (vpbroadcastd from memory)."""
    dword = builder.load(builder.bitcast(offset(builder, pointer, at), I32.as_pointer()), align=1)
    return builder.bitcast(splat(builder, dword, vector(I32, bits(ty) // 32)), ty)


def _rows_with_b(builder, acc, a_pointers, b, at: int, a_type: ir.VectorType, combine):
    """The step of every row: its dword at byte `at` broadcast as `a_type` (next to its own
    steps), then acc[i][v] = combine(acc[i][v], a, b[v]) for each loaded B vector."""
    result = []
    for i, p in enumerate(a_pointers):
        a = _broadcast_dword(builder, p, at, a_type)
        result.append([combine(acc[i][v], a, b[v]) for v in range(len(b))])
    return result


def fma_step(lanes: int) -> MacStep:
    """float32: acc += a (one float, broadcast) * b (lanes floats); llvm.fmuladd becomes
    vfmadd231ps where the target has FMA."""
    acc_ty = vector(F32, lanes)

    def emit(builder, acc, a_pointers, b_pointer):
        fmuladd = overloaded(builder.module, "llvm.fmuladd", acc_ty, [acc_ty] * 3, [acc_ty])
        b = [load_vector(builder, offset(builder, b_pointer, 4 * lanes * v), acc_ty, 4)
             for v in range(len(acc[0]))]
        result = []
        for i, p in enumerate(a_pointers):  # each row's broadcast next to its multiply-adds
            a = splat(builder, builder.load(builder.bitcast(p, F32.as_pointer()), align=4), acc_ty)
            result.append([builder.call(fmuladd, [a, b[v], acc[i][v]]) for v in range(len(b))])
        return result

    return MacStep("fma", acc_ty, 4, 4 * lanes, emit)


def dpbusd_step(lanes: int) -> MacStep:
    """u8 x s8: per int32 lane, acc += sum of 4 products of A's 4 bytes (broadcast dword) and
    B's 4 bytes; `vpdpbusd` on zmm (lanes=16, AVX-512 VNNI) or ymm (lanes=8, AVX-VNNI)."""
    acc_ty = vector(I32, lanes)

    def emit(builder, acc, a_pointers, b_pointer):
        dpbusd = x86(builder.module, "llvm.x86.avx512.vpdpbusd", acc_ty, [acc_ty] * 3)
        b = [load_vector(builder, offset(builder, b_pointer, 4 * lanes * v), acc_ty, 32)
             for v in range(len(acc[0]))]
        return _rows_with_b(builder, acc, a_pointers, b, 0, acc_ty,
                            lambda c, a, bv: builder.call(dpbusd, [c, a, bv]))

    return MacStep(f"dpbusd{bits(acc_ty)}", acc_ty, 4, 4 * lanes, emit)


def bf16_step(lanes: int = 16) -> MacStep:
    """bf16 x bf16 -> float32: per float lane, acc += a0*b0 + a1*b1 with (a0, a1) one pair of
    bf16 along K of each row (a dword, broadcast) and (b0, b1) the lane's pair of packed B;
    `vdpbf16ps` on zmm (AVX512-BF16). The products of bf16 values are exact in float32: the
    only roundings are the float32 additions."""
    acc_ty = vector(F32, lanes)
    pairs = vector(BF16, 2 * lanes)

    def emit(builder, acc, a_pointers, b_pointer):
        dpbf16 = x86(builder.module, "llvm.x86.avx512bf16.dpbf16ps", acc_ty, [acc_ty, pairs, pairs])
        b = [builder.bitcast(load_vector(builder, offset(builder, b_pointer, 4 * lanes * v),
                                         vector(I32, lanes), 64), pairs)
             for v in range(len(acc[0]))]
        return _rows_with_b(builder, acc, a_pointers, b, 0, pairs,
                            lambda c, a, bv: builder.call(dpbf16, [c, a, bv]))

    return MacStep(f"dpbf16ps{bits(acc_ty)}", acc_ty, 4, 4 * lanes, emit)


def pmaddwd_step(lanes: int = 8) -> MacStep:
    """i16 x i16 (A: u8 values widened to int16, B: s8 widened): two `vpmaddwd` + `vpaddd`
    per group of 4 k. Exact: a pair of products is at most 2 * 255 * 128 = 65280, far from
    int32's limits (vpmaddubsw's int16 pair sums would saturate at 32767 instead).
    B per group of 4 k: [pair][lanes * nv][2] int16; A: 4 int16 per row."""
    acc_ty = vector(I32, lanes)
    words = vector(I16, 2 * lanes)

    def emit(builder, acc, a_pointers, b_pointer):
        pmaddwd = declare(builder.module, "llvm.x86.avx2.pmadd.wd", acc_ty, [words, words])
        nv = len(acc[0])
        for pair in range(2):
            b = [load_vector(builder, offset(builder, b_pointer, 4 * lanes * (pair * nv + v)),
                             words, 32) for v in range(nv)]
            acc = _rows_with_b(builder, acc, a_pointers, b, 4 * pair, words,
                               lambda c, a, bv: builder.add(c, builder.call(pmaddwd, [a, bv])))
        return acc

    return MacStep("pmaddwd", acc_ty, 8, 8 * lanes, emit)


def xnor_step(lanes: int = 16) -> MacStep:
    """Binary: per int32 lane, acc += popcount(a ^ b), a being the row's 32-bit word (32
    signs, broadcast) and b the lane's word of packed B; llvm.ctpop becomes `vpopcntd` with
    AVX512-VPOPCNTDQ and a shuffle-based popcount (vpshufb) elsewhere."""
    acc_ty = vector(I32, lanes)

    def emit(builder, acc, a_pointers, b_pointer):
        ctpop = overloaded(builder.module, "llvm.ctpop", acc_ty, [acc_ty], [acc_ty])
        # Element alignment only: B may be any int32 array (yolo8's own is 64-byte aligned).
        b = [load_vector(builder, offset(builder, b_pointer, 4 * lanes * v), acc_ty, 4)
             for v in range(len(acc[0]))]
        return _rows_with_b(builder, acc, a_pointers, b, 0, acc_ty,
                            lambda c, a, bv: builder.add(c, builder.call(ctpop, [builder.xor(a, bv)])))

    return MacStep(f"xnor{bits(acc_ty)}", acc_ty, 4, 4 * lanes, emit)


class _TapLoops:
    """The loops of one tile: over taps around the K steps, accumulators and B pointer in phi
    nodes. Its blocks are appended when it is made, so that they precede the ones the
    prologue and epilogue add.

    The MR row pointers move from tap to tap by the difference of the taps' offsets rather
    than being recomputed as row start + tap offset, so the row starts need not stay live
    across the K loop: with MR = 8 they were reloaded from the stack at every tap, 1-3% of
    the time of a 3x3 XNOR layer of one word per pixel (3 K steps per tap). The K loop
    compiles to the same instructions either way."""

    def __init__(self, fn: ir.Function, step: MacStep, nv: int):
        self.step, self.nv = step, nv
        self.tap_head = fn.append_basic_block("tap_head")
        self.k_loop = fn.append_basic_block("k_loop")
        self.tap_latch = fn.append_basic_block("tap_latch")
        self.next_tap = fn.append_basic_block("next_tap")
        self.finish = fn.append_basic_block("epilogue")

    def emit(self, builder: ir.IRBuilder, row_ptrs, taps, ntaps, ksteps, b_start, acc_init):
        """Branch from the builder's block into the loops; return the final accumulators,
        the builder positioned in the (empty) block after the loops."""
        step, nv, i8p = self.step, self.nv, I8.as_pointer()
        first_ptrs = [builder.gep(p, [builder.load(taps)]) for p in row_ptrs]
        entry_end = builder.block  # the prologue may have added blocks
        builder.branch(self.tap_head)

        # Per tap: B continues where it stopped.
        builder.position_at_end(self.tap_head)
        tap = builder.phi(I64)
        b_tap = builder.phi(i8p)
        tap_ptrs = [builder.phi(p.type) for p in row_ptrs]
        acc_tap = [[builder.phi(step.acc) for _ in range(nv)] for _ in row_ptrs]
        byte_ptrs = [builder.bitcast(p, i8p) for p in tap_ptrs]
        builder.branch(self.k_loop)

        builder.position_at_end(self.k_loop)
        k = builder.phi(I64)
        b_k = builder.phi(i8p)
        acc_k = [[builder.phi(step.acc) for _ in range(nv)] for _ in row_ptrs]
        a_byte = builder.mul(k, I64(step.a_bytes))
        acc_new = step.emit(builder, acc_k, [builder.gep(p, [a_byte]) for p in byte_ptrs], b_k)
        b_next = builder.gep(b_k, [I64(nv * step.b_bytes)])
        k_next = builder.add(k, I64(1))
        k_end = builder.block
        builder.cbranch(builder.icmp_signed("<", k_next, ksteps), self.k_loop, self.tap_latch)

        builder.position_at_end(self.tap_latch)
        tap_next = builder.add(tap, I64(1))
        builder.cbranch(builder.icmp_signed("<", tap_next, ntaps), self.next_tap, self.finish)

        builder.position_at_end(self.next_tap)  # taps[tap_next] exists only here
        delta = builder.sub(builder.load(builder.gep(taps, [tap_next])),
                            builder.load(builder.gep(taps, [tap])))
        next_ptrs = [builder.gep(p, [delta]) for p in tap_ptrs]
        builder.branch(self.tap_head)

        for phi, first, following in ((tap, I64(0), tap_next), (b_tap, b_start, b_next),
                                      *zip(tap_ptrs, first_ptrs, next_ptrs)):
            phi.add_incoming(first, entry_end)
            phi.add_incoming(following, self.next_tap)
        k.add_incoming(I64(0), self.tap_head)
        k.add_incoming(k_next, k_end)
        b_k.add_incoming(b_tap, self.tap_head)
        b_k.add_incoming(b_next, k_end)
        for i in range(len(row_ptrs)):
            for v in range(nv):
                acc_tap[i][v].add_incoming(acc_init[i][v], entry_end)
                acc_tap[i][v].add_incoming(acc_new[i][v], self.next_tap)
                acc_k[i][v].add_incoming(acc_tap[i][v], self.tap_head)
                acc_k[i][v].add_incoming(acc_new[i][v], k_end)
        builder.position_at_end(self.finish)
        return acc_new


def define_tile_kernel(module: ir.Module, name: str, step: MacStep, mr: int, nv: int,
                       extra_args: Sequence[ir.Type], prologue: Callable,
                       epilogue: Callable, a_element: ir.Type = I8,
                       tiled: bool = False) -> ir.Function:
    """Emit (once per module) `void name(i8* a, i64* rows, i64* taps, i64 ntaps, i64 ksteps,
    i8* b, *extra_args)`:

        acc = prologue(builder, extra)                  # MR x nv accumulator vectors
        for t < ntaps, s < ksteps:                      # ntaps, ksteps >= 1
            acc = step(acc, a + rows[i] + taps[t] (+ s * a_bytes bytes), b)  (b moves on)
        epilogue(builder, fn, acc, extra)               # stores; must end the function

    rows and taps count `a_element`s of a. The accumulators live in registers (phi nodes),
    which numba's own loops over arrays never achieve.

    `tiled` adds an outer loop over a run of tiles whose rows are equally spaced in A (the
    positions along an image row, say), so that one call computes them all: two more
    arguments follow b, `i64 ntiles` (>= 1) and `i64 a_tile_step` (in a_elements), and

        for tile < ntiles:
            acc = prologue(builder, extra, tile)        # tile: the i64 index
            (the loops above, on a + tile * a_tile_step, b from its start each time)
            epilogue(builder, fn, acc, extra, tile, next_tile)  # must branch to next_tile
    """
    if name in module.globals:
        return module.globals[name]
    i8p, i64p = I8.as_pointer(), I64.as_pointer()
    tile_args = [I64, I64] if tiled else []
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i64p, i64p, I64, I64, i8p,
                                                             *tile_args, *extra_args]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # one copy per module: the call costs nothing next to a tile
    extra = list(fn.args[6 + len(tile_args):])
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    if tiled:
        _emit_tile_run(builder, fn, step, mr, nv, prologue, epilogue, a_element, extra)
        return fn
    a, rows, taps, ntaps, ksteps, b_start = fn.args[:6]
    loops = _TapLoops(fn, step, nv)
    acc_init = prologue(builder, extra)
    a_typed = builder.bitcast(a, a_element.as_pointer())
    row_ptrs = [builder.gep(a_typed, [builder.load(builder.gep(rows, [I64(i)]))])
                for i in range(mr)]
    acc = loops.emit(builder, row_ptrs, taps, ntaps, ksteps, b_start, acc_init)
    epilogue(builder, fn, acc, extra)
    return fn


def _emit_tile_run(builder, fn, step, mr, nv, prologue, epilogue, a_element, extra) -> None:
    """The body of a `tiled` kernel (see define_tile_kernel), from its entry block on."""
    a, rows, taps, ntaps, ksteps, b_start, ntiles, a_tile_step = fn.args[:8]
    a_typed = builder.bitcast(a, a_element.as_pointer())
    # Loaded once, here: LLVM would not hoist them above the epilogue's stores (may alias).
    row_offsets = [builder.load(builder.gep(rows, [I64(i)])) for i in range(mr)]
    entry = builder.block
    tile_head = fn.append_basic_block("tile_head")
    loops = _TapLoops(fn, step, nv)
    next_tile = fn.append_basic_block("next_tile")
    done = fn.append_basic_block("done")
    builder.branch(tile_head)

    builder.position_at_end(tile_head)
    tile = builder.phi(I64)
    a_tile = builder.phi(a_typed.type)
    acc_init = prologue(builder, extra, tile)
    row_ptrs = [builder.gep(a_tile, [row]) for row in row_offsets]
    acc = loops.emit(builder, row_ptrs, taps, ntaps, ksteps, b_start, acc_init)
    epilogue(builder, fn, acc, extra, tile, next_tile)

    builder.position_at_end(next_tile)
    tile_next = builder.add(tile, I64(1))
    a_next = builder.gep(a_tile, [a_tile_step])
    builder.cbranch(builder.icmp_signed("<", tile_next, ntiles), tile_head, done)
    for phi, first, following in ((tile, I64(0), tile_next), (a_tile, a_typed, a_next)):
        phi.add_incoming(first, entry)
        phi.add_incoming(following, next_tile)
    builder.position_at_end(done)
    builder.ret_void()
