"""One suite for every backend (fp32, int8, bf16 where the CPU has it): the same behaviour is
asked of each."""
from __future__ import annotations

import numpy as np
import pytest

import yolo8
from yolo8.backends import available
from yolo8.preprocess import read_image, to_blob

from .conftest import BACKENDS, DATA


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, default_weights):
    return yolo8.load(backend=request.param)


@pytest.fixture(scope="module")
def blob(test_images) -> np.ndarray:
    return to_blob([read_image(p) for p in test_images[:3]], 416, 416).transpose(0, 3, 1, 2).copy()


def test_backends_are_found_by_name():
    assert set(BACKENDS) <= set(available())


def test_forward_gives_darknet_layout(model, blob):
    outs = model.forward(blob)
    assert [o.shape for o in outs] == [(3, 255, 13, 13), (3, 255, 26, 26)]
    for out in outs:
        v = out.reshape(3, 3, 85, *out.shape[2:])
        assert np.isfinite(out).all()
        # darknet's activations: logistic on x, y, objectness, classes; w, h raw
        for channel in (0, 1, 4, 5, 84):
            assert (v[:, :, channel] > 0).all() and (v[:, :, channel] < 1).all()
        assert (v[:, :, 2:4] < 0).any()


def test_batch_equals_single_images(model, blob):
    """Each image's result does not depend on its batch mates (bound: float32 BLAS blocking
    differs with the batch size; INT8 inputs are quantized per value, so identical)."""
    batched = model.forward(blob)
    for i in range(len(blob)):
        for whole, single in zip(batched, model.forward(blob[i:i + 1])):
            np.testing.assert_allclose(whole[i:i + 1], single, atol=2e-5, rtol=0)


def test_detects_what_the_photos_show(model):
    expected = {"000000000025.jpg": "giraffe", "000000000009.jpg": "bowl",
                "000000000030.jpg": "vase"}
    for name, label in expected.items():
        image = read_image(DATA / "images" / name)
        dets = model.detect(image)
        assert label in {d.name for d in dets}, f"{model.backend}: no {label} in {name}"
        h, w = image.shape[:2]
        for d in dets:
            left, top, right, bottom = d.box
            assert 0 <= left <= right <= w and 0 <= top <= bottom <= h
            assert 0.25 < d.score <= 1 and d.name == model.names[d.class_id]


def test_letterbox_changes_the_input_not_the_frame(model):
    image = read_image(DATA / "images" / "000000000025.jpg")
    if model.backend == "int8":  # the shipped calibration was made without letterbox
        with pytest.raises(yolo8.Yolo8Error, match="letterbox=off but this run uses letterbox=on"):
            model.detect(image, letterbox=True)
        with pytest.raises(yolo8.Yolo8Error, match="resize=darknet but this run uses resize=opencv"):
            model.detect(image, resize="opencv")
        return
    plain, boxed = model.detect(image), model.detect(image, letterbox=True)
    assert boxed and {d.name for d in boxed} & {d.name for d in plain}
    h, w = image.shape[:2]
    assert all(0 <= d.box[2] <= w and 0 <= d.box[3] <= h for d in boxed)


def test_blob_of_wrong_shape_is_refused(model):
    with pytest.raises(yolo8.Yolo8Error, match=r"expected \(N, 3, 416, 416\)"):
        model.forward(np.zeros((1, 3, 320, 320), np.float32))
