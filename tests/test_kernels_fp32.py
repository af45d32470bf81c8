"""FP32 kernels against plain-numpy references, on odd shapes.

Bounds. Every float32 result is compared with a float64 reference within a worst-case
rounding bound, gamma_n * magnitude, with gamma_n = n * eps32 for a computation of at most n
successive roundings along any path, and `magnitude` the same computation done on absolute
values (|x|, |w|, |transform matrices|, float64): the classic bound for sums of products.
n = K + 4 for the implicit GEMM (K multiply-adds, the bias, the rounding of the result);
for Winograd, n also counts the transforms' additions (at most 6 + 6 on the input side and
6 + 6 on the output side). The bound is far below what any indexing or transform mistake
produces (errors of the order of `magnitude` itself), and it cannot fail from rounding alone.
Activations after the sum: darknet's are at most 1.1-Lipschitz (mish) and add a few ulps of
their own, hence `_after_activation`.
"""
from __future__ import annotations

import numpy as np
import pytest

import yolo8.kernels.gemm_fp32 as gemm_mod
import yolo8.kernels.winograd as wino_mod
from yolo8.backends.ops import reorg
from yolo8.kernels.activations import CODES, LEAKY, LINEAR, activate_numpy
from yolo8.kernels.conv_fp32 import Fp32Conv, choose_method, conv2d_reference
from yolo8.kernels.gemm_fp32 import gemm_bias_act, gemm_bias_act_reference
from yolo8.kernels.pooling import maxpool, maxpool_reference
from yolo8.kernels.winograd import (WinogradWeights, conv3x3_winograd,
                                    conv3x3_winograd_reference, transform_matrices)
from yolo8.layers import Reorg, Shape
from yolo8.postprocess import nms, nms_reference

EPS32 = float(np.finfo(np.float32).eps)


def _after_activation(bound: np.ndarray, want: np.ndarray) -> np.ndarray:
    """A bound on the pre-activation error carried through an activation: slope <= 1.1,
    plus 4 ulps of the activation's own rounding."""
    return 1.1 * bound + 4 * EPS32 * np.abs(want) + 1e-30


def _gemm_bound(x, wt, bias, stride, pad, groups):
    """gamma_{K+4} * (sum |x||w| + |b|) for the direct (implicit GEMM) sum."""
    magnitude = conv2d_reference(np.abs(x), np.abs(wt), np.abs(bias), stride, pad, groups, LINEAR)
    k = wt.shape[1] * wt.shape[2] * wt.shape[3]
    return (k + 4) * EPS32 * magnitude.astype(np.float64)


def _winograd_bound(x, wt, bias, pad, m):
    """gamma_{Cin + 28} * (the Winograd computation on absolute values)."""
    magnitude = conv3x3_winograd_reference(x, wt, bias, pad, LINEAR, m, absolute=True)
    return (x.shape[3] + 28) * EPS32 * magnitude.astype(np.float64)


def _random_conv(seed, n, h, w, c, cout, size, groups):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, h, w, c)).astype(np.float32)
    wt = rng.uniform(-1, 1, (cout, size, size, c // groups)).astype(np.float32)
    bias = rng.uniform(-1, 1, cout).astype(np.float32)
    return x, wt, bias


def _assert_within(got, want, bound):
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"|diff| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


# n, h, w, c, cout, size, stride, pad, groups: channels not multiples of 16, odd maps,
# Cout <= 16 / <= 32 / > 32 (1, 2 and 4 vectors per tile row), partial panels, batch 2.
GEMM_SHAPES = [
    (1, 7, 9, 3, 5, 3, 1, 1, 1),
    (2, 11, 6, 5, 7, 3, 2, 1, 1),
    (1, 9, 9, 4, 6, 1, 1, 0, 1),
    (1, 9, 9, 6, 4, 3, 1, 1, 2),
    (1, 8, 7, 9, 6, 3, 2, 1, 3),
    (2, 5, 13, 3, 2, 5, 2, 2, 1),
    (1, 10, 10, 7, 3, 1, 2, 0, 1),
    (2, 13, 11, 3, 16, 3, 1, 1, 1),
    (1, 12, 9, 2, 19, 3, 2, 1, 1),
    (1, 7, 5, 37, 70, 3, 1, 1, 1),
    (2, 6, 5, 24, 33, 1, 1, 0, 1),
    (1, 4, 3, 5, 7, 3, 1, 0, 1),
]


@pytest.mark.parametrize("n, h, w, c, cout, size, stride, pad, groups", GEMM_SHAPES)
@pytest.mark.parametrize("act", ["leaky", "linear", "mish", "logistic"])
def test_gemm_conv_matches_reference(n, h, w, c, cout, size, stride, pad, groups, act):
    x, wt, bias = _random_conv(n * h * w + c, n, h, w, c, cout, size, groups)
    conv = Fp32Conv(wt, bias, stride, pad, groups, CODES[act], method="gemm")
    want = conv2d_reference(x, wt, bias, stride, pad, groups, CODES[act])
    bound = _gemm_bound(x, wt, bias, stride, pad, groups)
    _assert_within(conv(x), want, _after_activation(bound, want))


# n, h, w, c, cout, pad: odd maps (partial output tiles at the right and bottom), maps
# smaller than one tile, channels not multiples of 16, batch 2, pad 0 and 1.
WINOGRAD_SHAPES = [
    (1, 7, 9, 3, 5, 1),
    (2, 13, 11, 17, 19, 1),
    (1, 8, 8, 16, 32, 0),
    (1, 5, 6, 4, 70, 1),
    (1, 3, 2, 9, 7, 1),
    (2, 15, 17, 40, 33, 1),
    (1, 11, 10, 21, 129, 0),
]


@pytest.mark.parametrize("n, h, w, c, cout, pad", WINOGRAD_SHAPES)
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("schedule", ["fused", "phased"])
def test_winograd_matches_reference(n, h, w, c, cout, pad, m, schedule):
    x, wt, bias = _random_conv(n * h * w + c + m, n, h, w, c, cout, 3, 1)
    got = conv3x3_winograd(x, WinogradWeights(wt, m), bias, pad, LEAKY, schedule)
    want = conv2d_reference(x, wt, bias, 1, pad, 1, LEAKY)
    _assert_within(got, want, _after_activation(_winograd_bound(x, wt, bias, pad, m), want))


@pytest.mark.parametrize("act", list(CODES))
@pytest.mark.parametrize("method", ["winograd2", "winograd4"])
def test_winograd_conv_every_activation(act, method):
    x, wt, bias = _random_conv(7, 1, 9, 10, 12, 20, 3, 1)
    got = Fp32Conv(wt, bias, 1, 1, 1, CODES[act], method=method)(x)
    want = conv2d_reference(x, wt, bias, 1, 1, 1, CODES[act])
    bound = _winograd_bound(x, wt, bias, 1, int(method[-1]))
    _assert_within(got, want, _after_activation(bound, want))


def test_winograd_schedules_agree_bit_for_bit(monkeypatch):
    """Both schedules do the same arithmetic in the same order; small blocks and bands make
    each thread run several blocks (with a partial last one) and the phased one several
    bands."""
    monkeypatch.setattr(wino_mod, "_BLOCK_FLOATS", 3000)
    monkeypatch.setattr(wino_mod, "_BAND_FLOATS", 5000)
    x, wt, bias = _random_conv(3, 2, 23, 19, 11, 21, 3, 1)
    for m in (2, 4):
        weights = WinogradWeights(wt, m)
        fused = conv3x3_winograd(x, weights, bias, 1, LEAKY, "fused")
        phased = conv3x3_winograd(x, weights, bias, 1, LEAKY, "phased")
        np.testing.assert_array_equal(fused, phased)
        want = conv2d_reference(x, wt, bias, 1, 1, 1, LEAKY)
        _assert_within(fused, want, _after_activation(_winograd_bound(x, wt, bias, 1, m), want))


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_reference_is_exact_in_float64(m):
    """The transform matrices themselves: the float64 Winograd reference equals the direct
    sum up to float64 rounding (a wrong coefficient would show at the 1e-1 level)."""
    rng = np.random.default_rng(m)
    x = rng.uniform(-1, 1, (2, 9, 7, 5))
    wt = rng.uniform(-1, 1, (4, 3, 3, 5))
    bias = np.zeros(4)
    bt, g, at = transform_matrices(m)
    assert bt.shape == (m + 2, m + 2) and g.shape == (m + 2, 3) and at.shape == (m, m + 2)
    for pad in (0, 1):
        n, h, w, c = x.shape
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        direct = sum(xp[:, ky:ky + h + 2 * pad - 2, kx:kx + w + 2 * pad - 2] @ wt[:, ky, kx, :].T
                     for ky in range(3) for kx in range(3))
        # the reference rounds its result to float32 at the end
        got = conv3x3_winograd_reference(x, wt, bias, pad, LINEAR, m)
        np.testing.assert_allclose(got, direct.astype(np.float32), rtol=0, atol=1e-5)


def test_batch_padded_in_chunks(monkeypatch):
    """A padded copy of one image at a time: every image of the batch gets its own rows."""
    import yolo8.kernels.conv_fp32 as conv_mod

    monkeypatch.setattr(conv_mod, "_PAD_CHUNK_FLOATS", 1)
    x, wt, bias = _random_conv(5, 3, 7, 6, 5, 9, 3, 1)
    conv = Fp32Conv(wt, bias, 2, 1, 1, LEAKY, method="gemm")
    want = conv2d_reference(x, wt, bias, 2, 1, 1, LEAKY)
    _assert_within(conv(x), want, _after_activation(_gemm_bound(x, wt, bias, 2, 1, 1), want))


def test_k_split_into_chunks(monkeypatch):
    """A B panel chunk of a few taps: later chunks start from C itself, the activation only
    after the last one."""
    monkeypatch.setattr(gemm_mod, "_B_CHUNK_FLOATS", 1)  # one tap (a kernel row) per chunk
    for act in ("leaky", "mish"):
        x, wt, bias = _random_conv(11, 2, 9, 8, 13, 37, 3, 1)
        conv = Fp32Conv(wt, bias, 1, 1, 1, CODES[act], method="gemm")
        assert gemm_mod.chunk_taps(conv.packed.ntaps, conv.packed.kc, conv.packed.nv) == 1
        want = conv2d_reference(x, wt, bias, 1, 1, 1, CODES[act])
        _assert_within(conv(x), want, _after_activation(_gemm_bound(x, wt, bias, 1, 1, 1), want))


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 5, 3), (37, 29, 70), (100, 300, 33),
                                     (25, 3, 16), (50, 700, 64), (13, 17, 31)])
def test_gemm_bias_act_matches_reference(m, k, n):
    rng = np.random.default_rng(m * k * n)
    a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
    w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
    bias = rng.uniform(-1, 1, n).astype(np.float32)
    want = gemm_bias_act_reference(a, w, bias, LEAKY)
    magnitude = np.abs(a).astype(np.float64) @ np.abs(w).T + np.abs(bias)
    _assert_within(gemm_bias_act(a, w, bias, LEAKY), want,
                   _after_activation((k + 4) * EPS32 * magnitude, want))


@pytest.mark.parametrize("act", list(CODES))
def test_activations_match_reference(act):
    """Identity weights make the sum exact, so this checks the fused epilogue alone."""
    x = np.linspace(-30, 30, 1001, dtype=np.float32)[:994].reshape(-1, 7)
    x = np.concatenate([x, np.zeros((1, 7), np.float32)])
    out = gemm_bias_act(x, np.eye(7, dtype=np.float32), None, CODES[act])
    np.testing.assert_allclose(out, activate_numpy(x, CODES[act]), rtol=2e-6, atol=1e-6)


def test_method_choice():
    assert choose_method(3, 1, 1, 3, 16, (416, 416)) == "gemm"         # the first layer: K = 27
    assert choose_method(3, 2, 1, 16, 32, (104, 104)) == "gemm"        # stride 2
    assert choose_method(3, 1, 2, 16, 32, (52, 52)) == "gemm"          # groups
    assert choose_method(1, 1, 1, 256, 512, (13, 13)) == "gemm"        # 1x1
    assert choose_method(3, 1, 1, 16, 32, (208, 208)) == "winograd4"
    assert choose_method(3, 1, 1, 128, 256, (26, 26)) == "winograd4"
    assert choose_method(3, 1, 1, 512, 1024, (13, 13)) == "winograd2"  # F(4x4) weights: 75 MB
    assert choose_method(3, 1, 1, 512, 1024, (4, 4)) == "gemm"         # 4 tiles per image


def test_bad_inputs_are_refused():
    wt = np.zeros((4, 3, 3, 5), np.float32)
    conv = Fp32Conv(wt, np.zeros(4, np.float32), 1, 1, 1, LEAKY)
    with pytest.raises(ValueError, match="channels"):
        conv(np.zeros((1, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match="float32"):
        conv(np.zeros((1, 5, 5, 5), np.float64))
    with pytest.raises(ValueError, match="method"):
        Fp32Conv(wt, np.zeros(4, np.float32), 1, 1, 1, LEAKY, method="fft")
    with pytest.raises(ValueError, match="3x3 stride-1"):
        Fp32Conv(wt, np.zeros(4, np.float32), 2, 1, 1, LEAKY, method="winograd4")
    with pytest.raises(ValueError, match="bias"):
        Fp32Conv(wt, np.zeros(3, np.float32), 1, 1, 1, LEAKY)
    with pytest.raises(ValueError, match="K differs"):
        gemm_bias_act(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


def test_output_smaller_than_kernel_is_empty():
    wt = np.ones((4, 3, 3, 2), np.float32)
    out = Fp32Conv(wt, np.zeros(4, np.float32), 1, 0, 1, LEAKY)(np.ones((1, 2, 5, 2), np.float32))
    assert out.shape == (1, 0, 3, 4)


# (26, 26, 2, 2, 1), (8, 6, 2, 2, 0), (6, 10, 2, 3, 1), (12, 10, 2, 1, 0) and (5, 5, 2, 2, 0)
# take the size-2 path without bounds checks (every window inside); the others the general one.
@pytest.mark.parametrize("h, w, size, stride, padding", [
    (13, 13, 2, 1, 1), (26, 26, 2, 2, 1), (7, 9, 3, 2, 2), (11, 11, 5, 1, 4), (9, 9, 13, 1, 12),
    (6, 6, 2, 2, 0), (5, 5, 3, 3, 0), (8, 6, 2, 2, 0), (6, 10, 2, 3, 1), (12, 10, 2, 1, 0),
    (5, 5, 2, 2, 0), (27, 26, 2, 2, 1), (1, 1, 2, 2, 1)])
@pytest.mark.parametrize("channels", [3, 16, 37])
def test_maxpool_matches_reference(h, w, size, stride, padding, channels):
    x = np.random.default_rng(h * w).normal(size=(2, h, w, channels)).astype(np.float32)
    x[0, h // 2, w // 2, 0] = np.nan  # darknet's `val > max`: a NaN tap never wins
    x[1, : min(h, 2), : min(w, 2), 1] = np.nan  # a window of NaN only gives -FLT_MAX
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


@pytest.mark.parametrize("diou_beta", [None, 0.6, 1.0])
@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_reference(seed, diou_beta):
    rng = np.random.default_rng(seed)
    n, classes = 60, 4
    centres = rng.uniform(0.2, 0.8, (n, 2))
    sizes = rng.uniform(0.05, 0.4, (n, 2))
    boxes = np.concatenate([centres, sizes], axis=1)
    probs = rng.uniform(0, 1, (n, classes)) * (rng.uniform(size=(n, classes)) > 0.4)
    got = nms(boxes, probs, 0.45, diou_beta)
    np.testing.assert_array_equal(got, nms_reference(boxes, probs, 0.45, diou_beta))
    assert 0 < (got > 0).sum() < (probs > 0).sum()  # some suppressed, some kept


def test_diou_nms_by_hand():
    # Unit squares 1/3 apart: IoU = (2/3) / (4/3) = 0.5; enclosing box 4/3 x 1, so
    # d^2 / c^2 = (1/9) / (25/9) = 0.04: DIoU = 0.5 - 0.04 ** beta.
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [1 / 3, 0.0, 1.0, 1.0]])
    probs = np.array([[0.9], [0.8]])
    assert nms(boxes, probs, 0.45)[1, 0] == 0  # IoU 0.5 > 0.45
    assert nms(boxes, probs, 0.45, 0.6)[1, 0] == 0.8  # 0.5 - 0.145 = 0.355, kept
    assert nms(boxes, probs, 0.45, 1.0)[1, 0] == 0  # 0.5 - 0.04 = 0.46, suppressed
    assert nms(boxes, probs, 0.47, 1.0)[1, 0] == 0.8
    same_centre = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    assert nms(same_centre, probs, 0.45, 0.6)[1, 0] == 0  # d = 0: DIoU = IoU = 1
