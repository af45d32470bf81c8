"""[shortcut]: residual sum of the previous output and an earlier one, then an activation."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from ..kernels.activations import CODES
from .base import BuildContext, Layer


@dataclass(eq=False)
class Shortcut(Layer):
    kind = "shortcut"
    activation: str

    @property
    def activation_code(self) -> int:
        return CODES[self.activation]

    def describe(self) -> str:
        return f"{super().describe()} act={self.activation}"


def build(section: Section, ctx: BuildContext) -> Shortcut:
    prev, in_shape = ctx.previous()
    refs = section.get_ints("from")
    if len(refs) != 1:
        raise section.error("only one 'from' layer is supported", "from")
    source = ctx.resolve(section, "from", refs[0])
    if ctx.shape_of(source) != in_shape:
        raise section.error(f"layer {source} is {ctx.shape_of(source)} but the previous layer is "
                            f"{in_shape}: shortcut needs equal shapes", "from")
    activation = section.get_str("activation", "linear")
    if activation not in CODES:
        raise section.error(f"unknown activation '{activation}'; expected one of "
                            f"{', '.join(CODES)}", "activation")
    for key, neutral in (("alpha", 1), ("beta", 1)):
        section.require_default(key, neutral)
    weights_type = section.get_str("weights_type", "none")
    if weights_type != "none":
        raise section.error(f"weighted shortcuts ('{weights_type}') are not supported", "weights_type")
    section.ignore("weights_normalization")
    return Shortcut(index=ctx.index, line=section.line, inputs=(prev, source), out_shape=in_shape,
                    activation=activation)
