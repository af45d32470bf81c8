"""[maxpool]: darknet's max pooling; its defaults differ from other frameworks'."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, Shape, checked_shape


@dataclass(eq=False)
class MaxPool(Layer):
    kind = "maxpool"
    in_shape: Shape
    size: int
    stride: int
    padding: int  # total padding; darknet starts windows at -padding // 2

    def describe(self) -> str:
        return f"{super().describe()} size={self.size} stride={self.stride} padding={self.padding}"


def read_window(section: Section) -> tuple[int, int, int]:
    """A pooling window as darknet reads it: (size, stride, total padding). darknet: stride
    defaults to 1, size to stride, padding to size - 1 (not 0)."""
    stride = section.get_int("stride", 1, low=1, high=1024)
    for key in ("stride_x", "stride_y"):
        if section.has(key) and section.get_int(key) != stride:
            raise section.error(f"a different stride per axis is not supported (stride={stride})", key)
    size = section.get_int("size", stride, low=1, high=1024)
    return size, stride, section.get_int("padding", size - 1, low=0, high=1024)


def build(section: Section, ctx: BuildContext) -> MaxPool:
    prev, in_shape = ctx.previous()
    size, stride, padding = read_window(section)
    for key, neutral in (("maxpool_depth", 0), ("antialiasing", 0)):
        section.require_default(key, neutral)
    out_h = (in_shape.h + padding - size) // stride + 1
    out_w = (in_shape.w + padding - size) // stride + 1
    out_shape = checked_shape(section, in_shape.c, out_h, out_w)
    ctx.charge(section, work=out_shape.size * size * size)
    return MaxPool(index=ctx.index, line=section.line, inputs=(prev,), out_shape=out_shape,
                   in_shape=in_shape, size=size, stride=stride, padding=padding)
