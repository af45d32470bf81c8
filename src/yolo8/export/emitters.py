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
from ..backends.ops import shortcut_weights
from ..layers import (AvgPool, Connected, Convolutional, Cost, Crop, Dropout, GaussianYolo, Layer,
                      LocalAvgPool, MaxPool, NETWORK_INPUT, Region, Reorg, Reorg3d, Route, Sam,
                      ScaleChannels, Shape, Shortcut, Softmax, Upsample, Yolo)
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
    # Test build: each INT8 conv's float input, quantized input, output before its activation
    # and output, exposed as outputs.
    int8_tensors: list[tuple[Convolutional, str, str, str, str]] = field(default_factory=list)
    expose_int8: bool = False


Emitter = Callable[[Layer, list[str], EmitContext], str]


# -- activations (darknet's activate(), the formulas of yolo8.activations) ------------------------

Activation = Callable[[OnnxGraph, str, str], str]


def _const(g: OnnxGraph, hint: str, value: float) -> str:
    return g.constant(hint, np.float32(value))


def _mish(g: OnnxGraph, x: str, hint: str) -> str:
    # darknet's softplus switches to its asymptotes beyond |x| > 20, where log1p(exp(x))
    # already equals them in float32.
    return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], f"{hint}_softplus")],
                                f"{hint}_tanh")], hint)


def _clip(low: float, high: float) -> Activation:
    def clip(g: OnnxGraph, x: str, hint: str) -> str:
        return g.op("Clip", [x, _const(g, f"{hint}_low", low), _const(g, f"{hint}_high", high)],
                    hint)
    return clip


def _affine(g: OnnxGraph, x: str, hint: str, scale: float, shift: float) -> str:
    """scale * x + shift in float32."""
    scaled = g.op("Mul", [x, _const(g, f"{hint}_scale", scale)], f"{hint}_scaled")
    return g.op("Add", [scaled, _const(g, f"{hint}_shift", shift)], f"{hint}_shifted")


def _where(g: OnnxGraph, condition: str, a: str, b: str, hint: str) -> str:
    return g.op("Where", [condition, a, b], hint)


def _less(g: OnnxGraph, x: str, bound: float, hint: str) -> str:
    return g.op("Less", [x, _const(g, f"{hint}_bound", bound)], hint)


def _greater(g: OnnxGraph, x: str, bound: float, hint: str) -> str:
    return g.op("Greater", [x, _const(g, f"{hint}_bound", bound)], hint)


def _ramp(g: OnnxGraph, x: str, hint: str) -> str:
    """x * (x > 0) + 0.1 * x"""
    return g.op("Add", [g.op("Relu", [x], f"{hint}_relu"),
                        g.op("Mul", [x, _const(g, f"{hint}_k", 0.1)], f"{hint}_tenth")], hint)


def _plse(g: OnnxGraph, x: str, hint: str) -> str:
    """0.01 (x + 4) below -4, 0.01 (x - 4) + 1 above 4, x / 8 + 0.5 between."""
    low = g.op("Mul", [g.op("Add", [x, _const(g, f"{hint}_4", 4.0)], f"{hint}_plus4"),
                       _const(g, f"{hint}_k", 0.01)], f"{hint}_low")
    high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, _const(g, f"{hint}_4", 4.0)],
                                          f"{hint}_minus4"),
                                     _const(g, f"{hint}_k", 0.01)], f"{hint}_high_slope"),
                        _const(g, f"{hint}_1", 1.0)], f"{hint}_high")
    middle = _affine(g, x, f"{hint}_middle", 0.125, 0.5)
    return _where(g, _less(g, x, -4.0, f"{hint}_below"), low,
                  _where(g, _greater(g, x, 4.0, f"{hint}_above"), high, middle, f"{hint}_upper"),
                  hint)


def _lhtan(g: OnnxGraph, x: str, hint: str) -> str:
    """0.001 x below 0, 0.001 (x - 1) + 1 above 1, x between."""
    low = g.op("Mul", [x, _const(g, f"{hint}_k", 0.001)], f"{hint}_low")
    high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, _const(g, f"{hint}_1", 1.0)], f"{hint}_m1"),
                                     _const(g, f"{hint}_k", 0.001)], f"{hint}_slope"),
                        _const(g, f"{hint}_1", 1.0)], f"{hint}_high")
    return _where(g, _less(g, x, 0.0, f"{hint}_below"), low,
                  _where(g, _greater(g, x, 1.0, f"{hint}_above"), high, x, f"{hint}_upper"), hint)


def _gelu(g: OnnxGraph, x: str, hint: str) -> str:
    # darknet's tanh approximation with its truncated constants (0.797885, 0.035677), not
    # ONNX's exact Gelu: 0.5 x (1 + tanh(0.797885 x + 0.035677 x^3)).
    cube = g.op("Mul", [g.op("Mul", [x, x], f"{hint}_square"), x], f"{hint}_cube")
    inner = g.op("Add", [g.op("Mul", [x, _const(g, f"{hint}_a", 0.797885)], f"{hint}_ax"),
                         g.op("Mul", [cube, _const(g, f"{hint}_b", 0.035677)], f"{hint}_bx3")],
                 f"{hint}_inner")
    one_plus = g.op("Add", [g.op("Tanh", [inner], f"{hint}_tanh"), _const(g, f"{hint}_1", 1.0)],
                    f"{hint}_one_plus")
    return g.op("Mul", [g.op("Mul", [x, _const(g, f"{hint}_half", 0.5)], f"{hint}_half_x"),
                        one_plus], hint)


def _loggy(g: OnnxGraph, x: str, hint: str) -> str:
    """2 / (1 + exp(-x)) - 1 = 2 sigmoid(x) - 1"""
    return _affine(g, g.op("Sigmoid", [x], f"{hint}_sigmoid"), hint, 2.0, -1.0)


def _stair(g: OnnxGraph, x: str, hint: str) -> str:
    """n = floor(x); floor(x / 2) when n is even, else (x - n) + floor(x / 2)."""
    n = g.op("Floor", [x], f"{hint}_n")
    half = g.op("Floor", [g.op("Mul", [x, _const(g, f"{hint}_half", 0.5)], f"{hint}_x_half")],
                f"{hint}_floor_half")
    n_half = g.op("Floor", [g.op("Mul", [n, _const(g, f"{hint}_half", 0.5)], f"{hint}_n_half")],
                  f"{hint}_floor_n_half")
    even = g.op("Equal", [g.op("Mul", [n_half, _const(g, f"{hint}_2", 2.0)], f"{hint}_twice"), n],
                f"{hint}_even")
    odd = g.op("Add", [g.op("Sub", [x, n], f"{hint}_fraction"), half], f"{hint}_odd")
    return _where(g, even, half, odd, hint)


def _hard_mish(g: OnnxGraph, x: str, hint: str) -> str:
    """x above 0, x^2 / 2 + x above -2, else 0."""
    square = g.op("Mul", [g.op("Mul", [x, x], f"{hint}_square"), _const(g, f"{hint}_half", 0.5)],
                  f"{hint}_half_square")
    middle = g.op("Add", [square, x], f"{hint}_middle")
    inner = _where(g, _greater(g, x, -2.0, f"{hint}_above_m2"), middle,
                   _const(g, f"{hint}_0", 0.0), f"{hint}_inner")
    return _where(g, _greater(g, x, 0.0, f"{hint}_positive"), x, inner, hint)


def _op(op_type: str, **attributes: float) -> Activation:
    return lambda g, x, hint: g.op(op_type, [x], hint, **attributes)


ACTIVATIONS: dict[str, Activation] = {
    "linear": lambda g, x, hint: x,
    "leaky": _op("LeakyRelu", alpha=0.1),
    "revleaky": _op("LeakyRelu", alpha=0.1),  # darknet's activate() treats it as leaky
    "relu": _op("Relu"),
    "logistic": _op("Sigmoid"),
    "mish": _mish,
    "swish": lambda g, x, hint: g.op("Mul", [x, g.op("Sigmoid", [x], f"{hint}_sigmoid")], hint),
    # darknet's CPU activate() gives 0 for relu6; yolo8 clamps as its GPU code does (README).
    "relu6": _clip(0.0, 6.0),
    "relie": _op("LeakyRelu", alpha=0.01),
    "ramp": _ramp,
    "tanh": _op("Tanh"),
    "plse": _plse,
    "elu": _op("Elu", alpha=1.0),
    # darknet's truncated constants, not ONNX's default (more precise) ones
    "selu": _op("Selu", alpha=1.6732, gamma=1.0507),
    "gelu": _gelu,
    "loggy": _loggy,
    "stair": _stair,
    "hardtan": _clip(-1.0, 1.0),
    "lhtan": _lhtan,
    "hard_mish": _hard_mish,
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
    """A Conv with the layer's geometry on inputs [x, weights(, bias)]. darknet pads a dilated
    conv by pad * dilation (im2col_cpu_ext), which with the parser's 2 * pad = size - 1 keeps
    the undilated output size, as ONNX's dilated Conv with those pads does."""
    p, d = layer.pad * layer.dilation, layer.dilation
    return ctx.g.op("Conv", inputs, f"l{layer.index}_{hint}", kernel_shape=[layer.size, layer.size],
                    strides=[layer.stride, layer.stride], pads=[p, p, p, p], group=layer.groups,
                    dilations=[d, d])


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
        ctx.int8_tensors.append((layer, x, q, biased, out))
    return out


def convolutional(layer: Convolutional, inputs: list[str], ctx: EmitContext) -> str:
    if layer.xnor:
        raise refuse(layer, ctx.graph, "xnor=1 (binary input and weights with popcount) has no "
                     "faithful ONNX operator")
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


def _shape_of(graph: Graph, index: int) -> Shape:
    return graph.input_shape if index == NETWORK_INPUT else graph.layers[index].out_shape


def _channel_vector(g: OnnxGraph, hint: str, values: np.ndarray) -> str:
    """Per-channel (or one) float32 factors broadcasting over NCHW."""
    values = np.asarray(values, np.float32)
    return g.constant(hint, values.reshape(1, -1, 1, 1) if values.size > 1 else values.reshape(()))


def _channels(g: OnnxGraph, x: str, start: int, end: int, hint: str) -> str:
    return g.op("Slice", [x, g.constant(f"{hint}_start", np.int64([start])),
                          g.constant(f"{hint}_end", np.int64([end])),
                          g.constant(f"{hint}_axis", np.int64([1]))], hint)


def shortcut(layer: Shortcut, inputs: list[str], ctx: EmitContext) -> str:
    """shortcut_multilayer_cpu: the previous output (times its weight) plus each `from` layer
    (times its weight) over the channels both have, in turn, in float32. A `from` layer with
    fewer channels is zero-padded (adding 0 changes nothing), one with more is sliced."""
    g, i = ctx.g, layer.index
    weights = shortcut_weights(layer)  # normalised here as yolo8 does, once
    c = layer.out_shape.c
    out = inputs[0]
    if weights is not None:
        out = g.op("Mul", [out, _channel_vector(g, f"l{i}_weight0", weights[0])], f"l{i}_weighted")
    for k, (source, x) in enumerate(zip(layer.inputs[1:], inputs[1:]), start=1):
        channels = _shape_of(ctx.graph, source).c
        shared = min(c, channels)
        if shared < channels:
            x = _channels(g, x, 0, shared, f"l{i}_shared{k}")
        if weights is not None:
            x = g.op("Mul", [x, _channel_vector(g, f"l{i}_weight{k}", weights[k, :shared])],
                     f"l{i}_term{k}")
        if shared < c:
            pads = np.int64([0, 0, 0, 0, 0, c - shared, 0, 0])
            x = g.op("Pad", [x, g.constant(f"l{i}_pads{k}", pads)], f"l{i}_padded{k}")
        out = g.op("Add", [out, x], f"l{i}_sum{k}")
    return _activate(layer, out, ctx)


def scale_channels(layer: ScaleChannels, inputs: list[str], ctx: EmitContext) -> str:
    """The `from` output times the previous one, (N, C, 1, 1) or with scale_wh (N, 1, H, W):
    both broadcast in NCHW."""
    scales, x = inputs
    return _activate(layer, ctx.g.op("Mul", [x, scales], f"l{layer.index}_scaled"), ctx)


def sam(layer: Sam, inputs: list[str], ctx: EmitContext) -> str:
    return _activate(layer, ctx.g.op("Mul", inputs, f"l{layer.index}_sam"), ctx)


def reorg3d(layer: Reorg3d, inputs: list[str], ctx: EmitContext) -> str:
    """reorg_layer.c: output channel (dy * s + dx) * C + c holds input channel c at offset
    (dy, dx) of each s x s block, which is ONNX's SpaceToDepth."""
    return ctx.g.op("SpaceToDepth", inputs, f"l{layer.index}_reorg3d", blocksize=layer.stride)


def local_avgpool(layer: LocalAvgPool, inputs: list[str], ctx: EmitContext) -> str:
    """forward_local_avgpool_layer: windows start at -padding // 2 and average only the pixels
    inside the image, i.e. AveragePool without counting the padding; the rest of the padding
    after (the parser keeps every window's padding below its size, as ONNX needs)."""
    before = layer.padding // 2
    after = layer.padding - before
    return ctx.g.op("AveragePool", inputs, f"l{layer.index}_local_avgpool",
                    kernel_shape=[layer.size, layer.size], strides=[layer.stride, layer.stride],
                    pads=[before, before, after, after], count_include_pad=0)


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


def _logistic_except(g: OnnxGraph, i: int, x: str, per_anchor: int, anchors: int,
                     raw: tuple[int, ...]) -> str:
    """The logistic on every entry of each anchor but those in `raw`."""
    entry = np.arange(anchors * per_anchor) % per_anchor
    mask = ~np.isin(entry, raw)
    return g.op("Where", [g.constant(f"l{i}_logistic_mask", mask.reshape(1, -1, 1, 1)),
                          g.op("Sigmoid", [x], f"l{i}_sigmoid"), x], f"l{i}_head")


def _scale_about_centre(g: OnnxGraph, i: int, x: str, per_anchor: int, anchors: int,
                        entries: tuple[int, ...], scale_x_y: float) -> str:
    """x * scale_x_y - 0.5 (scale_x_y - 1) on the given entries (x and y): a float32 multiply,
    then an add, as the FP32 op (the other entries times 1 plus 0, unchanged)."""
    if scale_x_y == 1:
        return x
    is_xy = np.isin(np.arange(anchors * per_anchor) % per_anchor, entries).reshape(1, -1, 1, 1)
    scale = np.where(is_xy, np.float32(scale_x_y), np.float32(1)).astype(np.float32)
    shift = np.where(is_xy, np.float32(-0.5 * (scale_x_y - 1)), np.float32(0)).astype(np.float32)
    out = g.op("Mul", [x, g.constant(f"l{i}_scale_x_y", scale)], f"l{i}_scaled")
    return g.op("Add", [out, g.constant(f"l{i}_shift_x_y", shift)], f"l{i}_shifted")


def yolo(layer: Yolo, inputs: list[str], ctx: EmitContext) -> str:
    """Logistic on every channel but each anchor's w and h; then x, y scaled by scale_x_y about
    the cell centre. new_coords=1: no logistic (the conv before applies it), only the scaling."""
    g, i, per = ctx.g, layer.index, 5 + layer.classes
    out = inputs[0]
    if not layer.new_coords:
        out = _logistic_except(g, i, out, per, layer.num_anchors, (2, 3))
    return _scale_about_centre(g, i, out, per, layer.num_anchors, (0, 1), layer.scale_x_y)


def gaussian_yolo(layer: GaussianYolo, inputs: list[str], ctx: EmitContext) -> str:
    """forward_gaussian_yolo_layer: logistic on every entry but w and h (4 and 6), then x and
    y (entries 0 and 2) scaled by scale_x_y."""
    g, i, per = ctx.g, layer.index, GaussianYolo.ENTRIES + layer.classes
    out = _logistic_except(g, i, inputs[0], per, layer.num_anchors, (4, 6))
    return _scale_about_centre(g, i, out, per, layer.num_anchors, (0, 2), layer.scale_x_y)


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


def _darknet_flat(g: OnnxGraph, x: str, hint: str) -> str:
    """NCHW -> (N, C*H*W): darknet's (C, H, W) order."""
    return g.op("Flatten", [x], hint, axis=1)


def connected(layer: Connected, inputs: list[str], ctx: EmitContext) -> str:
    """forward_connected_layer: x . W^T + b (batch norm folded), activation, as (N, out, 1, 1)."""
    g, i = ctx.g, layer.index
    flat = _darknet_flat(g, inputs[0], f"l{i}_flat")
    y = g.op("Gemm", [flat, g.constant(f"l{i}_weights", layer.weights),
                      g.constant(f"l{i}_bias", layer.bias)], f"l{i}_gemm", transB=1)
    y = _activate(layer, y, ctx)
    return g.op("Reshape", [y, g.constant(f"l{i}_shape", np.int64([-1, layer.outputs, 1, 1]))],
                f"l{i}_connected")


def softmax(layer: Softmax, inputs: list[str], ctx: EmitContext) -> str:
    """softmax_cpu over `groups` consecutive runs of the (C, H, W)-ordered input, of x / t."""
    g, i = ctx.g, layer.index
    groups = g.op("Reshape", [inputs[0], g.constant(f"l{i}_groups",
                                                     np.int64([-1, layer.groups,
                                                               layer.out_shape.size // layer.groups]))],
                  f"l{i}_groups")
    if layer.temperature != 1:
        groups = g.op("Div", [groups, g.constant(f"l{i}_temperature",
                                                 np.float32(layer.temperature))], f"l{i}_tempered")
    soft = g.op("Softmax", [groups], f"l{i}_softmax", axis=2)
    return g.op("Reshape", [soft, g.constant(f"l{i}_shape", np.int64([-1, *layer.out_shape]))],
                f"l{i}_softmax_out")


def cost(layer: Cost, inputs: list[str], ctx: EmitContext) -> str:
    return inputs[0]  # darknet's network output skips cost layers at inference


def crop(layer: Crop, inputs: list[str], ctx: EmitContext) -> str:
    """forward_crop_layer at test time: the centre crop, then x * scale + shift (2x - 1 unless
    noadjust=1, darknet's classifiers being trained on [-1, 1])."""
    g, i = ctx.g, layer.index
    h, w = layer.out_shape.h, layer.out_shape.w
    out = g.op("Slice", [inputs[0], g.constant(f"l{i}_start", np.int64([layer.top, layer.left])),
                         g.constant(f"l{i}_end", np.int64([layer.top + h, layer.left + w])),
                         g.constant(f"l{i}_axes", np.int64([2, 3]))], f"l{i}_crop")
    if (layer.scale, layer.shift) == (1.0, 0.0):
        return out
    return _affine(g, out, f"l{i}_adjust", layer.scale, layer.shift)


EMITTERS: dict[type, Emitter] = {
    Convolutional: convolutional, MaxPool: maxpool, AvgPool: avgpool, Dropout: dropout,
    Route: route, Shortcut: shortcut, Upsample: upsample, Reorg: reorg, Yolo: yolo,
    Region: region, GaussianYolo: gaussian_yolo, ScaleChannels: scale_channels, Sam: sam,
    Reorg3d: reorg3d, LocalAvgPool: local_avgpool, Connected: connected, Softmax: softmax,
    Cost: cost, Crop: crop,
}
