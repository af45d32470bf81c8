"""[local_avgpool]: darknet's windowed average pooling (forward_local_avgpool_layer): the
maxpool geometry (padding defaults to size - 1, windows start at -padding // 2), each output
the mean of the window's pixels inside the image (padding is not counted)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, Shape, checked_shape
from .maxpool import read_window


@dataclass(eq=False)
class LocalAvgPool(Layer):
    kind = "local_avgpool"
    in_shape: Shape
    size: int
    stride: int
    padding: int  # total padding; windows start at -padding // 2

    def describe(self) -> str:
        return f"{super().describe()} size={self.size} stride={self.stride} padding={self.padding}"


def build(section: Section, ctx: BuildContext) -> LocalAvgPool:
    prev, in_shape = ctx.previous()
    size, stride, padding = read_window(section)  # darknet's defaults, as [maxpool]
    if size <= (padding + 1) // 2:
        raise section.error(f"padding={padding} leaves windows with no pixel (size={size})",
                            "padding")
    out_h = (in_shape.h + padding - size) // stride + 1
    out_w = (in_shape.w + padding - size) // stride + 1
    out_shape = checked_shape(section, in_shape.c, out_h, out_w)
    ctx.charge(section, work=out_shape.size * size * size)
    return LocalAvgPool(index=ctx.index, line=section.line, inputs=(prev,), out_shape=out_shape,
                        in_shape=in_shape, size=size, stride=stride, padding=padding)
