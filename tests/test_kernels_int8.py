"""INT8 kernels: the exact integer GEMM, the quantization, and the INT8 convolution.

Every kernel tier the compile target can run (AVX-512 VNNI, AVX-VNNI, AVX2, and the portable
numba fallback everywhere) must equal the plain-numpy references bit for bit. Other compile
targets (and the assembly of each tier) are tested in test_isa_tiers.py.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yolo8.kernels import gemm_int8
from yolo8.kernels.activations import LEAKY, LINEAR, LOGISTIC, MISH, SWISH
from yolo8.kernels.conv_int8 import (
    Int8ConvWeights,
    conv2d_int8,
    conv2d_int8_reference,
    quantize,
    quantize_reference,
    quantize_weights,
)
from yolo8.kernels.gemm_int8 import MAX_K, gemm_s8s8s32, gemm_s8s8s32_reference


def _tier_param(tier: str):
    return pytest.param(tier, marks=pytest.mark.skipif(
        not gemm_int8.tier_available(tier), reason=f"compile target without the {tier} tier"))


VARIANTS = [_tier_param(tier) for tier in gemm_int8.VARIANTS]
GEMMS = VARIANTS + ["auto"]


@pytest.fixture(autouse=True)
def split_small_problems_across_threads(monkeypatch):
    """The test shapes are small, which the kernels would run on one thread; make them use
    every numba thread so that the chunked parallel tile loop is what gets tested."""
    monkeypatch.setattr(gemm_int8, "SERIAL_MAX_MACS", 0)


def random_int8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-128, 128, size=shape).astype(np.int8)


# ----------------------------------------------------------------------------------------------
# GEMM
# ----------------------------------------------------------------------------------------------

# (M, N, K): N <= 16, <= 32 and > 32 select the three tile shapes (24x16, 12x32, 6x64); M, N
# and K are mostly not multiples of the tile sizes or of 4, and K=1 is a single padded group.
GEMM_SHAPES = [(1, 1, 1), (1, 17, 5), (7, 3, 1), (2, 16, 4), (13, 33, 29), (25, 70, 145),
               (30, 31, 7), (97, 65, 259), (5, 129, 64)]


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_gemm_equals_reference_on_odd_shapes(gemm, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (n, k))
    np.testing.assert_array_equal(gemm_s8s8s32(a, b, variant=gemm), gemm_s8s8s32_reference(a, b))


@pytest.mark.parametrize("gemm", GEMMS)
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 60), n=st.integers(1, 140), k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_gemm_equals_reference_on_random_shapes(gemm, m, n, k, seed):
    rng = np.random.default_rng(seed)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (n, k))
    np.testing.assert_array_equal(gemm_s8s8s32(a, b, variant=gemm), gemm_s8s8s32_reference(a, b))


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("k", [9216, 18432])
def test_gemm_extreme_values_do_not_saturate(gemm, k):
    # Pairs of products of +-127/-128 exceed int16 (2 * 128 * 128 = 32768): any int16
    # intermediate (vpmaddubsw, vpmaddwd on saturated words) would show up here.
    # All rows repeat with period 4, so the exact sums are one period's sum times K / 4.
    a_period = np.array([[-128] * 4, [127] * 4, [-128, 127] * 2, [127, -127] * 2], np.int64)
    b_period = np.array([[-128] * 4, [127] * 4, [-127] * 4, [-128, -128, 127, 127]], np.int64)
    expected = (a_period @ b_period.T) * (k // 4)
    assert np.abs(expected).max() > 2**27
    a = np.tile(a_period, (1, k // 4)).astype(np.int8)
    b = np.tile(b_period, (1, k // 4)).astype(np.int8)
    np.testing.assert_array_equal(gemm_s8s8s32(a, b, variant=gemm), expected.astype(np.int32))
    np.testing.assert_array_equal(gemm_s8s8s32_reference(a, b), expected.astype(np.int32))


@pytest.mark.parametrize("gemm", GEMMS)
def test_gemm_result_is_exact_when_the_shifted_sum_wraps(gemm):
    # The fast path adds (a + 128) * b, which for this K exceeds 2**31 (255 * 127 * K) and
    # wraps; the true sum 127 * 127 * K fits, and wrapping arithmetic must recover it.
    k = 70001
    assert 255 * 127 * k > 2**31 > 127 * 127 * k
    a = np.full((2, k), 127, np.int8)
    b = np.full((3, k), 127, np.int8)
    b[1] = -127
    expected = np.array([[127 * 127 * k, -127 * 127 * k, 127 * 127 * k]] * 2, np.int32)
    np.testing.assert_array_equal(gemm_s8s8s32(a, b, variant=gemm), expected)


def test_gemm_accepts_row_strided_operands():
    rng = np.random.default_rng(5)
    big = random_int8(rng, (20, 40))
    a, b = big[::3, 3:30], big[1::2, 5:32]  # rows strided, K contiguous
    np.testing.assert_array_equal(gemm_s8s8s32(a, b), gemm_s8s8s32_reference(a, b))


def test_gemm_rejects_bad_operands(monkeypatch):
    a = np.zeros((3, 8), np.int8)
    with pytest.raises(ValueError, match="int8"):
        gemm_s8s8s32(a.astype(np.int16), a)
    with pytest.raises(ValueError, match="2-D"):
        gemm_s8s8s32(a.reshape(-1), a)
    with pytest.raises(ValueError, match="K differs"):
        gemm_s8s8s32(a, np.zeros((3, 7), np.int8))
    with pytest.raises(ValueError, match="contiguous along K"):
        gemm_s8s8s32(np.zeros((3, 16), np.int8)[:, ::2], a)
    assert gemm_s8s8s32(np.zeros((0, 8), np.int8), a).shape == (0, 3)
    np.testing.assert_array_equal(gemm_s8s8s32(np.ones((2, 0), np.int8), np.ones((3, 0), np.int8)),
                                  np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="overflow"):
        gemm_s8s8s32(np.zeros((1, MAX_K + 1), np.int8), np.zeros((1, MAX_K + 1), np.int8))
    with pytest.raises(ValueError, match="variant"):
        gemm_s8s8s32(a, a, variant="avx9")
    monkeypatch.setattr(gemm_int8, "target_features", lambda: frozenset({"+avx", "+fma"}))
    with pytest.raises(ValueError, match="avx2"):
        gemm_s8s8s32(a, a, variant="avx2")
    gemm_int8.default_variant.cache_clear()
    try:
        assert gemm_int8.default_variant() == "portable"
    finally:
        gemm_int8.default_variant.cache_clear()


# ----------------------------------------------------------------------------------------------
# Quantization
# ----------------------------------------------------------------------------------------------

QUANTIZERS = [quantize_reference, quantize]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_quantize_rounds_half_to_even_and_saturates(quantizer):
    # multiplier 2 is exact, so x * 2 below are exact ties or exact out-of-range values.
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.25, 63.75, -63.75, 100.0, -1e30,
                  np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    expected = [0, 2, 2, 0, -2, -2, 126, 127, -127, 127, -127, 127, -127, 0, 0, 0]
    np.testing.assert_array_equal(quantizer(x, 2.0), np.array(expected, np.int8))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_quantize_rounds_the_float32_product(quantizer):
    # x chosen so that the float32 product x * m is exactly k + 0.5 (then half-even), while
    # the float64 product is not a tie: rounding must happen after a float32 multiply.
    m = np.float32(127 / 3)
    x, expected, float64_differs = [], [], 0
    for k in range(1, 100):
        xk = np.float32((k + 0.5) / np.float64(m))
        if xk * m != np.float32(k + 0.5):
            continue
        x.append(xk)
        expected.append(k if k % 2 == 0 else k + 1)
        float64_differs += int(np.rint(np.float64(xk) * np.float64(m)) != expected[-1])
    assert len(x) > 10 and float64_differs > 0
    np.testing.assert_array_equal(quantizer(np.array(x, np.float32), m), np.array(expected, np.int8))


def test_fast_quantize_equals_reference_on_random_data():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 17, 19, 7)) * 4).astype(np.float32)
    for multiplier in (np.float32(127 / 3.7), np.float32(1.0), np.float32(250.0)):
        np.testing.assert_array_equal(quantize(x, multiplier), quantize_reference(x, multiplier))


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        quantize(np.zeros(4, np.float64), 1.0)
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="multiplier"):
            quantize(np.zeros(4, np.float32), bad)


def test_weight_quantization_is_per_channel_max_abs():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 3, 3, 7)).astype(np.float32)
    w[3] = 0.0  # an all-zero channel
    w[1] *= 1000.0
    wq, w_scale = quantize_weights(w)
    assert wq.dtype == np.int8 and w_scale.dtype == np.float32 and wq.shape == w.shape
    assert w_scale[3] == 1.0 and not wq[3].any()
    for co in (0, 1, 2, 4):
        assert np.abs(wq[co]).max() == 127
        np.testing.assert_allclose(w_scale[co], np.abs(w[co]).max() / 127, rtol=1e-6)
        # Rounding to the nearest step: error at most half a step (plus float32 slack).
        assert np.abs(wq[co] * np.float64(w_scale[co]) - w[co]).max() <= 0.5 * w_scale[co] * (1 + 1e-5)


def test_weight_quantization_rounds_half_to_even():
    # max |w| = 127 gives scale exactly 1, so w / scale are the ties themselves.
    w = np.array([127.0, 0.5, 1.5, 2.5, -2.5, -3.5, 126.5], np.float32).reshape(1, 1, 1, -1)
    wq, w_scale = quantize_weights(w)
    assert w_scale[0] == 1.0
    np.testing.assert_array_equal(wq.reshape(-1), [127, 0, 2, 2, -2, -4, 126])


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------

# (n, h, w, cin, cout, size, stride, pad, groups): odd sizes and channel counts, both tile
# tails, strides 1 and 2, sizes 1 and 3, pad 0 and 1, groups 1 and 2, batch 2.
CONV_CASES = [
    (2, 7, 9, 5, 17, 3, 1, 1, 1),
    (2, 9, 6, 13, 33, 3, 2, 1, 1),
    (1, 11, 10, 6, 10, 3, 2, 0, 2),
    (2, 5, 7, 14, 70, 3, 1, 0, 2),
    (2, 6, 5, 13, 65, 1, 1, 0, 1),
    (1, 9, 8, 7, 3, 1, 2, 0, 1),
    (2, 4, 6, 10, 6, 1, 1, 1, 2),
    (1, 13, 13, 33, 130, 3, 1, 1, 1),
]


def make_layer(rng, cin, cout, size, groups):
    w = rng.standard_normal((cout, size, size, cin // groups)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    return Int8ConvWeights.from_float(w, groups), bias, w


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n,h,w,cin,cout,size,stride,pad,groups", CONV_CASES)
def test_conv_is_bit_exact_with_reference(variant, n, h, w, cin, cout, size, stride, pad, groups):
    # Bit-exact: same int32 sums, then the same float32 multiply and add in the same order
    # (no FMA contraction in the kernel), and leaky/linear are exact float32 operations.
    rng = np.random.default_rng(n + h * 7 + cin * 31 + cout)
    weights, bias, _ = make_layer(rng, cin, cout, size, groups)
    x = (rng.standard_normal((n, h, w, cin)) * 2).astype(np.float32)
    multiplier = np.float32(127 / 5.0)
    for activation in (LEAKY, LINEAR):
        expected = conv2d_int8_reference(x, weights, bias, multiplier, stride, pad, activation, groups)
        out = conv2d_int8(x, weights, bias, multiplier, stride, pad, activation, groups, variant=variant)
        assert out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_other_activations_within_float_rounding(variant):
    # The kernel uses `activate` (float32 exp, float64 division), the reference
    # `activate_numpy` (float64 throughout): they may differ by a couple of float32 ulps.
    rng = np.random.default_rng(8)
    weights, bias, _ = make_layer(rng, 9, 21, 3, 1)
    x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    for activation in (LOGISTIC, MISH, SWISH):
        expected = conv2d_int8_reference(x, weights, bias, 30.0, 1, 1, activation)
        out = conv2d_int8(x, weights, bias, 30.0, 1, 1, activation, variant=variant)
        np.testing.assert_allclose(out, expected, rtol=4e-7, atol=4e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_approximates_float_convolution(variant):
    # An independent check of the semantics (tap order, groups, scales) against a float64
    # convolution of the unquantized tensors. Per output, the error is bounded by the
    # rounding of each factor (at most half a step of each):
    #   sum_k |x| * w_scale / 2 + |w| / (2 m) + w_scale / (4 m)
    rng = np.random.default_rng(4)
    n, h, w, cin, cout, size, stride, pad, groups = 2, 8, 7, 6, 10, 3, 2, 1, 2
    weights, bias, wf = make_layer(rng, cin, cout, size, groups)
    x = rng.uniform(-2, 2, (n, h, w, cin)).astype(np.float32)
    multiplier = np.float32(127 / 2.0)
    out = conv2d_int8(x, weights, bias, multiplier, stride, pad, LINEAR, groups, variant=variant)

    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = out.shape[1:3]
    cg, coutg = cin // groups, cout // groups
    exact = np.zeros(out.shape)
    bound = np.zeros(out.shape)
    for g in range(groups):
        wg = wf[g * coutg:(g + 1) * coutg].astype(np.float64)
        sg = weights.w_scale[g * coutg:(g + 1) * coutg].astype(np.float64)
        for ky in range(size):
            for kx in range(size):
                patch = xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride,
                           g * cg:(g + 1) * cg]
                exact[..., g * coutg:(g + 1) * coutg] += patch @ wg[:, ky, kx, :].T
                bound[..., g * coutg:(g + 1) * coutg] += (
                    np.abs(patch).sum(-1, keepdims=True) * sg / 2
                    + np.abs(wg[:, ky, kx, :]).sum(-1) / (2 * multiplier)
                    + cg * sg / (4 * multiplier))
    exact += bias
    assert np.all(np.abs(out - exact) <= bound * 1.001 + 1e-4)
    assert np.abs(out - exact).max() > 0  # it is quantized


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_uses_the_quantized_input_exactly(variant):
    # Identity 1x1 weights (scale 1/127, wq = 127): y = 127 q * out_scale ~ q / m, so the
    # fused quantization is recovered as rint(y * m). The inputs hit ties and saturation.
    c = 7
    weights = Int8ConvWeights.from_float(np.eye(c, dtype=np.float32).reshape(c, 1, 1, c))
    x = np.array([0.25, 0.75, 1.25, -0.75, 63.75, -80.0, 3.1, 0.0] * 12, np.float32)[:3 * 4 * c]
    x = x.reshape(1, 3, 4, c)
    out = conv2d_int8(x, weights, np.zeros(c, np.float32), 2.0, 1, 0, LINEAR, variant=variant)
    np.testing.assert_array_equal(np.rint(out * 2.0).astype(np.int8), quantize_reference(x, 2.0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv_large_k_at_full_scale(variant):
    # K = 3*3*1024 = 9216 with every q and wq at +-127: sums of 1.5e8 (no int16 anywhere).
    cin, cout = 1024, 3
    w = np.ones((cout, 3, 3, cin), np.float32)
    w[1] = -1.0
    w[2, :, :, ::2] = -1.0
    weights = Int8ConvWeights.from_float(w)
    x = np.full((1, 3, 3, cin), 10.0, np.float32)  # saturates to q = 127 at m = 127 / 3
    m = np.float32(127 / 3)
    out = conv2d_int8(x, weights, np.zeros(cout, np.float32), m, 1, 0, LINEAR, variant=variant)
    k = 9 * cin
    acc = np.array([127 * 127 * k, -127 * 127 * k, 0], np.int64)
    expected = acc.astype(np.float32) * np.float32(weights.w_scale / m)
    np.testing.assert_array_equal(out.reshape(-1), expected)
    np.testing.assert_array_equal(
        out, conv2d_int8_reference(x, weights, np.zeros(cout, np.float32), m, 1, 0, LINEAR))


def test_conv_buffers_follow_shape_and_multiplier_changes():
    rng = np.random.default_rng(9)
    weights, bias, _ = make_layer(rng, 5, 9, 3, 1)
    calls = [((1, 6, 7, 5), 20.0, 1), ((2, 4, 4, 5), 20.0, 1), ((1, 6, 7, 5), 35.0, 0),
             ((1, 6, 7, 5), 35.0, 0)]
    for shape, multiplier, pad in calls:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(
            conv2d_int8(x, weights, bias, multiplier, 1, pad, LEAKY),
            conv2d_int8_reference(x, weights, bias, multiplier, 1, pad, LEAKY))


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_calls_run_serially_with_the_same_result(monkeypatch, variant):
    rng = np.random.default_rng(12)
    weights, bias, _ = make_layer(rng, 7, 19, 3, 1)
    x = rng.standard_normal((2, 9, 8, 7)).astype(np.float32)
    a, b = random_int8(rng, (37, 50)), random_int8(rng, (21, 50))
    threads = numba.get_num_threads()
    monkeypatch.setattr(gemm_int8, "SERIAL_MAX_MACS", 10**12)
    np.testing.assert_array_equal(
        conv2d_int8(x, weights, bias, 20.0, 1, 1, LEAKY, variant=variant),
        conv2d_int8_reference(x, weights, bias, 20.0, 1, 1, LEAKY))
    np.testing.assert_array_equal(gemm_s8s8s32(a, b, variant=variant), gemm_s8s8s32_reference(a, b))
    assert numba.get_num_threads() == threads  # restored after the serial section


def test_conv_rejects_bad_arguments():
    rng = np.random.default_rng(1)
    weights, bias, w = make_layer(rng, 4, 6, 3, 2)
    x = rng.standard_normal((1, 5, 5, 4)).astype(np.float32)
    good = dict(x=x, weights=weights, bias=bias, multiplier=10.0, stride=1, pad=1,
                activation=LEAKY, groups=2)
    bad_cases = [
        (dict(x=x.astype(np.float64)), "float32"),
        (dict(x=np.asfortranarray(x)), "C-contiguous"),
        (dict(x=x[0]), "NHWC"),
        (dict(x=np.zeros((1, 5, 5, 6), np.float32)), "channels"),
        (dict(weights=w), "Int8ConvWeights"),
        (dict(bias=bias[:5]), "bias"),
        (dict(bias=bias.astype(np.float64)), "bias"),
        (dict(multiplier=0.0), "multiplier"),
        (dict(multiplier=np.nan), "multiplier"),
        (dict(stride=0), "stride"),
        (dict(pad=-1), "pad"),
        (dict(activation=99), "activation"),
        (dict(groups=1), "groups"),
        (dict(x=np.zeros((1, 1, 1, 4), np.float32), pad=0), "does not fit"),
    ]
    for change, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            conv2d_int8(**{**good, **change})
    with pytest.raises(ValueError, match="variant"):
        conv2d_int8(**good, variant="sse")
    with pytest.raises(ValueError, match="groups"):
        Int8ConvWeights.from_float(w, groups=4)
    with pytest.raises(ValueError, match="NaN"):
        Int8ConvWeights.from_float(np.full((2, 1, 1, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        Int8ConvWeights(np.full((2, 1, 1, 2), -128, np.int8), np.ones(2, np.float32))
