"""Run an exported model in ONNX Runtime behind yolo8's own pipeline (preprocessing, decoding,
NMS, metrics), so the runtime is the only thing that differs from yolo8's engines."""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Yolo8Error
from . import INPUT_NAME, INSTALL_HINT

if TYPE_CHECKING:
    from ..api import Model


class OnnxRuntimeProgram:
    """Stands in for a backend Program: NHWC batch in, NHWC head outputs out."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise Yolo8Error(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.heads = [o.name for o in self.session.get_outputs() if o.name.startswith("head")]

    def run(self, x: np.ndarray, observer=None) -> list[np.ndarray]:
        if observer is not None:
            raise Yolo8Error("an ONNX Runtime program cannot show layer inputs to an observer")
        blob = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        outs = self.session.run(self.heads, {INPUT_NAME: blob})
        return [np.ascontiguousarray(o.transpose(0, 2, 3, 1)) for o in outs]


def with_onnx_runtime(model: Model, path: str | os.PathLike, threads: int | None = None) -> Model:
    """A copy of `model` whose forwards run the ONNX file at `path` in ONNX Runtime."""
    twin = copy.copy(model)
    twin.program = OnnxRuntimeProgram(path, threads)
    twin.backend = f"onnxruntime:{model.backend}"
    return twin
