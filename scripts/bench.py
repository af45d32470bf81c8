#!/usr/bin/env python3
"""yolo8 benchmarks: medians and ratios, engines side by side.

Forward latency: yolo8 fp32, int8 (and bf16 where the CPU has avx512_bf16) and OpenCV dnn
(FP32), and where installed ONNX Runtime
and OpenVINO on the models `yolo8 export` writes (FP32 and INT8), each run in their own process
(thread pools of different runtimes disturb each other inside one process), in rotation
(A B C A B C ...); each process times `--iters` forwards of the same blob after a warm-up
and reports its median; the table gives the median over rounds and the median of the
per-round ratios against OpenCV.

Also: `map`-style throughput (images/s over a folder, decode included), whole-process
`yolo8 detect` wall time with warm caches and with an empty JIT cache, its peak RSS, and
kernel rows (xnor vs fp32 vs int8 conv on one layer shape, same process).

    python scripts/bench.py                 # everything, table on stdout
    python scripts/bench.py --json out.json # and the figures as JSON
    python scripts/bench.py --only forward  # one section (forward, throughput, detect, kernels,
                                            # preprocess)
    python scripts/bench.py --target all    # forward per x86 tier this CPU runs (avx2, avxvnni,
                                            # avx512, native), each compiled for its tier
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "images" / "000000000009.jpg"


# ------------------------------------------------------------------------------- workers
def _blob(width: int = 416, height: int = 416):
    from yolo8.preprocess import read_image, to_blob

    return to_blob([read_image(PHOTO)], width, height)


def _opencv_forward(x, onnx_dir: str):
    import cv2
    import numpy as np

    from yolo8 import models

    net = cv2.dnn.readNetFromDarknet(str(models.default_cfg()), str(models.default_weights()))
    blob = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    names = net.getUnconnectedOutLayersNames()

    def run():
        net.setInput(blob)
        net.forward(names)
    return run


def _yolo8_forward(backend: str):
    def setup(x, onnx_dir: str):
        import yolo8

        model = yolo8.load(backend=backend)
        return lambda: model.forward_nhwc(x)
    return setup


def _onnxruntime_forward(backend: str):
    def setup(x, onnx_dir: str):
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(Path(onnx_dir) / f"{backend}.onnx"),
                                       providers=["CPUExecutionProvider"])
        feed = {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        return lambda: session.run(None, feed)
    return setup


def _openvino_forward(backend: str):
    def setup(x, onnx_dir: str):
        import numpy as np
        import openvino as ov

        # f32: on CPUs with bf16 OpenVINO would otherwise run the float layers in bf16.
        compiled = ov.Core().compile_model(str(Path(onnx_dir) / f"{backend}.onnx"), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        feed = {"images": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
        return lambda: request.infer(feed)
    return setup


# engine -> setup(blob NHWC, folder of the exported models) -> one forward
FORWARD_ENGINES = {
    "fp32": _yolo8_forward("fp32"), "int8": _yolo8_forward("int8"), "bf16": _yolo8_forward("bf16"),
    "opencv": _opencv_forward,
    "onnxruntime-fp32": _onnxruntime_forward("fp32"), "onnxruntime-int8": _onnxruntime_forward("int8"),
    "openvino-fp32": _openvino_forward("fp32"), "openvino-int8": _openvino_forward("int8"),
}


def worker_forward(engine: str, iters: int, onnx_dir: str) -> dict:
    """Time `iters` forwards of one engine in this process; returns its median (ms)."""
    times = call_times(FORWARD_ENGINES[engine](_blob(), onnx_dir), iters)
    result = {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}
    if engine == "int8":
        from yolo8.kernels import gemm_int8

        result["int8_tier"] = gemm_int8.default_variant()
    return result


def worker_throughput(engine: str, folder: str, batch: int) -> dict:
    """map-style: every image of a folder through decode-ahead + batched detect at 0.005."""
    import numpy as np

    import yolo8
    from yolo8.pipeline import batched, load_images

    model = yolo8.load(backend=engine)
    paths = sorted(Path(folder).glob("*.jpg"))
    model.forward_nhwc(_blob())  # compile/warm
    start = time.perf_counter()
    count = 0
    for group in batched(load_images(paths, prepare=model.prepare), batch):
        blob = np.stack([item.prepared for item in group])
        model.detect_prepared(blob, [(i.image.shape[1], i.image.shape[0]) for i in group], 0.005)
        count += len(group)
    elapsed = time.perf_counter() - start
    return {"images": count, "seconds": elapsed, "images_per_s": count / elapsed}


def worker_preprocess(iters: int) -> dict:
    """One photo (640x480) to a 416x416 network input, darknet's resize and cv2.resize, in
    turn in this process (decode excluded): median ms each."""
    from yolo8.preprocess import read_image, to_blob

    image = read_image(PHOTO)
    result: dict[str, list[float]] = {"darknet": [], "opencv": []}
    for _ in range(5):
        for mode in result:
            result[mode] += call_times(lambda: to_blob([image], 416, 416, resize=mode), iters)
    return {mode: 1e3 * statistics.median(times) for mode, times in result.items()}


def worker_kernels(iters: int) -> dict:
    """One conv shape in fp32, int8 and xnor, in this process (kernels only)."""
    import numpy as np

    from yolo8.kernels.activations import LEAKY
    from yolo8.kernels.conv_fp32 import Fp32Conv
    from yolo8.kernels.conv_int8 import Int8ConvWeights, conv2d_int8
    from yolo8.kernels.xnor import XnorConvWeights, conv2d_xnor

    rows = {}
    rng = np.random.default_rng(0)
    for h, c, cout in ((52, 128, 256), (26, 256, 512), (13, 512, 1024)):
        x = rng.standard_normal((1, h, h, c)).astype(np.float32)
        w = (rng.standard_normal((cout, 3, 3, c)) * 0.05).astype(np.float32)
        b = np.zeros(cout, np.float32)
        fp32 = Fp32Conv(w, b, 1, 1, 1, LEAKY)
        q = Int8ConvWeights.from_float(w)
        xw = XnorConvWeights.from_float(w)
        ops = {"fp32": lambda: fp32(x),
               "int8": lambda: conv2d_int8(x, q, b, 127 / 4.0, 1, 1, LEAKY),
               "xnor": lambda: conv2d_xnor(x, xw, b, 1, 1, LEAKY)}
        medians = {name: 1000 * statistics.median(call_times(op, iters))
                   for name, op in ops.items()}
        rows[f"{h}x{h}x{c}->{cout} 3x3"] = medians
    return rows


def call_times(op, iters: int) -> list[float]:
    """Seconds of each of `iters` calls of `op`, after 3 warm-up calls (also used by
    scripts/compare_onnxruntime.py)."""
    for _ in range(3):
        op()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        op()
        times.append(time.perf_counter() - t)
    return times


# --------------------------------------------------------------------------- orchestration
# The worker runner, the per-target environment and the ratio below are shared with
# scripts/layer_times.py and scripts/compare_onnxruntime.py, so that their timings run under
# the same settings as these.
def run_worker(args: list[str], env: dict | None = None, script: str = __file__) -> dict:
    """One engine in a process of its own (`script --worker ARGS`, which prints its result as
    JSON on its last line), with the thread-pool settings the yolo8 command uses (the library
    itself sets none) for the variables `env` (default: this process's) leaves unset."""
    from yolo8.cli import THREAD_POOL_DEFAULTS

    env = {**THREAD_POOL_DEFAULTS, **(env if env is not None else os.environ)}
    out = subprocess.run([sys.executable, script, "--worker", *args], capture_output=True,
                         text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def target_worker_env(target: str) -> dict:
    """This process's environment with numba compiling for `target`, into a numba cache of
    the target's own."""
    from yolo8.kernels.common import target_env

    return {**os.environ, **target_env(target),
            "NUMBA_CACHE_DIR": str(Path(tempfile.gettempdir()) / f"yolo8-bench-numba-{target}")}


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a / b."""
    return statistics.median(x / y for x, y in zip(a, b))


def _opencv_available() -> bool:
    try:
        import cv2

        return hasattr(cv2, "dnn") and hasattr(cv2.dnn, "readNetFromDarknet")
    except ImportError:
        return False


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _export_default_models(folder: str) -> None:
    """The default model as ONNX, FP32 and INT8 (shipped calibration), with `yolo8 export`."""
    for backend in ("fp32", "int8"):
        subprocess.run([sys.executable, "-m", "yolo8", "export", "--out",
                        str(Path(folder) / f"{backend}.onnx"), "--backend", backend],
                       check=True, capture_output=True, timeout=600)


def _bf16_available() -> bool:
    from yolo8.kernels.gemm_fp32 import STEP_BF16, step_available

    return step_available(STEP_BF16)


def bench_forward(rounds: int, iters: int) -> dict:
    engines = ["fp32", "int8"] + (["bf16"] if _bf16_available() else []) + (
        ["opencv"] if _opencv_available() else [])
    exported = []
    if _installed("onnx"):  # the exported models, in the runtimes that are installed
        for runtime in ("onnxruntime", "openvino"):
            if _installed(runtime):
                exported += [f"{runtime}-fp32", f"{runtime}-int8"]
    engines += exported
    per_round: dict[str, list[float]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as onnx_dir:
        if exported:
            _export_default_models(onnx_dir)
        for _ in range(rounds):
            for engine in engines:
                per_round[engine].append(
                    run_worker(["forward", engine, str(iters), onnx_dir])["median_ms"])
    result = {e: {"median_ms": statistics.median(v), "rounds_ms": v} for e, v in per_round.items()}
    for e in engines:
        result[e]["ratio_vs_fp32"] = median_ratio(per_round[e], per_round["fp32"])
    if "opencv" in per_round:
        for e in engines:
            result[e]["ratio_vs_opencv"] = median_ratio(per_round[e], per_round["opencv"])
    return result


# OpenCV picks its own kernels at run time: on a target without AVX-512, switch its AVX-512
# paths off too, so that it runs as it would on such a CPU.
OPENCV_NO_AVX512 = "AVX512_SKX,AVX512_COMMON,AVX512_ICL,AVX512_CLX,AVX512_CNL"


def bench_targets(targets: list[str], rounds: int, iters: int) -> dict:
    """Forward latency per compile target: OpenCV FP32, yolo8 FP32 and INT8, each engine in
    its own process (numba compiled for the target, a numba cache per target), all engines
    of all targets in rotation; ratios are medians of the per-round ratios."""
    engines = ["fp32", "int8"] + (["opencv"] if _opencv_available() else [])
    envs = {}
    for target in targets:
        env = target_worker_env(target)
        if target in ("avx2", "avxvnni"):
            env["OPENCV_CPU_DISABLE"] = OPENCV_NO_AVX512
        envs[target] = env
    per_round = {t: {e: [] for e in engines} for t in targets}
    tiers = {}
    for _ in range(rounds):
        for target in targets:
            for engine in engines:
                out = run_worker(["forward", engine, str(iters), ""], envs[target])
                per_round[target][engine].append(out["median_ms"])
                if "int8_tier" in out:
                    tiers[target] = out["int8_tier"]
    result = {}
    for target, times in per_round.items():
        row = {e: {"median_ms": statistics.median(v), "rounds_ms": v} for e, v in times.items()}
        row["int8"]["tier"] = tiers[target]
        pairs = [("int8", "fp32")] + ([("fp32", "opencv"), ("int8", "opencv")] if "opencv" in times else [])
        for a, b in pairs:
            row[a][f"ratio_vs_{b}"] = median_ratio(times[a], times[b])
        result[target] = row
    return result


def bench_throughput(folder: Path, rounds: int) -> dict:
    result = {}
    for engine in ("fp32", "int8"):
        runs = [run_worker(["throughput", engine, str(folder), "4"]) for _ in range(rounds)]
        result[engine] = {"images": runs[0]["images"],
                          "images_per_s": statistics.median(r["images_per_s"] for r in runs)}
    return result


def bench_detect(rounds: int) -> dict:
    exe = shutil.which("yolo8") or str(Path(sys.executable).with_name("yolo8"))
    cmd = [exe, "detect", str(PHOTO), "--no-save"]
    result = {}
    for backend in ("fp32", "int8"):
        full = cmd + ["--backend", backend]
        subprocess.run(full, check=True, capture_output=True)  # warm caches
        walls, rss = [], []
        for _ in range(rounds):
            # each measured in a fresh child so ru_maxrss is this process's own peak
            wall, peak = _measure_isolated(full)
            walls.append(wall)
            rss.append(peak)
        result[backend] = {"wall_s": statistics.median(walls), "peak_rss_mb": statistics.median(rss)}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        wall, peak = _measure_isolated(cmd, env)
        result["cold_jit_cache"] = {"wall_s": wall, "peak_rss_mb": peak}
    return result


def _measure_isolated(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    code = ("import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
            "w = time.perf_counter() - t\n"
            "print(json.dumps([w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                         env=env, check=True, timeout=600)
    wall, peak = json.loads(out.stdout)
    return wall, peak


def _table(results: dict) -> str:
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"python {platform.python_version()}"]
    if "forward" in results:
        lines += ["", "forward, yolov3-tiny 416x416, batch 1 (median of per-process medians)",
                  f"{'engine':17s} {'ms':>8s} {'x fp32':>7s} {'x opencv':>9s}"]
        for e, r in results["forward"].items():
            ratio = r.get("ratio_vs_opencv", 1.0 if e == "opencv" else None)
            cell = "" if ratio is None else f"{ratio:9.2f}"
            lines.append(f"{e:17s} {r['median_ms']:8.1f} {r['ratio_vs_fp32']:7.2f} {cell}")
    if "targets" in results:
        lines += ["", "forward per compile target, yolov3-tiny 416x416, batch 1 (ms, median of "
                  "per-process medians; ratios: median of per-round ratios)",
                  f"{'target':8s} {'int8 tier':11s} {'opencv':>7s} {'fp32':>7s} {'int8':>7s} "
                  f"{'fp32/ocv':>8s} {'int8/ocv':>8s} {'int8/fp32':>9s}"]
        for target, r in results["targets"].items():
            ocv = r.get("opencv", {}).get("median_ms", float("nan"))
            lines.append(
                f"{target:8s} {r['int8']['tier']:11s} {ocv:7.1f} {r['fp32']['median_ms']:7.1f} "
                f"{r['int8']['median_ms']:7.1f} {r['fp32'].get('ratio_vs_opencv', float('nan')):8.2f} "
                f"{r['int8'].get('ratio_vs_opencv', float('nan')):8.2f} {r['int8']['ratio_vs_fp32']:9.2f}")
    if "throughput" in results:
        lines += ["", "map-style throughput (decode-ahead, batch 4, thresh 0.005)"]
        for e, r in results["throughput"].items():
            lines.append(f"{e:10s} {r['images_per_s']:8.1f} images/s over {r['images']} images")
    if "detect" in results:
        lines += ["", "`yolo8 detect photo.jpg` whole process"]
        for k, r in results["detect"].items():
            lines.append(f"{k:15s} {r['wall_s']:6.2f} s wall, peak RSS {r['peak_rss_mb']:6.0f} MB")
    if "kernels" in results:
        lines += ["", "one conv layer, kernels only (ms, median; same process)"]
        for shape, r in results["kernels"].items():
            cells = "  ".join(f"{k} {v:7.2f}" for k, v in r.items())
            ratios = "  ".join(f"fp32/{k} {r['fp32'] / v:5.1f}x" for k, v in r.items() if k != "fp32")
            lines.append(f"{shape:22s} {cells}   {ratios}")
    if "preprocess" in results:
        r = results["preprocess"]
        lines += ["", "one 640x480 photo to a 416x416 input (ms, median; same process)",
                  f"darknet's resize_image {r['darknet']:6.2f}   cv2.resize {r['opencv']:6.2f}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "coco128-train" / "images",
                        help="folder for the throughput run (default: ../shared coco128, else tests/data)")
    parser.add_argument("--only", choices=["forward", "throughput", "detect", "kernels", "preprocess"],
                        action="append")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--target", action="append",
                        choices=["avx2", "avxvnni", "avx512", "native", "all"],
                        help="forward latency compiled for these x86 tiers (repeatable; all: "
                             "every tier this CPU can run) instead of the other sections")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "forward":
            print(json.dumps(worker_forward(rest[0], int(rest[1]), rest[2])))
        elif kind == "throughput":
            print(json.dumps(worker_throughput(rest[0], rest[1], int(rest[2]))))
        elif kind == "kernels":
            print(json.dumps(worker_kernels(int(rest[0]))))
        elif kind == "preprocess":
            print(json.dumps(worker_preprocess(int(rest[0]))))
        return
    if args.target:
        from yolo8.kernels.common import TARGETS, host_cannot_run

        targets = [*TARGETS, "native"] if "all" in args.target else args.target
        for target in targets:
            if host_cannot_run(target):
                print(f"skipping target {target}: {host_cannot_run(target)}", file=sys.stderr)
        targets = [t for t in dict.fromkeys(targets) if not host_cannot_run(t)]
        results = {"targets": bench_targets(targets, args.rounds, args.iters)}
        print(_table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return
    sections = args.only or ["forward", "throughput", "detect", "kernels", "preprocess"]
    folder = args.images if args.images.is_dir() else ROOT / "tests" / "data" / "images"
    results = {}
    if "forward" in sections:
        results["forward"] = bench_forward(args.rounds, args.iters)
    if "throughput" in sections:
        results["throughput"] = bench_throughput(folder, max(1, args.rounds // 2))
    if "detect" in sections:
        results["detect"] = bench_detect(args.rounds)
    if "kernels" in sections:
        results["kernels"] = run_worker(["kernels", str(args.iters)])
    if "preprocess" in sections:
        results["preprocess"] = run_worker(["preprocess", str(args.iters)])
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
