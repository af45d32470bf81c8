"""darknet's max pooling in NHWC (numba) and its plain-numpy reference.

darknet starts each window at -padding // 2 (padding is the total over both sides) and
ignores taps outside the image, so a window never sees a padding value.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _maxpool(x, size, stride, offset, out):
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    for job in prange(n * ho):
        b = job // ho
        oy = job % ho
        for ox in range(wo):
            for ch in range(c):
                out[b, oy, ox, ch] = -np.inf
            for ky in range(size):
                iy = oy * stride + offset + ky
                if iy < 0 or iy >= h:
                    continue
                for kx in range(size):
                    ix = ox * stride + offset + kx
                    if ix < 0 or ix >= w:
                        continue
                    for ch in range(c):
                        v = x[b, iy, ix, ch]
                        if v > out[b, oy, ox, ch]:
                            out[b, oy, ox, ch] = v


def maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """Max pooling of an NHWC float32 array with darknet's geometry."""
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError("maxpool expects a C-contiguous NHWC float32 array")
    n, h, w, c = x.shape
    ho = (h + padding - size) // stride + 1
    wo = (w + padding - size) // stride + 1
    out = np.empty((n, ho, wo, c), dtype=np.float32)
    _maxpool(x, size, stride, -(padding // 2), out)
    return out


def maxpool_reference(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    n, h, w, c = x.shape
    ho = (h + padding - size) // stride + 1
    wo = (w + padding - size) // stride + 1
    offset = -(padding // 2)
    out = np.full((n, ho, wo, c), -np.inf, dtype=np.float32)
    for oy in range(ho):
        for ox in range(wo):
            y0, x0 = oy * stride + offset, ox * stride + offset
            window = x[:, max(y0, 0):max(min(y0 + size, h), 0), max(x0, 0):max(min(x0 + size, w), 0)]
            if window.size:
                out[:, oy, ox] = window.max(axis=(1, 2))
    return out
