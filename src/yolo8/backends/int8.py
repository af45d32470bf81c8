"""The INT8 backend: hot convolutions as integer GEMMs, the rest as in FP32.

yolo2_light's scheme: the first conv layer and each conv layer feeding a [yolo]/[region]
head stay FP32 (weights and inputs); every other conv quantizes its float input with the
layer's calibrated threshold (127 / threshold, round to nearest, saturate at +-127),
multiplies with per-output-channel INT8 weights accumulating in int32, then dequantizes
and applies bias and activation in float. xnor=1 layers keep their binary kernel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CalibrationError
from ..graph import Graph
from ..layers import Convolutional
from ..quant import Calibration, multiplier_for_threshold, threshold_for_multiplier
from .base import Op, Program
from .ops import FP32_OPS, conv as fp32_conv, kernel_stride, unfused_activation, with_dilation


def int8_layers(graph: Graph) -> list[int]:
    """Indices of the conv layers that run INT8 in this graph."""
    feeds_head = {graph.layers[h].inputs[0] for h in graph.heads}
    return [c.index for c in graph.convolutions()[1:] if c.index not in feeds_head and not c.xnor]


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
                        ) -> tuple[dict[int, float], Corrections, str | None]:
    """Thresholds, bias corrections and where they came from: an explicit file, else the
    cfg's input_calibration line (thresholds only), else the default model's shipped file."""
    from_cfg = thresholds_from_cfg(graph) if calibration is None else None
    if from_cfg is not None:
        return from_cfg, {}, f"{graph.path} (input_calibration)"
    path = calibration
    if path is None and default_calibration is not None and default_calibration.exists():
        path = default_calibration
    if path is None:
        return {}, {}, None
    cal = Calibration.load(path)
    cal.check_model(model_id, path)
    corrections = {k: np.asarray(v, dtype=np.float32) for k, v in cal.bias_corrections.items()}
    return dict(cal.thresholds), corrections, str(path)


def check_corrections(graph: Graph, corrections: Corrections, path: str | Path | None = None) -> None:
    for index, values in corrections.items():
        layer = graph.layers[index] if 0 <= index < len(graph.layers) else None
        if not isinstance(layer, Convolutional) or len(values) != layer.filters:
            raise CalibrationError(f"bias correction for layer {index} does not fit the model",
                                   path=path)


def int8_conv(layer: Convolutional, threshold: float, bias: np.ndarray, activation: int) -> Op:
    """The layer as an INT8 convolution of its input calibrated at `threshold`, with this
    bias and activation (the backend: the layer's own, bias-corrected; calibration: zero
    bias and linear, to measure the pre-activation error)."""
    from ..kernels.conv_int8 import Int8ConvWeights, conv2d_int8

    packed = Int8ConvWeights.from_float(layer.weights, layer.groups)
    multiplier = multiplier_for_threshold(threshold)
    stride = kernel_stride(layer)
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
        correction = corrections.get(layer.index)
        bias = layer.bias if correction is None else (layer.bias - correction).astype(np.float32)
        return unfused_activation(layer, int8_conv(layer, thresholds[layer.index], bias,
                                                   layer.activation_code))

    return Program(graph, {**FP32_OPS, Convolutional: conv})


def build_for_model(graph: Graph, model_id: str, calibration: str | Path | None,
                    default_calibration: Path | None) -> tuple[Program, str | None]:
    thresholds, corrections, source = resolve_calibration(graph, model_id, calibration,
                                                          default_calibration)
    return build(graph, thresholds, corrections, source), source
