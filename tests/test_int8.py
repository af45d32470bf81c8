"""The INT8 backend and calibration: closeness to FP32, which layers quantize, calibration
files (round trip, wrong model, missing), yolo2_light's input_calibration line."""
from __future__ import annotations


import numpy as np
import pytest

import yolo8
from yolo8 import models
from yolo8.backends import int8
from yolo8.errors import CalibrationError
from yolo8.graph import load_graph
from yolo8.preprocess import read_image, to_blob
from yolo8.quant import Calibration

from .conftest import PHOTOS, run_yolo8
from .oracle import random_weights

# Bounds measured on the 5 test photos with the shipped calibration (yolov3-tiny): max |d prob|
# 0.155, mean |d box| 0.021, mean |d objectness| 1.0e-3. They are set ~1.3x above that, and a
# calibration 4x off (thresholds x4) breaks all three (0.22, 0.056, 1.9e-3): the bounds see it.
MAX_PROB_DIFF = 0.2
MEAN_BOX_DIFF = 0.03
MEAN_OBJ_DIFF = 1.5e-3


@pytest.fixture(scope="module")
def photos_blob(test_images) -> np.ndarray:
    return to_blob([read_image(p) for p in test_images], 416, 416).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def fp32_model(default_weights):
    return yolo8.load()


@pytest.fixture(scope="module")
def int8_model(default_weights):
    return yolo8.load(backend="int8")


def _differences(fp32, int8_outs, n):
    for a, b in zip(fp32, int8_outs):
        a = a.reshape(n, 3, 85, *a.shape[2:])
        b = b.reshape(n, 3, 85, *b.shape[2:])
        probs_a, probs_b = a[:, :, 4:5] * a[:, :, 5:], b[:, :, 4:5] * b[:, :, 5:]
        yield (np.abs(probs_a - probs_b).max(), np.abs(a[:, :, :4] - b[:, :, :4]).mean(),
               np.abs(a[:, :, 4] - b[:, :, 4]).mean())


def test_int8_close_to_fp32_on_photos(fp32_model, int8_model, photos_blob):
    ref, got = fp32_model.forward(photos_blob), int8_model.forward(photos_blob)
    for max_prob, mean_box, mean_obj in _differences(ref, got, len(photos_blob)):
        assert max_prob <= MAX_PROB_DIFF and mean_box <= MEAN_BOX_DIFF and mean_obj <= MEAN_OBJ_DIFF
        assert mean_box > 0  # it really is a different (quantized) computation


def test_bounds_catch_a_bad_calibration(fp32_model, int8_model, photos_blob):
    cal = Calibration.load(models.default_calibration())
    bad = int8.build(int8_model.graph, {k: 4 * v for k, v in cal.thresholds.items()})
    worst = list(_differences(fp32_model.forward(photos_blob),
                              [o.transpose(0, 3, 1, 2) for o in bad.run(photos_blob.transpose(0, 2, 3, 1).copy())],
                              len(photos_blob)))
    assert any(m > MAX_PROB_DIFF or b > MEAN_BOX_DIFF or o > MEAN_OBJ_DIFF for m, b, o in worst)


def test_quantized_layers_are_yolo2_lights(int8_model):
    # yolov3-tiny: conv 0 (first) and 15, 22 (before the [yolo] layers) stay FP32
    assert int8.int8_layers(int8_model.graph) == [2, 4, 6, 8, 10, 12, 13, 14, 18, 21]


def test_default_model_ships_its_calibration(int8_model):
    assert int8_model.calibration_source == str(models.default_calibration())
    Calibration.load(models.default_calibration()).check_model(int8_model.model_id)


TINY = """[net]
width=64
height=64
channels=3
{extra}
[convolutional]
batch_normalize=1
filters=8
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
batch_normalize=1
filters=16
size=3
pad=1
activation=leaky
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=1
num=3
"""


@pytest.fixture()
def tiny(tmp_path):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY.format(extra=""))
    weights = tmp_path / "tiny.weights"
    random_weights(load_graph(cfg), weights, seed=5)
    return cfg, weights


def test_missing_calibration_names_the_layer(tiny):
    cfg, weights = tiny
    with pytest.raises(CalibrationError, match=r"layer 2 \(\[convolutional\] at line 15\) runs in "
                                               r"INT8 and needs an input calibration"):
        yolo8.load(cfg, weights, backend="int8")


def test_net_without_int8_layers_needs_no_calibration(tmp_path):
    cfg = tmp_path / "two.cfg"
    text = TINY.format(extra="").replace(
        "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\npad=1\nactivation=leaky\n", "")
    cfg.write_text(text)
    weights = tmp_path / "two.weights"
    random_weights(load_graph(cfg), weights)
    model = yolo8.load(cfg, weights, backend="int8")
    assert int8.int8_layers(model.graph) == []
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(model.forward(x)[0], yolo8.load(cfg, weights).forward(x)[0])


def _calibrate(cfg, weights, tmp_path, images, *extra, name="cal.json"):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    out = tmp_path / name
    result = run_yolo8("calibrate", "--images", listing, "--cfg", cfg, "--weights", weights,
                       "--out", out, *extra)
    assert result.returncode == 0, result.stderr
    return out


def test_calibration_file_round_trip_and_cfg_out(tiny, tmp_path, test_images):
    cfg, weights = tiny
    cfg_out = tmp_path / "calibrated.cfg"
    # yolo2_light's cfg line carries thresholds only, so compare without bias correction
    out = _calibrate(cfg, weights, tmp_path, test_images[:3], "--cfg-out", str(cfg_out),
                     "--no-bias-correction")
    cal = Calibration.load(out)
    assert sorted(cal.thresholds) == [0, 2, 3] and cal.num_images == 3
    assert cal.bias_corrections == {}
    assert (cal.letterbox, cal.resize) == (False, "darknet")  # the preprocessing it was made with
    lettered = Calibration.load(_calibrate(cfg, weights, tmp_path, test_images[:1], "--letterbox",
                                           "--resize", "opencv", "--no-bias-correction",
                                           name="lettered.json"))
    assert (lettered.letterbox, lettered.resize) == (True, "opencv")
    with_file = yolo8.load(cfg, weights, backend="int8", calibration=out)
    assert with_file.calibration_source == str(out)
    # the cfg copy carries yolo2_light's line, one multiplier 127/threshold per conv layer
    line = next(l for l in cfg_out.read_text().splitlines() if l.startswith("input_calibration"))
    values = [float(v) for v in line.split("=")[1].split(",")]
    np.testing.assert_allclose(values, [127 / cal.thresholds[i] for i in (0, 2, 3)], rtol=1e-12)
    with_cfg = yolo8.load(cfg_out, weights, backend="int8")
    assert "input_calibration" in with_cfg.calibration_source
    x = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(with_file.forward(x)[0], with_cfg.forward(x)[0])


def test_calibration_of_another_model_is_refused(tiny, tmp_path, default_weights):
    cfg, weights = tiny
    other = tmp_path / "other.weights"
    random_weights(load_graph(cfg), other, seed=99)  # same cfg, other weights
    cal = tmp_path / "cal.json"
    Calibration(model_id=yolo8.load(cfg, other).model_id, thresholds={2: 1.0},
                num_images=1).save(cal)
    with pytest.raises(CalibrationError, match="another model|made for"):
        yolo8.load(cfg, weights, backend="int8", calibration=cal)
    with pytest.raises(CalibrationError, match="another model|made for"):
        yolo8.load(backend="int8", calibration=cal)


def test_short_input_calibration_line_is_refused(tmp_path):
    cfg = tmp_path / "short.cfg"
    cfg.write_text(TINY.format(extra="input_calibration = 127, 15"))
    weights = tmp_path / "short.weights"
    random_weights(load_graph(cfg), weights)
    with pytest.raises(CalibrationError, match="has 2 values but the cfg has 3 conv layers"):
        yolo8.load(cfg, weights, backend="int8")


def test_fp32_refuses_a_calibration(tiny, tmp_path):
    cfg, weights = tiny
    with pytest.raises(CalibrationError, match="int8 backend only"):
        yolo8.load(cfg, weights, calibration=tmp_path / "x.json")


def test_calibrate_writes_bias_corrections_for_int8_layers(tiny, tmp_path, test_images):
    cfg, weights = tiny
    cal = Calibration.load(_calibrate(cfg, weights, tmp_path, test_images[:2]))
    assert sorted(cal.bias_corrections) == [2] and len(cal.bias_corrections[2]) == 16
    model = yolo8.load(cfg, weights, backend="int8", calibration=tmp_path / "cal.json")
    plain = int8.build(model.graph, cal.thresholds)
    x = np.random.default_rng(1).random((1, 64, 64, 3), dtype=np.float32)
    assert not np.array_equal(model.forward_nhwc(x)[0], plain.run(x)[0])  # corrections applied


def test_bias_corrections_equal_numpy_reference(tiny, test_images):
    """The collector's per-channel mean error equals plain numpy: the INT8 reference conv
    minus the float64 reference conv, on the FP32 input of the layer (bound: float32 vs float64
    accumulation, ~1e-6 on values of order 1)."""
    from yolo8.calibrate import calibrate
    from yolo8.kernels.activations import LINEAR
    from yolo8.kernels.conv_fp32 import conv2d_reference
    from yolo8.kernels.conv_int8 import Int8ConvWeights, conv2d_int8_reference

    cfg, weights = tiny
    model = yolo8.load(cfg, weights)
    run = calibrate(model, test_images[:2], progress=False)
    layer = model.graph.layers[2]
    thresholds = run.calibration.thresholds
    packed = Int8ConvWeights.from_float(layer.weights)
    zero = np.zeros(layer.filters, np.float32)
    diffs = []
    for path in test_images[:2]:
        inputs = {}
        model.program.run(model.prepare(read_image(path))[None],
                          observer=lambda l, xs: inputs.setdefault(l.index, xs[0]))
        x = inputs[2]
        q = conv2d_int8_reference(x, packed, zero, 127 / thresholds[2], 1, 1, LINEAR)
        f = conv2d_reference(x, layer.weights, zero, 1, 1, 1, LINEAR)
        diffs.append((q.astype(np.float64) - f).reshape(-1, layer.filters))
    expected = np.concatenate(diffs).mean(axis=0)
    np.testing.assert_allclose(run.calibration.bias_corrections[2], expected, atol=1e-5)
    assert np.abs(expected).max() > 1e-4  # the correction is not trivially zero


def test_bias_correction_of_wrong_length_is_refused(tiny, tmp_path):
    cfg, weights = tiny
    model_id = yolo8.load(cfg, weights).model_id
    cal = tmp_path / "cal.json"
    Calibration(model_id=model_id, thresholds={2: 1.0}, num_images=1,
                bias_corrections={2: [0.0] * 5}).save(cal)
    with pytest.raises(CalibrationError, match="bias correction for layer 2 does not fit"):
        yolo8.load(cfg, weights, backend="int8", calibration=cal)


@pytest.mark.parametrize("option, message", [
    (["--resize", "opencv"], "made with resize=darknet but this run uses resize=opencv"),
    (["--letterbox"], "made with letterbox=off but this run uses letterbox=on"),
])
def test_cli_refuses_the_shipped_calibration_with_another_preprocessing(option, message,
                                                                        default_weights):
    """The shipped calibration was made with darknet's resize and no letterbox (issue 15)."""
    result = run_yolo8("detect", PHOTOS[0], "--backend", "int8", "--no-save", *option,
                       timeout=600)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "yolov3-tiny.calibration.json" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
