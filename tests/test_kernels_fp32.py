"""FP32 kernels against plain-numpy references, on odd shapes.

Bound for the convolution: float32 sums of K products against a float64 reference differ
by about K * eps * max|term|; with |x|, |w| <= 1 and K <= 300 here, 1e-4 absolute is ample
and far below any indexing mistake (which gives O(1) differences)."""
from __future__ import annotations

import numpy as np
import pytest

from yolo8.backends.ops import reorg
from yolo8.kernels.activations import CODES, activate_numpy
from yolo8.kernels.conv_fp32 import Fp32Conv, bias_activation, conv2d_reference, im2col
from yolo8.kernels.pooling import maxpool, maxpool_reference
from yolo8.layers import Reorg, Shape
from yolo8.postprocess import nms, nms_reference


@pytest.mark.parametrize("n, h, w, c, cout, size, stride, pad, groups", [
    (1, 7, 9, 3, 5, 3, 1, 1, 1),
    (2, 11, 6, 5, 7, 3, 2, 1, 1),
    (1, 9, 9, 4, 6, 1, 1, 0, 1),
    (1, 9, 9, 6, 4, 3, 1, 1, 2),
    (2, 5, 13, 3, 2, 5, 2, 2, 1),
    (1, 10, 10, 7, 3, 1, 2, 0, 1),
    (2, 13, 11, 3, 16, 3, 1, 1, 1),   # direct path (3*3*3 <= DIRECT_MAX_PATCH)
    (1, 12, 9, 2, 19, 3, 2, 1, 1),    # direct path, stride 2, odd Cout
])
@pytest.mark.parametrize("act", ["leaky", "linear", "mish", "logistic"])
def test_conv_matches_reference(n, h, w, c, cout, size, stride, pad, groups, act):
    rng = np.random.default_rng(n * h * w + c)
    x = rng.uniform(-1, 1, (n, h, w, c)).astype(np.float32)
    wt = rng.uniform(-1, 1, (cout, size, size, c // groups)).astype(np.float32)
    bias = rng.uniform(-1, 1, cout).astype(np.float32)
    got = Fp32Conv(wt, bias, stride, pad, groups, CODES[act])(x)
    want = conv2d_reference(x, wt, bias, stride, pad, groups, CODES[act])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_direct_and_im2col_paths_are_both_taken():
    wt = np.zeros((4, 3, 3, 3), np.float32)
    assert Fp32Conv(wt, np.zeros(4, np.float32), 1, 1, 1, 0).direct
    assert not Fp32Conv(np.zeros((4, 3, 3, 4), np.float32), np.zeros(4, np.float32), 1, 1, 1, 0).direct


def test_conv_chunking_covers_every_row(monkeypatch):
    """Force tiny im2col chunks so row blocks and their tails are exercised."""
    import yolo8.kernels.conv_fp32 as mod

    monkeypatch.setattr(mod, "_CHUNK_FLOATS", 50)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 9, 7, 3)).astype(np.float32)
    wt = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    np.testing.assert_allclose(Fp32Conv(wt, bias, 1, 1, 1, CODES["linear"])(x),
                               conv2d_reference(x, wt, bias, 1, 1, 1, CODES["linear"]), atol=1e-4)


def test_im2col_layout():
    x = np.arange(2 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 2)
    cols = im2col(x, size=3, stride=1, pad=1)
    assert cols.shape == (18, 18)
    # centre pixel of image 1: its 3x3 neighbourhood, channels innermost
    np.testing.assert_array_equal(cols[9 + 4], x[1].reshape(-1))
    # corner pixel of image 0: the top-left taps are padding
    assert (cols[0, :8] == 0).all() and cols[0, 8] == x[0, 0, 0, 0]


@pytest.mark.parametrize("act", list(CODES))
def test_activations_match_reference(act):
    x = np.linspace(-30, 30, 1001, dtype=np.float32).reshape(-1, 7)[:, :7].copy()
    x = np.concatenate([x, np.zeros((1, 7), np.float32)])
    out = x.copy()
    bias_activation(out, np.zeros(7, np.float32), CODES[act])
    np.testing.assert_allclose(out, activate_numpy(x, CODES[act]), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("h, w, size, stride, padding", [
    (13, 13, 2, 1, 1), (26, 26, 2, 2, 1), (7, 9, 3, 2, 2), (11, 11, 5, 1, 4), (9, 9, 13, 1, 12),
    (6, 6, 2, 2, 0), (5, 5, 3, 3, 0)])
def test_maxpool_matches_reference(h, w, size, stride, padding):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, 3)).astype(np.float32)
    np.testing.assert_array_equal(maxpool(x, size, stride, padding),
                                  maxpool_reference(x, size, stride, padding))


def test_reorg_equals_darknet_loops():
    """darknet's reorg_cpu(..., forward=0) transcribed as loops over the NCHW buffer."""
    c, h, w, s = 8, 4, 6, 2
    x = np.random.default_rng(0).normal(size=(1, h, w, c)).astype(np.float32)
    flat = x.transpose(0, 3, 1, 2).ravel()
    expected = np.empty_like(flat)
    out_c = c // (s * s)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % out_c, k // out_c
                w2, h2 = i * s + offset % s, j * s + offset // s
                expected[in_index] = flat[w2 + w * s * (h2 + h * s * c2)]
    layer = Reorg(index=0, line=1, inputs=(-1,), out_shape=Shape(c * 4, h // 2, w // 2),
                  in_shape=Shape(c, h, w), stride=s)
    got = reorg(layer, None)(x)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2).ravel(), expected)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n, classes = 60, 4
    centres = rng.uniform(0.2, 0.8, (n, 2))
    sizes = rng.uniform(0.05, 0.4, (n, 2))
    boxes = np.concatenate([centres, sizes], axis=1)
    probs = rng.uniform(0, 1, (n, classes)) * (rng.uniform(size=(n, classes)) > 0.4)
    np.testing.assert_array_equal(nms(boxes, probs, 0.45), nms_reference(boxes, probs, 0.45))
