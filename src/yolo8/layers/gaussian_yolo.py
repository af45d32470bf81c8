"""[Gaussian_yolo]: Gaussian YOLOv3's head (AlexeyAB's gaussian_yolo_layer.c).

Per anchor 8 + 1 + classes entries: x, its uncertainty, y, its uncertainty, w, its
uncertainty, h, its uncertainty, objectness, classes. The head applies the logistic to all
but w and h, and scale_x_y to x and y; a class's confidence is objectness x class x
(1 - the mean of the four uncertainties)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import Section
from .base import BuildContext, Layer
from .yolo import _TRAINING_KEYS, check_head_channels, read_head, read_nms_kind

# Where darknet puts the box's reference point: get_gaussian_yolo_box shifts the centre by
# half the box for the corners.
_YOLO_POINTS = {"center": 0.0, "left_top": 0.5, "right_bottom": -0.5}
_GAUSSIAN_TRAINING_KEYS = ("uc_normalizer", "delta_normalizer", "objectness_smooth")


@dataclass(eq=False)
class GaussianYolo(Layer):
    kind = "gaussian_yolo"
    classes: int
    anchors: np.ndarray  # (len(mask), 2) in network-input pixels
    scale_x_y: float
    point_shift: float   # +-0.5 box sizes added to the centre (yolo_point), 0 for the centre
    diou_nms_beta: float | None = None

    ENTRIES = 9  # per anchor before the classes

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def detected_classes(self) -> int:
        return self.classes

    def describe(self) -> str:
        return (f"{super().describe()} classes={self.classes} scale_x_y={self.scale_x_y!r} "
                f"point={self.point_shift} anchors={self.anchors.ravel().tolist()}")


def build(section: Section, ctx: BuildContext) -> GaussianYolo:
    prev, in_shape = ctx.previous()
    classes, anchors, scale_x_y = read_head(section)
    point = section.get_str("yolo_point", "center")
    if point not in _YOLO_POINTS:
        raise section.error(f"expected one of {', '.join(_YOLO_POINTS)}, got '{point}'",
                            "yolo_point")
    diou_nms_beta = read_nms_kind(section)
    section.ignore(*_TRAINING_KEYS, *_GAUSSIAN_TRAINING_KEYS)
    check_head_channels(section, in_shape.c, len(anchors), GaussianYolo.ENTRIES + classes,
                        f"9 + {classes} classes")
    return GaussianYolo(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape,
                        classes=classes, anchors=anchors, scale_x_y=scale_x_y,
                        point_shift=_YOLO_POINTS[point], diou_nms_beta=diou_nms_beta)
