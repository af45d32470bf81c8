"""[convolutional]: darknet's conv layer, with batch norm folded into it at load."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import MAX_INT, Section
from ..activations import check_name, kernel_code
from .base import BuildContext, Layer, Shape, checked_shape

MAX_KERNEL = 64  # larger kernels are typos; refusing them bounds the weights before reading
# Bound on the values one output pixel reads (size * size * input channels per group): the FP32
# kernel's im2col buffer holds at least 64 such rows (64 << 20 floats = 256 MiB). Real layers
# read at most a few thousand (yolov2: 3 * 3 * 1280).
MAX_PATCH = 1 << 20


@dataclass(eq=False)
class Convolutional(Layer):
    kind = "convolutional"
    in_shape: Shape
    filters: int
    size: int
    stride: int
    pad: int  # pixels on each side
    groups: int
    batch_normalize: bool
    activation: str
    xnor: bool
    dilation: int = 1
    # AlexeyAB's share_index: this layer uses the weights (and batch norm) of that earlier
    # conv layer and reads none from the .weights file.
    shares_weights_of: int | None = None
    # Filled by the weights loader: (filters, size, size, in_c/groups) float32, BN folded
    # (xnor layers: raw weights, and BN's per-channel factor in output_scale).
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    output_scale: np.ndarray | None = None

    @property
    def activation_code(self) -> int:
        """The activation the kernels fuse (LINEAR when the op applies it afterwards)."""
        return kernel_code(self.activation)

    def weight_floats(self) -> int:
        """Floats this layer takes from a darknet .weights file."""
        if self.shares_weights_of is not None:
            return 0
        per_filter = 1 + (3 if self.batch_normalize else 0)
        return self.filters * per_filter + self.filters * (self.in_shape.c // self.groups) * self.size ** 2

    def assign_weights(self, values: np.ndarray) -> None:
        """Take this layer's floats from a .weights file (darknet's order), batch norm folded."""
        self.weights, self.bias, self.output_scale = fold_batch_norm(
            self, values[:self.filters], values[self.filters:])

    def describe(self) -> str:
        return (f"{super().describe()} filters={self.filters} size={self.size} stride={self.stride} "
                f"pad={self.pad} groups={self.groups} bn={int(self.batch_normalize)} "
                f"act={self.activation} xnor={int(self.xnor)}"
                + (f" dilation={self.dilation}" if self.dilation != 1 else "")
                + (f" shares={self.shares_weights_of}" if self.shares_weights_of is not None
                   else ""))


def batch_norm_factor(bias: np.ndarray, scale: np.ndarray, mean: np.ndarray, var: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Batch norm at inference as darknet computes it, scale * (y - mean) / (sqrt(var) + 1e-6)
    + bias, as a per-output factor k on y and the bias it leaves: (k, bias - mean * k), in
    float32 maths as darknet's. Refuses a negative rolling variance."""
    if (var < 0).any():
        raise ValueError("negative rolling variance")
    k = scale / (np.sqrt(var) + np.float32(1e-6))
    return k, bias - mean * k


def fold_batch_norm(layer: Convolutional, bias: np.ndarray, rest: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """darknet's conv floats after the biases: [scales, rolling mean, rolling variance when
    batch_normalize] then the weights (Cout, Cin/groups, kh, kw). Folds batch norm as darknet
    computes it: y = scale * (conv - mean) / (sqrt(var) + 1e-6) + bias.

    Returns (weights, bias, output_scale). xnor layers keep their raw weights and get the
    batch norm's per-channel factor as output_scale instead: darknet binarizes the raw
    weights (w == 0 -> -mean|w|), and folding a negative scale first would flip that case."""
    n, cin = layer.filters, layer.in_shape.c // layer.groups
    bn = 3 * n if layer.batch_normalize else 0
    weights = rest[bn:].reshape(n, cin, layer.size, layer.size)
    output_scale = None
    if layer.batch_normalize:
        k, bias = batch_norm_factor(bias, rest[:n], rest[n:2 * n], rest[2 * n:3 * n])
        if layer.xnor:
            output_scale = k
    # darknet (Cout, Cin, kh, kw) -> ours (Cout, kh, kw, Cin): channels innermost for NHWC;
    # transposed and scaled in one pass, into one new array.
    folded = np.empty((n, layer.size, layer.size, cin), dtype=np.float32)
    if layer.batch_normalize and not layer.xnor:
        np.multiply(weights.transpose(0, 2, 3, 1), k[:, None, None, None], out=folded)
    else:
        folded[...] = weights.transpose(0, 2, 3, 1)
    return folded, np.asarray(bias, np.float32), output_scale


# Keys of darknet features yolo8 does not implement, refused unless they hold this value.
_NEUTRAL = {"binary": 0, "antialiasing": 0, "deform": 0, "assisted_excitation": 0,
            "sway": 0, "rotate": 0, "stretch": 0, "stretch_sway": 0,
            "flipped": 0, "dot": 0, "coordconv": 0}
_TRAINING_KEYS = ("stopbackward", "train_only_bn", "dont_update", "burnin_update", "learning_rate")


def read_dilation(section: Section, size: int, padding: int) -> int:
    """darknet's `dilation`: taps `dilation` pixels apart, padding multiplied by it (im2col_cpu_ext
    gets pad * dilation). darknet sizes the output without the dilation, so the two agree only
    when 2 * padding = size - 1 (pad=1 with an odd size): other combinations are refused."""
    dilation = section.get_int("dilation", 1, low=1, high=MAX_KERNEL)
    if size == 1:
        return 1  # darknet ignores it for 1x1 kernels
    if dilation > 1 and 2 * padding != size - 1:
        raise section.error(f"dilation={dilation} needs padding = (size - 1) / 2 (pad=1 with an "
                            f"odd size): darknet's output size ignores the dilation", "dilation")
    return dilation


# darknet's "no share_index" value (parse_convolutional)
_NO_SHARE = -1000000000


def read_share_index(section: Section, ctx: BuildContext, layer: Convolutional) -> int | None:
    """The earlier conv layer whose weights this one uses (darknet's share_index: absolute, or
    relative when negative), checked to have the same weight shapes as darknet does."""
    value = section.get_int("share_index", _NO_SHARE, low=-MAX_INT)
    if value == _NO_SHARE:
        return None
    index = ctx.resolve(section, "share_index", value)
    other = ctx.layers[index]
    if not isinstance(other, Convolutional):
        raise section.error(f"layer {index} is a [{other.kind}], not a conv layer", "share_index")
    mine = (layer.size, layer.filters, layer.in_shape.c, layer.groups, layer.batch_normalize,
            layer.xnor)
    theirs = (other.size, other.filters, other.in_shape.c, other.groups, other.batch_normalize,
              other.xnor)
    if mine != theirs:
        raise section.error(f"layer {index} has other weights (size, filters, input channels, "
                            f"groups, batch_normalize, xnor = {theirs}, this layer {mine})",
                            "share_index")
    return index


def build(section: Section, ctx: BuildContext) -> Convolutional:
    prev, in_shape = ctx.previous()
    filters = section.get_int("filters", 1, low=1)
    size = section.get_int("size", 1, low=1, high=MAX_KERNEL)
    stride = section.get_int("stride", 1, low=1, high=MAX_KERNEL)
    for key in ("stride_x", "stride_y"):
        if section.has(key) and section.get_int(key) != stride:
            raise section.error(f"a different stride per axis is not supported (stride={stride})", key)
    pad_flag = section.get_int("pad", 0, low=0, high=1)
    padding = section.get_int("padding", 0, low=0, high=MAX_KERNEL)
    if pad_flag:
        padding = size // 2  # darknet: pad=1 overrides padding
    groups = section.get_int("groups", 1, low=1)
    if in_shape.c % groups or filters % groups:
        raise section.error(f"groups={groups} must divide the input channels ({in_shape.c}) and "
                            f"filters ({filters})", "groups")
    activation = check_name(section, default="logistic")  # darknet's default, really
    dilation = read_dilation(section, size, padding)
    batch_normalize = bool(section.get_int("batch_normalize", 0, low=0, high=1))
    xnor = bool(section.get_int("xnor", 0, low=0, high=1))
    if xnor and (groups != 1 or dilation != 1):
        raise section.error("xnor=1 layers must have groups=1 and dilation=1", "groups")
    for key, neutral in _NEUTRAL.items():
        section.require_default(key, neutral)
    section.ignore(*_TRAINING_KEYS)
    out_h = (in_shape.h + 2 * padding - size) // stride + 1
    out_w = (in_shape.w + 2 * padding - size) // stride + 1
    out_shape = checked_shape(section, filters, out_h, out_w)
    # The INT8 and XNOR kernels copy the input with its zero border.
    checked_shape(section, in_shape.c, in_shape.h + 2 * padding * dilation,
                  in_shape.w + 2 * padding * dilation, "padded input")
    patch = size * size * (in_shape.c // groups)
    if patch > MAX_PATCH:
        raise section.error(f"each output value would read {size}x{size}x{in_shape.c // groups} = "
                            f"{patch} inputs, more than yolo8 accepts ({MAX_PATCH})", "size")
    layer = Convolutional(
        index=ctx.index, line=section.line, inputs=(prev,), out_shape=out_shape, in_shape=in_shape,
        filters=filters, size=size, stride=stride, pad=padding, groups=groups,
        batch_normalize=batch_normalize, activation=activation, xnor=xnor, dilation=dilation)
    layer.shares_weights_of = read_share_index(section, ctx, layer)
    ctx.charge(section, weights=layer.weight_floats(), work=out_shape.size * patch)
    return layer
