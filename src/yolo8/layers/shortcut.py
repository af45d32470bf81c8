"""[shortcut]: the previous output plus earlier ones (optionally weighted), then an activation.

AlexeyAB's forward_shortcut_layer (shortcut_multilayer_cpu): the output has the previous
layer's shape; each `from` layer adds its values over the channels both have (the added
layer's flat per-image buffer over the first entries of the output's, which with equal width
and height is channel for channel). darknet's parser asserts equal width and height.

Weighted shortcuts (`weights_type=per_feature` or `per_layer`: one weight per input;
`per_channel`: one per input and channel) multiply the previous output by weight 0 and the
i-th `from` layer by weight i + 1, optionally normalised over the inputs
(`weights_normalization=relu`: relu(w) / (eps + sum relu(w)); `softmax`: exp(w - max) /
(eps + sum exp(w - max)), eps = 0.0001). The weights follow the layer's place in the
.weights file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..activations import check_name
from ..darknet.cfg import MAX_INT, Section
from .base import BuildContext, Layer

# darknet's names: per_layer is per_feature (one weight per input); avg_relu is relu.
_WEIGHTS_TYPES = {"none": None, "per_feature": "per_feature", "per_layer": "per_feature",
                  "per_channel": "per_channel"}
_NORMALIZATIONS = {"none": None, "relu": "relu", "avg_relu": "relu", "softmax": "softmax"}


@dataclass(eq=False)
class Shortcut(Layer):
    kind = "shortcut"
    activation: str
    weights_type: str | None = None          # None, "per_feature" or "per_channel"
    weights_normalization: str | None = None  # None, "relu" or "softmax"
    # Filled by the weights loader for weighted shortcuts: (inputs, 1 or channels) float32,
    # row 0 for the previous layer, row i for the i-th `from` layer.
    weights: np.ndarray | None = None

    def weight_floats(self) -> int:
        """Floats this layer takes from a darknet .weights file."""
        per_input = {None: 0, "per_feature": 1, "per_channel": self.out_shape.c}
        return len(self.inputs) * per_input[self.weights_type]

    def assign_weights(self, values: np.ndarray) -> None:
        """Take this layer's floats from a .weights file: the inputs' weights in turn."""
        self.weights = values.astype(np.float32).reshape(len(self.inputs), -1)

    def describe(self) -> str:
        text = f"{super().describe()} act={self.activation}"
        if self.weights_type is not None:
            text += f" weights={self.weights_type} norm={self.weights_normalization}"
        return text


def build(section: Section, ctx: BuildContext) -> Shortcut:
    prev, in_shape = ctx.previous()
    refs = section.get_ints("from", low=-MAX_INT)
    sources = tuple(ctx.resolve(section, "from", ref) for ref in refs)
    for source in sources:
        shape = ctx.shape_of(source)
        if (shape.h, shape.w) != (in_shape.h, in_shape.w):
            raise section.error(f"layer {source} is {shape} but the previous layer is {in_shape}: "
                                f"darknet adds layers of equal width and height only", "from")
    activation = check_name(section)
    for key, neutral in (("alpha", 1), ("beta", 1)):
        section.require_default(key, neutral)
    weights_type = _choice(section, "weights_type", _WEIGHTS_TYPES)
    normalization = _choice(section, "weights_normalization", _NORMALIZATIONS)
    if weights_type is None:
        normalization = None  # darknet reads it only for weighted shortcuts
    return Shortcut(index=ctx.index, line=section.line, inputs=(prev, *sources),
                    out_shape=in_shape, activation=activation, weights_type=weights_type,
                    weights_normalization=normalization)


def _choice(section: Section, key: str, table: dict[str, str | None]) -> str | None:
    value = section.get_str(key, "none")
    if value not in table:
        raise section.error(f"expected one of {', '.join(table)}, got '{value}'", key)
    return table[value]
