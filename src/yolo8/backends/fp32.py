"""The FP32 backend: every layer in float32 (xnor=1 layers run their binary kernel)."""
from __future__ import annotations

from ..graph import Graph
from .base import Program
from .ops import FP32_OPS


def build(graph: Graph, calibration: object = None) -> Program:
    if calibration is not None:
        raise ValueError("the fp32 backend takes no calibration")
    return Program(graph, FP32_OPS)
