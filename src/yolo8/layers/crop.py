"""[crop]: darknet's crop layer at test time (forward_crop_layer, state.train = 0): the centre
crop_width x crop_height of its input, values mapped x -> 2x - 1 unless noadjust=1 (darknet
trained its classifiers on inputs in [-1, 1] this way). Flip and colour jitter are training."""
from __future__ import annotations

from dataclasses import dataclass

from ..darknet.cfg import Section
from .base import BuildContext, Layer, checked_shape


@dataclass(eq=False)
class Crop(Layer):
    kind = "crop"
    top: int
    left: int
    scale: float
    shift: float

    def describe(self) -> str:
        return (f"{super().describe()} top={self.top} left={self.left} scale={self.scale!r} "
                f"shift={self.shift!r}")


def build(section: Section, ctx: BuildContext) -> Crop:
    prev, in_shape = ctx.previous()
    height = section.get_int("crop_height", 1, low=1)
    width = section.get_int("crop_width", 1, low=1)
    if height > in_shape.h or width > in_shape.w:
        raise section.error(f"crop {width}x{height} is larger than its input {in_shape}",
                            "crop_height" if height > in_shape.h else "crop_width")
    noadjust = section.get_int("noadjust", 0, low=0, high=1)
    section.ignore("flip", "angle", "saturation", "exposure", "shift")  # training augmentation
    return Crop(index=ctx.index, line=section.line, inputs=(prev,),
                out_shape=checked_shape(section, in_shape.c, height, width),
                top=(in_shape.h - height) // 2, left=(in_shape.w - width) // 2,
                scale=1.0 if noadjust else 2.0, shift=0.0 if noadjust else -1.0)
