"""[reorg3d]: AlexeyAB's space-to-depth (reorg_layer.c): output channel k = o * C + c holds
input channel c at offset o = (dy, dx) = divmod(o, stride) of each stride x stride block.
Not the same order as YOLOv2's [reorg] (reorg_old_layer.c, see reorg.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, Shape, checked_shape


@dataclass(eq=False)
class Reorg3d(Layer):
    kind = "reorg3d"
    in_shape: Shape
    stride: int

    def describe(self) -> str:
        return f"{super().describe()} stride={self.stride}"


def build(section: Section, ctx: BuildContext) -> Reorg3d:
    prev, in_shape = ctx.previous()
    stride = section.get_int("stride", 1, low=1, high=64)
    section.require_default("reverse", 0)
    if in_shape.h % stride or in_shape.w % stride:
        raise section.error(f"stride={stride} does not divide the input {in_shape}", "stride")
    return Reorg3d(index=ctx.index, line=section.line, inputs=(prev,),
                   out_shape=checked_shape(section, in_shape.c * stride * stride,
                                           in_shape.h // stride, in_shape.w // stride),
                   in_shape=in_shape, stride=stride)
