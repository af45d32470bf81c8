"""[scale_channels]: an earlier output scaled per channel by the previous one (squeeze-and-
excitation), or with `scale_wh=1` per pixel by a one-channel map (forward_scale_channels_layer)."""
from __future__ import annotations

from dataclasses import dataclass

from ..activations import check_name
from ..darknet.cfg import MAX_INT, Section
from .base import BuildContext, Layer

# darknet's activate_array() has no case for these (it returns 0): its parser warns. Refused.
UNSUPPORTED_AFTER_PRODUCT = ("swish", "mish", "hard_mish")


@dataclass(eq=False)
class ScaleChannels(Layer):
    kind = "scale_channels"
    scale_wh: bool
    activation: str

    def describe(self) -> str:
        return f"{super().describe()} scale_wh={int(self.scale_wh)} act={self.activation}"


def read_product_activation(section: Section) -> str:
    activation = check_name(section)
    if activation in UNSUPPORTED_AFTER_PRODUCT:
        raise section.error(f"darknet does not apply '{activation}' after [{section.name}] "
                            f"(its activate_array gives 0)", "activation")
    return activation


def build(section: Section, ctx: BuildContext) -> ScaleChannels:
    prev, scales = ctx.previous()
    source = ctx.resolve(section, "from", section.get_int("from", low=-MAX_INT))
    shape = ctx.shape_of(source)
    scale_wh = bool(section.get_int("scale_wh", 0, low=0, high=1))
    if scale_wh and (scales.c != 1 or (scales.h, scales.w) != (shape.h, shape.w)):
        raise section.error(f"scale_wh=1 needs a {shape.w}x{shape.h}x1 previous layer (one "
                            f"scale per pixel of layer {source}), got {scales}", "scale_wh")
    if not scale_wh and (scales.h, scales.w, scales.c) != (1, 1, shape.c):
        raise section.error(f"needs a 1x1x{shape.c} previous layer (one scale per channel of "
                            f"layer {source}, {shape}), got {scales}", "from")
    return ScaleChannels(index=ctx.index, line=section.line, inputs=(prev, source),
                         out_shape=shape, scale_wh=scale_wh,
                         activation=read_product_activation(section))
