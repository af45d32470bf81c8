"""[cost]: the training loss; at inference darknet returns the layer before it
(get_network_output skips cost layers), so it is the identity here."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer


@dataclass(eq=False)
class Cost(Layer):
    kind = "cost"


def build(section: Section, ctx: BuildContext) -> Cost:
    prev, in_shape = ctx.previous()
    section.ignore("type", "scale", "ratio", "noobject_scale", "thresh")
    return Cost(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape)
