"""darknet's resize_image (image.c) on an (H, W, C) float32 image: numba kernel and its
plain-numpy reference, bit for bit the same.

Bilinear with corner-aligned sampling: along each axis scale = (float)(in - 1) / (out - 1),
s = i * scale, ix = (int)s, d = s - ix, value = (1 - d) * p[ix] + d * p[ix + 1]; the last
output takes the last input. First along x into a float32 buffer, then along y, where the
second term is added in a second step (darknet's add_pixel) and skipped on the last row.
Everything in float32, in darknet's order of operations, with no fused multiply-add.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..jit import CACHE


def axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """darknet's sampling along one axis: source index, next index and weight per output."""
    if size_out == 1:  # darknet divides by zero here (0 * inf is NaN); only the last input is used
        return (np.full(1, size_in - 1, np.intp),) * 2 + (np.zeros(1, np.float32),)
    scale = np.float32(size_in - 1) / np.float32(size_out - 1)
    s = np.arange(size_out, dtype=np.float32) * scale
    index = s.astype(np.intp)  # truncation, as (int)
    weight = (s - index.astype(np.float32)).astype(np.float32)
    index[-1], weight[-1] = size_in - 1, np.float32(0)
    after = np.minimum(index + 1, size_in - 1)
    return index, after, weight


@njit(cache=CACHE, nogil=True)
def _row(image, scale, row, ix, ix1, dx, dst):
    """darknet's first pass for one source row: dst[c] = (1 - dx) * p[ix] + dx * p[ix + 1],
    p = image[row] / scale (255 for uint8 pixels: darknet's `data / 255.0f` at load)."""
    in_w, channels = image.shape[1], image.shape[2]
    width = dst.shape[0]
    one = np.float32(1)
    for c in range(width - 1):
        a, b, d = ix[c], ix1[c], dx[c]
        for k in range(channels):
            left = np.float32(image[row, a, k]) / scale
            right = np.float32(image[row, b, k]) / scale
            dst[c, k] = (one - d) * left + d * right
    for k in range(channels):
        dst[width - 1, k] = np.float32(image[row, in_w - 1, k]) / scale


@njit(cache=CACHE, nogil=True)
def _resize(image, scale, ix, ix1, dx, iy, iy1, dy, out):
    """Both passes, holding only the two first-pass rows the current output row reads (the
    source rows only move forward), instead of darknet's whole intermediate image."""
    height, width, channels = out.shape
    one = np.float32(1)
    rows = np.empty((2, width, channels), np.float32)
    held_a, held_b = -1, -1
    for r in range(height):
        a, b, d = iy[r], iy1[r], dy[r]
        if held_a != a:
            if held_b == a:
                rows[0, :, :] = rows[1, :, :]
            else:
                _row(image, scale, a, ix, ix1, dx, rows[0])
            held_a = a
        last = r == height - 1
        if not last and held_b != b:
            _row(image, scale, b, ix, ix1, dx, rows[1])
            held_b = b
        for c in range(width):
            for k in range(channels):
                value = (one - d) * rows[0, c, k]
                if not last:  # darknet's add_pixel, skipped on the last row
                    value = value + d * rows[1, c, k]
                out[r, c, k] = value


def darknet_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """darknet's resize_image of an (H, W, C) image to (height, width, C) float32: a float32
    image as it is, a uint8 one as darknet loads it (`data / 255.0f`), without a float copy of
    the whole image."""
    if image.ndim != 3 or image.dtype not in (np.uint8, np.float32):
        raise ValueError(f"expected an (H, W, C) uint8 or float32 image, got {image.dtype} "
                         f"{image.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"output size must be positive, got {width}x{height}")
    in_h, in_w = image.shape[:2]
    scale = np.float32(255 if image.dtype == np.uint8 else 1)  # x / 1 is exact
    if (in_w, in_h) == (width, height):
        return np.divide(image, scale, dtype=np.float32)
    out = np.empty((height, width, image.shape[2]), np.float32)
    _resize(np.ascontiguousarray(image), scale, *axis_weights(in_w, width),
            *axis_weights(in_h, height), out)
    return out


def darknet_resize_numpy(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain-numpy reference of `darknet_resize` (the same float32 operations, vectorised,
    with darknet's whole intermediate image)."""
    if image.dtype == np.uint8:
        image = np.divide(image, np.float32(255), dtype=np.float32)
    in_h, in_w = image.shape[:2]
    if (in_w, in_h) == (width, height):
        return image.copy()
    one = np.float32(1)
    ix, ix1, dx = axis_weights(in_w, width)
    dx = dx[None, :, None]
    part = (one - dx) * np.take(image, ix, axis=1) + dx * np.take(image, ix1, axis=1)
    part[:, -1] = image[:, in_w - 1]
    iy, iy1, dy = axis_weights(in_h, height)
    dy = dy[:, None, None]
    resized = (one - dy) * np.take(part, iy, axis=0)
    resized[:-1] += dy[:-1] * np.take(part, iy1[:-1], axis=0)
    return resized
