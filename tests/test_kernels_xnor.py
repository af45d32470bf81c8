"""XNOR conv kernels vs plain-numpy references (bit-packing, integer dot, float output)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from yolo8.kernels.activations import LEAKY, LINEAR, LOGISTIC, MISH, RELU, SWISH
from yolo8.kernels.xnor import (
    XnorConvWeights,
    _xnor_conv,
    conv2d_xnor,
    conv2d_xnor_dot,
    conv2d_xnor_reference,
    lanes_for,
    pack_input_bits,
    pack_input_bits_reference,
    xnor_dot_reference,
)


def _signed_input(rng, shape, zero_fraction=0.2):
    """Normal values with a share of exact zeros (which binarize to -1, not 0)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < zero_fraction] = 0.0
    return x


def _weights(rng, cout, size, cin, zero_fraction=0.1):
    w = (rng.standard_normal((cout, size, size, cin)) * 0.2).astype(np.float32)
    w[rng.random(w.shape) < zero_fraction] = 0.0
    return w


# ---------------------------------------------------------------------------------------
# Input bit-packing
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin", [1, 3, 31, 32, 33, 64, 65, 130])
@pytest.mark.parametrize("pad", [0, 1, 2])
def test_pack_input_bits_matches_numpy_packbits(cin, pad):
    rng = np.random.default_rng(cin * 10 + pad)
    x = _signed_input(rng, (2, 5, 7, cin))
    x.flat[::11] = -0.0
    x.flat[::13] = np.nan  # NaN > 0 is False: -1, as in darknet's `x > 0 ? 1 : -1`
    np.testing.assert_array_equal(pack_input_bits(x, pad), pack_input_bits_reference(x, pad))


def test_pack_input_bits_layout_by_hand():
    # 34 channels -> 2 uint32 words; channel c is bit c % 32 of word c // 32.
    x = np.full((1, 1, 1, 34), -1.0, dtype=np.float32)
    x[0, 0, 0, [0, 5, 31, 33]] = 2.0
    x[0, 0, 0, 1] = 0.0
    packed = pack_input_bits(x, 1)
    assert packed.shape == (1, 3, 3, 2) and packed.dtype == np.uint32
    assert packed[0, 1, 1, 0] == (1 << 0) | (1 << 5) | (1 << 31)
    assert packed[0, 1, 1, 1] == 1 << 1
    packed[0, 1, 1] = 0
    assert not packed.any()  # the padded border is all zero


# ---------------------------------------------------------------------------------------
# Weight packing
# ---------------------------------------------------------------------------------------
def test_weights_from_float_by_hand():
    w = np.array([1.0, -2.0, 0.0, 3.0], dtype=np.float32).reshape(1, 1, 1, 4)
    packed = XnorConvWeights.from_float(w)
    assert packed.alpha.tolist() == [1.5]  # mean |w| = 6 / 4
    assert packed.bits.shape == (1, 1, 1, 1, 32)  # one block of 32 lanes for cout <= 32
    assert packed.bits[0, 0, 0, 0, 0] == 0b1001  # w > 0 at channels 0 and 3; w == 0 -> 0 bit
    assert not packed.bits[..., 1:].any()  # lanes beyond cout are empty filters
    assert packed.tap_popcounts.shape == (1, 1, 1, 32)
    assert packed.tap_popcounts[0, 0, 0, 0] == 2


@pytest.mark.parametrize("cout, lanes, blocks", [(1, 32, 1), (32, 32, 1), (33, 64, 1),
                                                 (64, 64, 1), (65, 64, 2), (130, 64, 3)])
def test_weight_blocks_and_lanes(cout, lanes, blocks):
    rng = np.random.default_rng(cout)
    w = _weights(rng, cout, 3, 40)
    packed = XnorConvWeights.from_float(w)
    assert lanes_for(cout) == lanes
    assert packed.bits.shape == (blocks, 3, 3, 2, lanes)
    # Filter co sits in block co // lanes, lane co % lanes: compare with packing it alone.
    for co in (0, cout // 2, cout - 1):
        alone = XnorConvWeights.from_float(w[co:co + 1])
        np.testing.assert_array_equal(packed.bits[co // lanes, ..., co % lanes],
                                      alone.bits[0, ..., 0])
    assert not packed.bits[-1, ..., cout - (blocks - 1) * lanes:].any()


def test_tap_sums_are_prefix_sums_of_tap_popcounts():
    rng = np.random.default_rng(4)
    packed = XnorConvWeights.from_float(_weights(rng, 40, 3, 50))
    pops = packed.tap_popcounts
    for a in range(4):
        for b in range(4):
            np.testing.assert_array_equal(packed.tap_sums[:, a, b],
                                          pops[:, :a, :b].sum(axis=(1, 2)))


# ---------------------------------------------------------------------------------------
# Integer part: the popcount dot must equal a numpy integer conv exactly.
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin", [3, 31, 32, 33, 65, 130])
@pytest.mark.parametrize(
    "size,stride,pad", [(1, 1, 0), (1, 2, 0), (3, 1, 0), (3, 1, 1), (3, 2, 1), (3, 2, 0)]
)
@pytest.mark.parametrize("cout", [20, 37, 70])  # 32-lane, 64-lane partial, two 64-lane blocks
def test_dot_equals_integer_reference(cin, size, stride, pad, cout):
    rng = np.random.default_rng(cin * 100 + size * 10 + stride + pad + cout)
    x = _signed_input(rng, (2, 9, 7, cin))
    w = _weights(rng, cout, size, cin)
    got = conv2d_xnor_dot(x, XnorConvWeights.from_float(w), stride, pad)
    np.testing.assert_array_equal(got, xnor_dot_reference(x, w, stride, pad))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 14), cin=st.integers(1, 150),
    cout=st.integers(1, 140), size=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3),
    pad=st.integers(0, 3), seed=st.integers(0, 2**32 - 1),
)
def test_dot_equals_integer_reference_random_shapes(n, h, w, cin, cout, size, stride, pad, seed):
    assume(h + 2 * pad >= size and w + 2 * pad >= size)  # at least one output position
    rng = np.random.default_rng(seed)
    x = _signed_input(rng, (n, h, w, cin))
    wt = _weights(rng, cout, size, cin)
    got = conv2d_xnor_dot(x, XnorConvWeights.from_float(wt), stride, pad)
    np.testing.assert_array_equal(got, xnor_dot_reference(x, wt, stride, pad))


@pytest.mark.parametrize("h,w_,size,pad", [(1, 1, 1, 0), (2, 3, 3, 1), (5, 13, 3, 2), (3, 6, 1, 1)])
def test_dot_tiny_and_over_padded_inputs(h, w_, size, pad):
    # Maps smaller than a register tile, and pads >= the kernel size, where whole output
    # positions see only padding (dot = 0).
    rng = np.random.default_rng(h * w_ + pad)
    x = _signed_input(rng, (2, h, w_, 70))
    w = _weights(rng, 70, size, 70)
    got = conv2d_xnor_dot(x, XnorConvWeights.from_float(w), 1, pad)
    np.testing.assert_array_equal(got, xnor_dot_reference(x, w, 1, pad))


@pytest.mark.parametrize("w_,cout", [(37, 45), (45, 23)])
def test_dot_wide_rows(w_, cout):
    # Rows of many whole tiles (one kernel call per row) with a ragged end, rows crossing
    # from one tile to the next, three images: both tile shapes (64 and 32 lanes).
    rng = np.random.default_rng(w_)
    x = _signed_input(rng, (3, 6, w_, 64))
    w = _weights(rng, cout, 3, 64)
    got = conv2d_xnor_dot(x, XnorConvWeights.from_float(w), 1, 1)
    np.testing.assert_array_equal(got, xnor_dot_reference(x, w, 1, 1))


def test_dot_at_the_borders_by_hand():
    # All-zero input binarizes to -1 everywhere; all-positive weights to +1. With pad 1 a
    # 3x3 output position sees 4 (corner), 6 (edge) or 9 (interior) real taps, each adding
    # -cin: padding must count 0, not -1 and not +1.
    cin = 65
    x = np.zeros((1, 4, 5, cin), dtype=np.float32)
    w = np.full((3, 3, 3, cin), 0.5, dtype=np.float32)
    dots = conv2d_xnor_dot(x, XnorConvWeights.from_float(w), 1, 1)
    valid_taps = np.array([[4, 6, 6, 6, 4], [6, 9, 9, 9, 6], [6, 9, 9, 9, 6], [4, 6, 6, 6, 4]])
    for co in range(3):
        np.testing.assert_array_equal(dots[0, :, :, co], -cin * valid_taps)


@pytest.mark.parametrize("n_threads", [1, 2, 3, 5])
def test_result_does_not_depend_on_the_split_into_work_items(n_threads):
    # Each work item packs the input rows of its own range of positions; 3 images of
    # 13 x 29 positions make 3 to 10 items (equal or guided sizes) whose boundaries fall
    # inside rows and images.
    rng = np.random.default_rng(n_threads)
    x = _signed_input(rng, (3, 13, 29, 40))
    w = _weights(rng, 50, 3, 40)
    bias = rng.standard_normal(50).astype(np.float32)
    packed = XnorConvWeights.from_float(w)
    out = np.full((3, 13, 29, 50), np.nan, dtype=np.float32)
    _xnor_conv(x, packed.bits, packed.tap_sums, packed.alpha, bias, 1, 1, LEAKY, out, n_threads)
    np.testing.assert_array_equal(out, conv2d_xnor_reference(x, w, bias, 1, 1, LEAKY))


# ---------------------------------------------------------------------------------------
# Float output
# ---------------------------------------------------------------------------------------
# Bit-exact for LINEAR/LEAKY/RELU: the reference's float64 conv of +-1 by +-alpha is exact
# (partial sums are integer multiples of alpha, far below 2**53 ulps), so its float32
# rounding equals the kernel's float32(dot) * alpha; both then add the bias in float32 and
# apply the same float32 op (or none) for these activations.
@pytest.mark.parametrize("cin", [3, 32, 65, 130])
@pytest.mark.parametrize("size,stride,pad", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 2, 0)])
@pytest.mark.parametrize("activation", [LINEAR, LEAKY, RELU])
@pytest.mark.parametrize("cout", [29, 45])
def test_conv_equals_float_reference_exactly(cin, size, stride, pad, activation, cout):
    rng = np.random.default_rng(cin + 7 * size + 3 * stride + pad + 50 * activation + cout)
    x = _signed_input(rng, (2, 11, 9, cin))
    w = _weights(rng, cout, size, cin)
    bias = rng.standard_normal(cout).astype(np.float32)
    got = conv2d_xnor(x, XnorConvWeights.from_float(w), bias, stride, pad, activation)
    expected = conv2d_xnor_reference(x, w, bias, stride, pad, activation)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# LOGISTIC/MISH/SWISH: the value going into the activation is bit-identical (see above);
# only the activation differs: the kernel's numba `activate` rounds intermediate float32
# results, `activate_numpy` computes in float64 and rounds once. That costs at most a few
# float32 ulp: rtol 4 * 2**-23 (measured <= 3 ulp over many random layers).
@pytest.mark.parametrize("activation", [LOGISTIC, MISH, SWISH])
@pytest.mark.parametrize("cout", [33, 70])
def test_conv_transcendental_activations_within_ulps(activation, cout):
    rng = np.random.default_rng(activation + cout)
    x = _signed_input(rng, (2, 7, 9, 65))
    w = _weights(rng, cout, 3, 65)
    bias = (rng.standard_normal(cout) * 3).astype(np.float32)
    got = conv2d_xnor(x, XnorConvWeights.from_float(w), bias, 1, 1, activation)
    expected = conv2d_xnor_reference(x, w, bias, 1, 1, activation)
    np.testing.assert_allclose(got, expected, rtol=4 * 2.0**-23, atol=1e-30)


def test_zero_weights_binarize_to_minus_alpha_by_hand():
    # w = [0, 0, 3, 1]: alpha = 1, signs [-1, -1, +1, +1]. x = [1, 1, 1, 0]: signs
    # [+1, +1, +1, -1]. dot = -1 - 1 + 1 - 1 = -2, y = -2 * 1 + 0.25.
    w = np.array([0.0, 0.0, 3.0, 1.0], dtype=np.float32).reshape(1, 1, 1, 4)
    x = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32).reshape(1, 1, 1, 4)
    bias = np.array([0.25], dtype=np.float32)
    y = conv2d_xnor(x, XnorConvWeights.from_float(w), bias, 1, 0, LINEAR)
    assert y.tolist() == [[[[-1.75]]]]


def test_activation_by_name_and_fully_padded_outputs_give_bias():
    # size 1, pad 1: the output ring sees only padding, dot = 0, y = activation(bias).
    rng = np.random.default_rng(3)
    x = _signed_input(rng, (1, 3, 3, 10))
    w = _weights(rng, 4, 1, 10)
    bias = np.array([-1.0, 2.0, 0.5, -0.5], dtype=np.float32)
    y = conv2d_xnor(x, XnorConvWeights.from_float(w), bias, 1, 1, "leaky")
    np.testing.assert_array_equal(y[0, 0, 0], np.array([-0.1, 2.0, 0.5, -0.05], dtype=np.float32))
    np.testing.assert_array_equal(y, conv2d_xnor_reference(x, w, bias, 1, 1, LEAKY))


def test_replaced_alpha_scales_the_output():
    # backends.ops folds batch norm's factor into alpha with dataclasses.replace: the copy
    # must recompute its derived arrays and give float32(dot) * alpha' + bias.
    rng = np.random.default_rng(8)
    x = _signed_input(rng, (1, 6, 7, 33))
    w = _weights(rng, 40, 3, 33)
    packed = XnorConvWeights.from_float(w)
    scale = rng.uniform(-2, 2, 40).astype(np.float32)
    scaled = dataclasses.replace(packed, alpha=(packed.alpha * scale).astype(np.float32))
    np.testing.assert_array_equal(scaled.tap_sums, packed.tap_sums)
    bias = rng.standard_normal(40).astype(np.float32)
    dots = xnor_dot_reference(x, w, 1, 1).astype(np.float32)  # exact: |dot| < 2**24
    expected = dots * scaled.alpha + bias
    np.testing.assert_array_equal(conv2d_xnor(x, scaled, bias, 1, 1, LINEAR), expected)


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
def _valid_args():
    x = np.ones((1, 5, 5, 8), dtype=np.float32)
    w = XnorConvWeights.from_float(np.ones((4, 3, 3, 8), dtype=np.float32))
    bias = np.zeros(4, dtype=np.float32)
    return dict(x=x, weights=w, bias=bias, stride=1, pad=1, activation=LEAKY)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(groups=2), "groups=1 only"),
        (dict(x=np.ones((1, 5, 5, 8))), "float32 NHWC"),
        (dict(x=np.ones((5, 5, 8), dtype=np.float32)), "float32 NHWC"),
        (dict(x=np.ones((1, 5, 5, 16), dtype=np.float32)[..., ::2]), "C-contiguous"),
        (dict(x=np.ones((1, 5, 5, 9), dtype=np.float32)), "channels"),
        (dict(x=np.ones((1, 1, 1, 8), dtype=np.float32), pad=0), "does not fit"),
        (dict(bias=np.zeros(5, dtype=np.float32)), "bias"),
        (dict(bias=np.zeros(4)), "bias"),
        (dict(stride=0), "stride"),
        (dict(stride=1.5), "stride"),
        (dict(pad=-1), "pad"),
        (dict(activation=17), "activation"),
        (dict(activation="gelu"), "activation"),
        (dict(weights=np.ones((4, 3, 3, 8), dtype=np.float32)), "XnorConvWeights"),
    ],
)
def test_conv2d_xnor_rejects_misuse(change, message):
    args = _valid_args()
    args.update(change)
    with pytest.raises(ValueError, match=message):
        conv2d_xnor(**args)


@pytest.mark.parametrize(
    "w",
    [
        np.ones((4, 3, 3, 8)),  # float64
        np.ones((4, 3, 8), dtype=np.float32),
        np.ones((0, 3, 3, 8), dtype=np.float32),
        np.full((4, 3, 3, 8), np.nan, dtype=np.float32),
    ],
)
def test_from_float_rejects_bad_weights(w):
    with pytest.raises(ValueError):
        XnorConvWeights.from_float(w)


def test_hand_built_weights_must_be_consistent():
    good = XnorConvWeights.from_float(np.ones((4, 3, 3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="bits"):
        XnorConvWeights(good.bits[:, :2].copy(), good.tap_popcounts, good.alpha, 4, 3, 3, 8)
    with pytest.raises(ValueError, match="alpha"):
        XnorConvWeights(good.bits, good.tap_popcounts, good.alpha[:3].copy(), 4, 3, 3, 8)
    with pytest.raises(ValueError, match="bits"):  # 40 filters need 64-lane blocks
        XnorConvWeights(good.bits, good.tap_popcounts, np.ones(40, np.float32), 40, 3, 3, 8)


def test_out_parameter_is_validated_and_written():
    args = _valid_args()
    out = np.full((1, 5, 5, 4), np.nan, dtype=np.float32)
    result = conv2d_xnor(**args, out=out)
    assert result is out
    np.testing.assert_array_equal(out, conv2d_xnor(**args))
    with pytest.raises(ValueError, match="out must be"):
        conv2d_xnor(**args, out=np.empty((1, 5, 5, 5), dtype=np.float32))


# ---------------------------------------------------------------------------------------
# Without AVX-512: LLVM lowers the <16 x i32> popcounts differently (vpshufb-based on
# AVX2). Compiled for a Haswell target in a subprocess, with its own numba cache.
# ---------------------------------------------------------------------------------------
_HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
                     "+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")

_PORTABLE_CHECK = """
import numpy as np
from yolo8.kernels.xnor import XnorConvWeights, conv2d_xnor, conv2d_xnor_reference, _xnor_conv
rng = np.random.default_rng(5)
x = rng.standard_normal((2, 9, 7, 130)).astype(np.float32)
x[rng.random(x.shape) < 0.2] = 0.0
for cout in (37, 20):  # the 4 x 64 and the 8 x 32 tile
    w = rng.standard_normal((cout, 3, 3, 130)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    y = conv2d_xnor(x, XnorConvWeights.from_float(w), b, 2, 1, "leaky")
    assert np.array_equal(y, conv2d_xnor_reference(x, w, b, 2, 1, "leaky"))
asm = _xnor_conv.inspect_asm(_xnor_conv.signatures[0])
assert "zmm" not in asm and "vpopcntd" not in asm, "not an AVX2-only build"
print("ok")
"""


def test_kernel_without_avx512_popcount(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES=_HASWELL_FEATURES,
               NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _PORTABLE_CHECK], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
