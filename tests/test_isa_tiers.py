"""Every x86 tier, compiled for its own target on this CPU: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
of `kernels.common.TARGETS`, each tier in subprocesses with a numba cache of its own.

Per tier: the default INT8 kernel tier is the expected one; its hot loops contain the tier's
instruction and no stack access (no spills), and so do the XNOR kernel's (vpopcntd) where the
target has AVX512-VPOPCNTDQ (the avx512 tier's Ice Lake; the host, if it has it); a lean set
of the kernel tests (INT8, FP32, pooling, XNOR) passes; integer GEMM results and INT8 model
outputs are bit-identical to the native build's; `yolo8 detect --backend int8` finds the same
detections. A tier this CPU cannot execute skips, naming the missing flags.
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
# micro-kernel shapes it uses and their vector registers, the XNOR kernel's popcount in its hot
# loop or None: without AVX-512 its 16 <16 x i32> accumulators do not fit in ymm registers)
VPOPCNTD = r"\bvpopcntd\b.*%zmm"
EXPECTED = {
    "avx2": ("avx2", r"\bvpmaddwd\b.*%ymm", ["6x1"], "ymm", None),
    "avxvnni": ("avxvnni", r"\{vex\}\s+vpdpbusd\b.*%ymm", ["6x1"], "ymm", None),
    "avx512": ("avx512vnni", r"\bvpdpbusd\b.*%zmm", ["12x1", "12x2", "6x4"], "zmm", VPOPCNTD),
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
from yolo8.kernels import gemm_fp32, gemm_int8, xnor
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
x = rng.standard_normal((1, 9, 9, 64)).astype(np.float32)
for cout in (40, 20):  # the 4 x 64 and the 8 x 32 tile
    w = rng.standard_normal((cout, 3, 3, 64)).astype(np.float32)
    xnor.conv2d_xnor(x, xnor.XnorConvWeights.from_float(w), np.zeros(cout, np.float32), 1, 1,
                     "leaky")
xnor_asm = xnor._xnor_conv.inspect_asm(xnor._xnor_conv.signatures[0])
json.dump({"tier": tier, "int8_asm": int8_asm, "fp32_asm": fp32_asm, "xnor_asm": xnor_asm},
          open(f"{out_dir}/probe.json", "w"))
print("ok")
"""


def _run(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _hot_loops(probe_file, int8_pattern: str, fp32_shapes: list[str], fp32_register: str,
               xnor_pattern: str | None) -> dict:
    """The probe's tier and, per micro-kernel of it, its hot loop (tests/asm.py)."""
    from yolo8.kernels import gemm_int8, xnor

    probe = json.loads(probe_file.read_text())
    tier, loops = probe["tier"], {}
    t = gemm_int8.TIERS[tier]
    for nv in t.widths:
        name = f"yolo8_int8_{tier}_{min(gemm_int8.MAX_ROWS, t.accumulators // nv)}x{nv}"
        loops[name] = hot_loop(probe["int8_asm"], name, int8_pattern)
    for shape in fp32_shapes:
        name = f"yolo8_fp32_fma_{shape}"
        loops[name] = hot_loop(probe["fp32_asm"], name, r"\bvfmadd\w*ps\b.*%" + fp32_register)
    for positions, nv in xnor.TILE_SHAPES.values() if xnor_pattern else ():
        name = f"yolo8_xnor_tiles_{positions}x{nv}"
        loops[name] = hot_loop(probe["xnor_asm"], name, xnor_pattern)
    return {"tier": tier, "loops": loops}


def _host_xnor_pattern() -> str | None:
    """The native build's XNOR popcount to look for (see EXPECTED)."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    return VPOPCNTD if "avx512_vpopcntdq" in flags else None


def _stack_accesses(loop: list[str]) -> list[str]:
    """The lines of `loop` that access the stack: through %rsp, or below a frame pointer in
    %rbp (numba's code has none: %rbp is a general register there, e.g. the XNOR kernel's
    pointer to an input row)."""
    return [line for line in loop if re.search(r"%rsp|-\d+\(%rbp\)", line)]


def _tier_run(target: str, tmp_path_factory) -> dict:
    """Probe, kernel tests and an INT8 detect, all compiled for `target`."""
    out = tmp_path_factory.mktemp(f"tier-{target}")
    env = {**os.environ, **target_env(target), "NUMBA_CACHE_DIR": str(out / "numba-cache")}
    pattern, shapes, register, xnor_pattern = (
        EXPECTED[target][1:] if target in EXPECTED
        else (r"\bvpdpbusd\b", [], "zmm", _host_xnor_pattern()))
    probe = _run(["-c", PROBE, str(out), str(PHOTOS[0])], env, 600)
    assert probe.returncode == 0 and probe.stdout.strip().endswith("ok"), probe.stderr[-3000:]
    detect = _run(["-m", "yolo8", "detect", *map(str, PHOTOS), "--backend", "int8", "--no-save",
                   "-q", "--json", str(out / "detections.json")], env, 600)
    assert detect.returncode == 0, detect.stderr[-3000:]
    loops = _hot_loops(out / "probe.json", pattern, shapes, register, xnor_pattern)
    return {"dir": out, "env": env, "probe": loops,
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


def _check_hot_loops(loops: dict) -> None:
    for name, loop in loops.items():
        assert loop, f"{name}: no loop with the tier's instruction"
        spills = _stack_accesses(loop)
        assert not spills, f"{name}: stack accesses in the inner loop: {spills}"


def test_hot_loops_use_the_tier_instruction_without_spills(tier):
    loops = tier["probe"]["loops"]
    assert len(loops) >= 2  # every INT8 tile shape of the tier and the FP32 ones
    xnor_loops = [name for name in loops if name.startswith("yolo8_xnor")]
    assert len(xnor_loops) == (2 if EXPECTED[tier["target"]][4] else 0)
    _check_hot_loops(loops)


def test_native_xnor_hot_loops_use_vpopcntd_without_spills(native):
    if _host_xnor_pattern() is None:
        pytest.skip("this CPU lacks avx512_vpopcntdq")
    loops = {name: loop for name, loop in native["probe"]["loops"].items()
             if name.startswith("yolo8_xnor")}
    assert len(loops) == 2  # the 4 x 64 and the 8 x 32 tile
    _check_hot_loops(loops)


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
