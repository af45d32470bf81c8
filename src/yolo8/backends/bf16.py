"""The bf16 backend: every convolution with bfloat16 inputs and weights and float32
accumulation (`vdpbf16ps`, AVX512-BF16), bias and activation in float32; the other layers
as in FP32 (xnor=1 layers keep their binary kernel, [connected] layers run FP32).

Unlike INT8, the first conv and the convs feeding the heads run bf16 too by default: INT8
keeps them FP32 because one threshold per layer gives a uniform grid of 255 steps, too coarse
for the raw image and for the scores; bf16 is a floating-point format (8 significant bits,
float32's exponent range), so every value keeps its relative precision (2^-9) at any scale
and there is no range to clip. Measured on coco128 (README), all-bf16 stays within the
target of FP32's mAP, so keeping them FP32 is an option (`build(keep_fp32=...)`), not the
default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import CalibrationError
from ..graph import Graph
from ..layers import Convolutional
from .base import Op, Program
from .ops import FP32_OPS, conv as fp32_conv, conv_op, kernel_stride


def bf16_conv(layer: Convolutional, graph: Graph) -> Op:
    from ..kernels.conv_bf16 import Bf16Conv

    kernel = Bf16Conv(layer.weights, layer.bias, kernel_stride(layer), layer.pad, layer.groups,
                      layer.activation_code)
    return conv_op(layer, kernel)


def build(graph: Graph, keep_fp32: Iterable[int] = ()) -> Program:
    """Compile `graph` with bf16 convolutions, but for the conv layers (by index) in
    `keep_fp32` and xnor=1 layers. Refuses a compile target without avx512_bf16."""
    from ..kernels.conv_bf16 import check_bf16_target

    check_bf16_target()
    fp32_layers = set(keep_fp32)

    def conv(layer: Convolutional, g: Graph) -> Op:
        use_fp32 = layer.xnor or layer.index in fp32_layers
        return (fp32_conv if use_fp32 else bf16_conv)(layer, g)

    return Program(graph, {**FP32_OPS, Convolutional: conv})


def build_for_model(graph: Graph, model_id: str, calibration: str | Path | None,
                    default_calibration: Path | None) -> tuple[Program, str | None]:
    if calibration is not None:
        raise CalibrationError("a calibration applies to the int8 backend only (add --backend int8)",
                               path=calibration)
    return build(graph), None
