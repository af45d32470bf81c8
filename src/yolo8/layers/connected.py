"""[connected]: darknet's fully connected layer, on the input flattened in darknet's (C, H, W)
order, batch norm folded into it at load."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import Section
from ..activations import check_name
from .base import BuildContext, Layer, Shape
from .convolutional import batch_norm_factor


@dataclass(eq=False)
class Connected(Layer):
    kind = "connected"
    in_shape: Shape
    outputs: int
    batch_normalize: bool
    activation: str
    # Filled by the weights loader: (outputs, inputs) float32 over the (C, H, W)-flattened
    # input, and the bias, batch norm folded.
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None

    def weight_floats(self) -> int:
        return self.outputs * (1 + self.in_shape.size + (3 if self.batch_normalize else 0))

    def assign_weights(self, values: np.ndarray) -> None:
        """darknet's load_connected_weights: biases, weights (outputs x inputs), then scales,
        rolling mean and rolling variance when batch_normalize; folded as forward_connected_layer
        computes it: scale * (x.w - mean) / (sqrt(var) + 1e-6) + bias."""
        n, k = self.outputs, self.in_shape.size
        bias, weights = values[:n], values[n:n + n * k].reshape(n, k)
        if self.batch_normalize:
            factor, bias = batch_norm_factor(bias, *values[n + n * k:].reshape(3, n))
            weights = weights * factor[:, None]
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)

    def describe(self) -> str:
        return (f"{super().describe()} outputs={self.outputs} bn={int(self.batch_normalize)} "
                f"act={self.activation}")


def build(section: Section, ctx: BuildContext) -> Connected:
    prev, in_shape = ctx.previous()
    outputs = section.get_int("output", 1, low=1)
    activation = check_name(section, default="logistic")  # darknet's default
    batch_normalize = bool(section.get_int("batch_normalize", 0, low=0, high=1))
    section.ignore("learning_rate", "stopbackward", "dont_update")
    layer = Connected(index=ctx.index, line=section.line, inputs=(prev,),
                      out_shape=Shape(outputs, 1, 1), in_shape=in_shape, outputs=outputs,
                      batch_normalize=batch_normalize, activation=activation)
    ctx.charge(section, weights=layer.weight_floats(), work=outputs * in_shape.size)
    return layer
