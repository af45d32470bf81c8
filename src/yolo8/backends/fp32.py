"""The FP32 backend: every layer in float32 (xnor=1 layers run their binary kernel)."""
from __future__ import annotations

from pathlib import Path

from ..errors import CalibrationError
from ..graph import Graph
from .base import Program
from .ops import FP32_OPS


def build(graph: Graph) -> Program:
    return Program(graph, FP32_OPS)


def refuse_calibration(calibration: str | Path | None) -> None:
    """The backends other than int8 take no calibration: refuse one given."""
    if calibration is not None:
        raise CalibrationError("a calibration applies to the int8 backend only (add --backend int8)",
                               path=calibration)


def build_for_model(graph: Graph, model_id: str, calibration: str | Path | None,
                    default_calibration: Path | None) -> tuple[Program, str | None]:
    refuse_calibration(calibration)
    return build(graph), None
