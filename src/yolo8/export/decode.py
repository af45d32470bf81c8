"""`--decode`: the heads' boxes and scores as two more outputs (no NMS, no threshold), decoded
as yolo8's postprocess does (darknet's get_yolo_detections / get_region_detections /
get_gaussian_yolo_detections).

boxes: (N, D, 4) x, y, w, h of each box's centre and size relative to the network input;
scores: (N, D, classes) objectness x class probability (a float32 product, as darknet's;
Gaussian heads times 1 - the mean of the four uncertainties).
D runs over the heads in order, then rows, columns and anchors. darknet keeps a box when its
score is above the threshold; letterboxed inputs need the boxes corrected (metadata says).
One small decoder per head kind (DECODERS).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..graph import Graph
from ..layers import GaussianYolo, Layer, Region, Yolo
from .onnx_graph import OnnxGraph

Head = Yolo | Region | GaussianYolo


class _Rows:
    """A head's output as (N, H*W*A, entries): one row per cell and anchor."""

    def __init__(self, g: OnnxGraph, head: Head, tensor: str, entries: int) -> None:
        i, a = head.index, head.num_anchors
        _, h, w = head.out_shape
        self.g, self.i, self.h, self.w, self.a = g, i, h, w, a
        self.anchors = head.anchors
        split = g.op("Reshape", [tensor, g.constant(f"d{i}_split",
                                                     np.int64([-1, a, entries, h, w]))],
                     f"d{i}_split")
        moved = g.op("Transpose", [split], f"d{i}_cells_last", perm=[0, 3, 4, 1, 2])
        self.rows = g.op("Reshape", [moved, g.constant(f"d{i}_rows",
                                                        np.int64([-1, h * w * a, entries]))],
                         f"d{i}_rows")

    def part(self, start: int, end: int) -> str:
        g, i = self.g, self.i
        return g.op("Slice", [self.rows, g.constant(f"d{i}_start", np.int64([start])),
                              g.constant(f"d{i}_end", np.int64([end])),
                              g.constant(f"d{i}_axis", np.int64([2]))], f"d{i}_part")

    def entries(self, *indices: int) -> str:
        """The given entries, in that order (Gather on the last axis)."""
        g, i = self.g, self.i
        return g.op("Gather", [self.rows, g.constant(f"d{i}_entries", np.int64(indices))],
                    f"d{i}_gathered", axis=2)

    def centres(self, xy: str) -> str:
        """(cell + offset) / grid size, per row."""
        g, i, h, w, a = self.g, self.i, self.h, self.w, self.a
        row, col, _ = np.meshgrid(np.arange(h), np.arange(w), np.arange(a), indexing="ij")
        cells = np.stack([col.ravel(), row.ravel()], axis=1)[None].astype(np.float32)
        shifted = g.op("Add", [xy, g.constant(f"d{i}_cells", cells)], f"d{i}_xy_cells")
        return g.op("Div", [shifted, g.constant(f"d{i}_grid", np.float32([w, h]))], f"d{i}_xy")

    def times_anchors(self, size: str, units: tuple[int, int]) -> str:
        """size (rows, 2) times the anchors divided by `units` (input pixels or grid cells)."""
        anchors = np.tile(self.anchors / np.float64(units), (self.h * self.w, 1))
        return self.g.op("Mul", [size, self.g.constant(f"d{self.i}_anchors",
                                                        anchors[None].astype(np.float32))],
                         f"d{self.i}_wh")


def _decode_yolo(g: OnnxGraph, head: Yolo, tensor: str, graph: Graph) -> tuple[str, str]:
    """get_yolo_box: exp(t) * anchor, or with new_coords 4 t^2 * anchor (anchors in pixels)."""
    r = _Rows(g, head, tensor, 5 + head.classes)
    t = r.part(2, 4)
    if head.new_coords:
        size = g.op("Mul", [g.op("Mul", [t, t], f"d{r.i}_square"),
                            g.constant(f"d{r.i}_four", np.float32(4))], f"d{r.i}_size")
    else:
        size = g.op("Exp", [t], f"d{r.i}_exp")
    wh = r.times_anchors(size, (graph.net.width, graph.net.height))
    boxes = g.op("Concat", [r.centres(r.part(0, 2)), wh], f"d{r.i}_boxes", axis=2)
    return boxes, g.op("Mul", [r.part(4, 5), r.part(5, 5 + head.classes)], f"d{r.i}_scores")


def _decode_region(g: OnnxGraph, head: Region, tensor: str, graph: Graph) -> tuple[str, str]:
    """get_region_box: exp(t) * anchor, anchors in grid cells."""
    r = _Rows(g, head, tensor, 5 + head.classes)
    wh = r.times_anchors(g.op("Exp", [r.part(2, 4)], f"d{r.i}_exp"),
                         (head.out_shape.w, head.out_shape.h))
    boxes = g.op("Concat", [r.centres(r.part(0, 2)), wh], f"d{r.i}_boxes", axis=2)
    return boxes, g.op("Mul", [r.part(4, 5), r.part(5, 5 + head.classes)], f"d{r.i}_scores")


def _decode_gaussian_yolo(g: OnnxGraph, head: GaussianYolo, tensor: str,
                          graph: Graph) -> tuple[str, str]:
    """get_gaussian_yolo_box: x, y, w, h at entries 0, 2, 4, 6, the centre moved by
    point_shift box sizes (yolo_point corners); the score objectness x class x (1 - the mean of
    the uncertainties at 1, 3, 5, 7)."""
    r = _Rows(g, head, tensor, GaussianYolo.ENTRIES + head.classes)
    i = r.i
    wh = r.times_anchors(g.op("Exp", [r.entries(4, 6)], f"d{i}_exp"),
                         (graph.net.width, graph.net.height))
    xy = r.centres(r.entries(0, 2))
    if head.point_shift:
        xy = g.op("Add", [xy, g.op("Mul", [wh, g.constant(f"d{i}_point",
                                                          np.float32(head.point_shift))],
                                   f"d{i}_point_shift")], f"d{i}_xy_point")
    boxes = g.op("Concat", [xy, wh], f"d{i}_boxes", axis=2)
    total = r.part(1, 2)
    for entry in (3, 5, 7):  # summed in darknet's order, in float32
        total = g.op("Add", [total, r.part(entry, entry + 1)], f"d{i}_uncertainty_sum")
    uncertainty = g.op("Div", [total, g.constant(f"d{i}_four", np.float32(4))],
                       f"d{i}_uncertainty")
    certainty = g.op("Sub", [g.constant(f"d{i}_one", np.float32(1)), uncertainty], f"d{i}_certainty")
    scores = g.op("Mul", [g.op("Mul", [r.part(8, 9), r.part(9, 9 + head.classes)],
                               f"d{i}_objectness_class"), certainty], f"d{i}_scores")
    return boxes, scores


DECODERS: dict[type, Callable[[OnnxGraph, Layer, str, Graph], tuple[str, str]]] = {
    Yolo: _decode_yolo, Region: _decode_region, GaussianYolo: _decode_gaussian_yolo,
}


def emit_decoded(g: OnnxGraph, graph: Graph, tensors: dict[int, str]) -> tuple[str, str]:
    """The boxes and scores of every head, concatenated."""
    parts = [DECODERS[type(graph.layers[h])](g, graph.layers[h], tensors[h], graph)
             for h in graph.heads]
    if len(parts) == 1:
        return parts[0]
    return (g.op("Concat", [b for b, _ in parts], "boxes_all", axis=1),
            g.op("Concat", [s for _, s in parts], "scores_all", axis=1))
