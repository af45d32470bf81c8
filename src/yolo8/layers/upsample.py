"""[upsample]: nearest-neighbour upsampling by an integer stride, times `scale`."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, checked_shape


@dataclass(eq=False)
class Upsample(Layer):
    kind = "upsample"
    stride: int
    scale: float

    def describe(self) -> str:
        return f"{super().describe()} stride={self.stride} scale={self.scale!r}"


def build(section: Section, ctx: BuildContext) -> Upsample:
    prev, in_shape = ctx.previous()
    # darknet reads a negative stride as downsampling; nobody uses it in YOLO models.
    stride = section.get_int("stride", 2, low=1, high=64)
    scale = section.get_float("scale", 1.0)
    return Upsample(index=ctx.index, line=section.line, inputs=(prev,),
                    out_shape=checked_shape(section, in_shape.c, in_shape.h * stride,
                                            in_shape.w * stride),
                    stride=stride, scale=scale)
