"""[yolo]: YOLOv3/v4 detection head (logistic x, y, objectness and classes).

With AlexeyAB's `new_coords=1` (YOLOv7, Scaled-YOLOv4) the head applies no logistic (the
conv before it does) and get_yolo_box decodes w and h as 4 * t^2 * anchor instead of
exp(t) * anchor; scale_x_y applies to x and y either way."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import Section
from .base import BuildContext, Layer

_TRAINING_KEYS = (
    "jitter", "ignore_thresh", "truth_thresh", "random", "iou_normalizer", "cls_normalizer",
    "obj_normalizer", "iou_loss", "iou_thresh", "max_delta", "resize",
    "counters_per_class", "label_smooth_eps", "focal_loss", "uc_normalizer", "objectness_smooth",
    "max", "map", "thresh", "track_history_size", "sim_thresh", "dets_for_track",
    "dets_for_show", "track_ciou_norm", "embedding_layer", "iou_thresh_kind")


@dataclass(eq=False)
class Yolo(Layer):
    kind = "yolo"
    classes: int
    anchors: np.ndarray  # (len(mask), 2) in network-input pixels
    scale_x_y: float
    # AlexeyAB's nms_kind as the exponent of DIoU-NMS's distance term, None for classic IoU
    # NMS (darknet's do_nms_sort). The last head's rule applies to the whole image, as in
    # AlexeyAB's detector (it reads net.layers[net.n - 1]).
    diou_nms_beta: float | None = None
    new_coords: bool = False

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def detected_classes(self) -> int:
        return self.classes

    def describe(self) -> str:
        return (f"{super().describe()} classes={self.classes} scale_x_y={self.scale_x_y!r} "
                f"anchors={self.anchors.ravel().tolist()}"
                + (" new_coords=1" if self.new_coords else ""))


def read_anchors(section: Section, total: int) -> np.ndarray:
    """The `anchors` list as (total, 2) pairs; darknet's fallback of 0.5 is never meant."""
    values = section.get_floats("anchors")
    if len(values) < 2 * total:
        raise section.error(f"expected {2 * total} values (num={total} width,height pairs), got "
                            f"{len(values)}", "anchors")
    anchors = np.array(values[: 2 * total], dtype=np.float64).reshape(total, 2)
    if (anchors <= 0).any():
        raise section.error("anchor sizes must be positive", "anchors")
    return anchors


# AlexeyAB's diounms_sort: `greedynms` suppresses on box_diou, whose distance exponent is a
# constant 0.6 (beta_nms is not read); `diounms` uses beta_nms; `cornersnms` ends up as plain
# IoU suppression (its box merging is commented out there), the same as `default`.
_GREEDY_DIOU_BETA = 0.6
_NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def read_nms_kind(section: Section) -> float | None:
    kind = section.get_str("nms_kind", "default")
    if kind not in _NMS_KINDS:
        raise section.error(f"expected one of {', '.join(_NMS_KINDS)}, got '{kind}'", "nms_kind")
    beta = section.get_float("beta_nms", 0.6, low=0.0, high=100.0)
    if kind == "greedynms":
        return _GREEDY_DIOU_BETA
    if kind == "diounms":
        return beta
    return None


def check_head_channels(section: Section, channels: int, anchors: int, per_anchor: int,
                        what: str) -> None:
    if channels != anchors * per_anchor:
        raise section.error(
            f"the layer before it has {channels} filters, expected {anchors * per_anchor} "
            f"({anchors} anchors x ({what}))")


def read_head(section: Section) -> tuple[int, np.ndarray, float]:
    """What every YOLO-style head section says: classes, its anchors (the `mask`ed ones of the
    `num` listed) and scale_x_y."""
    classes = section.get_int("classes", 20, low=1, high=100000)
    total = section.get_int("num", 1, low=1, high=1000)
    mask = section.get_ints("mask", list(range(total)), low=0, high=total - 1)
    if len(set(mask)) != len(mask):
        raise section.error("mask repeats an anchor", "mask")
    anchors = read_anchors(section, total)[mask]
    return classes, anchors, section.get_float("scale_x_y", 1.0, low=0.0)


def build(section: Section, ctx: BuildContext) -> Yolo:
    prev, in_shape = ctx.previous()
    classes, anchors, scale_x_y = read_head(section)
    new_coords = bool(section.get_int("new_coords", 0, low=0, high=1))
    diou_nms_beta = read_nms_kind(section)
    section.ignore(*_TRAINING_KEYS)
    check_head_channels(section, in_shape.c, len(anchors), 5 + classes,
                        f"5 + {classes} classes")
    return Yolo(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape,
                classes=classes, anchors=anchors, scale_x_y=scale_x_y, diou_nms_beta=diou_nms_beta,
                new_coords=new_coords)
