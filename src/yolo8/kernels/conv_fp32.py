"""FP32 convolution in NHWC: im2col (numba) + sgemm (numpy's BLAS) + fused bias/activation.

1x1 stride-1 convolutions skip im2col: an NHWC tensor already is the (pixels, channels)
matrix. Rows are processed in chunks so that the im2col buffer stays cache-sized and memory
stays bounded for large inputs and batches. Layers that read few values per output pixel
(the first layer: 3x3x3 = 27) run a direct convolution instead: im2col would write 27 floats
per pixel for a GEMM too thin to use BLAS well, while the direct loop keeps a pixel's output
channels in vector registers.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activations import LEAKY, activate, activate_numpy

# Floats in one im2col chunk: 2**21 floats = 8 MiB, well inside L3, big enough for sgemm.
_CHUNK_FLOATS = 1 << 21


def output_size(size_in: int, size: int, stride: int, pad: int) -> int:
    return (size_in + 2 * pad - size) // stride + 1


@njit(parallel=True, cache=True)
def _im2col(x, size, stride, pad, c0, cg, ho, wo, row0, cols):
    """cols[r, (ky*size + kx)*cg + c] = x[n, oy*stride - pad + ky, ox*stride - pad + kx, c0 + c]
    for output pixel row0 + r (flattened over n, oy, ox); zero outside the image."""
    h, w = x.shape[1], x.shape[2]
    for r in prange(cols.shape[0]):
        m = row0 + r
        n = m // (ho * wo)
        oy = (m // wo) % ho
        ox = m % wo
        for ky in range(size):
            iy = oy * stride - pad + ky
            for kx in range(size):
                ix = ox * stride - pad + kx
                base = (ky * size + kx) * cg
                if 0 <= iy < h and 0 <= ix < w:
                    for c in range(cg):
                        cols[r, base + c] = x[n, iy, ix, c0 + c]
                else:
                    for c in range(cg):
                        cols[r, base + c] = 0.0


# Direct convolution when a pixel reads at most this many values (kh * kw * cin).
DIRECT_MAX_PATCH = 32


@njit(parallel=True, cache=True)
def _direct_conv(x, w, bias, size, stride, pad, code, out):
    """out[b, oy, ox, :] = activate(bias + sum over valid taps of x[b, iy, ix, c] * w[ky, kx, c, :]).

    One output row at a time, accumulated in a (wo, cout) buffer that stays in L1: for each
    tap, the valid output columns are computed once (no per-pixel border tests), and the
    innermost loop runs over the output channels (w laid out (size, size, cin, cout))."""
    h, wd, cin = x.shape[1], x.shape[2], x.shape[3]
    ho, wo, cout = out.shape[1], out.shape[2], out.shape[3]
    slope = np.float32(0.1)
    for job in prange(out.shape[0] * ho):
        b = job // ho
        oy = job % ho
        acc = np.empty((wo, cout), np.float32)
        for ox in range(wo):
            acc[ox, :] = bias
        for ky in range(size):
            iy = oy * stride - pad + ky
            if iy < 0 or iy >= h:
                continue
            for kx in range(size):
                first = max(0, -((kx - pad) // stride))       # ox*stride - pad + kx >= 0
                last = min(wo, (wd - 1 + pad - kx) // stride + 1)  # ... <= wd - 1
                for ci in range(cin):
                    for ox in range(first, last):
                        v = x[b, iy, ox * stride - pad + kx, ci]
                        # blocks of 16 with a constant trip count: one zmm multiply-add
                        for c0 in range(0, cout - 15, 16):
                            for co in range(16):
                                acc[ox, c0 + co] += v * w[ky, kx, ci, c0 + co]
                        for co in range(cout - cout % 16, cout):
                            acc[ox, co] += v * w[ky, kx, ci, co]
        if code == LEAKY:
            for ox in range(wo):
                for co in range(cout):
                    a = acc[ox, co]
                    out[b, oy, ox, co] = a if a > 0 else slope * a
        else:
            for ox in range(wo):
                for co in range(cout):
                    out[b, oy, ox, co] = activate(acc[ox, co], code)


@njit(parallel=True, cache=True)
def _bias_activation(out, bias, code):
    """In place on a (rows, channels) block: out = activate(out + bias)."""
    for r in prange(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] = activate(out[r, c] + bias[c], code)


@njit(parallel=True, cache=True)
def _bias_leaky(out, bias):
    """The common case written so LLVM vectorises it (a select, no call, no code branch)."""
    slope = np.float32(0.1)
    for r in prange(out.shape[0]):
        for c in range(out.shape[1]):
            v = out[r, c] + bias[c]
            out[r, c] = v if v > 0 else slope * v


def bias_activation(out: np.ndarray, bias: np.ndarray, code: int) -> None:
    """Fused epilogue, in place on a float32 (rows, channels) block: activate(out + bias)."""
    if out.ndim != 2 or out.dtype != np.float32 or bias.shape != (out.shape[1],):
        raise ValueError("bias_activation expects a float32 (rows, channels) block and a bias per channel")
    bias = bias.astype(np.float32, copy=False)
    if code == LEAKY:
        _bias_leaky(out, bias)
    else:
        _bias_activation(out, bias, code)


def im2col(x: np.ndarray, size: int, stride: int, pad: int, c0: int = 0, cg: int | None = None,
           row0: int = 0, rows: int | None = None) -> np.ndarray:
    """im2col of an NHWC float32 tensor (channels c0..c0+cg), rows row0..row0+rows."""
    if x.ndim != 4 or x.dtype != np.float32:
        raise ValueError("im2col expects an NHWC float32 array")
    n, h, w, c = x.shape
    cg = c - c0 if cg is None else cg
    ho, wo = output_size(h, size, stride, pad), output_size(w, size, stride, pad)
    rows = n * ho * wo - row0 if rows is None else rows
    cols = np.empty((rows, size * size * cg), dtype=np.float32)
    _im2col(x, size, stride, pad, c0, cg, ho, wo, row0, cols)
    return cols


class Fp32Conv:
    """A conv layer prepared for FP32 execution: weights as (K, Cout) matrices per group."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int, groups: int,
                 activation: int) -> None:
        cout, size, _, cin_g = weights.shape
        self.size, self.stride, self.pad, self.groups = size, stride, pad, groups
        self.activation = activation
        self.cout = cout
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        cout_g = cout // groups
        self.w_t = [np.ascontiguousarray(weights[g * cout_g:(g + 1) * cout_g].reshape(cout_g, -1).T)
                    for g in range(groups)]
        self.cin_g = cin_g
        self.direct = groups == 1 and size * size * cin_g <= DIRECT_MAX_PATCH
        if self.direct:
            self.w_direct = np.ascontiguousarray(weights.transpose(1, 2, 3, 0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        ho = output_size(h, self.size, self.stride, self.pad)
        wo = output_size(w, self.size, self.stride, self.pad)
        out = np.empty((n, ho, wo, self.cout), dtype=np.float32)
        if self.direct:
            _direct_conv(x, self.w_direct, self.bias, self.size, self.stride, self.pad,
                         self.activation, out)
            return out
        out2d = out.reshape(-1, self.cout)
        if self.size == 1 and self.stride == 1 and self.pad == 0 and self.groups == 1:
            np.matmul(x.reshape(-1, c), self.w_t[0], out=out2d)
        else:
            self._im2col_gemm(x, out2d, ho, wo)
        bias_activation(out2d, self.bias, self.activation)
        return out

    def _im2col_gemm(self, x: np.ndarray, out2d: np.ndarray, ho: int, wo: int) -> None:
        total = out2d.shape[0]
        k = self.size * self.size * self.cin_g
        chunk = max(64, _CHUNK_FLOATS // k)
        cols = np.empty((min(chunk, total), k), dtype=np.float32)
        cout_g = self.cout // self.groups
        for row0 in range(0, total, chunk):
            rows = min(chunk, total - row0)
            block = cols[:rows]
            for g in range(self.groups):
                _im2col(x, self.size, self.stride, self.pad, g * self.cin_g, self.cin_g, ho, wo,
                        row0, block)
                target = out2d[row0:row0 + rows, g * cout_g:(g + 1) * cout_g]
                if self.groups == 1:
                    np.matmul(block, self.w_t[g], out=target)
                else:
                    target[...] = block @ self.w_t[g]


def conv2d_reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, stride: int, pad: int,
                     groups: int, activation: int) -> np.ndarray:
    """Plain numpy, float64, direct loops over kernel taps: the tests' reference."""
    n, h, w, c = x.shape
    cout, size, _, cin_g = weights.shape
    ho, wo = output_size(h, size, stride, pad), output_size(w, size, stride, pad)
    xp = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=np.float64)
    xp[:, pad:pad + h, pad:pad + w] = x
    out = np.zeros((n, ho, wo, cout), dtype=np.float64)
    cout_g = cout // groups
    for g in range(groups):
        wg = weights[g * cout_g:(g + 1) * cout_g].astype(np.float64)
        for ky in range(size):
            for kx in range(size):
                patch = xp[:, ky:ky + stride * (ho - 1) + 1:stride,
                           kx:kx + stride * (wo - 1) + 1:stride, g * cin_g:(g + 1) * cin_g]
                out[..., g * cout_g:(g + 1) * cout_g] += patch @ wg[:, ky, kx, :].T
    return activate_numpy((out + bias).astype(np.float32), activation)
