"""Classifiers ([connected], [softmax], [cost], [crop], [avgpool]) with darknet's semantics.

The cfgs of AlexeyAB/darknet's cfg/ folder that OpenCV runs, shrunk (tests/data/cfg: 96x96,
filters / 8, see scripts/zoo_coverage_classifiers.py), with random weights: yolo8's output and
top-5 equal OpenCV dnn's. What OpenCV does not do as darknet does (softmax groups and
temperature, [connected] batch norm, [crop]'s 2x - 1) is checked against transcriptions of
darknet's C loops.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import yolo8
from yolo8.classification import top_k
from yolo8.errors import ConfigError
from yolo8.graph import load_graph
from yolo8.preprocess import read_image, to_blob

from .conftest import DATA, PHOTOS, graph_of, run_yolo8
from .oracle import WEIGHTS_HEADER, opencv_last_output, random_weights

CFGS = DATA / "cfg"
# resnet50 adds layers of different sizes in a [shortcut]: darknet's parser asserts they agree
# and OpenCV fails on it too, so yolo8 refuses it (see test_resnet50_is_refused_naming_the_line).
REFUSED = {"resnet50.cfg": "darknet adds layers of equal width and height only"}
ZOO = sorted(p.name for p in CFGS.glob("*.cfg") if p.name not in REFUSED)


def _model(name: str, tmp_path):
    cfg = CFGS / name
    weights = tmp_path / f"{cfg.stem}.weights"
    graph = load_graph(cfg)
    random_weights(graph, weights, seed=7)
    return yolo8.load(cfg, weights), cfg, weights


def _blob(model, photos=PHOTOS[:2]) -> np.ndarray:
    w, h = model.input_size
    return to_blob([read_image(p) for p in photos], w, h, crop=True,
                   channels=model.graph.net.channels).transpose(0, 3, 1, 2).copy()


@pytest.mark.parametrize("name, reason", sorted(REFUSED.items()))
def test_resnet50_is_refused_naming_the_line(name, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        load_graph(CFGS / name)
    assert caught.value.line is not None and str(CFGS / name) in str(caught.value)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_classifier_equals_opencv(name, tmp_path):
    """Outputs within 1e-4 of their largest value (float32 summation order; measured up to
    6e-6), and the top-5 of each image identical, in order."""
    model, cfg, weights = _model(name, tmp_path)
    assert not model.graph.is_detector
    blob = _blob(model)
    ours = model.forward(blob)[0].reshape(len(blob), -1)
    theirs = opencv_last_output(cfg, weights, blob, model.graph)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    for mine, other in zip(ours, theirs):
        assert list(top_k(mine, 5)) == list(top_k(other, 5))


def test_a_feature_extractor_forwards_its_last_layer(tmp_path):
    """writing.cfg has neither a head nor a softmax: forward gives its last conv's map."""
    model, _, _ = _model("writing.cfg", tmp_path)
    out = model.forward(_blob(model))[0]
    last = model.graph.layers[-1]
    assert out.shape == (2, last.out_shape.c, last.out_shape.h, last.out_shape.w)
    with pytest.raises(yolo8.Yolo8Error, match="no \\[yolo\\] or \\[region\\] layer"):
        model.detect(read_image(PHOTOS[0]))


# ------------------------------------------------------------ darknet's loops, transcribed


def _weights_file(path, floats: np.ndarray) -> None:
    path.write_bytes(WEIGHTS_HEADER + floats.astype("<f4").tobytes())


def test_connected_with_batch_norm_equals_forward_connected_layer(tmp_path):
    """gemm, normalize (x - mean) / (sqrt(var) + .000001f), scale, + bias, activation, with
    the floats in load_connected_weights' order: biases, weights, scales, mean, variance.
    (OpenCV reads a [connected] layer's batch norm in conv order, so it is no oracle here.)"""
    text = ("[net]\nwidth=3\nheight=2\nchannels=3\n"
            "[connected]\noutput=5\nbatch_normalize=1\nactivation=leaky\n")
    rng = np.random.default_rng(1)
    n, k = 5, 18
    bias, w = rng.normal(size=n), rng.normal(size=(n, k))
    scale, mean, var = rng.uniform(0.5, 2, n), rng.normal(size=n), rng.uniform(0.2, 2, n)
    cfg = tmp_path / "fc.cfg"
    cfg.write_text(text)
    _weights_file(tmp_path / "fc.weights", np.concatenate([bias, w.ravel(), scale, mean, var]))
    model = yolo8.load(cfg, tmp_path / "fc.weights")
    x = rng.random((2, 3, 2, 3), dtype=np.float32)
    f = np.float32
    y = x.reshape(2, k).astype(f) @ w.astype(f).T
    y = (y - mean.astype(f)) / (np.sqrt(var.astype(f)) + f(1e-6)) * scale.astype(f) + bias.astype(f)
    y = np.where(y > 0, y, f(0.1) * y)
    np.testing.assert_allclose(model.forward(x)[0].reshape(2, n), y, rtol=1e-5, atol=1e-5)


def _softmax_cpu(x: np.ndarray, groups: int, temp: float) -> np.ndarray:
    """darknet's softmax_cpu over a (C*H*W) vector, loop for loop (in double for exp, as
    `exp(input/temp - largest/temp)` promotes, then float)."""
    out = np.empty_like(x)
    n = x.size // groups
    for g in range(groups):
        part = x[g * n:(g + 1) * n]
        largest = max(part)
        e = [np.float32(np.exp(np.float32(v / np.float32(temp)) - np.float32(largest / np.float32(temp))))
             for v in part]
        total = np.float32(sum(np.float64(v) for v in e))
        out[g * n:(g + 1) * n] = [v / total for v in e]
    return out


@pytest.mark.parametrize("groups, temperature", [(1, 1.0), (4, 1.0), (2, 3.0), (8, 0.5)])
def test_softmax_groups_and_temperature_equal_softmax_cpu(groups, temperature):
    """Groups run over darknet's (C, H, W) order, here across channels and positions."""
    graph = graph_of(f"[net]\nwidth=2\nheight=2\nchannels=4\n[softmax]\ngroups={groups}\n"
                     f"temperature={temperature}\n")
    from yolo8.backends.fp32 import build

    x = np.random.default_rng(groups).normal(0, 3, (1, 2, 2, 4)).astype(np.float32)
    out = build(graph).run(x)[0]
    expected = _softmax_cpu(x[0].transpose(2, 0, 1).ravel(), groups, temperature)
    np.testing.assert_allclose(out[0].transpose(2, 0, 1).ravel(), expected, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_equals_forward_crop_layer_at_test_time(noadjust):
    graph = graph_of(f"[net]\nwidth=7\nheight=6\nchannels=2\n[crop]\ncrop_width=4\n"
                     f"crop_height=3\nflip=1\nnoadjust={noadjust}\n")
    from yolo8.backends.fp32 import build

    x = np.random.default_rng(0).random((1, 6, 7, 2), dtype=np.float32)
    out = build(graph).run(x)[0]
    src = x[0].transpose(2, 0, 1).ravel()  # darknet's (C, H, W) buffer
    scale, trans = (np.float32(1), np.float32(0)) if noadjust else (np.float32(2), np.float32(-1))
    dh, dw = (6 - 3) // 2, (7 - 4) // 2  # train = 0: centre, no flip
    expected = [src[(j + dw) + 7 * ((i + dh) + 6 * c)] * scale + trans
                for c in range(2) for i in range(3) for j in range(4)]
    np.testing.assert_array_equal(out[0].transpose(2, 0, 1).ravel(), np.float32(expected))


def test_top_k_keeps_the_lower_index_on_ties_as_darknet():
    assert list(top_k(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 4)) == [1, 2, 4, 3]
    assert list(top_k(np.array([0.5]), 5)) == [0]


def test_bad_classifier_sections_are_refused_with_file_and_line(tmp_path):
    cases = [("[softmax]\ngroups=5\n", "groups=5 does not divide the 12 inputs", 6),
             ("[crop]\ncrop_width=9\ncrop_height=2\n", "crop 9x2 is larger than its input", 6),
             ("[softmax]\ntree=data/9k.tree\n", "hierarchical softmax", 6),
             ("[connected]\noutput=4\nactivation=ramp2\n", "unknown activation 'ramp2'", 7)]
    for body, message, line in cases:
        cfg = tmp_path / "bad.cfg"
        cfg.write_text("[net]\nwidth=2\nheight=2\nchannels=3\n" + body)
        with pytest.raises(ConfigError, match=message) as info:
            load_graph(cfg)
        assert f"bad.cfg:{line}" in str(info.value)


# ------------------------------------------------------------------------- API and CLI


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    weights = folder / "tiny.weights"
    random_weights(load_graph(CFGS / "tiny.cfg"), weights, seed=3)
    names = folder / "names.txt"
    names.write_text("".join(f"class-{i}\n" for i in range(1000)))
    return CFGS / "tiny.cfg", weights, names


def test_model_classify_is_top_k_of_forward(tiny):
    cfg, weights, names = tiny
    model = yolo8.load(cfg, weights, names=names)
    image = read_image(PHOTOS[0])
    top = model.classify(image, top=5)
    scores = model.forward(model.prepare(image)[None].transpose(0, 3, 1, 2))[0].ravel()
    assert [c.class_id for c in top] == list(top_k(scores, 5))
    assert [c.score for c in top] == [float(scores[i]) for i in top_k(scores, 5)]
    assert [c.name for c in top] == [f"class-{c.class_id}" for c in top]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # the [softmax] output
    assert yolo8.load(cfg, weights).classify(image, top=1)[0].name == str(top[0].class_id)


def test_cli_classify_prints_top_n_and_writes_json(tiny, tmp_path):
    cfg, weights, names = tiny
    out = tmp_path / "top.json"
    result = run_yolo8("classify", PHOTOS[0], PHOTOS[1], "--cfg", cfg, "--weights", weights,
                       "--names", names, "--top", "3", "--json", out, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and lines[0].startswith(f"{PHOTOS[0]}: class-")
    saved = json.loads(out.read_text())
    model = yolo8.load(cfg, weights, names=names)
    for entry, photo in zip(saved, PHOTOS[:2]):
        expected = model.classify(read_image(photo), top=3)
        assert entry["file"] == str(photo) and entry["image_id"] == photo.stem
        assert [t["class_id"] for t in entry["top"]] == [c.class_id for c in expected]
        assert [t["score"] for t in entry["top"]] == pytest.approx([c.score for c in expected],
                                                                  abs=1e-6)
        name, score = lines[3 * saved.index(entry)].rsplit(" ", 1)
        assert name.endswith(expected[0].name) and float(score) == pytest.approx(
            expected[0].score, abs=1e-6)


def test_cli_refuses_a_detector_for_classify_and_a_classifier_for_detect(tiny, default_cfg,
                                                                         default_weights):
    cfg, weights, _ = tiny
    wrong = run_yolo8("classify", PHOTOS[0], "--cfg", default_cfg, "--weights", default_weights,
                      timeout=600)
    assert wrong.returncode == 2 and "use `yolo8 detect`" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    other = run_yolo8("detect", PHOTOS[0], "--cfg", cfg, "--weights", weights, "--no-save",
                      timeout=600)
    assert other.returncode != 0 and "classifies (use classify)" in other.stderr
    assert "Traceback" not in other.stderr


# ------------------------------------------------------------------------------------ INT8


SMALL_CLASSIFIER = """[net]
width=48
height=48
channels=3
[convolutional]
filters=8
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=16
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=16
size=3
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=10
size=1
activation=linear
[avgpool]
[softmax]
[cost]
"""


def test_int8_head_feeders_of_classifiers_are_their_class_score_convs():
    """darknet19: its last conv (1x1, one filter per class, before [avgpool] and [softmax])
    makes the class scores: it stays FP32, like the first conv; the others run INT8."""
    from yolo8.backends.int8 import head_feeders, int8_layers

    graph = load_graph(CFGS / "darknet19.cfg")
    convs = [c.index for c in graph.convolutions()]
    assert head_feeders(graph) == {convs[-1]}
    assert int8_layers(graph) == convs[1:-1]
    vgg = load_graph(CFGS / "vgg-16.cfg")  # conv, ..., [connected] x 3: no conv feeds the head
    assert head_feeders(vgg) == set()
    assert int8_layers(vgg) == [c.index for c in vgg.convolutions()][1:]


def _logits(model, images: np.ndarray) -> np.ndarray:
    """The input of the [softmax] (the class scores before it)."""
    from yolo8.layers import Softmax

    seen = []
    model.program.run(images, observer=lambda layer, inputs: seen.append(inputs[0].copy())
                      if isinstance(layer, Softmax) else None)
    return seen[0].reshape(len(images), -1)


def test_calibrate_and_int8_on_a_classifier(tmp_path):
    """`yolo8 calibrate` on a classifier cfg, then INT8: the class scores move by less than a
    tenth of how much they vary between the photos, and the class each photo raises most
    stays. (With random weights the biases set the overall top class, the same for every
    photo; what a photo changes is what tells quantization error from signal.)"""
    cfg, weights = tmp_path / "small.cfg", tmp_path / "small.weights"
    cfg.write_text(SMALL_CLASSIFIER)
    random_weights(load_graph(cfg), weights, seed=11)
    images = tmp_path / "calib.txt"
    images.write_text("".join(f"{p}\n" for p in PHOTOS))
    out = tmp_path / "small.calibration.json"
    result = run_yolo8("calibrate", "--images", images, "--cfg", cfg, "--weights", weights,
                       "--out", out, "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    fp32 = yolo8.load(cfg, weights)
    int8 = yolo8.load(cfg, weights, backend="int8", calibration=out)
    blob = np.stack([fp32.prepare(read_image(p)) for p in PHOTOS])
    a, b = _logits(fp32, blob), _logits(int8, blob)
    spread = a - a.mean(axis=0)
    assert 0 < np.linalg.norm(b - a) < 0.1 * np.linalg.norm(spread)
    raised, raised_int8 = spread.argmax(axis=1), (b - a.mean(axis=0)).argmax(axis=1)
    assert list(raised) == list(raised_int8)
    assert len(set(raised)) > 1  # the photos are told apart at all


def test_cli_classify_reads_video_frames_and_skips_missing_inputs(tiny, tmp_path):
    import cv2

    cfg, weights, names = tiny
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 60))
    for i in range(3):
        writer.write(np.full((60, 80, 3), 60 * i, np.uint8))
    writer.release()
    result = run_yolo8("classify", video, tmp_path / "missing.jpg", "--cfg", cfg, "--weights",
                       weights, "--top", "2", "--frames", "2", timeout=600)
    assert result.returncode == 1  # the missing input, named
    assert "missing.jpg" in result.stderr and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{video}#{i}" for i in (0, 0, 1, 1)]
