"""`--decode`: the heads' boxes and scores as two more outputs (no NMS, no threshold), decoded
as yolo8's postprocess does (darknet's get_yolo_detections / get_region_detections).

boxes: (N, D, 4) x, y, w, h of each box's centre and size relative to the network input;
scores: (N, D, classes) objectness x class probability (a float32 product, as darknet's).
D runs over the heads in order, then rows, columns and anchors. darknet keeps a box when its
score is above the threshold; letterboxed inputs need the boxes corrected (metadata says).
"""
from __future__ import annotations

import numpy as np

from ..graph import Graph
from ..layers import Region, Yolo
from .onnx_graph import OnnxGraph


def _anchor_units(head: Yolo | Region, graph: Graph) -> tuple[int, int]:
    """What anchors are divided by: [yolo] anchors are in input pixels, [region] in cells."""
    if isinstance(head, Yolo):
        return graph.net.width, graph.net.height
    return head.out_shape.w, head.out_shape.h


def _decode_head(g: OnnxGraph, head: Yolo | Region, tensor: str, graph: Graph) -> tuple[str, str]:
    i, a, per = head.index, head.num_anchors, 5 + head.classes
    _, h, w = head.out_shape
    split = g.op("Reshape", [tensor, g.constant(f"d{i}_split", np.int64([-1, a, per, h, w]))],
                 f"d{i}_split")
    moved = g.op("Transpose", [split], f"d{i}_cells_last", perm=[0, 3, 4, 1, 2])
    rows = g.op("Reshape", [moved, g.constant(f"d{i}_rows", np.int64([-1, h * w * a, per]))],
                f"d{i}_rows")

    def part(start: int, end: int) -> str:
        return g.op("Slice", [rows, g.constant(f"d{i}_start", np.int64([start])),
                              g.constant(f"d{i}_end", np.int64([end])),
                              g.constant(f"d{i}_axis", np.int64([2]))], f"d{i}_part")

    row, col, _ = np.meshgrid(np.arange(h), np.arange(w), np.arange(a), indexing="ij")
    cells = np.stack([col.ravel(), row.ravel()], axis=1)[None].astype(np.float32)
    grid = np.float32([w, h])
    xy = g.op("Div", [g.op("Add", [part(0, 2), g.constant(f"d{i}_cells", cells)], f"d{i}_xy_cells"),
                      g.constant(f"d{i}_grid", grid)], f"d{i}_xy")
    anchors = np.tile(head.anchors / np.float64(_anchor_units(head, graph)), (h * w, 1))
    wh = g.op("Mul", [g.op("Exp", [part(2, 4)], f"d{i}_exp"),
                      g.constant(f"d{i}_anchors", anchors[None].astype(np.float32))], f"d{i}_wh")
    boxes = g.op("Concat", [xy, wh], f"d{i}_boxes", axis=2)
    scores = g.op("Mul", [part(4, 5), part(5, per)], f"d{i}_scores")
    return boxes, scores


def emit_decoded(g: OnnxGraph, graph: Graph, tensors: dict[int, str]) -> tuple[str, str]:
    """The boxes and scores of every head, concatenated."""
    parts = [_decode_head(g, graph.layers[h], tensors[h], graph) for h in graph.heads]
    if len(parts) == 1:
        return parts[0]
    return (g.op("Concat", [b for b, _ in parts], "boxes_all", axis=1),
            g.op("Concat", [s for _, s in parts], "scores_all", axis=1))
