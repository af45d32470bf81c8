"""One emitter per layer kind: appends the ONNX nodes computing the layer (NCHW float32) with
darknet's semantics, as the FP32 ops in backends/ops.py do. Adding a layer kind to the
exporter means adding one function to EMITTERS."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..graph import Graph
from ..kernels.conv_int8 import QMAX, quantize_weights
from ..layers import (AvgPool, Convolutional, Dropout, Layer, MaxPool, Region, Reorg, Route,
                      Shortcut, Upsample, Yolo)
from .onnx_graph import OnnxGraph


@dataclass
class Int8Conv:
    """What yolo8's INT8 backend runs a conv layer with."""

    multiplier: np.float32  # 127 / threshold, as the kernel uses it
    bias: np.ndarray        # bias-corrected


@dataclass
class EmitContext:
    g: OnnxGraph
    graph: Graph
    int8: dict[int, Int8Conv] = field(default_factory=dict)
    # Test build: each INT8 conv's float input, quantized input and output, exposed as outputs.
    int8_tensors: list[tuple[Convolutional, str, str, str]] = field(default_factory=list)
    expose_int8: bool = False


Emitter = Callable[[Layer, list[str], EmitContext], str]


# -- activations (darknet's activate()) ----------------------------------------------------------

def _mish(g: OnnxGraph, x: str, hint: str) -> str:
    # darknet's softplus switches to its asymptotes beyond |x| > 20, where log1p(exp(x))
    # already equals them in float32.
    return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], f"{hint}_softplus")],
                                f"{hint}_tanh")], hint)


ACTIVATIONS: dict[str, Callable[[OnnxGraph, str, str], str]] = {
    "linear": lambda g, x, hint: x,
    "leaky": lambda g, x, hint: g.op("LeakyRelu", [x], hint, alpha=0.1),
    "relu": lambda g, x, hint: g.op("Relu", [x], hint),
    "logistic": lambda g, x, hint: g.op("Sigmoid", [x], hint),
    "mish": _mish,
    "swish": lambda g, x, hint: g.op("Mul", [x, g.op("Sigmoid", [x], f"{hint}_sigmoid")], hint),
}


def refuse(layer: Layer, graph: Graph, why: str) -> ConfigError:
    return ConfigError(f"layer {layer.index} [{layer.kind}] cannot be exported to ONNX: {why}",
                       path=graph.path, line=layer.line)


def _activate(layer: Layer, x: str, ctx: EmitContext) -> str:
    activation = ACTIVATIONS.get(layer.activation)
    if activation is None:
        raise refuse(layer, ctx.graph, f"no ONNX form of activation '{layer.activation}' yet")
    return activation(ctx.g, x, f"l{layer.index}_{layer.activation}")


# -- layers ----------------------------------------------------------------------------------------

def _conv_node(layer: Convolutional, inputs: list[str], hint: str, ctx: EmitContext) -> str:
    """A Conv with the layer's geometry on inputs [x, weights(, bias)]."""
    p = layer.pad
    return ctx.g.op("Conv", inputs, f"l{layer.index}_{hint}", kernel_shape=[layer.size, layer.size],
                    strides=[layer.stride, layer.stride], pads=[p, p, p, p], group=layer.groups)


def _nchw_weights(w: np.ndarray) -> np.ndarray:
    """yolo8 keeps conv weights as (filters, kh, kw, in/groups); ONNX wants (filters, in/groups, kh, kw)."""
    return np.ascontiguousarray(w.transpose(0, 3, 1, 2))


def _quantized_input(layer: Convolutional, x: str, multiplier: np.float32, ctx: EmitContext) -> str:
    """yolo8's q = saturate(round_half_even(f32(x * m))) to [-127, 127], exactly: the Mul is the
    same float32 product, Clip keeps it in [-127, 127] (so -128 never occurs; clipping before
    or after rounding is the same since the bounds are integers), and QuantizeLinear with
    scale 1 rounds half to even and divides by 1, which is exact."""
    g, i = ctx.g, layer.index
    scaled = g.op("Mul", [x, g.constant(f"l{i}_input_multiplier", np.float32(multiplier))],
                  f"l{i}_scaled")
    clipped = g.op("Clip", [scaled, g.constant(f"l{i}_qmin", np.float32(-QMAX)),
                            g.constant(f"l{i}_qmax", np.float32(QMAX))], f"l{i}_clipped")
    return g.op("QuantizeLinear", [clipped, g.constant(f"l{i}_unit_scale", np.float32(1)),
                                   g.constant(f"l{i}_zero", np.int8(0))], f"l{i}_quantized")


def _int8_conv(layer: Convolutional, x: str, params: Int8Conv, ctx: EmitContext) -> str:
    """QDQ with yolo8's arithmetic: the quantized input and the per-channel int8 weights
    (yolo8's max-abs) dequantized with scale 1, so the Conv sums integer products, which float32
    holds exactly while |sum| < 2^24 (yolo8 sums them in int32); then yolo8's epilogue:
    acc * f32(w_scale / m) per channel, a separate add of the bias-corrected bias, activation."""
    g, i = ctx.g, layer.index
    q = _quantized_input(layer, x, params.multiplier, ctx)
    unit, zero = g.constant(f"l{i}_unit", np.float32(1)), g.constant(f"l{i}_zero_int8", np.int8(0))
    q_values = g.op("DequantizeLinear", [q, unit, zero], f"l{i}_input_values")
    wq, w_scale = quantize_weights(layer.weights)
    w_values = g.op("DequantizeLinear", [g.constant(f"l{i}_weights_int8", _nchw_weights(wq)),
                                         unit, zero], f"l{i}_weight_values")
    acc = _conv_node(layer, [q_values, w_values], "accumulator", ctx)
    out_scale = (w_scale / params.multiplier).astype(np.float32).reshape(1, -1, 1, 1)
    scaled = g.op("Mul", [acc, g.constant(f"l{i}_output_scale", out_scale)], f"l{i}_dequantized")
    biased = g.op("Add", [scaled, g.constant(f"l{i}_bias", params.bias.reshape(1, -1, 1, 1))],
                  f"l{i}_biased")
    out = _activate(layer, biased, ctx)
    if ctx.expose_int8:
        ctx.int8_tensors.append((layer, x, q, out))
    return out


def convolutional(layer: Convolutional, inputs: list[str], ctx: EmitContext) -> str:
    if layer.xnor:
        raise refuse(layer, ctx.graph, "xnor=1 (binary input and weights with popcount) has no "
                     "faithful ONNX operator")
    if layer.dilation > 1:
        raise refuse(layer, ctx.graph, "dilation is not exported yet")
    params = ctx.int8.get(layer.index)
    if params is not None:
        return _int8_conv(layer, inputs[0], params, ctx)
    weights = ctx.g.constant(f"l{layer.index}_weights", _nchw_weights(layer.weights))
    bias = ctx.g.constant(f"l{layer.index}_bias", layer.bias)
    return _activate(layer, _conv_node(layer, [inputs[0], weights, bias], "conv", ctx), ctx)


def maxpool(layer: MaxPool, inputs: list[str], ctx: EmitContext) -> str:
    """darknet starts windows at -padding // 2 and never reads the padding: ONNX MaxPool with
    that much padding before and the rest after gives the same windows and sizes."""
    before = layer.padding // 2
    after = layer.padding - before
    return ctx.g.op("MaxPool", inputs, f"l{layer.index}_maxpool",
                    kernel_shape=[layer.size, layer.size], strides=[layer.stride, layer.stride],
                    pads=[before, before, after, after])


def avgpool(layer: AvgPool, inputs: list[str], ctx: EmitContext) -> str:
    return ctx.g.op("GlobalAveragePool", inputs, f"l{layer.index}_avgpool")


def dropout(layer: Dropout, inputs: list[str], ctx: EmitContext) -> str:
    return inputs[0]  # the identity at inference


def route(layer: Route, inputs: list[str], ctx: EmitContext) -> str:
    g = ctx.g
    if layer.groups > 1:
        parts = []
        for source, x in zip(layer.inputs, inputs):
            step = ctx.graph.layers[source].out_shape.c // layer.groups
            start = layer.group_id * step
            parts.append(g.op("Slice", [x, g.constant(f"l{layer.index}_start", np.int64([start])),
                                        g.constant(f"l{layer.index}_end", np.int64([start + step])),
                                        g.constant(f"l{layer.index}_axis", np.int64([1]))],
                              f"l{layer.index}_group"))
        inputs = parts
    if len(inputs) == 1:
        return inputs[0]
    return g.op("Concat", inputs, f"l{layer.index}_route", axis=1)


def shortcut(layer: Shortcut, inputs: list[str], ctx: EmitContext) -> str:
    shapes = {ctx.graph.layers[i].out_shape if i >= 0 else ctx.graph.input_shape
              for i in layer.inputs}
    if layer.weights_type is not None or len(layer.inputs) != 2 or len(shapes) != 1:
        raise refuse(layer, ctx.graph, "only the plain sum of two equal shapes is exported yet "
                     "(not weights, several 'from' layers or different channel counts)")
    return _activate(layer, ctx.g.op("Add", inputs, f"l{layer.index}_shortcut"), ctx)


def upsample(layer: Upsample, inputs: list[str], ctx: EmitContext) -> str:
    g, s = ctx.g, float(layer.stride)
    # Nearest neighbour with floor(out_index / stride): every input pixel repeated stride^2 times.
    out = g.op("Resize", [inputs[0], "", g.constant(f"l{layer.index}_scales",
                                                    np.float32([1, 1, s, s]))],
               f"l{layer.index}_upsample", mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if layer.scale != 1:
        out = g.op("Mul", [out, g.constant(f"l{layer.index}_scale", np.float32(layer.scale))],
                   f"l{layer.index}_scaled")
    return out


def reorg(layer: Reorg, inputs: list[str], ctx: EmitContext) -> str:
    """darknet's reorg (not DepthToSpace/SpaceToDepth): its loop reads the input buffer as
    (C/s^2, H*s, W*s) and writes it in (C, H, W) order, i.e. element (c2, j*s + oy, i*s + ox)
    goes to channel (oy*s + ox) * C/s^2 + c2 at (j, i); the result is then read as the output
    shape (C*s^2, H/s, W/s). Shapes here are the layer's input (C, H, W)."""
    g = ctx.g
    c, h, w = layer.in_shape
    s = layer.stride
    grid = g.op("Reshape", [inputs[0], g.constant(f"l{layer.index}_grid",
                                                   np.int64([-1, c // (s * s), h, s, w, s]))],
                f"l{layer.index}_grid")
    moved = g.op("Transpose", [grid], f"l{layer.index}_moved", perm=[0, 3, 5, 1, 2, 4])
    oc, oh, ow = layer.out_shape
    return g.op("Reshape", [moved, g.constant(f"l{layer.index}_shape", np.int64([-1, oc, oh, ow]))],
                f"l{layer.index}_reorg")


def yolo(layer: Yolo, inputs: list[str], ctx: EmitContext) -> str:
    """Logistic on every channel but each anchor's w and h; then x, y scaled by scale_x_y about
    the cell centre (a float32 multiply, then an add, as the FP32 op)."""
    if layer.new_coords:
        raise refuse(layer, ctx.graph, "new_coords=1 is not exported yet")
    g, i, x = ctx.g, layer.index, inputs[0]
    per_anchor = 5 + layer.classes
    channel = np.arange(layer.num_anchors * per_anchor) % per_anchor
    logistic = ~np.isin(channel, (2, 3))
    out = g.op("Where", [g.constant(f"l{i}_logistic_mask", logistic.reshape(1, -1, 1, 1)),
                         g.op("Sigmoid", [x], f"l{i}_sigmoid"), x], f"l{i}_yolo")
    if layer.scale_x_y != 1:
        is_xy = np.isin(channel, (0, 1)).reshape(1, -1, 1, 1)
        scale = np.where(is_xy, np.float32(layer.scale_x_y), np.float32(1)).astype(np.float32)
        shift = np.where(is_xy, np.float32(-0.5 * (layer.scale_x_y - 1)), np.float32(0))
        out = g.op("Mul", [out, g.constant(f"l{i}_scale_x_y", scale)], f"l{i}_scaled")
        out = g.op("Add", [out, g.constant(f"l{i}_shift_x_y", shift.astype(np.float32))],
                   f"l{i}_shifted")
    return out


def region(layer: Region, inputs: list[str], ctx: EmitContext) -> str:
    """Per anchor: logistic x, y; raw w, h; logistic objectness; softmax (or logistic) classes."""
    if layer.tree is not None:
        raise refuse(layer, ctx.graph, "the hierarchical softmax (tree=) is not exported yet")
    g, i = ctx.g, layer.index
    _, h, w = layer.out_shape
    per_anchor = 5 + layer.classes
    split = g.op("Reshape", [inputs[0], g.constant(f"l{i}_per_anchor",
                                                    np.int64([-1, layer.num_anchors, per_anchor, h, w]))],
                 f"l{i}_per_anchor")

    def part(start: int, end: int) -> str:
        return g.op("Slice", [split, g.constant(f"l{i}_start", np.int64([start])),
                              g.constant(f"l{i}_end", np.int64([end])),
                              g.constant(f"l{i}_axis", np.int64([2]))], f"l{i}_part")

    xy = g.op("Sigmoid", [part(0, 2)], f"l{i}_xy")
    objectness = g.op("Sigmoid", [part(4, 5)], f"l{i}_objectness")
    classes = (g.op("Softmax", [part(5, per_anchor)], f"l{i}_softmax", axis=2) if layer.softmax
               else g.op("Sigmoid", [part(5, per_anchor)], f"l{i}_classes"))
    joined = g.op("Concat", [xy, part(2, 4), objectness, classes], f"l{i}_joined", axis=2)
    c = layer.out_shape.c
    return g.op("Reshape", [joined, g.constant(f"l{i}_shape", np.int64([-1, c, h, w]))],
                f"l{i}_region")


EMITTERS: dict[type, Emitter] = {
    Convolutional: convolutional, MaxPool: maxpool, AvgPool: avgpool, Dropout: dropout,
    Route: route, Shortcut: shortcut, Upsample: upsample, Reorg: reorg, Yolo: yolo,
    Region: region,
}
