"""Pieces the FP32, INT8 and XNOR kernels share: numba's target features, conv geometry,
aligned buffers and the implicit GEMM's row addressing."""
from __future__ import annotations

import functools

import llvmlite.binding as llvm_binding
import numpy as np
from numba import config, njit, prange

from ..jit import CACHE

ALIGN = 64  # bytes: a packed weight vector of the micro-kernels is then one cache line


@functools.lru_cache(maxsize=None)
def target_features() -> frozenset[str]:
    """numba's compile-target features ("+avx512f", ...): NUMBA_CPU_FEATURES if set, else the
    host's. Cached (the configuration is fixed once numba is imported)."""
    features = config.CPU_FEATURES
    if features is None:
        features = llvm_binding.get_host_cpu_features().flatten()
    return frozenset(features.split(","))


def output_size(size_in: int, size: int, stride: int, pad: int) -> int:
    """darknet's conv output size along one axis (`pad` pixels on each side)."""
    return (size_in + 2 * pad - size) // stride + 1


def conv_taps(kh: int, kw: int, padded_width: int, pixel_stride: int, groups: int) -> np.ndarray:
    """Offsets of a kernel's taps into a padded NHWC image (`pixel_stride` elements a pixel).

    With one group the kw taps of a kernel row are adjacent pixels, all channels, so a row is
    one tap of kw pixels (longer inner loops, same K order (ky, kx, c)); with groups each
    (ky, kx) is a tap of its own, the group's channels being a slice of the pixel."""
    if groups == 1:
        return np.arange(kh, dtype=np.int64) * (padded_width * pixel_stride)
    ky, kx = np.divmod(np.arange(kh * kw, dtype=np.int64), kw)
    return (ky * padded_width + kx) * pixel_stride


def aligned_empty(count: int, dtype: np.dtype, align: int = ALIGN) -> np.ndarray:
    """A 1-D uninitialised array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(count * dtype.itemsize + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + count * dtype.itemsize].view(dtype)


@njit(cache=CACHE, nogil=True)
def row_offsets(rows, m0, mr, m_total, ho, wo, img_stride, row_stride, col_stride, base):
    """Source offsets of output pixels m0..m0+mr-1 (pixel m = (img, y, x) over (ho, wo));
    rows past the end repeat the last one (read, never stored)."""
    img = m0 // (ho * wo)
    y = (m0 - img * ho * wo) // wo
    x = m0 - img * ho * wo - y * wo
    m = m0
    for i in range(mr):
        rows[i] = img * img_stride + y * row_stride + x * col_stride + base
        if m < m_total - 1:
            m += 1
            x += 1
            if x == wo:
                x = 0
                y += 1
                if y == ho:
                    y = 0
                    img += 1


@njit(parallel=True, cache=CACHE, nogil=True)
def _fill_parallel(out, value):
    for i in prange(out.size):
        out[i] = value


def warm_parallel_runtime() -> None:
    """Run one tiny parallel kernel: numba then loads its threading layer (and reports it)."""
    _fill_parallel(np.empty(2, np.int64), 1)
