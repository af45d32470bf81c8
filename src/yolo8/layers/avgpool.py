"""[avgpool]: darknet's global average pooling (one value per channel)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, Shape


@dataclass(eq=False)
class AvgPool(Layer):
    kind = "avgpool"


def build(section: Section, ctx: BuildContext) -> AvgPool:
    prev, in_shape = ctx.previous()
    return AvgPool(index=ctx.index, line=section.line, inputs=(prev,),
                   out_shape=Shape(in_shape.c, 1, 1))
