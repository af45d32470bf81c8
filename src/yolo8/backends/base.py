"""What every backend produces: a Program that runs a graph's layers in order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..graph import Graph, freed_after
from ..layers import NETWORK_INPUT, Layer
from ..threads import kernel_threads

Op = Callable[..., np.ndarray]           # op(*input_arrays) -> output array (NHWC)
OpMaker = Callable[[Layer, Graph], Op]   # how a backend prepares one layer


@dataclass
class Quantization:
    """An INT8 program's parameters: input threshold of each INT8 conv layer (by index) and
    the per-channel bias corrections applied to them (subtracted from the bias)."""

    thresholds: dict[int, float]
    corrections: dict[int, np.ndarray]


@dataclass
class Step:
    layer: Layer
    op: Op
    release: tuple[int, ...]  # outputs no longer needed after this step


class Program:
    """Runs the layers in order on NHWC float32 batches, freeing outputs after their last use."""

    def __init__(self, graph: Graph, ops: Mapping[type, OpMaker]) -> None:
        self.graph = graph
        self.calibration = None  # the INT8 calibration file's contents, when one is used
        self.steps: list[Step] = []
        # The INT8 backend records what it quantized with (the ONNX exporter reads it).
        self.quantization: Quantization | None = None
        freed = freed_after(graph.layers, graph.outputs)
        for layer in graph.layers:
            maker = ops.get(type(layer))
            if maker is None:
                raise NotImplementedError(f"no op for {type(layer).__name__}")
            self.steps.append(Step(layer, maker(layer, graph), tuple(freed.get(layer.index, ()))))

    def run(self, x: np.ndarray, observer: Callable[[Layer, list[np.ndarray]], None] | None = None
            ) -> list[np.ndarray]:
        """Forward an NHWC float32 batch; returns the graph's outputs (NHWC): its detection
        heads, else its last layer.

        `observer(layer, inputs)` sees each layer's inputs before it runs (calibration uses it).

        The kernels run with this thread's share of the thread budget (`yolo8.threads`), so
        every caller, from any thread, gets it (and the workqueue layer's lock) without asking.
        """
        values: dict[int, np.ndarray] = {NETWORK_INPUT: x}
        with kernel_threads():
            for step in self.steps:
                inputs = [values[i] for i in step.layer.inputs]
                if observer is not None:
                    observer(step.layer, inputs)
                values[step.layer.index] = step.op(*inputs)
                for index in step.release:
                    values.pop(index, None)
        return [values[h] for h in self.graph.outputs]
