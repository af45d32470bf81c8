"""The INT8 backend: hot convolutions as integer GEMMs, the rest as in FP32.

yolo2_light's scheme: the first conv layer and each conv layer feeding a [yolo]/[region]
head stay FP32 (weights and inputs); every other conv quantizes its float input with the
layer's calibrated threshold (127 / threshold, round to nearest, saturate at +-127),
multiplies with per-output-channel INT8 weights accumulating in int32, then dequantizes
and applies bias and activation in float. xnor=1 layers keep their binary kernel.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from ..errors import CalibrationError
from ..graph import Graph
from ..layers import Convolutional
from ..quant import Calibration, multiplier_for_threshold, threshold_for_multiplier
from .base import Op, Program, Quantization
from .ops import FP32_OPS, conv as fp32_conv, kernel_stride, unfused_activation, with_dilation


def head_feeders(graph: Graph) -> set[int]:
    """The conv layers whose output reaches a network output through layers without weights
    only: for a detector, the conv right before each [yolo]/[region]; for a classifier, the
    last conv(s) before its [avgpool]/[softmax]/[cost] (e.g. darknet19's 1x1 conv with one
    filter per class). Their outputs are the scores themselves, so they stay FP32."""
    feeders, seen = set(), set()
    pending = list(graph.outputs)
    while pending:
        index = pending.pop()
        if index < 0 or index in seen:
            continue
        seen.add(index)
        layer = graph.layers[index]
        if isinstance(layer, Convolutional):
            feeders.add(index)
        elif not layer.weight_floats():  # a [connected] layer ends the walk (it runs FP32)
            pending.extend(layer.inputs)
    return feeders


def default_fp32_layers(graph: Graph) -> set[int]:
    """The conv layers that stay FP32 in the INT8 backend, and by default in bf16: the first
    and the head feeders."""
    convs = graph.convolutions()
    return ({convs[0].index} if convs else set()) | head_feeders(graph)


notices = logging.getLogger("yolo8.notice")  # the CLI shows them on stderr
_slow_notice_lock = threading.Lock()
_slow_notice_given = False
SLOW_NOTICE = ("this CPU (numba's compile target) has neither AVX2 nor VNNI: the INT8 backend "
               "runs a portable kernel here, which is slower than the FP32 backend")


def notice_if_slower_than_fp32() -> bool:
    """Say once per process, as a notice, that INT8 is slower than FP32 on this compile target
    (no x86 tier for its kernels). Returns whether INT8 is slower here."""
    global _slow_notice_given
    from ..kernels.gemm_int8 import default_variant

    slower = default_variant() == "portable"
    with _slow_notice_lock:
        if slower and not _slow_notice_given:
            _slow_notice_given = True
            notices.info(SLOW_NOTICE)
    return slower


def int8_layers(graph: Graph) -> list[int]:
    """Indices of the conv layers that run INT8 in this graph: all but default_fp32_layers
    and xnor layers ([connected] layers run FP32)."""
    fp32_layers = default_fp32_layers(graph)
    return [c.index for c in graph.convolutions() if c.index not in fp32_layers and not c.xnor]


def thresholds_from_cfg(graph: Graph) -> dict[int, float] | None:
    """yolo2_light's `input_calibration = m0, m1, ...` in [net]: one multiplier per conv layer
    in file order (extra values ignored, as yolo2_light does)."""
    multipliers = graph.net.input_calibration
    if multipliers is None:
        return None
    convs = graph.convolutions()
    if len(multipliers) < len(convs):
        raise CalibrationError(f"input_calibration has {len(multipliers)} values but the cfg has "
                               f"{len(convs)} conv layers (one multiplier each, in order)",
                               path=graph.path, key="input_calibration")
    return {c.index: threshold_for_multiplier(m) for c, m in zip(convs, multipliers)}


Corrections = dict[int, "np.ndarray"]


def resolve_calibration(graph: Graph, model_id: str, calibration: str | Path | None,
                        default_calibration: Path | None
                        ) -> tuple[dict[int, float], Corrections, str | None, Calibration | None]:
    """Thresholds, bias corrections, where they came from and the file's contents: an
    explicit file, else the cfg's input_calibration line (thresholds only), else the default
    model's shipped file."""
    from_cfg = thresholds_from_cfg(graph) if calibration is None else None
    if from_cfg is not None:
        return from_cfg, {}, f"{graph.path} (input_calibration)", None
    path = calibration
    if path is None and default_calibration is not None and default_calibration.exists():
        path = default_calibration
    if path is None:
        return {}, {}, None, None
    cal = Calibration.load(path)
    cal.check_model(model_id, path)
    corrections = {k: np.asarray(v, dtype=np.float32) for k, v in cal.bias_corrections.items()}
    return dict(cal.thresholds), corrections, str(path), cal


def check_corrections(graph: Graph, corrections: Corrections, path: str | Path | None = None) -> None:
    for index, values in corrections.items():
        layer = graph.layers[index] if 0 <= index < len(graph.layers) else None
        if not isinstance(layer, Convolutional) or len(values) != layer.filters:
            raise CalibrationError(f"bias correction for layer {index} does not fit the model",
                                   path=path)


def corrected_bias(layer: Convolutional, corrections: Corrections) -> np.ndarray:
    """The bias the layer's INT8 conv runs with: its own minus its calibrated correction (if
    any), in float32."""
    correction = corrections.get(layer.index)
    return layer.bias if correction is None else (layer.bias - correction).astype(np.float32)


def int8_conv(layer: Convolutional, threshold: float, bias: np.ndarray, activation: int) -> Op:
    """The layer as an INT8 convolution of its input calibrated at `threshold`, with this
    bias and activation (the backend: the layer's own, bias-corrected; calibration: zero
    bias and linear, to measure the pre-activation error)."""
    from ..kernels.conv_int8 import Int8ConvWeights, conv2d_int8

    stride = kernel_stride(layer)
    # The output map tells which packing the kernel will use (unknown with dilation, whose
    # kernel runs on sub-sampled maps).
    out_hw = (layer.out_shape.h, layer.out_shape.w) if layer.dilation == 1 else None
    packed = Int8ConvWeights.from_float(layer.weights, layer.groups, stride=stride, out_hw=out_hw)
    multiplier = multiplier_for_threshold(threshold)
    return with_dilation(layer, lambda x: conv2d_int8(x, packed, bias, multiplier, stride,
                                                      layer.pad, activation, layer.groups))


def build(graph: Graph, thresholds: dict[int, float], corrections: Corrections | None = None,
          path: str | Path | None = None) -> Program:
    """Compile `graph` with INT8 convolutions using per-layer input thresholds and (optional)
    per-channel bias corrections (read from `path`, named if they do not fit)."""
    corrections = corrections or {}
    check_corrections(graph, corrections, path)
    wanted = int8_layers(graph)
    missing = [i for i in wanted if i not in thresholds]
    if missing:
        layer = graph.layers[missing[0]]
        raise CalibrationError(
            f"layer {layer.index} ([convolutional] at line {layer.line}) runs in INT8 and needs an "
            f"input calibration ({len(missing)} of {len(wanted)} INT8 layers have none): run "
            f"`yolo8 calibrate` and pass --calibration, or add input_calibration= to the cfg",
            path=graph.path, line=layer.line)
    quantized = set(wanted)

    def conv(layer: Convolutional, g: Graph) -> Op:
        if layer.index not in quantized:
            return fp32_conv(layer, g)
        bias = corrected_bias(layer, corrections)
        return unfused_activation(layer, int8_conv(layer, thresholds[layer.index], bias,
                                                   layer.activation_code))

    program = Program(graph, {**FP32_OPS, Convolutional: conv})
    program.quantization = Quantization({i: thresholds[i] for i in wanted},
                                        {i: corrections[i] for i in wanted if i in corrections})
    return program


def build_for_model(graph: Graph, model_id: str, calibration: str | Path | None,
                    default_calibration: Path | None) -> tuple[Program, str | None]:
    thresholds, corrections, source, file = resolve_calibration(graph, model_id, calibration,
                                                                default_calibration)
    if int8_layers(graph):
        notice_if_slower_than_fp32()
    program = build(graph, thresholds, corrections, source)
    program.calibration = file  # the model checks its preprocessing against the file's
    return program, source
