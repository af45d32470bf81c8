"""Images in, network blobs out, as darknet's `detector test` prepares them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, reading


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3), whatever its extension says.

    Reads the bytes ourselves so paths with any characters work, and decodes by content
    (a PNG named .jpg is fine).
    """
    path = Path(path)
    with reading(path, "image", InputError):
        data = np.fromfile(path, dtype=np.uint8)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # e.g. a header claiming more pixels than OpenCV allows
        raise InputError("cannot be decoded: OpenCV refused its header (image too large or "
                         "damaged)", path=path) from None
    if image is None:
        raise InputError("is not an image OpenCV can decode (expected JPEG, PNG, BMP, ...)", path=path)
    return image


RESIZE_MODES = ("darknet", "opencv")


def to_float(image: np.ndarray) -> np.ndarray:
    """BGR uint8 -> float32 in [0, 1], as darknet's mat_to_image (`data / 255.0f`)."""
    return np.divide(image, np.float32(255), dtype=np.float32)


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """darknet's sampling along one axis: source index, next index and weight per output.

    All in float32 as darknet computes them: scale = (float)(in - 1) / (out - 1), s = i * scale,
    ix = (int)s, d = s - ix. The last output takes the last input (darknet's `c == w-1` case).
    """
    if size_out == 1:  # darknet divides by zero here (0 * inf is NaN); only the last input is used
        return (np.full(1, size_in - 1, np.intp),) * 2 + (np.zeros(1, np.float32),)
    scale = np.float32(size_in - 1) / np.float32(size_out - 1)
    s = np.arange(size_out, dtype=np.float32) * scale
    index = s.astype(np.intp)  # truncation, as (int)
    weight = (s - index.astype(np.float32)).astype(np.float32)
    index[-1], weight[-1] = size_in - 1, np.float32(0)
    after = np.minimum(index + 1, size_in - 1)
    return index, after, weight


def darknet_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """darknet's resize_image (image.c) on an (H, W, C) float32 image: bilinear with
    corner-aligned sampling ((in - 1) / (out - 1)), first along x, then along y, in float32
    with darknet's order of operations, so the result is darknet's bit for bit."""
    if image.ndim != 3 or image.dtype != np.float32:
        raise ValueError(f"expected an (H, W, C) float32 image, got {image.dtype} {image.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"output size must be positive, got {width}x{height}")
    in_h, in_w = image.shape[:2]
    if (in_w, in_h) == (width, height):
        return image.copy()
    one = np.float32(1)
    ix, ix1, dx = _axis_weights(in_w, width)
    dx = dx[None, :, None]
    # part = (1 - dx) * im[x] + dx * im[x + 1]; the last column is im[w - 1] itself.
    part = (one - dx) * image[:, ix] + dx * image[:, ix1]
    part[:, -1] = image[:, in_w - 1]
    iy, iy1, dy = _axis_weights(in_h, height)
    dy = dy[:, None, None]
    # resized = (1 - dy) * part[y], then += dy * part[y + 1] except on the last row.
    resized = (one - dy) * part[iy]
    resized[:-1] += dy[:-1] * part[iy1[:-1]]
    return resized


def resize_to(image: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    """BGR uint8 -> float32 [0, 1] BGR at (width, height), by darknet's or OpenCV's resize."""
    if resize == "darknet":
        return darknet_resize(to_float(image), width, height)
    return to_float(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))


def resize_plain(image: np.ndarray, width: int, height: int, resize: str = "darknet"
                 ) -> np.ndarray:
    """darknet's default path: stretch to the network size."""
    return resize_to(image, width, height, resize)


def letterbox_geometry(image_w: int, image_h: int, width: int, height: int) -> tuple[int, int]:
    """darknet's letterbox_image: the scaled size that keeps the aspect ratio (its comparison in
    float, then integer maths)."""
    if np.float32(width) / np.float32(image_w) < np.float32(height) / np.float32(image_h):
        return width, (image_h * width) // image_w
    return (image_w * height) // image_h, height


def resize_letterbox(image: np.ndarray, width: int, height: int, resize: str = "darknet"
                     ) -> np.ndarray:
    """darknet's letterbox_image: keep the aspect ratio, centre, fill with grey 0.5."""
    new_w, new_h = letterbox_geometry(image.shape[1], image.shape[0], width, height)
    canvas = np.full((height, width, 3), 0.5, dtype=np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resize_to(image, new_w, new_h, resize)
    return canvas


def resize_min_crop(image: np.ndarray, width: int, height: int, resize: str = "darknet"
                    ) -> np.ndarray:
    """darknet's `classifier predict` input: resize_min (the shorter side to the network
    width, integer maths) then crop_image of the centre, edge pixels repeated where the crop
    leaves the image (crop_image clamps its indices)."""
    in_h, in_w = image.shape[:2]
    if in_w < in_h:
        new_w, new_h = width, (in_h * width) // in_w
    else:
        new_w, new_h = (in_w * width) // in_h, width
    resized = resize_to(image, new_w, new_h, resize)
    dx, dy = int((new_w - width) / 2), int((new_h - height) / 2)  # C's division truncates
    rows = np.clip(np.arange(height) + dy, 0, new_h - 1)
    cols = np.clip(np.arange(width) + dx, 0, new_w - 1)
    return resized[rows[:, None], cols[None, :]]


def check_resize(resize: str) -> str:
    if resize not in RESIZE_MODES:
        raise InputError(f"unknown resize '{resize}'; expected one of {', '.join(RESIZE_MODES)}")
    return resize


def to_blob(images: list[np.ndarray], width: int, height: int, letterbox: bool = False,
            out: np.ndarray | None = None, resize: str = "darknet", crop: bool = False
            ) -> np.ndarray:
    """BGR uint8 images -> NHWC float32 RGB in [0, 1] at the network size: stretched,
    letterboxed, or (crop, classifiers) resized by the shorter side and centre-cropped."""
    check_resize(resize)
    fit = resize_min_crop if crop else resize_letterbox if letterbox else resize_plain
    blob = out if out is not None else np.empty((len(images), height, width, 3), dtype=np.float32)
    for i, image in enumerate(images):
        blob[i] = fit(image, width, height, resize)[..., ::-1]
    return blob
