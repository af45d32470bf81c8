"""[region]: YOLOv2 detection head (logistic x, y, objectness; softmax classes)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..darknet.cfg import Section
from ..darknet.wordtree import WordTree, read_map, read_tree, resolve
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
    tree: WordTree | None = None        # yolo9000: softmax over each sibling group instead
    class_map: np.ndarray | None = None  # yolo9000: the tree node of each detected class

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def detected_classes(self) -> int:
        """Classes a detection can have: the mapped ones where a map is given."""
        return self.classes if self.class_map is None else len(self.class_map)

    def describe(self) -> str:
        tree = "" if self.tree is None else f" tree={self.tree.digest}"
        mapped = "" if self.class_map is None else f" map={self.class_map.tolist()}"
        return (f"{super().describe()} classes={self.classes} softmax={int(self.softmax)} "
                f"anchors={self.anchors.ravel().tolist()}{tree}{mapped}")


def _read_tree_and_map(section: Section, classes: int) -> tuple[WordTree | None, np.ndarray | None]:
    """tree= and map= (parse_region: read_tree, read_map); the tree must have a node per class."""
    tree = read_tree(resolve(section, "tree")) if section.has("tree") else None
    if tree is not None and tree.n != classes:
        raise section.error(f"the tree has {tree.n} nodes but classes={classes}", "tree")
    if not section.has("map"):
        return tree, None
    if tree is None:  # darknet reads the map only through the tree's decoding
        raise section.error("map= needs tree= (it maps classes to WordTree nodes)", "map")
    return tree, read_map(resolve(section, "map"), tree.n)


def build(section: Section, ctx: BuildContext) -> Region:
    prev, in_shape = ctx.previous()
    classes = section.get_int("classes", 20, low=1, high=100000)
    coords = section.get_int("coords", 4, low=4, high=4)
    num = section.get_int("num", 1, low=1, high=1000)
    softmax = bool(section.get_int("softmax", 0, low=0, high=1))
    for key in ("background", "softmax_tree", "log", "sqrt"):
        section.require_default(key, 0)
    tree, class_map = _read_tree_and_map(section, classes)
    anchors = read_anchors(section, num)
    section.ignore(*_TRAINING_KEYS)
    check_head_channels(section, in_shape.c, num, coords + 1 + classes,
                        f"{coords} + 1 + {classes} classes")
    return Region(index=ctx.index, line=section.line, inputs=(prev,), out_shape=in_shape,
                  classes=classes, coords=coords, anchors=anchors, softmax=softmax,
                  tree=tree, class_map=class_map)
