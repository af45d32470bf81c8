"""[region]: YOLOv2 detection head (logistic x, y, objectness; softmax classes)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import Section
from .base import BuildContext, Layer
from .yolo import check_head_channels, read_anchors

_TRAINING_KEYS = ("bias_match", "jitter", "rescore", "object_scale", "noobject_scale",
                  "class_scale", "coord_scale", "absolute", "thresh", "random", "max")


@dataclass(eq=False)
class Region(Layer):
    kind = "region"
    classes: int
    coords: int
    anchors: np.ndarray  # (num, 2) in grid cells (unlike [yolo], in input pixels)
    softmax: bool

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def describe(self) -> str:
        return (f"{super().describe()} classes={self.classes} softmax={int(self.softmax)} "
                f"anchors={self.anchors.ravel().tolist()}")


def build(section: Section, ctx: BuildContext) -> Region:
    prev, in_shape = ctx.previous()
    classes = section.get_int("classes", 20, low=1, high=100000)
    coords = section.get_int("coords", 4, low=4, high=4)
    num = section.get_int("num", 1, low=1, high=1000)
    softmax = bool(section.get_int("softmax", 0, low=0, high=1))
    for key in ("background", "softmax_tree", "log", "sqrt"):
        section.require_default(key, 0)
    if section.has("tree"):  # yolo9000's hierarchical softmax over a WordTree
        raise section.error("hierarchical softmax (yolo9000's tree=) is not supported", "tree")
    anchors = read_anchors(section, num)
    section.ignore(*_TRAINING_KEYS)
    check_head_channels(section, in_shape.c, num, coords + 1 + classes,
                        f"{coords} + 1 + {classes} classes")
    return Region(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape,
                  classes=classes, coords=coords, anchors=anchors, softmax=softmax)
