"""[route]: concatenation of earlier outputs along channels (optionally one channel group of each)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import MAX_INT, Section
from .base import BuildContext, Layer, checked_shape


@dataclass(eq=False)
class Route(Layer):
    kind = "route"
    groups: int
    group_id: int

    def describe(self) -> str:
        return f"{super().describe()} groups={self.groups} group_id={self.group_id}"


def build(section: Section, ctx: BuildContext) -> Route:
    refs = section.get_ints("layers", low=-MAX_INT)
    inputs = tuple(ctx.resolve(section, "layers", ref) for ref in refs)
    groups = section.get_int("groups", 1, low=1)
    group_id = section.get_int("group_id", 0, low=0, high=groups - 1)
    shapes = [ctx.shape_of(i) for i in inputs]
    first = shapes[0]
    for index, shape in zip(inputs, shapes):
        if (shape.h, shape.w) != (first.h, first.w):
            raise section.error(f"layer {index} is {shape}, but layer {inputs[0]} is {first}: "
                                f"routed layers must have the same width and height", "layers")
        if shape.c % groups:
            raise section.error(f"groups={groups} does not divide the {shape.c} channels of layer "
                                f"{index}", "groups")
    channels = sum(s.c // groups for s in shapes)
    return Route(index=ctx.index, line=section.line, inputs=inputs,
                 out_shape=checked_shape(section, channels, first.h, first.w),
                 groups=groups, group_id=group_id)
