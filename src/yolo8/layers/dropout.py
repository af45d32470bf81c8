"""[dropout]: the identity at inference time."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer


@dataclass(eq=False)
class Dropout(Layer):
    kind = "dropout"


def build(section: Section, ctx: BuildContext) -> Dropout:
    prev, in_shape = ctx.previous()
    section.get_float("probability", 0.5, low=0.0, high=1.0)
    section.ignore("dropblock", "dropblock_size_abs", "dropblock_size_rel")
    return Dropout(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape)
