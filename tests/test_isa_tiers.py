"""Every x86 tier, compiled for its own target on this CPU: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
of `kernels.common.TARGETS`, each tier in subprocesses with a numba cache of its own.

Per tier: the default INT8 kernel tier is the expected one; its hot loops contain the tier's
instruction and no stack access (no spills); a lean set of the kernel tests (INT8, FP32,
pooling, XNOR) passes; integer GEMM results and INT8 model outputs are bit-identical to the
native build's; `yolo8 detect --backend int8` finds the same detections. A tier this CPU
cannot execute skips, naming the missing flags.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from .asm import hot_loop
from .conftest import PHOTOS, ROOT
from yolo8.kernels.common import TARGETS, host_cannot_run, target_env

# target -> (INT8 tier it must choose, its instruction in the hot loop as a regex, the FP32
# micro-kernel shapes it uses and their vector registers)
EXPECTED = {
    "avx2": ("avx2", r"\bvpmaddwd\b.*%ymm", ["6x1"], "ymm"),
    "avxvnni": ("avxvnni", r"\{vex\}\s+vpdpbusd\b.*%ymm", ["6x1"], "ymm"),
    "avx512": ("avx512vnni", r"\bvpdpbusd\b.*%zmm", ["12x1", "12x2", "6x4"], "zmm"),
}
# A lean selection of the kernel tests: compiling the kernels for a target is most of the time.
KERNEL_TESTS = ["tests/test_kernels_int8.py", "tests/test_winograd_int8.py",
                "tests/test_kernels_fp32.py", "tests/test_kernels_xnor.py"]
KERNEL_SELECTION = (
    "equals_reference_on_odd_shapes or extreme_values or shifted_sum_wraps or conv_is_bit_exact"
    " or large_k or gemm_conv_matches_reference or winograd_matches_reference"
    " or maxpool_matches_reference or gemm_bias_act_matches or conv_equals_float_reference_exactly"
    " or dot_equals_integer_reference or winograd_conv or wraps")

# Run first, on the empty cache, so that the kernels it inspects are compiled in-process
# (numba cannot show the assembly of a kernel loaded from its cache).
PROBE = r"""
import json, sys
import numpy as np
import yolo8
from yolo8.kernels import gemm_fp32, gemm_int8
from yolo8.preprocess import read_image, to_blob

out_dir, photo = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(2024)
a = rng.integers(-128, 128, (67, 301)).astype(np.int8)
b = rng.integers(-128, 128, (45, 301)).astype(np.int8)
a[:3], b[:2] = -128, 127  # the extremes: pairs of products beyond int16
np.save(f"{out_dir}/gemm.npy", gemm_int8.gemm_s8s8s32(a, b))
model = yolo8.load(backend="int8")
outputs = model.forward_nhwc(to_blob([read_image(photo)], 416, 416))
np.savez(f"{out_dir}/int8_outputs.npz", *outputs)
tier = gemm_int8.default_variant()
# The tile loops, which inline the micro-kernel dispatch and hold the IR micro-kernels.
int8_asm = gemm_int8._tiles.inspect_asm(gemm_int8._tiles.signatures[0])
fp32_asm = gemm_fp32._gemm_tiles.inspect_asm(gemm_fp32._gemm_tiles.signatures[0])
json.dump({"tier": tier, "int8_asm": int8_asm, "fp32_asm": fp32_asm},
          open(f"{out_dir}/probe.json", "w"))
print("ok")
"""


def _run(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _hot_loops(probe_file, int8_pattern: str, fp32_shapes: list[str], fp32_register: str) -> dict:
    """The probe's tier and, per micro-kernel of it, its hot loop (tests/asm.py)."""
    from yolo8.kernels import gemm_int8

    probe = json.loads(probe_file.read_text())
    tier, loops = probe["tier"], {}
    t = gemm_int8.TIERS[tier]
    for nv in t.widths:
        name = f"yolo8_int8_{tier}_{min(gemm_int8.MAX_ROWS, t.accumulators // nv)}x{nv}"
        loops[name] = hot_loop(probe["int8_asm"], name, int8_pattern)
    for shape in fp32_shapes:
        name = f"yolo8_fp32_fma_{shape}"
        loops[name] = hot_loop(probe["fp32_asm"], name, r"\bvfmadd\w*ps\b.*%" + fp32_register)
    return {"tier": tier, "loops": loops}


def _tier_run(target: str, tmp_path_factory) -> dict:
    """Probe, kernel tests and an INT8 detect, all compiled for `target`."""
    out = tmp_path_factory.mktemp(f"tier-{target}")
    env = {**os.environ, **target_env(target), "NUMBA_CACHE_DIR": str(out / "numba-cache")}
    pattern, shapes, register = (EXPECTED[target][1:] if target in EXPECTED
                                 else (r"\bvpdpbusd\b", [], "zmm"))
    probe = _run(["-c", PROBE, str(out), str(PHOTOS[0])], env, 600)
    assert probe.returncode == 0 and probe.stdout.strip().endswith("ok"), probe.stderr[-3000:]
    detect = _run(["-m", "yolo8", "detect", *map(str, PHOTOS), "--backend", "int8", "--no-save",
                   "-q", "--json", str(out / "detections.json")], env, 600)
    assert detect.returncode == 0, detect.stderr[-3000:]
    return {"dir": out, "env": env, "probe": _hot_loops(out / "probe.json", pattern, shapes, register),
            "detections": json.loads((out / "detections.json").read_text())}


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict:
    return _tier_run("native", tmp_path_factory)


@pytest.fixture(scope="module", params=list(TARGETS))
def tier(request, tmp_path_factory) -> dict:
    target = request.param
    reason = host_cannot_run(target)
    if reason:
        pytest.skip(f"{target} tier not run: {reason}")
    return {"target": target, **_tier_run(target, tmp_path_factory)}


def test_target_chooses_its_int8_tier(tier):
    assert tier["probe"]["tier"] == EXPECTED[tier["target"]][0]


def test_hot_loops_use_the_tier_instruction_without_spills(tier):
    loops = tier["probe"]["loops"]
    assert len(loops) >= 2  # every INT8 tile shape of the tier and the FP32 ones
    for name, loop in loops.items():
        assert loop, f"{name}: no loop with the tier's instruction"
        spills = [line for line in loop if "%rsp" in line]
        assert not spills, f"{name}: stack accesses in the inner loop: {spills}"


def test_kernel_tests_pass(tier):
    done = _run(["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *KERNEL_TESTS, "-k",
                 KERNEL_SELECTION], tier["env"], 900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\d+ passed", done.stdout), done.stdout[-500:]


def test_integer_results_identical_to_native(tier, native):
    gemm = np.load(tier["dir"] / "gemm.npy")
    np.testing.assert_array_equal(gemm, np.load(native["dir"] / "gemm.npy"))
    assert gemm.min() < -2**15 and gemm.max() > 2**15  # beyond int16: no saturation hidden


def test_int8_model_outputs_and_detections_identical_to_native(tier, native):
    with np.load(tier["dir"] / "int8_outputs.npz") as mine, \
            np.load(native["dir"] / "int8_outputs.npz") as theirs:
        assert list(mine) == list(theirs)
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])
    assert tier["detections"] == native["detections"] and len(native["detections"]) > 5
