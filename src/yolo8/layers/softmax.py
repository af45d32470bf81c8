"""[softmax]: darknet's softmax over the (C, H, W)-flattened input, in `groups` consecutive
groups, with a temperature (forward_softmax_layer / softmax_cpu)."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer


@dataclass(eq=False)
class Softmax(Layer):
    kind = "softmax"
    groups: int
    temperature: float

    def describe(self) -> str:
        return f"{super().describe()} groups={self.groups} temperature={self.temperature!r}"


def build(section: Section, ctx: BuildContext) -> Softmax:
    prev, in_shape = ctx.previous()
    groups = section.get_int("groups", 1, low=1)
    if in_shape.size % groups:
        raise section.error(f"groups={groups} does not divide the {in_shape.size} inputs "
                            f"({in_shape})", "groups")
    temperature = section.get_float("temperature", 1.0)
    if temperature == 0:
        raise section.error("must not be 0 (darknet divides by it)", "temperature")
    if section.has("tree"):
        raise section.error("hierarchical softmax (a tree file) is not supported by yolo8", "tree")
    section.ignore("noloss", "spatial")  # training only (AlexeyAB's forward ignores spatial)
    return Softmax(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape,
                   groups=groups, temperature=temperature)
