#!/usr/bin/env python3
"""yolo8's INT8 forward against ONNX Runtime's INT8 on the same model, side by side.

The default model (yolov3-tiny, 416x416) is exported to ONNX with yolo8's own folded weights,
FP32 where yolo8 keeps FP32, in two INT8 forms:

* `ort-own-qdq`, the baseline: ONNX Runtime's static quantization of that export (QDQ,
  per-channel s8 weights, u8 activations calibrated MinMax on the test photos, the layers
  yolo8 keeps in FP32 excluded), which ONNX Runtime runs on its integer kernels (MLAS);
* `ort-yolo8-qdq`, a check of the export: yolo8's own thresholds and int8 weights as QDQ on
  the conv inputs only (no Q after a conv, so ONNX Runtime runs those convs in float): its
  outputs should be close to yolo8's INT8 ones.

The [yolo] heads' logistic is in yolo8's timing, not in ONNX Runtime's (cheap); the output
comparison applies it to ONNX Runtime's outputs. Each engine runs in its own process (with
the `yolo8` command's thread-pool settings: scripts/bench.py's run_worker), in rotation,
--rounds rounds of --iters forwards after a warm-up: medians, and the median of the per-round
ratios. Needs `pip install onnx onnxruntime` (not yolo8 dependencies).

    python scripts/compare_onnxruntime.py [--rounds 5] [--iters 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from bench import call_times, median_ratio, run_worker

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "images" / "000000000009.jpg"


def export(path: Path, qdq: bool) -> list[str]:
    """Write the default model as ONNX: FP32, or with yolo8's own QDQ (see the module
    docstring). Returns the names of the convolutions yolo8 keeps in FP32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import yolo8
    from yolo8.backends import int8
    from yolo8.kernels.conv_int8 import quantize_weights
    from yolo8.layers import NETWORK_INPUT
    from yolo8.layers.convolutional import Convolutional
    from yolo8.layers.maxpool import MaxPool
    from yolo8.layers.route import Route
    from yolo8.layers.upsample import Upsample
    from yolo8.layers.yolo import Yolo
    from yolo8 import models

    model = yolo8.load(backend="int8")
    graph = model.graph
    thresholds, corrections, _, _ = int8.resolve_calibration(
        graph, model.model_id, None, models.default_calibration())
    quantized = set(int8.int8_layers(graph))
    nodes, inits, outputs, fp32_convs = [], [], [], []

    def name(index: int) -> str:
        return "input" if index == NETWORK_INPUT else f"l{index}"

    def const(label: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, label))
        return label

    for layer in graph.layers:
        src = [name(i) for i in layer.inputs]
        out = name(layer.index)
        if isinstance(layer, Convolutional):
            w = layer.weights.transpose(0, 3, 1, 2)  # (Cout, Cin/g, kh, kw)
            bias = layer.bias
            x = src[0]
            if layer.index not in quantized:
                fp32_convs.append(f"conv{out}")
            if qdq and layer.index in quantized:
                scale = np.float32(thresholds[layer.index] / 127)
                nodes += [helper.make_node("QuantizeLinear", [x, const(f"s{out}", scale),
                                                              const(f"z{out}", np.uint8(128))], [f"q{out}"]),
                          helper.make_node("DequantizeLinear", [f"q{out}", f"s{out}", f"z{out}"], [f"d{out}"])]
                x = f"d{out}"
                wq, w_scale = quantize_weights(layer.weights)
                nodes.append(helper.make_node(
                    "DequantizeLinear", [const(f"wq{out}", np.ascontiguousarray(wq.transpose(0, 3, 1, 2))),
                                         const(f"ws{out}", w_scale),
                                         const(f"wz{out}", np.zeros(len(w_scale), np.int8))],
                    [f"w{out}"], axis=0))
                weight = f"w{out}"
                if layer.index in corrections:
                    bias = (bias - corrections[layer.index]).astype(np.float32)
            else:
                weight = const(f"w{out}", np.ascontiguousarray(w))
            act = layer.activation
            conv_out = out if act == "linear" else f"c{out}"
            nodes.append(helper.make_node(
                "Conv", [x, weight, const(f"b{out}", bias.astype(np.float32))], [conv_out],
                name=f"conv{out}",
                kernel_shape=[layer.size, layer.size], strides=[layer.stride] * 2,
                pads=[layer.pad] * 4, group=layer.groups))
            if act == "leaky":
                nodes.append(helper.make_node("LeakyRelu", [conv_out], [out], alpha=0.1))
            elif act != "linear":
                raise SystemExit(f"activation {act} not exported")
        elif isinstance(layer, MaxPool):
            lo = layer.padding // 2
            nodes.append(helper.make_node(
                "MaxPool", src, [out], kernel_shape=[layer.size] * 2, strides=[layer.stride] * 2,
                pads=[lo, lo, layer.padding - lo, layer.padding - lo]))
        elif isinstance(layer, Upsample):
            scales = const(f"u{out}", np.array([1, 1, layer.stride, layer.stride], np.float32))
            nodes.append(helper.make_node("Resize", [src[0], "", scales], [out], mode="nearest"))
        elif isinstance(layer, Route):
            nodes.append(helper.make_node("Concat", src, [out], axis=1) if len(src) > 1
                         else helper.make_node("Identity", src, [out]))
        elif isinstance(layer, Yolo):
            outputs.append(src[0])
        else:
            raise SystemExit(f"{type(layer).__name__} not exported")
    h, w = graph.net.height, graph.net.width
    onnx_graph = helper.make_graph(
        nodes, "yolov3-tiny-qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, None, None, None]) for o in outputs],
        inits)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return fp32_convs


class _Photos:
    """ONNX Runtime's calibration reader: the photos of tests/data, as yolo8 prepares them."""

    def __init__(self) -> None:
        from yolo8.preprocess import read_image, to_blob

        photos = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
        self.blobs = iter([{"input": np.ascontiguousarray(to_blob([read_image(p)], 416, 416)
                                                           .transpose(0, 3, 1, 2))} for p in photos])

    def get_next(self):
        return next(self.blobs, None)


def export_ort_quantized(path: Path, tmp: Path) -> None:
    """ONNX Runtime's own static quantization of the FP32 export: QDQ, per-channel s8 weights,
    u8 activations (MinMax over the test photos), the same layers as yolo8 left in FP32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32_path = tmp / "fp32.onnx"
    fp32_convs = export(fp32_path, qdq=False)
    quantize_static(str(fp32_path), str(path), _Photos(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=fp32_convs)


def _blob() -> np.ndarray:
    from yolo8.preprocess import read_image, to_blob

    return to_blob([read_image(PHOTO)], 416, 416)


def _yolo_activation(head: np.ndarray, classes: int = 80) -> np.ndarray:
    """darknet's [yolo] activation (logistic on everything but w and h) on an NCHW head, as
    yolo8's forward applies it (scale_x_y = 1 in yolov3-tiny)."""
    n, c, h, w = head.shape
    out = head.reshape(n, -1, 5 + classes, h, w).astype(np.float64)
    logistic = np.ones(5 + classes, bool)
    logistic[2:4] = False
    out[:, :, logistic] = 1 / (1 + np.exp(-out[:, :, logistic]))
    return out.astype(np.float32).reshape(n, c, h, w)


def worker(engine: str, iters: int, onnx_path: str, threads: int, dump: str | None) -> dict:
    x = _blob()
    if engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        feed = {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}

        def run():
            return session.run(None, feed)
    else:
        import yolo8

        model = yolo8.load(backend="int8")

        def run():
            return model.forward_nhwc(x)
    times = call_times(run, iters)
    if dump:
        outs = run()
        if engine == "onnxruntime":
            outs = [_yolo_activation(o) for o in outs]
        else:
            outs = [o.transpose(0, 3, 1, 2) for o in outs]
        np.savez(dump, *outs)
    return {"median_ms": 1000 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    if args.worker:
        engine, iters, onnx_path, threads, dump = args.worker
        print(json.dumps(worker(engine, int(iters), onnx_path, int(threads),
                                None if dump == "-" else dump)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {"ort-own-qdq": tmp / "ort.onnx", "ort-yolo8-qdq": tmp / "yolo8-qdq.onnx"}
        export_ort_quantized(models["ort-own-qdq"], tmp)
        export(models["ort-yolo8-qdq"], qdq=True)
        times: dict[str, list[float]] = {"yolo8-int8": [], **{name: [] for name in models}}
        for r in range(args.rounds):
            for engine in times:
                dump = str(tmp / f"{engine}.npz") if r == 0 else "-"
                kind, path = ("yolo8", "-") if engine == "yolo8-int8" else ("onnxruntime", models[engine])
                out = run_worker([kind, str(args.iters), str(path), str(args.threads), dump],
                                 script=__file__)
                times[engine].append(out["median_ms"])
        diffs = {}
        with np.load(tmp / "yolo8-int8.npz") as a:
            for name in models:
                with np.load(tmp / f"{name}.npz") as b:
                    diffs[name] = [float(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max()) for k in a]
    print(f"yolov3-tiny 416x416 INT8 forward, {args.rounds} rounds x {args.iters} forwards "
          f"(ms, median of per-process medians; ratio: median of per-round ratios)")
    for engine, t in times.items():
        ratio = median_ratio(times["yolo8-int8"], t)
        print(f"{engine:14s} {statistics.median(t):7.1f}   yolo8/this {ratio:5.2f}   rounds: "
              + ", ".join(f"{v:.1f}" for v in t))
    for name, d in diffs.items():
        print(f"head outputs of {name}: max |yolo8 - it| / max |yolo8| per head: "
              + ", ".join(f"{x:.3f}" for x in d))

if __name__ == "__main__":
    main()
