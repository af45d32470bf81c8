"""The bf16 backend: its convolution against numpy on bf16-rounded operands, the rounding, the
whole network and its detections against FP32, the hot loop's assembly, and the refusal on a
compile target without avx512_bf16.

Kernel bound. Products of two bf16 values (8-bit significands) are exact in float32, so the
kernel and `conv2d_bf16_reference` (float64 sums of the same bf16-rounded operands) differ only
by the float32 additions: vdpbf16ps adds each pair of products (one rounding) then the
accumulator (one more), so a sum of K products sees at most K roundings along any path, plus
the bias and the result's own: gamma_n * magnitude with n = K + 4 and magnitude the same sum on
absolute values (as in test_kernels_fp32). A wrong index, a wrong pair order or a truncation in
place of round-to-nearest-even gives errors of the order of magnitude * 2^-9 and more, far above.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import yolo8
from yolo8.kernels.activations import CODES, LEAKY, LINEAR, activate_numpy
from yolo8.kernels.common import TARGETS, output_size
from yolo8.kernels.conv_fp32 import conv2d_reference
from yolo8.kernels.conv_bf16 import (Bf16Conv, conv2d_bf16_reference, round_to_bf16,
                                     to_bf16_bits)
from yolo8.kernels.gemm_fp32 import STEP_BF16, step_available
from yolo8.preprocess import read_image, to_blob

from .asm import hot_loop
from .conftest import PHOTOS, ROOT, run_yolo8
from .oracle import has_partner

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(not step_available(STEP_BF16),
                                 reason="numba's compile target has no avx512_bf16")]
EPS32 = float(np.finfo(np.float32).eps)


def _magnitude(x, w, bias, stride, pad, groups):
    """The convolution on absolute values of the bf16-rounded operands (float64)."""
    return conv2d_bf16_reference(np.abs(x), np.abs(w), np.abs(bias), stride, pad, groups,
                                 LINEAR).astype(np.float64)


# (n, h, w, cin, cout, k, stride, pad, groups, activation): odd channel counts (padded to
# even), strides, groups and depthwise, 1x1, a batch, K long enough to be split into chunks
# of taps (3x3x300), every fused and unfused activation path.
SHAPES = [
    (1, 9, 11, 3, 16, 3, 1, 1, 1, LEAKY),       # a first layer: 3 channels
    (2, 13, 7, 17, 70, 3, 2, 1, 1, LINEAR),
    (1, 8, 8, 6, 6, 3, 1, 1, 6, LEAKY),         # depthwise
    (1, 6, 5, 8, 40, 1, 1, 0, 2, LEAKY),
    (1, 6, 6, 300, 33, 3, 1, 1, 1, CODES["mish"]),
    (3, 5, 4, 64, 255, 1, 1, 0, 1, LINEAR),     # a head feeder's shape
]


@pytest.mark.parametrize("shape", SHAPES)
def test_conv_matches_numpy_on_bf16_operands(shape):
    n, h, w, cin, cout, k, stride, pad, groups, act = shape
    rng = np.random.default_rng(cin * cout + k)
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    wt = rng.standard_normal((cout, k, k, cin // groups)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    got = Bf16Conv(wt, bias, stride, pad, groups, act)(x)
    pre = conv2d_bf16_reference(x, wt, bias, stride, pad, groups, LINEAR).astype(np.float64)
    want = activate_numpy(pre.astype(np.float32), act)
    bound = (k * k * cin // groups + 4) * EPS32 * _magnitude(x, wt, bias, stride, pad, groups)
    bound = 1.1 * bound + 4 * EPS32 * np.abs(want) + 1e-30  # through the activation
    assert got.shape == (n, output_size(h, k, stride, pad), output_size(w, k, stride, pad), cout)
    assert np.all(np.abs(got - want) <= bound)
    # float32 operands would give results ~2^-9 (relative) away: for short sums the bound
    # tells them apart (for K in the thousands the worst-case bound is wider than that).
    if k * k * cin // groups <= 200:
        assert np.any(np.abs(got - conv2d_reference(x, wt, bias, stride, pad, groups, act))
                      > bound)


def test_rounding_is_to_nearest_even():
    one = 1.0
    ulp = 2.0 ** -7  # bf16's at 1
    values = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 2 + 2 ** -20, -(one + ulp / 2),
                       3.4e38, 1e-3, 0.0, -0.0], np.float32)
    want = np.array([one, one + 2 * ulp, one + ulp, -one, np.inf, 0.00099945068359375, 0.0, -0.0],
                    np.float32)
    got = round_to_bf16(values)
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[-1])
    nan = to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.all(np.isnan((nan.astype(np.uint32) << 16).view(np.float32)))


def test_input_conversion_in_the_kernel_rounds_as_numpy():
    """A 1x1 identity conv returns bf16(x) exactly (one exact product per output, plus zeros):
    the numba conversion into the padded buffer equals to_bf16_bits bit for bit, ties too."""
    rng = np.random.default_rng(5)
    c = 7
    x = rng.standard_normal((2, 5, 6, c)).astype(np.float32)
    ties = (to_bf16_bits(x).astype(np.uint32) << 16) | 0x8000  # exactly halfway
    x.reshape(-1)[::3] = ties.reshape(-1)[::3].view(np.float32)
    identity = np.eye(c, dtype=np.float32).reshape(c, 1, 1, c)
    got = Bf16Conv(identity, np.zeros(c, np.float32), 1, 0, 1, LINEAR)(x)
    np.testing.assert_array_equal(got.view(np.uint32), round_to_bf16(x).view(np.uint32))


# Whole network, bf16 against FP32 on the 5 test photos (yolov3-tiny). Each input of a bf16
# conv is rounded to 2^-9 relative. Measured, max |d prob|, mean |d box|, mean |d objectness|
# (INT8: 0.155, 0.021, 1.0e-3):
#   default (first conv and head feeders FP32): 0.0052, 0.0012, 4.3e-5;
#   every conv in bf16:                         0.020,  0.0044, 1.6e-4.
# The bounds are ~2x those (loose: they guard against a broken kernel, which moves
# probabilities by tenths), and the outputs must differ (bf16 really ran).
BOUNDS = {"default": (0.01, 0.0025, 1e-4), "every conv": (0.04, 0.009, 3.2e-4)}


@pytest.fixture(scope="module")
def models(default_weights):
    return yolo8.load(), yolo8.load(backend="bf16")


def test_default_keeps_first_conv_and_head_feeders_fp32(models):
    from yolo8.backends import bf16

    graph = models[1].graph
    assert bf16.default_fp32_layers(graph) == {0, 15, 22}  # yolov3-tiny


@pytest.mark.parametrize("variant", list(BOUNDS))
def test_network_close_to_fp32_on_photos(models, variant):
    from yolo8.backends import bf16

    blob = to_blob([read_image(p) for p in PHOTOS], 416, 416).transpose(0, 3, 1, 2).copy()
    fp32, model = models
    program = model.program if variant == "default" else bf16.build(model.graph, keep_fp32=())
    max_prob, mean_box, mean_obj = BOUNDS[variant]
    n = len(blob)
    for a, b in zip(fp32.forward(blob), program_forward(model, program, blob)):
        a, b = (o.reshape(n, 3, 85, *o.shape[2:]) for o in (a, b))
        probs_a, probs_b = a[:, :, 4:5] * a[:, :, 5:], b[:, :, 4:5] * b[:, :, 5:]
        assert np.abs(probs_a - probs_b).max() <= max_prob
        assert 0 < np.abs(a[:, :, :4] - b[:, :, :4]).mean() <= mean_box
        assert np.abs(a[:, :, 4] - b[:, :, 4]).mean() <= mean_obj


def program_forward(model, program, blob):
    """model.forward with another program of the same graph."""
    saved, model.program = model.program, program
    try:
        return model.forward(blob)
    finally:
        model.program = saved


def test_detections_close_to_fp32(models):
    """Every box of one backend scoring >= 0.15 has a box of the other (found at thresh 0.1):
    same class, IoU >= 0.9, score within 0.02 (measured: 26 boxes, scores within 0.0052, IoU
    >= 0.995; every conv in bf16: within 0.021, IoU >= 0.98)."""
    compared = 0
    for path in PHOTOS:
        image = read_image(path)
        fp32, bf16 = (m.detect(image, thresh=0.1) for m in models)
        for mine, theirs in ((fp32, bf16), (bf16, fp32)):
            for d in (d for d in mine if d.score >= 0.15):
                compared += 1
                assert has_partner(d, theirs, iou=0.9, score=0.02), (path, d)
    assert compared >= 10


PROBE = r"""
import re, sys
import numpy as np
from yolo8.kernels import gemm_fp32
from yolo8.kernels.conv_fp32 import conv2d_reference
from yolo8.kernels.conv_bf16 import Bf16Conv
for cout in (16, 32, 64):  # nv = 1, 2, 4
    Bf16Conv(np.ones((cout, 3, 3, 5), np.float32), np.zeros(cout, np.float32), 1, 1, 1, 0)(
        np.ones((1, 7, 7, 5), np.float32))
asm = gemm_fp32._gemm_tiles.inspect_asm(gemm_fp32._gemm_tiles.signatures[0])
print(asm)
"""


def test_hot_loops_are_vdpbf16ps_on_zmm_without_spills_or_amx(tmp_path):
    # A fresh cache: numba does not show the assembly of cached code.
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    asm = done.stdout
    from yolo8.kernels.gemm_fp32 import rows_per_tile

    for nv in (1, 2, 4):
        name = f"yolo8_bf16_{rows_per_tile(nv)}x{nv}"
        loop = hot_loop(asm, name, r"\bvdpbf16ps\b")
        dots = [l for l in loop if "vdpbf16ps" in l]
        assert len(dots) >= rows_per_tile(nv) * nv, name  # one tile step at least
        assert all("zmm" in l for l in dots), name
        assert not [l for l in loop if "%rsp" in l], f"{name}: spills in the K loop"
    assert not re.search(r"\b(tdp\w+|tileloadd\w*|ldtilecfg|tilerelease)\b", asm)  # no AMX


def test_refused_on_a_target_without_avx512_bf16(tmp_path):
    """numba compiling for an AVX-512 VNNI CPU without BF16 (icelake-server): one line on
    stderr naming the missing feature, no traceback, the CLI's exit status for errors (2)."""
    cpu, features, _ = TARGETS["avx512"]
    assert "avx512bf16" not in features
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "yolo8", "detect", str(PHOTOS[0]), "--backend",
                           "bf16", "--no-save"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "avx512_bf16" in lines[0] and "compile target" in lines[0], lines
    assert cpu in lines[0] and "+avx512bf16" in lines[0]
    assert "Traceback" not in done.stderr


def test_cli_detect_with_bf16(tmp_path):
    out = tmp_path / "dets.json"
    done = run_yolo8("detect", *PHOTOS, "--backend", "bf16", "--no-save", "-q", "--json", out)
    assert done.returncode == 0, done.stderr
    assert {d["name"] for d in json.loads(out.read_text())} >= {"giraffe", "dog"}


def test_bf16_refuses_a_calibration(tmp_path):
    done = run_yolo8("detect", PHOTOS[0], "--backend", "bf16", "--calibration",
                     tmp_path / "x.json", "--no-save")
    assert done.returncode != 0 and "int8 backend only" in done.stderr
    assert "Traceback" not in done.stderr
