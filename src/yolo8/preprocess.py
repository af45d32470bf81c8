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


def resize_plain(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """darknet's default path: stretch to the network size (bilinear)."""
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def letterbox_geometry(image_w: int, image_h: int, width: int, height: int) -> tuple[int, int]:
    """darknet's letterbox_image: the scaled size that keeps the aspect ratio (integer maths)."""
    if width / image_w < height / image_h:
        return width, (image_h * width) // image_w
    return (image_w * height) // image_h, height


def resize_letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """darknet's letterbox path: keep the aspect ratio, centre, fill with grey 0.5."""
    new_w, new_h = letterbox_geometry(image.shape[1], image.shape[0], width, height)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), 127.5, dtype=np.float32)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def to_blob(images: list[np.ndarray], width: int, height: int, letterbox: bool = False,
            out: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 images -> NHWC float32 RGB in [0, 1] at the network size."""
    blob = out if out is not None else np.empty((len(images), height, width, 3), dtype=np.float32)
    for i, image in enumerate(images):
        sized = resize_letterbox(image, width, height) if letterbox else resize_plain(image, width, height)
        np.divide(sized[..., ::-1], np.float32(255), out=blob[i], dtype=np.float32, casting="unsafe")
    return blob
