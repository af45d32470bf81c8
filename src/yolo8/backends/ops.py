"""FP32 ops for every layer kind, shared by all backends (NHWC float32 throughout)."""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import activations
from ..darknet.wordtree import WordTree
from ..graph import Graph
from ..kernels.conv_fp32 import Fp32Conv
from ..kernels.pooling import maxpool
from ..layers import (AvgPool, Convolutional, Dropout, MaxPool, Region, Reorg, Route, Shortcut,
                      Upsample, Yolo)
from ..layers import GaussianYolo, LocalAvgPool, Reorg3d, Sam, ScaleChannels
from ..layers import Connected, Cost, Crop, Softmax
from .base import Op


def conv(layer: Convolutional, graph: Graph) -> Op:
    if layer.xnor:
        return unfused_activation(layer, xnor_conv(layer))
    d = layer.dilation
    kernel = Fp32Conv(layer.weights, layer.bias, kernel_stride(layer), layer.pad, layer.groups,
                      layer.activation_code,
                      out_hw=(-(-layer.in_shape.h // d), -(-layer.in_shape.w // d)) if d > 1
                      else (layer.out_shape.h, layer.out_shape.w))
    return conv_op(layer, kernel)


def conv_op(layer: Convolutional, kernel: Op) -> Op:
    """The layer's op around a kernel that computes its undilated convolution (pad = layer.pad)
    with the fused part of its activation: dilation, then any activation the kernels do not
    fuse, added around it."""
    return unfused_activation(layer, with_dilation(layer, kernel))


def unfused_activation(layer: Convolutional, op: Op) -> Op:
    """op followed by the layer's activation when the kernels do not fuse it."""
    if activations.is_fused(layer.activation):
        return op
    return lambda x: activations.apply(op(x), layer.activation)


def kernel_stride(layer: Convolutional) -> int:
    """The stride the layer's kernel runs with: dilated layers run at stride 1 (see
    with_dilation)."""
    return 1 if layer.dilation > 1 else layer.stride


def with_dilation(layer: Convolutional, kernel: Op) -> Op:
    """The layer's convolution from a kernel of stride kernel_stride(layer): dilated layers
    run at stride 1 and keep every stride-th output (darknet's strided output is exactly that
    subsample, 4x the work for stride 2: resnet152_trident has one such layer)."""
    if layer.dilation == 1:
        return kernel
    op = dilated(kernel, layer.dilation)
    if layer.stride == 1:
        return op
    s = layer.stride
    return lambda x: np.ascontiguousarray(op(x)[:, ::s, ::s])


def dilated(kernel: Op, d: int) -> Op:
    """A stride-1 convolution dilated by d, from the undilated one: output pixels (py + d i,
    px + d j) see only input pixels (py + d m, px + d n), so each of the d x d phases of the
    output is the undilated convolution of the same phase of the input (padding p pixels of
    the phase standing for darknet's p * d of the image)."""
    def run(x: np.ndarray) -> np.ndarray:
        out = None
        for py in range(d):
            for px in range(d):
                part = kernel(np.ascontiguousarray(x[:, py::d, px::d]))
                if out is None:
                    out = np.empty((x.shape[0], x.shape[1], x.shape[2], part.shape[3]),
                                   np.float32)
                out[:, py::d, px::d] = part
        return out
    return run


def xnor_conv(layer: Convolutional) -> Op:
    """xnor=1: binary input and weights (XOR + popcount), in every backend. Batch norm's
    factor scales each filter's mean |w| (darknet applies BN after the binary conv)."""
    from dataclasses import replace

    from ..kernels.xnor import XnorConvWeights, conv2d_xnor

    packed = XnorConvWeights.from_float(layer.weights)
    if layer.output_scale is not None:
        packed = replace(packed, alpha=(packed.alpha * layer.output_scale).astype(np.float32))
    return lambda x: conv2d_xnor(x, packed, layer.bias, layer.stride, layer.pad,
                                 layer.activation_code)


def max_pool(layer: MaxPool, graph: Graph) -> Op:
    return lambda x: maxpool(x, layer.size, layer.stride, layer.padding)


def avg_pool(layer: AvgPool, graph: Graph) -> Op:
    return lambda x: x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)


def dropout(layer: Dropout, graph: Graph) -> Op:
    return lambda x: x


def route(layer: Route, graph: Graph) -> Op:
    if layer.groups == 1:
        if len(layer.inputs) == 1:
            return lambda x: x
        return lambda *xs: np.concatenate(xs, axis=3)

    def grouped(*xs: np.ndarray) -> np.ndarray:
        parts = []
        for x in xs:
            step = x.shape[3] // layer.groups
            parts.append(x[..., layer.group_id * step:(layer.group_id + 1) * step])
        return np.ascontiguousarray(np.concatenate(parts, axis=3))
    return grouped


def activated(name: str, op: Op) -> Op:
    """op followed by darknet's activation `name` (none for linear)."""
    if name == "linear":
        return op
    return lambda *xs: activations.apply(op(*xs), name)


def shortcut(layer: Shortcut, graph: Graph) -> Op:
    if layer.weights_type is None and len(layer.inputs) == 2 and \
            graph_shape(graph, layer.inputs[1]) == layer.out_shape:
        return activated(layer.activation, lambda a, b: a + b)
    weights = shortcut_weights(layer)  # normalised once, when the op is made
    return activated(layer.activation, lambda *xs: shortcut_sum(xs, weights))


def graph_shape(graph: Graph, index: int):
    return graph.input_shape if index < 0 else graph.layers[index].out_shape


def shortcut_weights(layer: Shortcut) -> np.ndarray | None:
    """Each input's weight (inputs, 1 or channels), normalised as shortcut_multilayer_cpu does
    (float32; eps 0.0001 in the denominator), or None for a plain sum."""
    if layer.weights_type is None:
        return None
    w = layer.weights.astype(np.float32)
    eps = np.float32(0.0001)
    if layer.weights_normalization == "relu":
        w = np.maximum(w, 0)
        return w / (eps + w.sum(axis=0, dtype=np.float32))
    if layer.weights_normalization == "softmax":
        e = np.exp(w - w.max(axis=0))
        return e / (eps + e.sum(axis=0, dtype=np.float32))
    return w


def shortcut_sum(xs: tuple[np.ndarray, ...], weights: np.ndarray | None) -> np.ndarray:
    """The first input (the previous layer) plus each other one over the channels they share,
    each times its weight if weighted."""
    first = xs[0] if weights is None else xs[0] * weights[0]
    out = np.array(first, dtype=np.float32)
    for i, x in enumerate(xs[1:], start=1):
        c = min(out.shape[3], x.shape[3])
        term = x[..., :c] if weights is None else x[..., :c] * weights[i, :c]
        out[..., :c] += term
    return out


def scale_channels(layer: ScaleChannels, graph: Graph) -> Op:
    """forward_scale_channels_layer: the `from` output times the previous layer's per-channel
    (1x1xC) or, with scale_wh, per-pixel (WxHx1) scales; both broadcast in NHWC."""
    return activated(layer.activation, lambda scales, x: x * scales)


def sam(layer: Sam, graph: Graph) -> Op:
    return activated(layer.activation, lambda a, b: a * b)


def reorg3d(layer: Reorg3d, graph: Graph) -> Op:
    """reorg_layer.c: out[y, x, o * C + c] = in[y * s + dy, x * s + dx, c], o = dy * s + dx."""
    s = layer.stride

    def reorganize(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        blocks = x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(blocks).reshape(n, h // s, w // s, s * s * c)
    return reorganize


def local_avg_pool(layer: LocalAvgPool, graph: Graph) -> Op:
    """forward_local_avgpool_layer: the mean of each window's pixels inside the image."""
    size, stride, start = layer.size, layer.stride, layer.padding // 2
    oh, ow = layer.out_shape.h, layer.out_shape.w
    h, w = layer.in_shape.h, layer.in_shape.w
    # Padded extents covering every window; zeros outside the image, counted out below.
    ph, pw = max(h + start, (oh - 1) * stride + size), max(w + start, (ow - 1) * stride + size)
    inside = np.zeros((ph, pw), np.float32)
    inside[start:start + h, start:start + w] = 1
    counts = _window_sums(inside[None, :, :, None], size, stride, oh, ow)

    def pool(x: np.ndarray) -> np.ndarray:
        padded = np.zeros((x.shape[0], ph, pw, x.shape[3]), np.float32)
        padded[:, start:start + h, start:start + w] = x
        return _window_sums(padded, size, stride, oh, ow) / counts
    return pool


def _window_sums(x: np.ndarray, size: int, stride: int, oh: int, ow: int) -> np.ndarray:
    total = np.zeros((x.shape[0], oh, ow, x.shape[3]), np.float32)
    for dy in range(size):
        for dx in range(size):
            total += x[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride]
    return total


def upsample(layer: Upsample, graph: Graph) -> Op:
    s, scale = layer.stride, np.float32(layer.scale)

    def up(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        out = np.broadcast_to(x[:, :, None, :, None, :], (n, h, s, w, s, c)).reshape(n, h * s, w * s, c)
        return out * scale if scale != 1 else np.ascontiguousarray(out)
    return up


def reorg(layer: Reorg, graph: Graph) -> Op:
    """darknet's reorg_cpu(..., forward=0) as a fixed permutation of the NCHW buffer."""
    c, h, w = layer.in_shape
    s = layer.stride
    out_c = c // (s * s)
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    c2, offset = k % out_c, k // out_c
    w2, h2 = i * s + offset % s, j * s + offset // s
    source = (w2 + w * s * (h2 + h * s * c2)).ravel()  # out[in_index] = x[source]
    oc, oh, ow = layer.out_shape

    def reorganize(x: np.ndarray) -> np.ndarray:
        flat = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
        out = flat[:, source].reshape(x.shape[0], oc, oh, ow)
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    return reorganize


def _logistic(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def yolo(layer: Yolo, graph: Graph) -> Op:
    """darknet's forward_yolo_layer at inference: logistic on everything but w and h, then
    x, y scaled by scale_x_y about the cell centre (AlexeyAB). With new_coords: no logistic
    (the conv before applies it), only the scaling."""
    a = layer.num_anchors
    scale = np.float32(layer.scale_x_y)
    shift = np.float32(-0.5 * (layer.scale_x_y - 1))

    def new_coords_head(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        if layer.scale_x_y != 1:
            v = out.reshape(*x.shape[:3], a, -1)
            v[..., :2] = v[..., :2] * scale + shift
        return out

    if layer.new_coords:
        return new_coords_head
    return logistic_head(a, slice(2, 4), slice(0, 2), layer.scale_x_y)


def logistic_head(a: int, raw: slice, xy: slice, scale_x_y: float) -> Op:
    """The [yolo] and [Gaussian_yolo] heads at inference, on NHWC maps of `a` anchors: the
    logistic on every entry but the `raw` ones (w and h, kept as they are), then the `xy`
    entries scaled by scale_x_y about the cell centre (AlexeyAB)."""
    scale = np.float32(scale_x_y)
    shift = np.float32(-0.5 * (scale_x_y - 1))

    def head(x: np.ndarray) -> np.ndarray:
        # The logistic over the whole contiguous array in place, then w and h copied back raw:
        # bit for bit the per-entry result, in a third less time than on strided views.
        flat = np.empty_like(x)
        with np.errstate(over="ignore"):  # exp(-x) = inf gives 0, as it should
            np.negative(x, out=flat)
            np.exp(flat, out=flat)
        flat += np.float32(1.0)
        np.reciprocal(flat, out=flat)
        v, out = x.reshape(*x.shape[:3], a, -1), flat.reshape(*x.shape[:3], a, -1)
        out[..., raw] = v[..., raw]
        if scale_x_y != 1:  # x * 1 + -0.0 is x: skipping it changes no bit
            out[..., xy] = out[..., xy] * scale + shift
        return flat
    return head


def _plain_softmax(classes: np.ndarray) -> np.ndarray:
    e = np.exp(classes - classes.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def region(layer: Region, graph: Graph) -> Op:
    """darknet's forward_region_layer at inference: logistic x, y, objectness; over the classes
    softmax_tree where there is a tree, else softmax, else (softmax=0) the logistic."""
    a = layer.num_anchors
    classes_op = (partial(softmax_tree, layer.tree) if layer.tree is not None
                  else _plain_softmax if layer.softmax else _logistic)

    def head(x: np.ndarray) -> np.ndarray:
        v = x.reshape(*x.shape[:3], a, -1)  # per anchor: x, y, w, h, objectness, classes
        out = np.empty_like(v)
        out[..., :2] = _logistic(v[..., :2])
        out[..., 2:4] = v[..., 2:4]
        out[..., 4] = _logistic(v[..., 4])
        out[..., 5:] = classes_op(v[..., 5:])
        return out.reshape(x.shape)
    return head


def softmax_tree(tree: WordTree, classes: np.ndarray) -> np.ndarray:
    """darknet's softmax_tree: a softmax over each group of siblings (consecutive entries,
    group_size[i] of them, in group order) along the last axis."""
    sizes = tree.group_size[tree.group_size > 0]  # read_tree's empty first group changes nothing
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    top = np.repeat(np.maximum.reduceat(classes, starts, axis=-1), sizes, axis=-1)
    e = np.exp(classes - top)
    return e / np.repeat(np.add.reduceat(e, starts, axis=-1), sizes, axis=-1)


def gaussian_yolo(layer: GaussianYolo, graph: Graph) -> Op:
    """forward_gaussian_yolo_layer: logistic on every entry but w and h (4 and 6), then x and
    y (entries 0 and 2) scaled by scale_x_y about the cell centre."""
    return logistic_head(layer.num_anchors, slice(4, 7, 2), slice(0, 3, 2), layer.scale_x_y)


def _darknet_order(x: np.ndarray) -> np.ndarray:
    """NHWC batch -> (N, C*H*W) in darknet's (C, H, W) order."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def connected(layer: Connected, graph: Graph) -> Op:
    """darknet's forward_connected_layer: x . W^T + b (batch norm folded), then activation."""
    weights_t = np.ascontiguousarray(layer.weights.T)
    product = activated(layer.activation, lambda x: _darknet_order(x) @ weights_t + layer.bias)
    return lambda x: product(x).reshape(x.shape[0], 1, 1, layer.outputs)


def softmax(layer: Softmax, graph: Graph) -> Op:
    """darknet's softmax_cpu: over `groups` consecutive runs of the (C, H, W)-ordered input,
    exp(x / t - max / t) normalised (t the temperature)."""
    t = np.float32(layer.temperature)

    def soft(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        v = _darknet_order(x).reshape(n, layer.groups, -1)
        e = np.exp(v / t - v.max(axis=2, keepdims=True) / t)
        out = (e / e.sum(axis=2, keepdims=True)).reshape(n, c, h, w)
        return np.ascontiguousarray(out.transpose(0, 2, 3, 1), dtype=np.float32)
    return soft


def cost(layer: Cost, graph: Graph) -> Op:
    return lambda x: x


def crop(layer: Crop, graph: Graph) -> Op:
    """The centre of the input, x * scale + shift (darknet's crop at test time)."""
    rows = slice(layer.top, layer.top + layer.out_shape.h)
    cols = slice(layer.left, layer.left + layer.out_shape.w)
    scale, shift = np.float32(layer.scale), np.float32(layer.shift)
    return lambda x: x[:, rows, cols] * scale + shift


FP32_OPS = {
    Convolutional: conv, MaxPool: max_pool, AvgPool: avg_pool, Dropout: dropout, Route: route,
    Shortcut: shortcut, Upsample: upsample, Reorg: reorg, Yolo: yolo, Region: region,
    GaussianYolo: gaussian_yolo, ScaleChannels: scale_channels, Sam: sam, Reorg3d: reorg3d,
    LocalAvgPool: local_avg_pool,
    Connected: connected, Softmax: softmax, Cost: cost, Crop: crop,
}
