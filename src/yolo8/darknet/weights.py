"""Reading darknet .weights into the conv layers of a graph, batch norm folded in."""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..graph import Graph
from ..layers import Convolutional

_HEADER = struct.Struct("<iii")  # major, minor, revision


def _seen_size(major: int, minor: int) -> int:
    """darknet writes `seen` as size_t (8 bytes) from format 0.2 on, as int before."""
    return 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4


def expected_size(graph: Graph, major: int, minor: int) -> int:
    floats = sum(layer.weight_floats() for layer in graph.convolutions())
    return _HEADER.size + _seen_size(major, minor) + 4 * floats


def _fold(layer: Convolutional, values: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split one layer's floats and fold batch norm as darknet computes it:
    y = scale * (conv - mean) / (sqrt(var) + 1e-6) + bias.

    Returns (weights, bias, output_scale). xnor layers keep their raw weights and get the
    batch norm's per-channel factor as output_scale instead: darknet binarizes the raw
    weights (w == 0 -> -mean|w|), and folding a negative scale first would flip that case."""
    n = layer.filters
    bias = values[:n].astype(np.float64)
    offset = n
    cin = layer.in_shape.c // layer.groups
    weights = values[offset + (3 * n if layer.batch_normalize else 0):]
    weights = weights.reshape(n, cin, layer.size, layer.size).astype(np.float64)
    output_scale = None
    if layer.batch_normalize:
        scale, mean, var = (values[offset + i * n: offset + (i + 1) * n].astype(np.float64)
                            for i in range(3))
        if (var < 0).any():
            raise ValueError("negative rolling variance")
        k = scale / (np.sqrt(var) + 1e-6)
        bias = bias - mean * k
        if layer.xnor:
            output_scale = k.astype(np.float32)
        else:
            weights = weights * k[:, None, None, None]
    # darknet (Cout, Cin, kh, kw) -> ours (Cout, kh, kw, Cin): channels innermost for NHWC.
    folded = np.ascontiguousarray(weights.transpose(0, 2, 3, 1), dtype=np.float32)
    return folded, bias.astype(np.float32), output_scale


def _read_checked(graph: Graph, path: Path) -> bytearray:
    """The whole file, once its size is known to fit the cfg: a wrong file (a video, another
    model's weights) is refused from its size and header, without reading it all."""
    try:
        with path.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            header = src.read(_HEADER.size)
            if size < _HEADER.size + 4 or len(header) < _HEADER.size:
                raise WeightsError(f"is {size} bytes, too short for a darknet weights header "
                                   f"(expected {expected_size(graph, 0, 2)} bytes for "
                                   f"{graph.path})", path=path)
            major, minor, _revision = _HEADER.unpack(header)
            expected = expected_size(graph, major, minor)
            if size != expected:
                which = "short" if size < expected else "long"
                raise WeightsError(
                    f"is {size} bytes but {graph.path} needs exactly {expected} "
                    f"({size - expected:+d} bytes: too {which}); wrong weights for this cfg?",
                    path=path)
            data = bytearray(expected)  # read in place: no second copy of a large file
            data[:_HEADER.size] = header
            got = _HEADER.size + src.readinto(memoryview(data)[_HEADER.size:])
    except FileNotFoundError:
        raise WeightsError("weights file not found", path=path) from None
    except IsADirectoryError:
        raise WeightsError("is a directory, expected a darknet .weights file", path=path) from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file: {exc.strerror}", path=path) from None
    if got != expected:  # the file shrank while we read it
        raise WeightsError(f"changed while being read (expected {expected} bytes)", path=path)
    return data


def load_weights(graph: Graph, path: str | Path) -> str:
    """Fill every conv layer's weights and bias from a darknet .weights file.

    The file size must match the cfg exactly. Returns the file's sha256 (hex).
    """
    path = Path(path)
    data = _read_checked(graph, path)
    major, minor, _revision = _HEADER.unpack_from(data)
    values = np.frombuffer(data, dtype="<f4", offset=_HEADER.size + _seen_size(major, minor))
    offset = 0
    for layer in graph.convolutions():
        count = layer.weight_floats()
        chunk = values[offset: offset + count]
        offset += count
        if not np.isfinite(chunk).all():
            raise WeightsError(f"layer {layer.index} ([convolutional] at cfg line {layer.line}) has "
                               f"non-finite values (NaN or inf): damaged file?", path=path)
        try:
            with np.errstate(over="ignore"):  # checked just below, with the layer named
                folded = _fold(layer, chunk)
        except ValueError as exc:
            raise WeightsError(f"layer {layer.index} ([convolutional] at cfg line {layer.line}): "
                               f"{exc}: damaged file?", path=path) from None
        # Finite values can still fold to inf (a huge scale over a zero variance).
        if not all(part is None or np.isfinite(part).all() for part in folded):
            raise WeightsError(f"layer {layer.index} ([convolutional] at cfg line {layer.line}): "
                               f"batch norm folds to values beyond float32: damaged file?",
                               path=path)
        layer.weights, layer.bias, layer.output_scale = folded
    return hashlib.sha256(data).hexdigest()
