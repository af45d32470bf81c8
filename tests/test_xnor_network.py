"""A small network mixing FP32 and xnor=1 layers, in every backend, against darknet's
semantics written out in plain numpy (NCHW, read straight from the .weights bytes).

Bound 1e-3 absolute on the raw head outputs: the binary layers are exact integers times
float32 factors, the FP32 layers differ from the float64 reference by ~1e-6; the margin
covers a rare input sign flip at 0 in the FP32 layer feeding an xnor layer (x > 0 decides)."""
from __future__ import annotations

import numpy as np
import pytest

import yolo8

from .conftest import BACKENDS
from .oracle import WEIGHTS_HEADER

# (filters, cin, size, stride, pad, batch_normalize, activation, xnor) of each conv, in order
CONVS = [(20, 3, 3, 1, 1, True, "leaky", False), (70, 20, 3, 1, 1, True, "leaky", True),
         (33, 70, 3, 2, 1, True, "leaky", True), (40, 33, 1, 1, 0, True, "relu", True),
         (21, 73, 1, 1, 0, False, "linear", False)]


def _conv_section(filters, cin, size, stride, pad, bn, act, xnor):
    """A [convolutional] section for one CONVS row (pad=1: darknet's padding = size // 2)."""
    assert pad == size // 2
    return ("[convolutional]\n" + ("batch_normalize=1\n" if bn else "") +
            f"filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n" +
            ("xnor=1\n" if xnor else ""))


def _cfg(net, layers, convs):
    """cfg text: [net] lines, then `layers` where an int is the index of a row of `convs`."""
    sections = [_conv_section(*convs[x]) if isinstance(x, int) else x for x in layers]
    return "[net]\n" + net + "\n" + "\n".join(sections)


YOLO = "[yolo]\nmask=0,1,2\nanchors=4,6, 9,12, 20,24\nclasses=2\nnum=3\n"
CFG = _cfg("width=40\nheight=40\nchannels=3\n",
           [0, "[maxpool]\nsize=2\nstride=2\n", 1, 2, 3, "[route]\nlayers=-1,-2\n", 4, YOLO],
           CONVS)


def _write_weights(path, rng, convs=CONVS):
    parts = [WEIGHTS_HEADER]
    raw = []
    for filters, cin, size, _, _, bn, _, _ in convs:
        bias = rng.normal(0, 0.3, filters)
        scale = rng.uniform(-1.5, 1.5, filters) if bn else None  # negative BN scales too
        mean = rng.normal(0, 0.3, filters) if bn else None
        var = rng.uniform(0.2, 2, filters) if bn else None
        w = rng.normal(0, 1, (filters, cin, size, size)) / np.sqrt(cin * size * size)
        w[rng.uniform(size=w.shape) < 0.02] = 0.0  # darknet binarizes w == 0 to -mean|w|
        chunks = [bias] + ([scale, mean, var] if bn else []) + [w.ravel()]
        values = np.concatenate(chunks).astype("<f4")
        parts.append(values.tobytes())
        raw.append(values.astype(np.float64))
    path.write_bytes(b"".join(parts))
    return raw


def _conv_nchw(x, w, stride, pad):
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, f, ho, wo))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, :, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, ky, kx])
    return out


def _darknet_conv(spec, v, x):
    """darknet's forward_convolutional_layer on NCHW float64: binarize if xnor, conv, batch
    norm or bias, activation; `v` is the layer's floats as stored in the .weights file."""
    filters, cin, size, stride, pad, bn, act, xnor = spec
    v = v.astype(np.float32).astype(np.float64)
    bias = v[:filters]
    off = filters * (4 if bn else 1)
    w = v[off:].reshape(filters, cin, size, size)
    if xnor:
        alpha = np.abs(w).reshape(filters, -1).mean(axis=1)
        w = np.where(w > 0, 1.0, -1.0) * alpha[:, None, None, None]
        x = np.where(x > 0, 1.0, -1.0)
    y = _conv_nchw(x, w, stride, pad)
    if bn:
        scale, mean, var = v[filters:2 * filters], v[2 * filters:3 * filters], v[3 * filters:4 * filters]
        y = (y - mean[:, None, None]) / (np.sqrt(var)[:, None, None] + 1e-6) * scale[:, None, None]
    y = y + bias[:, None, None]
    return {"leaky": np.where(y > 0, y, 0.1 * y), "relu": np.maximum(y, 0), "linear": y}[act]


def _darknet_forward(x, raw):
    """The network above: convs as darknet runs them, maxpool 2/2, route, and [yolo]'s
    logistic on x, y, obj, classes."""
    def conv(i, x):
        return _darknet_conv(CONVS[i], raw[i], x)

    l0 = conv(0, x)
    n, c, h, w = l0.shape
    l1 = l0.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    l2 = conv(1, l1)
    l3 = conv(2, l2)
    l4 = conv(3, l3)
    l5 = np.concatenate([l4, l3], axis=1)
    l6 = conv(4, l5)
    v = l6.reshape(n, 3, 7, *l6.shape[2:]).copy()
    logistic = 1 / (1 + np.exp(-v))
    v[:, :, [0, 1, 4, 5, 6]] = logistic[:, :, [0, 1, 4, 5, 6]]
    return v.reshape(l6.shape)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xnor")
    cfg, weights = folder / "xnor.cfg", folder / "xnor.weights"
    cfg.write_text(CFG)
    raw = _write_weights(weights, np.random.default_rng(7))
    return cfg, weights, raw


@pytest.mark.parametrize("backend", BACKENDS)
def test_xnor_network_matches_darknet_semantics(network, backend):
    cfg, weights, raw = network
    model = yolo8.load(cfg, weights, backend=backend)
    assert [l.xnor for l in model.graph.convolutions()] == [c[7] for c in CONVS]
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, 40, 40)).astype(np.float32)
    got = model.forward(x)[0]
    want = _darknet_forward(x.astype(np.float64), raw)
    assert got.shape == want.shape == (2, 21, 10, 10)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert want.std() > 0.1  # a real signal, not a constant


def test_xnor_layers_are_not_int8_layers(network):
    from yolo8.backends.int8 import int8_layers

    cfg, weights, _ = network
    assert int8_layers(yolo8.load(cfg, weights).graph) == []


# xnor layers between INT8 layers: the int8 backend must run them with the binary kernel on
# whatever its INT8 neighbours produce (issue 5: "works the same whether the surrounding layers
# run fp32 or int8").
MIXED_CONVS = [(16, 3, 3, 1, 1, True, "leaky", False), (24, 16, 3, 1, 1, True, "leaky", False),
               (37, 24, 3, 1, 1, True, "leaky", True), (29, 37, 1, 1, 0, True, "leaky", False),
               (45, 29, 3, 2, 1, True, "leaky", True), (21, 45, 1, 1, 0, False, "linear", False)]
MIXED_NET = "width=24\nheight=24\nchannels=3\n"
MIXED_LAYERS = [0, 1, 2, 3, 4, 5, YOLO]


def _conv_inputs(model, x):
    """Each conv layer's input (NHWC float32) during one forward, by layer index."""
    conv_indices = {c.index for c in model.graph.convolutions()}
    seen = {}

    def observer(layer, inputs):
        if layer.index in conv_indices:
            seen[layer.index] = inputs[0].copy()

    heads = model.program.run(x, observer=observer)
    return seen, heads


def test_xnor_layers_between_int8_layers_stay_binary(tmp_path):
    from yolo8.backends.int8 import int8_layers
    from yolo8.kernels.activations import CODES
    from yolo8.kernels.conv_int8 import Int8ConvWeights, conv2d_int8_reference

    weights = tmp_path / "mixed.weights"
    raw = _write_weights(weights, np.random.default_rng(11), MIXED_CONVS)
    cfg = tmp_path / "mixed.cfg"
    cfg.write_text(_cfg(MIXED_NET, MIXED_LAYERS, MIXED_CONVS))
    x = np.random.default_rng(2).uniform(0, 1, (2, 24, 24, 3)).astype(np.float32)

    # Thresholds at 80 % of each INT8 layer's FP32 input range: some inputs saturate too.
    fp32 = yolo8.load(cfg, weights, backend="fp32")
    fp32_inputs, _ = _conv_inputs(fp32, x)
    multipliers = [127 / (0.8 * np.abs(fp32_inputs[c.index]).max())
                   for c in fp32.graph.convolutions()]
    calibration = "input_calibration = " + ", ".join(f"{m:.6f}" for m in multipliers) + "\n"
    cfg.write_text(_cfg(MIXED_NET + calibration, MIXED_LAYERS, MIXED_CONVS))
    model = yolo8.load(cfg, weights, backend="int8")
    convs = model.graph.convolutions()
    assert int8_layers(model.graph) == [convs[1].index, convs[3].index]

    seen, heads = _conv_inputs(model, x)
    outputs = {c.index: seen[n.index] for c, n in zip(convs, convs[1:])}  # a conv feeds the next
    for i in (1, 3):  # INT8 layers: the integer kernel's reference on the same input
        layer = convs[i]
        want = conv2d_int8_reference(seen[layer.index], Int8ConvWeights.from_float(layer.weights),
                                     layer.bias, np.float32(multipliers[i]), layer.stride,
                                     layer.pad, CODES[layer.activation])
        np.testing.assert_allclose(outputs[layer.index], want, rtol=1e-6, atol=1e-6)
    for i in (2, 4):  # xnor layers: darknet's binary semantics on their INT8 neighbour's output
        layer = convs[i]
        got = outputs[layer.index].transpose(0, 3, 1, 2)
        want = _darknet_conv(MIXED_CONVS[i], raw[i],
                             seen[layer.index].transpose(0, 3, 1, 2).astype(np.float64))
        # float32 epilogue vs float64: ~1e-6 of values of order 1
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert want.std() > 0.1
    # and an INT8 layer's output differs from FP32's on the same input (it really quantizes;
    # the FP32 first layer gives both the same input)
    assert not np.allclose(seen[convs[2].index], fp32_inputs[convs[2].index], atol=1e-5)
    assert np.isfinite(heads[0]).all()
