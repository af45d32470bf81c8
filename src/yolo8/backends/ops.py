"""FP32 ops for every layer kind, shared by all backends (NHWC float32 throughout)."""
from __future__ import annotations

import numpy as np

from ..graph import Graph
from ..kernels.activations import LINEAR, activate_numpy
from ..kernels.conv_fp32 import Fp32Conv
from ..kernels.pooling import maxpool
from ..layers import (AvgPool, Convolutional, Dropout, MaxPool, Region, Reorg, Route, Shortcut,
                      Upsample, Yolo)
from ..layers import Connected, Cost, Crop, Softmax
from .base import Op


def conv(layer: Convolutional, graph: Graph) -> Op:
    if layer.xnor:
        return xnor_conv(layer)
    return Fp32Conv(layer.weights, layer.bias, layer.stride, layer.pad, layer.groups,
                    layer.activation_code, out_hw=(layer.out_shape.h, layer.out_shape.w))


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


def shortcut(layer: Shortcut, graph: Graph) -> Op:
    code = layer.activation_code
    if code == LINEAR:
        return lambda a, b: a + b
    return lambda a, b: activate_numpy(a + b, code)


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
    x, y scaled by scale_x_y about the cell centre (AlexeyAB)."""
    a = layer.num_anchors
    scale = np.float32(layer.scale_x_y)
    shift = np.float32(-0.5 * (layer.scale_x_y - 1))

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
        out[..., 2:4] = v[..., 2:4]
        if layer.scale_x_y != 1:
            out[..., :2] = out[..., :2] * scale + shift
        return flat
    return head


def region(layer: Region, graph: Graph) -> Op:
    """darknet's forward_region_layer at inference: logistic x, y, objectness; softmax classes."""
    a = layer.num_anchors

    def head(x: np.ndarray) -> np.ndarray:
        v = x.reshape(*x.shape[:3], a, -1)  # per anchor: x, y, w, h, objectness, classes
        out = np.empty_like(v)
        out[..., :2] = _logistic(v[..., :2])
        out[..., 2:4] = v[..., 2:4]
        out[..., 4] = _logistic(v[..., 4])
        classes = v[..., 5:]
        if layer.softmax:
            e = np.exp(classes - classes.max(axis=-1, keepdims=True))
            out[..., 5:] = e / e.sum(axis=-1, keepdims=True)
        else:  # darknet applies the logistic to classes when softmax is off
            out[..., 5:] = _logistic(classes)
        return out.reshape(x.shape)
    return head


def _darknet_order(x: np.ndarray) -> np.ndarray:
    """NHWC batch -> (N, C*H*W) in darknet's (C, H, W) order."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def connected(layer: Connected, graph: Graph) -> Op:
    """darknet's forward_connected_layer: x . W^T + b (batch norm folded), then activation."""
    weights_t = np.ascontiguousarray(layer.weights.T)
    code = layer.activation_code

    def fully_connected(x: np.ndarray) -> np.ndarray:
        y = _darknet_order(x) @ weights_t + layer.bias
        y = y if code == LINEAR else activate_numpy(y, code)
        return y.reshape(x.shape[0], 1, 1, layer.outputs)
    return fully_connected


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
    Connected: connected, Softmax: softmax, Cost: cost, Crop: crop,
}
