"""Pieces the FP32, INT8 and XNOR kernels share: numba's target features, conv geometry,
aligned buffers and the implicit GEMM's row addressing."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..jit import CACHE, target_features  # noqa: F401 (the kernels' import of it)

ALIGN = 64  # bytes: a packed weight vector of the micro-kernels is then one cache line


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


# ----------------------------------------------------------------------------------------------
# Compile targets of the x86 tiers, so that each can be built and run on a bigger CPU
# ----------------------------------------------------------------------------------------------

_AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
                  "+movbe,+pclmul,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
# name -> (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES, the /proc/cpuinfo flags the host needs to run it)
TARGETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "avx2": ("haswell", _AVX2_FEATURES, ("avx2", "fma")),
    "avxvnni": ("alderlake", _AVX2_FEATURES + ",+avxvnni", ("avx2", "fma", "avx_vnni")),
    # The icelake-server CPU name brings its other vector extensions with it (LLVM emits
    # vpopcntd for the XNOR kernel, for one), so the host needs them all to run this target.
    "avx512": ("icelake-server",
               _AVX2_FEATURES + ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl,+avx512vnni",
               ("avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl",
                "avx512_vnni", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg",
                "avx512_vpopcntdq", "gfni", "vaes", "vpclmulqdq")),
}


def target_env(target: str) -> dict[str, str]:
    """Environment variables that make numba compile for `target` (a TARGETS name; "native":
    none, the host's own)."""
    if target == "native":
        return {}
    cpu, features, _ = TARGETS[target]
    return {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features}


def host_cannot_run(target: str) -> str | None:
    """Why this host cannot execute code compiled for `target` (None if it can): the flags
    of /proc/cpuinfo it lacks."""
    if target == "native":
        return None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "no /proc/cpuinfo to read the CPU's flags from"
    missing = [flag for flag in TARGETS[target][2] if flag not in flags]
    return f"this CPU lacks {', '.join(missing)}" if missing else None
