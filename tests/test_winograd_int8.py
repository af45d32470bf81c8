"""The AVX2 tier's exact INT8 Winograd F(2x2, 3x3) (kernels/winograd_int8.py).

Its claim is strong: the same int32 sums as the direct convolution, so the same float32
outputs bit for bit. Checked against conv2d_int8_reference (quantize, im2col, int64 matmul)
and, for the transforms, against float64 Winograd matrices taken from the float32 module and
plain int64 arithmetic. The AVX2 tier runs on any compile target with AVX2, so these tests
run here and under every tier of test_isa_tiers (their names match its selection).
"""
from __future__ import annotations

import numpy as np
import pytest

from yolo8.kernels import gemm_int8, winograd, winograd_int8
from yolo8.kernels.activations import LEAKY, LINEAR, MISH
from yolo8.kernels.conv_int8 import (Int8ConvWeights, conv2d_int8, conv2d_int8_reference,
                                     quantize_reference)

from .test_kernels_int8 import make_layer as kernel_test_layer

pytestmark = pytest.mark.skipif(not gemm_int8.tier_available("avx2"),
                                reason="compile target without AVX2 (the Winograd kernel's tier)")

# (n, h, w, cin, cout, pad): odd and even maps (partial border tiles), pad 0 and 1, channel
# counts off the 4 / 8 / 16 multiples, batch 2, one channel, 16-channel blocks of the
# input transform with a tail, several B panels.
CASES = [
    (1, 7, 9, 5, 11, 1),
    (2, 13, 13, 16, 40, 1),
    (1, 8, 6, 64, 130, 0),
    (1, 5, 5, 1, 1, 1),
    (2, 6, 11, 37, 17, 0),
    (1, 12, 10, 130, 24, 1),
]


def make_layer(rng, cin, cout):
    """(weights, bias) of a 3x3 layer: test_kernels_int8's, groups 1 (the same draws)."""
    return kernel_test_layer(rng, cin, cout, 3, 1)[:2]


@pytest.fixture
def schedule(request, monkeypatch):
    """Force one of the kernel's two schedules."""
    original = winograd_int8.conv3x3_winograd_int8
    monkeypatch.setattr(winograd_int8, "conv3x3_winograd_int8",
                        lambda *a, **k: original(*a, **{**k, "schedule": request.param}))
    return request.param


@pytest.mark.parametrize("schedule", ["fused", "phased"], indirect=True)
@pytest.mark.parametrize("n,h,w,cin,cout,pad", CASES)
def test_winograd_conv_is_bit_exact_with_reference(schedule, n, h, w, cin, cout, pad):
    rng = np.random.default_rng(h * 31 + cin * 7 + cout)
    weights, bias = make_layer(rng, cin, cout)
    x = (rng.standard_normal((n, h, w, cin)) * 2).astype(np.float32)
    multiplier = np.float32(127 / 5.0)  # some inputs saturate
    for activation in (LEAKY, LINEAR):
        expected = conv2d_int8_reference(x, weights, bias, multiplier, 1, pad, activation)
        out = conv2d_int8(x, weights, bias, multiplier, 1, pad, activation, variant="avx2",
                          method="winograd")
        np.testing.assert_array_equal(out, expected)


def test_winograd_conv_other_activations_as_the_direct_kernel():
    # Activations outside the fused epilogue run on the stored tile, as in the direct kernel.
    rng = np.random.default_rng(3)
    weights, bias = make_layer(rng, 9, 21)
    x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    direct = conv2d_int8(x, weights, bias, 30.0, 1, 1, MISH, variant="avx2", method="direct")
    np.testing.assert_array_equal(
        conv2d_int8(x, weights, bias, 30.0, 1, 1, MISH, variant="avx2", method="winograd"), direct)


def test_winograd_conv_large_cin_at_full_scale():
    # At the bound: Cin = MAX_CIN with every q and wq at +-127, so 4 * acc is within 0.02 %
    # of int32's limit (the sums of the transforms wrap on the way and must come back).
    cin, cout = winograd_int8.MAX_CIN, 3
    w = np.ones((cout, 3, 3, cin), np.float32)
    w[1] = -1.0
    w[2, :, :, ::2] = -1.0
    weights = Int8ConvWeights.from_float(w)
    x = np.full((1, 3, 3, cin), 10.0, np.float32)  # q = 127 at m = 127 / 3
    m = np.float32(127 / 3)
    bias = np.zeros(cout, np.float32)
    out = conv2d_int8(x, weights, bias, m, 1, 1, LINEAR, variant="avx2", method="winograd")
    center = np.array([127 * 127 * 9 * cin, -127 * 127 * 9 * cin, 0], np.int64)
    assert 4 * center[0] <= 2**31 - 1 < 4 * (center[0] + 127 * 127 * 9)
    np.testing.assert_array_equal(out[0, 1, 1], center.astype(np.float32) * weights.out_scale(m))
    np.testing.assert_array_equal(out, conv2d_int8_reference(x, weights, bias, m, 1, 1, LINEAR))


def test_winograd_weight_transform_is_four_times_the_float_one():
    # U = (2G) g (2G)^T must be 4 G g G^T with the float32 module's G (independent matrices).
    rng = np.random.default_rng(5)
    wq = rng.integers(-127, 128, (6, 3, 3, 5)).astype(np.int8)
    _, g, _ = winograd.transform_matrices(2)
    expected = 4 * np.einsum("ay,oyxc,bx->aboc", g, wq.astype(np.float64), g)
    u = winograd_int8.transform_weights(wq)
    assert u.dtype == np.int16
    np.testing.assert_array_equal(u.reshape(4, 4, 6, 5), expected)
    extreme = np.full((1, 3, 3, 1), 127, np.int8)
    assert np.abs(winograd_int8.transform_weights(extreme)).max() == 9 * 127  # the int16 bound


def test_winograd_integer_reference_equals_the_direct_sums():
    rng = np.random.default_rng(6)
    q = rng.integers(-127, 128, (2, 7, 8, 6)).astype(np.int8)
    wq = rng.integers(-127, 128, (5, 3, 3, 6)).astype(np.int8)
    qp = np.pad(q.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    direct = sum(qp[:, y:y + 7, x:x + 8] @ wq[:, y, x].astype(np.int64).T
                 for y in range(3) for x in range(3))
    np.testing.assert_array_equal(winograd_int8.conv3x3_winograd_int8_reference(q, wq, 1), direct)


def test_winograd_output_transform_is_exact_when_its_sums_wrap():
    # M values whose A^T M A sum for output (0, 0) passes int32's limits on the way to a
    # small result (4 * acc = 20): the IR's wrapping additions must give the true value.
    # (The other three outputs of this made-up M are not valid sums; only (0, 0) is checked.)
    cout = 8
    mm = np.zeros((1, 16 * cout), np.int32)
    m4 = mm.reshape(4, 4, cout)
    m4[0, :3] = 2**30
    m4[1, :2] = -2**30
    m4[1, 2] = -2**30 + 20
    out = np.empty((1, 2, 2, cout), np.float32)
    scale = np.ones(cout, np.float32)
    bias = np.zeros(cout, np.float32)
    winograd_int8._output_band(mm, scale, bias, LINEAR, 1, 1, 0, 1, out, 1)
    at = winograd_int8.AT
    exact = np.einsum("ia,abo,jb->ijo", at, m4.astype(np.int64), at) // 4
    assert exact[0, 0, 0] == 5 and m4[0, :3, 0].astype(np.int64).sum() >= 2**31  # row 0 wraps
    np.testing.assert_array_equal(out[0, 0, 0], exact[0, 0].astype(np.float32))


def test_auto_method_uses_winograd_where_it_pays(monkeypatch):
    calls = []
    original = winograd_int8.conv3x3_winograd_int8
    monkeypatch.setattr(winograd_int8, "conv3x3_winograd_int8",
                        lambda *a, **k: calls.append(a[2].n_per_group) or original(*a, **k))
    rng = np.random.default_rng(7)
    cin, side = winograd_int8.MIN_CIN_PAYS, winograd_int8.MIN_MAP_PAYS
    for cin, side, cout in ((cin - 1, side, 4), (cin, side, 5), (cin, side - 1, 6)):
        weights, bias = make_layer(rng, cin, cout)
        x = rng.standard_normal((1, side, side, cin)).astype(np.float32)
        out = conv2d_int8(x, weights, bias, 20.0, 1, 1, LEAKY, variant="avx2")
        np.testing.assert_array_equal(out, conv2d_int8_reference(x, weights, bias, 20.0, 1, 1, LEAKY))
    assert calls == [5]  # only the layer with enough input channels and a large enough map


def test_winograd_refuses_layers_it_cannot_run():
    rng = np.random.default_rng(8)
    weights, bias = make_layer(rng, 4, 4)
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="3x3 stride-1"):
        conv2d_int8(x, weights, bias, 20.0, 2, 1, LEAKY, variant="avx2", method="winograd")
    with pytest.raises(ValueError, match="method"):
        conv2d_int8(x, weights, bias, 20.0, 1, 1, LEAKY, variant="avx2", method="fast")
    if gemm_int8.tier_available("avx512vnni"):
        with pytest.raises(ValueError, match="3x3 stride-1"):
            conv2d_int8(x, weights, bias, 20.0, 1, 1, LEAKY, variant="avx512vnni",
                        method="winograd")
    # quantize_reference is what the buffer holds (signed, unshifted): one more direct check
    assert quantize_reference(np.array([200.0], np.float32), 1.0)[0] == 127


def test_weights_pack_at_load_what_the_layer_will_use(monkeypatch):
    # With the geometry known, the AVX2 tier's Winograd layers pack only U at load (the
    # direct packing would be 9/16 of its size, unused); the others the direct packing.
    from yolo8.kernels import conv_int8
    monkeypatch.setattr(conv_int8, "default_variant", lambda: "avx2")
    rng = np.random.default_rng(9)
    w = rng.standard_normal((8, 3, 3, 64)).astype(np.float32)
    wide = Int8ConvWeights.from_float(w, stride=1, out_hw=(13, 13))
    strided = Int8ConvWeights.from_float(w, stride=2, out_hw=(13, 13))
    unknown = Int8ConvWeights.from_float(w)
    assert set(wide._packed) == {"winograd"}
    assert set(strided._packed) == set(unknown._packed) == {"avx2"}
