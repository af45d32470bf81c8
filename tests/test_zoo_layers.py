"""The layers of darknet's model zoo that OpenCV does not run (or not all of), against plain
transcriptions of darknet's C loops (tests/darknet_reference.py) and darknet's formulas.

Bounds: layers that only move, add or multiply values agree to float32 rounding (rtol 1e-6,
atol 1e-6); the conv paths to the FP32 kernels' accumulation-order bound (1e-4 relative to
the output's magnitude, as tests/test_kernels_fp32.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from yolo8 import activations
from yolo8.backends.ops import FP32_OPS
from yolo8.errors import ConfigError
from yolo8.kernels.activations import CODES, activate
from yolo8.layers import GaussianYolo, LocalAvgPool, Reorg3d, Sam, ScaleChannels, Shortcut
from yolo8.postprocess import decode_gaussian_yolo, decode_yolo

from . import darknet_reference as ref
from .conftest import graph_of, net


def nchw(x: np.ndarray) -> np.ndarray:
    """One NHWC image as darknet's flat C*H*W buffer."""
    return np.ascontiguousarray(x[0].transpose(2, 0, 1)).ravel()


def nhwc(flat: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
    return flat.reshape(c, h, w).transpose(1, 2, 0)[None]


def run_op(graph, index: int, *inputs: np.ndarray) -> np.ndarray:
    layer = graph.layers[index]
    return FP32_OPS[type(layer)](layer, graph)(*inputs)


RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    return RNG.normal(0, 1, shape).astype(np.float32)


def fill(graph, gain: float = 1.0) -> None:
    """Random weights and biases for every conv layer of the graph."""
    for layer in graph.convolutions():
        layer.weights = rand(layer.filters, layer.size, layer.size,
                             layer.in_shape.c // layer.groups) * gain
        layer.bias = rand(layer.filters)


# ----------------------------------------------------------------------------------------------
# Activations (activations.h)
# ----------------------------------------------------------------------------------------------

# Values worked out by hand from activations.h's formulas.
HAND_VALUES = {
    "relu6": [(-1.0, 0.0), (3.0, 3.0), (7.0, 6.0)],
    "ramp": [(-1.0, -0.1), (2.0, 2.2)],
    "relie": [(-1.0, -0.01), (2.0, 2.0)],
    "plse": [(-5.0, -0.01), (5.0, 1.01), (0.0, 0.5), (2.0, 0.75)],
    "hardtan": [(-2.0, -1.0), (0.5, 0.5), (2.0, 1.0)],
    "lhtan": [(-1.0, -0.001), (0.5, 0.5), (2.0, 1.001)],
    "stair": [(3.5, 1.5), (2.5, 1.0), (-0.5, -0.5)],
    "elu": [(-1.0, math.exp(-1) - 1), (2.0, 2.0)],
    "selu": [(-1.0, 1.0507 * 1.6732 * (math.exp(-1) - 1)), (2.0, 1.0507 * 2)],
    "tanh": [(0.5, math.tanh(0.5)), (-2.0, math.tanh(-2.0))],
    "loggy": [(0.0, 0.0), (1.0, 2 / (1 + math.exp(-1)) - 1)],
    "gelu": [(1.0, 0.5 * (1 + math.tanh(0.797885 + 0.035677)))],
    "hard_mish": [(-3.0, 0.0), (-1.0, -0.5), (2.0, 2.0)],
    "revleaky": [(-1.0, -0.1), (2.0, 2.0)],
}


@pytest.mark.parametrize("name", sorted(HAND_VALUES))
def test_activations_equal_darknets_formulas(name):
    xs, want = zip(*HAND_VALUES[name])
    got = activations.apply(np.array(xs, np.float32), name)
    np.testing.assert_allclose(got, np.array(want, np.float32), rtol=1e-6, atol=1e-7)


@njit
def _kernel_activation(x, code):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = activate(x[i], code)
    return out


@pytest.mark.parametrize("name", sorted(CODES))
def test_fused_activations_equal_the_kernels(name):
    # activate_numpy is apply() itself now: the kernels' float32 `activate` is what differs.
    x = np.linspace(-25, 25, 1001).astype(np.float32)
    np.testing.assert_allclose(activations.apply(x, name), _kernel_activation(x, CODES[name]),
                               rtol=1e-6, atol=1e-7)


def test_every_darknet_activation_is_known_and_cfg_parse_imports_no_numba():
    import subprocess
    import sys

    # darknet's get_activation names (activations.c), the channel normalisations aside.
    darknet = ("logistic swish mish hard_mish loggy relu relu6 elu selu gelu relie plse hardtan "
               "lhtan linear ramp revleaky leaky tanh stair").split()
    assert sorted(darknet) == sorted(activations.NAMES)
    code = ("import sys; from yolo8.graph import load_graph; "
            "load_graph(sys.argv[1]); print('numba' in sys.modules)")
    from yolo8 import models

    out = subprocess.run([sys.executable, "-c", code, str(models.default_cfg())],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bad, message", [("normalize_channels", "normalisation across channels"),
                                          ("relu7", "unknown activation 'relu7'")])
def test_unsupported_activation_is_refused_with_its_line(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        graph_of(net(f"[convolutional]\nfilters=4\nsize=1\nactivation={bad}\n"))
    assert "test.cfg:8" in str(info.value)


def test_unfused_activation_follows_the_conv_in_both_backends():
    from yolo8.backends import int8
    from yolo8.backends.ops import conv

    graph = graph_of(net("[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=relu6\n"
                         "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=ramp\n"))
    fill(graph, gain=3)
    x = rand(1, 8, 8, 3)
    first = conv(graph.layers[0], graph)(x)
    assert first.max() == 6.0 and first.min() == 0.0
    linear = int8.int8_conv(graph.layers[1], 4.0, graph.layers[1].bias, CODES["linear"])(first)
    program = int8.build(graph, {1: 4.0, 2: 4.0})
    got = program.steps[1].op(first)
    np.testing.assert_allclose(got, activations.apply(linear, "ramp"), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# [shortcut]
# ----------------------------------------------------------------------------------------------

SHORTCUT_BODY = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"      # 0: 8x8x4
                 "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"      # 1: 8x8x6
                 "[convolutional]\nfilters=5\nsize=1\nactivation=linear\n"      # 2: 8x8x5
                 "[shortcut]\nfrom=0,1\n{extra}\n")                              # 3: 8x8x5


@pytest.mark.parametrize("extra", [
    "", "weights_type=per_feature", "weights_type=per_channel",
    "weights_type=per_feature\nweights_normalization=relu",
    "weights_type=per_channel\nweights_normalization=softmax",
    "weights_type=per_layer\nweights_normalization=avg_relu\nactivation=leaky"])
def test_shortcut_equals_shortcut_multilayer_cpu(extra):
    graph = graph_of(net(SHORTCUT_BODY.format(extra=extra)))
    layer = graph.layers[3]
    assert isinstance(layer, Shortcut) and layer.out_shape == (5, 8, 8)
    prev, a, b = rand(1, 8, 8, 5), rand(1, 8, 8, 4), rand(1, 8, 8, 6)
    weights = None
    if layer.weight_floats():
        weights = RNG.normal(0.5, 1, layer.weight_floats()).astype(np.float32)
        layer.assign_weights(weights)
    got = run_op(graph, 3, prev, a, b)
    want = ref.shortcut_multilayer(nchw(prev), [nchw(a), nchw(b)], weights,
                                   layer.weights_normalization)
    want = activations.apply(want, layer.activation)
    np.testing.assert_allclose(nchw(got), want, rtol=1e-5, atol=1e-6)


def test_shortcut_weights_are_read_in_darknets_layer_order(tmp_path):
    from yolo8.graph import load_weights

    from .oracle import WEIGHTS_HEADER

    graph = graph_of(net(SHORTCUT_BODY.format(extra="weights_type=per_channel")))
    convs = graph.convolutions()
    # File: conv 0, conv 1, conv 2, shortcut 3, then the head's conv 4, each (bias, weights).
    values = [np.arange(c.weight_floats(), dtype="<f4") + 100 * c.index for c in convs[:3]]
    values.append(np.arange(15, dtype="<f4") + 0.5)  # 3 inputs x 5 channels
    values.append(np.zeros(convs[3].weight_floats(), dtype="<f4"))
    path = tmp_path / "w.weights"
    path.write_bytes(WEIGHTS_HEADER + b"".join(v.tobytes() for v in values))
    load_weights(graph, path)
    np.testing.assert_array_equal(graph.layers[3].weights, (np.arange(15) + 0.5).reshape(3, 5))
    np.testing.assert_array_equal(convs[2].bias, 200 + np.arange(5))


def test_shortcut_of_other_width_is_refused():
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
            "[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=0\n")
    with pytest.raises(ConfigError, match="equal width and height") as info:
        graph_of(net(body))
    assert "test.cfg:13" in str(info.value) and "'from'" in str(info.value)


# ----------------------------------------------------------------------------------------------
# [scale_channels], [sam], [reorg3d], [local_avgpool]
# ----------------------------------------------------------------------------------------------

def test_scale_channels_equals_darknet():
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"      # 0: 8x8x4
            "[avgpool]\n"                                                   # 1: 1x1x4
            "[scale_channels]\nfrom=-2\n"                                   # 2: 8x8x4
            "[convolutional]\nfilters=1\nsize=1\nactivation=logistic\n"     # 3: 8x8x1
            "[scale_channels]\nfrom=-2\nscale_wh=1\nactivation=leaky\n")   # 4: 8x8x4
    graph = graph_of(net(body))
    assert all(isinstance(graph.layers[i], ScaleChannels) for i in (2, 4))
    x, per_channel = rand(1, 8, 8, 4), rand(1, 1, 1, 4)
    got = run_op(graph, 2, per_channel, x)
    np.testing.assert_allclose(nchw(got), ref.scale_channels(nchw(per_channel), nchw(x), 4, 8, 8,
                                                             False), rtol=1e-6)
    per_pixel = rand(1, 8, 8, 1)
    got = run_op(graph, 4, per_pixel, x)
    want = activations.apply(ref.scale_channels(nchw(per_pixel), nchw(x), 4, 8, 8, True), "leaky")
    np.testing.assert_allclose(nchw(got), want, rtol=1e-6)


def test_scale_channels_and_sam_refuse_wrong_shapes_and_mish():
    body = "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[scale_channels]\nfrom=-1\n"
    with pytest.raises(ConfigError, match="needs a 1x1x4 previous layer"):
        graph_of(net(body))
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
            "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[sam]\nfrom=-2\n"
            "activation=mish\n")
    with pytest.raises(ConfigError, match="does not apply 'mish'"):
        graph_of(net(body))


def test_sam_is_the_elementwise_product():
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
            "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n[sam]\nfrom=-2\n")
    graph = graph_of(net(body))
    assert isinstance(graph.layers[2], Sam)
    a, b = rand(1, 8, 8, 4), rand(1, 8, 8, 4)
    np.testing.assert_array_equal(run_op(graph, 2, a, b), a * b)


def test_reorg3d_equals_reorg_cpu():
    graph = graph_of(net("[reorg3d]\nstride=2\n", c=3, h=6, w=8))
    assert isinstance(graph.layers[0], Reorg3d) and graph.layers[0].out_shape == (12, 3, 4)
    x = rand(1, 6, 8, 3)
    np.testing.assert_array_equal(nchw(run_op(graph, 0, x)), ref.reorg3d(nchw(x), 8, 6, 3, 2))


@pytest.mark.parametrize("size, stride, padding", [(2, 2, None), (3, 1, None), (4, 4, None),
                                                   (3, 2, 0), (3, 2, 4)])
def test_local_avgpool_equals_darknet(size, stride, padding):
    extra = "" if padding is None else f"padding={padding}\n"
    graph = graph_of(net(f"[local_avgpool]\nsize={size}\nstride={stride}\n{extra}", c=3, h=9, w=7))
    layer = graph.layers[0]
    assert isinstance(layer, LocalAvgPool)
    x = rand(1, 9, 7, 3)
    want = ref.local_avgpool(nchw(x), 7, 9, 3, size, stride, layer.padding)
    oc, oh, ow = layer.out_shape
    np.testing.assert_allclose(nchw(run_op(graph, 0, x)), want, rtol=1e-6, atol=1e-6)
    assert want.size == oc * oh * ow


# ----------------------------------------------------------------------------------------------
# dilation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, dilation, stride, h, w", [(3, 2, 1, 9, 8), (3, 3, 1, 10, 10),
                                                         (5, 2, 1, 7, 11), (3, 3, 2, 11, 10)])
def test_dilated_conv_equals_im2col_cpu_ext_in_fp32_and_int8(size, dilation, stride, h, w):
    from yolo8.backends import int8
    from yolo8.backends.ops import conv

    body = (f"[convolutional]\nfilters=9\nsize={size}\npad=1\ndilation={dilation}\n"
            f"stride={stride}\nactivation=linear\n"
            f"[convolutional]\nfilters=5\nsize={size}\npad=1\ndilation={dilation}\n"
            f"activation=linear\n")
    graph = graph_of(net(body, c=6, h=h, w=w))
    first, second = graph.layers[0], graph.layers[1]
    assert first.out_shape == (9, (h - 1) // stride + 1, (w - 1) // stride + 1)
    fill(graph)
    x = rand(1, h, w, 6)
    want = ref.dilated_conv(x[0].transpose(2, 0, 1), first.weights.transpose(0, 3, 1, 2),
                            first.bias, size // 2, dilation, stride)
    assert want.shape == first.out_shape
    got = conv(first, graph)(x)[0].transpose(2, 0, 1)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # INT8: the same dilation around the integer kernel; its error is the quantization's.
    y = conv(first, graph)(x)
    threshold = float(np.abs(y).max())
    got8 = int8.build(graph, {1: threshold}).steps[1].op(y)[0].transpose(2, 0, 1)
    want8 = ref.dilated_conv(y[0].transpose(2, 0, 1), second.weights.transpose(0, 3, 1, 2),
                             second.bias, size // 2, dilation)
    assert np.abs(got8 - want8).max() <= 0.03 * np.abs(want8).max()


def test_dilation_with_an_inconsistent_padding_is_refused():
    with pytest.raises(ConfigError, match="dilation=2 needs padding") as info:
        graph_of(net("[convolutional]\nfilters=4\nsize=3\npadding=2\ndilation=2\n"))
    assert "'dilation'" in str(info.value) and "test.cfg:9" in str(info.value)


# ----------------------------------------------------------------------------------------------
# Heads: [yolo] new_coords and [Gaussian_yolo]
# ----------------------------------------------------------------------------------------------

YOLO_HEAD = ("[convolutional]\nfilters=14\nsize=1\nactivation=logistic\n"
             "[yolo]\nclasses=2\nnum=3\nmask=1,2\nanchors=10,14, 23,27, 37,58\nscale_x_y=2.0\n"
             "new_coords=1\n")


def test_new_coords_head_and_boxes_equal_get_yolo_box():
    graph = graph_of(net("", h=8, w=8, tail=YOLO_HEAD))
    head = graph.layers[1]
    assert head.new_coords
    x = RNG.uniform(0, 1, (1, 8, 8, 14)).astype(np.float32)
    out = run_op(graph, 1, x)
    v, raw = out.reshape(8, 8, 2, 7), x.reshape(8, 8, 2, 7)
    # forward_yolo_layer: no logistic with new_coords, x and y scaled by scale_x_y
    np.testing.assert_array_equal(v[..., 2:], raw[..., 2:])
    np.testing.assert_allclose(v[..., :2], raw[..., :2] * 2 - 0.5, rtol=1e-6)
    cands = decode_yolo(out[0], head, 8, 8, thresh=0.3)
    want = []
    for row in range(8):
        for col in range(8):
            for a, anchor in enumerate(([23, 27], [37, 58])):
                if v[row, col, a, 4] > 0.3:
                    want.append(ref.yolo_box(v[row, col, a].astype(np.float64), anchor, col, row,
                                             8, 8, 8, 8, True))
    assert len(want) > 10
    np.testing.assert_allclose(cands.boxes, np.array(want), rtol=1e-6)


GAUSSIAN_HEAD = ("[convolutional]\nfilters=22\nsize=1\nactivation=linear\n"
                 "[Gaussian_yolo]\nclasses=2\nnum=3\nmask=0,2\nanchors=10,14, 23,27, 37,58\n"
                 "scale_x_y=1.1\nyolo_point={point}\n")


@pytest.mark.parametrize("point", ["center", "left_top", "right_bottom"])
def test_gaussian_yolo_equals_darknets_formulas(point):
    graph = graph_of(net("", h=6, w=5, tail=GAUSSIAN_HEAD.format(point=point)))
    head = graph.layers[1]
    assert isinstance(head, GaussianYolo) and graph.heads == [1]
    x = rand(1, 6, 5, 22) * 2
    out = run_op(graph, 1, x)
    want = ref.gaussian_yolo_forward(nchw(x), 2, 2, 6, 5, 1.1)
    np.testing.assert_allclose(nchw(out), want, rtol=1e-6, atol=1e-7)
    dets = ref.gaussian_yolo_detections(want, 2, 2, 6, 5, head.anchors, 5, 6, 0.2, point)
    cands = decode_gaussian_yolo(out[0], head, 5, 6, 0.2)
    assert len(dets) > 5
    # Our candidates go cell by cell, anchor by anchor: darknet's order.
    np.testing.assert_allclose(cands.boxes, np.array([d[0] for d in dets]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cands.probs, np.array([d[1] for d in dets]), rtol=1e-6)
    assert (cands.probs > 0).sum() > 3


def test_a_missing_yolo9000_tree_is_refused_with_file_line_and_key():
    text = net("", tail="[convolutional]\nfilters=30\nsize=1\nactivation=linear\n[region]\n"
                        "anchors=1,1,2,2\nclasses=10\nnum=2\nsoftmax=1\ntree=no/such.tree\n")
    with pytest.raises(ConfigError, match="'no/such.tree' not found") as info:
        graph_of(text)
    assert "test.cfg:14" in str(info.value) and "'tree'" in str(info.value)


def test_share_index_reuses_an_earlier_layers_weights(tmp_path):
    """darknet's share_index: the layer reads no weights and computes with the shared ones."""
    import yolo8

    from .oracle import random_weights

    body = ("[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
            "[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation=leaky\n"
            "[convolutional]\nshare_index=-1\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\n"
            "dilation=2\nactivation=leaky\n")
    cfg = tmp_path / "share.cfg"
    cfg.write_text(net(body, c=3))
    graph = graph_of(cfg.read_text())
    assert graph.layers[2].shares_weights_of == 1 and graph.layers[2].weight_floats() == 0
    weights = tmp_path / "share.weights"
    random_weights(graph, weights)
    assert weights.stat().st_size == 20 + 4 * sum(c.weight_floats() for c in graph.layers[:4]
                                                   if c.kind == "convolutional")
    model = yolo8.load(cfg, weights)
    second, third = model.graph.layers[1], model.graph.layers[2]
    np.testing.assert_array_equal(third.weights, second.weights)
    np.testing.assert_array_equal(third.bias, second.bias)
    bad = body.replace("size=3\npad=1\nbatch_normalize=1\ndilation", "size=1\nbatch_normalize=1\n"
                       "dilation")
    with pytest.raises(ConfigError, match="layer 1 has other weights") as info:
        graph_of(net(bad))
    assert "'share_index'" in str(info.value) and "test.cfg:18" in str(info.value)
