"""Images in, network blobs out, as darknet's `detector test` prepares them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, reading
from .kernels.resize import darknet_resize


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


def resize_to(image: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    """BGR uint8 -> float32 [0, 1] BGR at (width, height), by darknet's or OpenCV's resize."""
    if resize == "darknet":
        return darknet_resize(image, width, height)  # reads the uint8 pixels as darknet loads them
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return to_float(resized.reshape(height, width, image.shape[2]))  # cv2 drops a single channel


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
    canvas = np.full((height, width, image.shape[2]), 0.5, dtype=np.float32)
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


def stbi_luma(image: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> grey uint8 (H, W, 1), as darknet's stb-based loader makes a
    one-channel image (stbi_load with req_comp = 1: stbi__compute_y on the 8-bit values,
    (r*77 + g*150 + b*29) >> 8; darknet divides by 255 afterwards, and resizes after that)."""
    bgr = image.astype(np.int32)
    luma = (bgr[..., 2] * 77 + bgr[..., 1] * 150 + bgr[..., 0] * 29) >> 8
    return luma.astype(np.uint8)[..., None]


# How a decoded BGR uint8 image becomes the network's channels, by [net] channels (before
# resizing, as darknet loads then resizes); to_blob turns colour BGR into RGB at the end.
CHANNEL_MODES = {3: lambda image: image, 1: stbi_luma}


def to_blob(images: list[np.ndarray], width: int, height: int, letterbox: bool = False,
            out: np.ndarray | None = None, resize: str = "darknet", crop: bool = False,
            channels: int = 3) -> np.ndarray:
    """BGR uint8 images -> NHWC float32 RGB (or, channels=1, grey) in [0, 1] at the network
    size: stretched, letterboxed, or (crop, classifiers) resized by the shorter side and
    centre-cropped."""
    check_resize(resize)
    fit = resize_min_crop if crop else resize_letterbox if letterbox else resize_plain
    convert = CHANNEL_MODES[channels]
    blob = out if out is not None else np.empty((len(images), height, width, channels),
                                                dtype=np.float32)
    for i, image in enumerate(images):
        blob[i] = fit(convert(image), width, height, resize)[..., ::-1]  # BGR -> RGB
    return blob
