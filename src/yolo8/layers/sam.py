"""[sam]: spatial attention, an earlier output times the previous one elementwise
(forward_sam_layer)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import MAX_INT, Section
from .base import BuildContext, Layer
from .scale_channels import read_product_activation


@dataclass(eq=False)
class Sam(Layer):
    kind = "sam"
    activation: str

    def describe(self) -> str:
        return f"{super().describe()} act={self.activation}"


def build(section: Section, ctx: BuildContext) -> Sam:
    prev, in_shape = ctx.previous()
    source = ctx.resolve(section, "from", section.get_int("from", low=-MAX_INT))
    if ctx.shape_of(source) != in_shape:
        raise section.error(f"layer {source} is {ctx.shape_of(source)} but the previous layer is "
                            f"{in_shape}: [sam] multiplies equal shapes", "from")
    return Sam(index=ctx.index, line=section.line, inputs=(prev, source), out_shape=in_shape,
               activation=read_product_activation(section))
