"""The bf16 backend: convolutions with bfloat16 inputs and weights and float32 accumulation
(`vdpbf16ps`, AVX512-BF16), bias and activation in float32; the other layers as in FP32
(xnor=1 layers keep their binary kernel, [connected] layers run FP32).

As in INT8, the first conv and each conv feeding a head (`int8.default_fp32_layers`) stay
FP32 by default. Not for INT8's reason (bf16 is floating point: 2^-9 relative precision at any
scale, no range to clip) but because it was measured to be free and closer to FP32 (yolov3-tiny,
README): the first conv (3 input channels, K = 27) runs no faster in bf16 than FP32's implicit
GEMM, the head feeders are ~3 % of a forward, and with them in FP32 the heads differ from FP32's
3-4x less (max |d prob| 0.005 instead of 0.020 on the test photos) and the mAP on each half of
coco128 stays within 0.3 points of FP32's (all-bf16: +0.68 VOC points on one half, noise of a
64-photo set but outside the target). `build(graph, keep_fp32=())` runs every conv in bf16.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..graph import Graph
from ..layers import Convolutional
from .base import Op, Program
from .fp32 import refuse_calibration
from .int8 import default_fp32_layers
from .ops import FP32_OPS, conv as fp32_conv, conv_op, kernel_stride


def bf16_conv(layer: Convolutional, graph: Graph) -> Op:
    from ..kernels.conv_bf16 import Bf16Conv

    kernel = Bf16Conv(layer.weights, layer.bias, kernel_stride(layer), layer.pad, layer.groups,
                      layer.activation_code)
    return conv_op(layer, kernel)


def build(graph: Graph, keep_fp32: Iterable[int] | None = None) -> Program:
    """Compile `graph` with bf16 convolutions, but for the conv layers (by index) in
    `keep_fp32` (default: default_fp32_layers) and xnor=1 layers, which run as in FP32.
    Refuses a compile target without avx512_bf16."""
    from ..kernels.conv_bf16 import check_bf16_target

    check_bf16_target()
    fp32_layers = set(default_fp32_layers(graph) if keep_fp32 is None else keep_fp32)

    def conv(layer: Convolutional, g: Graph) -> Op:
        use_fp32 = layer.xnor or layer.index in fp32_layers
        return (fp32_conv if use_fp32 else bf16_conv)(layer, g)

    return Program(graph, {**FP32_OPS, Convolutional: conv})


def build_for_model(graph: Graph, model_id: str, calibration: str | Path | None,
                    default_calibration: Path | None) -> tuple[Program, str | None]:
    refuse_calibration(calibration)
    return build(graph), None
