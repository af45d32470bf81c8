"""darknet's preprocessing: resize_image, letterbox_image and the classifier's resize_min + crop,
against plain transcriptions of darknet's C loops (image.c), bit for bit."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from yolo8.kernels.resize import darknet_resize_numpy
from yolo8.preprocess import (darknet_resize, resize_letterbox, resize_min_crop, to_blob,
                              to_float)

F = np.float32


def transcribed_resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """darknet's resize_image, loop for loop, on a (C, H, W) float32 image (darknet's layout);
    every operation in float32 as the C code does it."""
    c_n, im_h, im_w = im.shape
    if (im_w, im_h) == (w, h):
        return im.copy()
    resized = np.zeros((c_n, h, w), F)
    part = np.zeros((c_n, im_h, w), F)
    w_scale = F(im_w - 1) / F(w - 1)
    h_scale = F(im_h - 1) / F(h - 1)
    for k in range(c_n):
        for r in range(im_h):
            for c in range(w):
                if c == w - 1 or im_w == 1:
                    val = im[k, r, im_w - 1]
                else:
                    sx = F(c) * w_scale
                    ix = int(sx)
                    dx = F(sx - F(ix))
                    val = F(F(F(1) - dx) * im[k, r, ix]) + F(dx * im[k, r, ix + 1])
                part[k, r, c] = val
    for k in range(c_n):
        for r in range(h):
            sy = F(r) * h_scale
            iy = int(sy)
            dy = F(sy - F(iy))
            for c in range(w):
                resized[k, r, c] = F(F(1) - dy) * part[k, iy, c]
            if r == h - 1 or im_h == 1:
                continue
            for c in range(w):
                resized[k, r, c] = F(resized[k, r, c] + F(dy * part[k, iy + 1, c]))
    return resized


def _darknet_image(bgr: np.ndarray) -> np.ndarray:
    """mat_to_image: (C, H, W) float32, data / 255.0f (channel order does not matter here)."""
    return (bgr.astype(F) / F(255)).transpose(2, 0, 1).copy()


@pytest.mark.parametrize("in_wh,out_wh", [((37, 23), (16, 16)), ((16, 16), (37, 29)),
                                          ((1, 9), (5, 4)), ((9, 1), (4, 5)), ((20, 13), (20, 7)),
                                          ((64, 48), (41, 41))])
def test_resize_equals_darknet_resize_image_bit_for_bit(in_wh, out_wh):
    rng = np.random.default_rng(sum(in_wh) * 100 + sum(out_wh))
    bgr = rng.integers(0, 256, (in_wh[1], in_wh[0], 3), dtype=np.uint8)
    ours = darknet_resize(to_float(bgr), *out_wh)
    theirs = transcribed_resize_image(_darknet_image(bgr), *out_wh).transpose(1, 2, 0)
    assert ours.dtype == F and ours.shape == (out_wh[1], out_wh[0], 3)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(darknet_resize_numpy(to_float(bgr), *out_wh), theirs)
    np.testing.assert_array_equal(darknet_resize(bgr, *out_wh), theirs)  # uint8 in: / 255.0f
    np.testing.assert_array_equal(darknet_resize_numpy(bgr, *out_wh), theirs)


def test_resize_of_a_photo_equals_darknet_and_differs_from_opencv(test_images):
    bgr = cv2.imread(str(test_images[0]))[:90, :120]  # a corner: the loops are slow
    ours = darknet_resize(to_float(bgr), 52, 40)
    np.testing.assert_array_equal(ours, transcribed_resize_image(_darknet_image(bgr), 52, 40)
                                  .transpose(1, 2, 0))
    opencv = to_float(cv2.resize(bgr, (52, 40), interpolation=cv2.INTER_LINEAR))
    assert np.abs(ours - opencv).max() > 1 / 255  # two different samplings, really


def test_letterbox_equals_darknet_letterbox_image():
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    boxed = resize_letterbox(bgr, 32, 32)
    # letterbox_image: new_w = 32, new_h = 30 * 32 / 50 = 19 (int), embedded at (0, 6) on 0.5
    expected = np.full((3, 32, 32), 0.5, F)
    expected[:, 6:25, :] = transcribed_resize_image(_darknet_image(bgr), 32, 19)
    np.testing.assert_array_equal(boxed, expected.transpose(1, 2, 0))


def test_classifier_input_is_resize_min_then_centre_crop():
    rng = np.random.default_rng(4)
    bgr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    # resize_min(im, 16): h = 16, w = 50 * 16 / 30 = 26; crop_image at ((26 - 16) / 2,
    # (16 - 20) / 2) = (5, -2), 16x20: rows outside repeat the edge ones (crop_image clamps r).
    small = transcribed_resize_image(_darknet_image(bgr), 26, 16)
    rows = np.clip(np.arange(20) - 2, 0, 15)
    expected = small[:, rows, 5:21]
    np.testing.assert_array_equal(resize_min_crop(bgr, 16, 20), expected.transpose(1, 2, 0))


def test_crop_offsets_truncate_toward_zero_as_c_does():
    bgr = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    # a 10x13 input of a 10x10 image: dy = (10 - 13) / 2 = -1 in C (Python's // gives -2).
    crop = resize_min_crop(bgr, 10, 13)
    np.testing.assert_array_equal(crop[1:11], to_float(bgr))
    np.testing.assert_array_equal(crop[0], crop[1])
    np.testing.assert_array_equal(crop[11], crop[10])
    np.testing.assert_array_equal(crop[12], crop[10])


def test_opencv_mode_is_cv2_resize_and_blobs_are_rgb():
    rng = np.random.default_rng(5)
    bgr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    blob = to_blob([bgr], 24, 16, resize="opencv")
    expected = cv2.resize(bgr, (24, 16), interpolation=cv2.INTER_LINEAR)[..., ::-1] / F(255)
    np.testing.assert_array_equal(blob[0], expected.astype(F))
    np.testing.assert_array_equal(to_blob([bgr], 24, 16)[0],
                                  darknet_resize(to_float(bgr), 24, 16)[..., ::-1])
