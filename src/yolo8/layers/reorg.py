"""[reorg]: YOLOv2's space-to-depth, with darknet's own (odd) element order."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, Shape, checked_shape


@dataclass(eq=False)
class Reorg(Layer):
    kind = "reorg"
    in_shape: Shape
    stride: int

    def describe(self) -> str:
        return f"{super().describe()} stride={self.stride}"


def build(section: Section, ctx: BuildContext) -> Reorg:
    prev, in_shape = ctx.previous()
    stride = section.get_int("stride", 1, low=1, high=64)
    for key in ("reverse", "flatten", "extra"):
        section.require_default(key, 0)
    if in_shape.h % stride or in_shape.w % stride:
        raise section.error(f"stride={stride} does not divide the input {in_shape}", "stride")
    return Reorg(index=ctx.index, line=section.line, inputs=(prev,),
                 out_shape=checked_shape(section, in_shape.c * stride * stride,
                                         in_shape.h // stride, in_shape.w // stride),
                 in_shape=in_shape, stride=stride)
