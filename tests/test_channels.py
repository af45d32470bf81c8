"""[net] channels=1 (darknet's go.test.cfg): grey inputs made as darknet's stb-based loader
makes them, Model.forward on (N, 1, H, W) blobs, against OpenCV dnn and a transcription of
stb_image's conversion (tests/darknet_reference.py). Other channel counts stay refused."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import yolo8
from yolo8.classification import top_k
from yolo8.errors import ConfigError
from yolo8.preprocess import read_image, to_blob

from . import darknet_reference as ref
from .conftest import DATA, PHOTOS, data_file, run_yolo8
from .oracle import random_weights

pytestmark = pytest.mark.timeout(600)

GO = DATA / "cfg" / "go.test.cfg"


def test_luma_equals_stb_image_conversion():
    rng = np.random.default_rng(11)
    bgr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    bgr[0, :8] = [[0, 0, 0], [255, 255, 255], [0, 0, 255], [0, 255, 0], [255, 0, 0],
                  [1, 1, 1], [254, 254, 254], [3, 200, 17]]
    # no resize at the image's own size: the blob is the loaded image
    ours = to_blob([bgr], 9, 7, channels=1)[0].transpose(2, 0, 1)
    theirs = ref.load_image_stb_grey(bgr[..., ::-1])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("resize", ["darknet", "opencv"])
def test_grey_images_are_resized_after_the_conversion(resize):
    """darknet loads (and converts) at the image's size, then resizes the grey image."""
    from yolo8.preprocess import resize_to

    image = read_image(PHOTOS[0])
    blob = to_blob([image], 40, 30, resize=resize, channels=1)[0]
    grey = (ref.load_image_stb_grey(image[..., ::-1])[0] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(blob, resize_to(grey[..., None], 40, 30, resize))


def go_model(tmp_path, text: str | None = None):
    cfg = tmp_path / "go.cfg"
    cfg.write_text(text if text is not None else GO.read_text())
    from yolo8.graph import load_graph
    random_weights(load_graph(cfg), tmp_path / "go.weights", seed=12)
    return yolo8.load(cfg, tmp_path / "go.weights"), cfg, tmp_path / "go.weights"


def test_go_test_logits_equal_opencv(tmp_path):
    """go.test.cfg (shrunk) up to its logits (no [softmax]: OpenCV's is per pixel), from grey
    photos: within 1e-4 of the largest value, top-5 equal."""
    import cv2

    text = re.sub(r"(?ms)^\[softmax\]\s*$.*", "", GO.read_text())
    model, cfg, weights = go_model(tmp_path, text)
    blob = to_blob([read_image(p) for p in PHOTOS[:3]], 19, 19, crop=True, channels=1)
    blob = np.ascontiguousarray(blob.transpose(0, 3, 1, 2))
    assert blob.shape == (3, 1, 19, 19)
    ours = model.forward(blob)[0].reshape(3, -1)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob)
    theirs = net.forward().reshape(3, -1)
    assert ours.shape == theirs.shape == (3, 361)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    for mine, other in zip(ours, theirs):
        assert list(top_k(mine, 5)) == list(top_k(other, 5))


def test_classify_a_grey_model_cli_and_api(tmp_path):
    model, cfg, weights = go_model(tmp_path)
    image = read_image(PHOTOS[1])
    top = model.classify(image, top=5)
    expected = model.forward(to_blob([image], 19, 19, crop=True, channels=1).transpose(0, 3, 1, 2))
    assert [c.class_id for c in top] == list(top_k(expected[0].ravel(), 5))
    out = tmp_path / "top.json"
    result = run_yolo8("classify", PHOTOS[1], "--cfg", cfg, "--weights", weights,
                       "--json", out, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [t["class_id"] for t in json.loads(out.read_text())[0]["top"]] == \
        [c.class_id for c in top]


GREY_DETECTOR = """[net]
width=32
height=32
channels=1
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=12
size=1
activation=linear
[yolo]
mask=0,1
anchors=8,8, 20,20
classes=1
num=2
"""


def test_detect_calibrate_and_int8_on_a_grey_detector(tmp_path):
    from yolo8.backends import int8
    from yolo8.calibrate import calibrate

    model, cfg, weights = go_model(tmp_path, GREY_DETECTOR)
    image = read_image(PHOTOS[0])
    blob = to_blob([image], 32, 32, channels=1)
    [head] = model.forward(blob.transpose(0, 3, 1, 2))
    dets = model.detect(image, thresh=0.3)
    assert dets and head.shape == (1, 12, 32, 32)
    run = calibrate(model, PHOTOS[:2], progress=False)
    assert int8.int8_layers(model.graph) == [1] and 1 in run.calibration.thresholds
    program = int8.build(model.graph, run.calibration.thresholds, {})
    [ours], [fp32] = program.run(blob), model.program.run(blob)
    assert 0 < np.abs(ours - fp32).max() <= 0.05 * np.abs(fp32).max()


def test_map_runs_on_a_grey_detector(tmp_path):
    from yolo8 import models

    coco = GREY_DETECTOR.replace("filters=12", "filters=170").replace("classes=1", "classes=80")
    _, cfg, weights = go_model(tmp_path, coco)
    data = data_file(tmp_path, PHOTOS[:2], models.default_names())
    result = run_yolo8("map", "--data", data, "--cfg", cfg, "--weights", weights,
                       "--json", tmp_path / "m.json", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "voc07" in json.loads((tmp_path / "m.json").read_text())


@pytest.mark.parametrize("channels", [2, 4])
def test_other_channel_counts_are_refused_with_file_line_key(tmp_path, channels):
    cfg = tmp_path / "odd.cfg"
    cfg.write_text(GREY_DETECTOR.replace("channels=1", f"channels={channels}"))
    with pytest.raises(ConfigError, match=f"channels={channels}") as info:
        yolo8.load(cfg, tmp_path / "none.weights")
    assert f"odd.cfg:4: 'channels'" in str(info.value)


def test_onnx_export_of_a_grey_model_takes_one_channel(tmp_path):
    """The exported graph's input is (N, 1, H, W) and gives Model.forward's outputs."""
    pytest.importorskip("onnxruntime")
    from yolo8.export.runtime import OnnxRuntimeProgram

    model, _, _ = go_model(tmp_path, GREY_DETECTOR)
    path = model.export_onnx(tmp_path / "grey.onnx")
    onnx = pytest.importorskip("onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["yolo8.input"])["colour"].startswith("grey")
    blob = to_blob([read_image(PHOTOS[0])], 32, 32, channels=1)
    [ours] = model.forward(blob.transpose(0, 3, 1, 2))
    [theirs] = OnnxRuntimeProgram(path).run(blob)
    np.testing.assert_allclose(theirs.transpose(0, 3, 1, 2), ours, rtol=0,
                               atol=1e-4 * np.abs(ours).max())
