"""A small builder over the `onnx` package's helpers: unique names, constants, one-output nodes."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


class OnnxGraph:
    """Nodes and initializers of one ONNX graph, appended in topological order."""

    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.outputs: list[Any] = []
        self._used: Counter[str] = Counter()

    def name(self, hint: str) -> str:
        """A tensor name not used yet, readable (`hint`, `hint_2`, ...)."""
        self._used[hint] += 1
        count = self._used[hint]
        return hint if count == 1 else f"{hint}_{count}"

    def constant(self, hint: str, value: np.ndarray | float | list) -> str:
        """An initializer holding `value` (its numpy dtype is kept; Python floats become float32)."""
        array = np.asarray(value, dtype=np.float32 if isinstance(value, float) else None)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attributes: Any) -> str:
        """Append a node with one output; returns the output's name."""
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], name=out, **attributes))
        return out

    def output(self, tensor: str, name: str, elem_type: int, shape: list[int | str]) -> None:
        """Expose `tensor` as the graph output `name` (an Identity gives it that name)."""
        self.nodes.append(self.onnx.helper.make_node("Identity", [tensor], [name], name=name))
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))
