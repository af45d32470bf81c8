"""Reading darknet .weights into the conv layers of a graph, batch norm folded in."""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import WeightsError, reading
from ..graph import Graph
from ..layers import Convolutional, Layer, Shortcut

_HEADER = struct.Struct("<iii")  # major, minor, revision


def _seen_size(major: int, minor: int) -> int:
    """darknet writes `seen` as size_t (8 bytes) from format 0.2 on, as int before."""
    return 8 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 4


def weighted_layers(graph: Graph) -> list[Layer]:
    """The layers that read floats from the file, in the file's (darknet's) order: conv
    layers and weighted shortcuts (load_weights_upto)."""
    return [layer for layer in graph.layers if layer.weight_floats()]


def expected_size(graph: Graph, major: int, minor: int) -> int:
    floats = sum(layer.weight_floats() for layer in weighted_layers(graph))
    return _HEADER.size + _seen_size(major, minor) + 4 * floats


def _fold(layer: Convolutional, values: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split one layer's floats and fold batch norm as darknet computes it:
    y = scale * (conv - mean) / (sqrt(var) + 1e-6) + bias.

    Returns (weights, bias, output_scale). xnor layers keep their raw weights and get the
    batch norm's per-channel factor as output_scale instead: darknet binarizes the raw
    weights (w == 0 -> -mean|w|), and folding a negative scale first would flip that case."""
    n = layer.filters
    bias = values[:n].astype(np.float32)  # float32 maths, as darknet's own normalisation
    offset = n
    cin = layer.in_shape.c // layer.groups
    weights = values[offset + (3 * n if layer.batch_normalize else 0):]
    weights = weights.reshape(n, cin, layer.size, layer.size)
    output_scale = None
    if layer.batch_normalize:
        scale, mean, var = (values[offset + i * n: offset + (i + 1) * n].astype(np.float32)
                            for i in range(3))
        if (var < 0).any():
            raise ValueError("negative rolling variance")
        k = scale / (np.sqrt(var) + np.float32(1e-6))
        bias = bias - mean * k
        if layer.xnor:
            output_scale = k
    # darknet (Cout, Cin, kh, kw) -> ours (Cout, kh, kw, Cin): channels innermost for NHWC;
    # transposed and scaled in one pass, into one new array.
    folded = np.empty((n, layer.size, layer.size, cin), dtype=np.float32)
    if layer.batch_normalize and not layer.xnor:
        np.multiply(weights.transpose(0, 2, 3, 1), k[:, None, None, None], out=folded)
    else:
        folded[...] = weights.transpose(0, 2, 3, 1)
    return folded, bias, output_scale


def _check_size(graph: Graph, path: Path, src) -> int:
    """The offset of the first float, once the file's size is known to fit the cfg: a wrong
    file (a video, another model's weights) is refused from its size and header alone."""
    size = os.fstat(src.fileno()).st_size
    header = src.read(_HEADER.size)
    if size < _HEADER.size + 4 or len(header) < _HEADER.size:
        raise WeightsError(f"is {size} bytes, too short for a darknet weights header "
                           f"(expected {expected_size(graph, 0, 2)} bytes for {graph.path})",
                           path=path)
    major, minor, _revision = _HEADER.unpack(header)
    expected = expected_size(graph, major, minor)
    if size != expected:
        which = "short" if size < expected else "long"
        raise WeightsError(f"is {size} bytes but {graph.path} needs exactly {expected} "
                           f"({size - expected:+d} bytes: too {which}); wrong weights for this "
                           f"cfg?", path=path)
    return _HEADER.size + _seen_size(major, minor)


def _sha256(src) -> str:
    src.seek(0)
    digest = hashlib.sha256()
    while chunk := src.read(1 << 22):
        digest.update(chunk)
    return digest.hexdigest()


class WeightsDigestError(WeightsError):
    """The file is not the one expected (its sha256 differs)."""


def _read_floats(layer: Layer, src, path: Path) -> np.ndarray:
    count = layer.weight_floats()
    chunk = np.fromfile(src, dtype="<f4", count=count)
    if len(chunk) != count:  # the file shrank while we read it
        raise WeightsError("changed while being read", path=path)
    if not np.isfinite(chunk).all():
        raise WeightsError(f"{_where(layer)} has non-finite values (NaN or inf): damaged file?",
                           path=path)
    return chunk


def _where(layer: Layer) -> str:
    return f"layer {layer.index} ([{layer.kind}] at cfg line {layer.line})"


def _load_shortcut(layer: Shortcut, src, path: Path) -> None:
    layer.set_weights(_read_floats(layer, src, path))


def _load_layer(layer: Convolutional, src, path: Path) -> None:
    chunk = _read_floats(layer, src, path)
    where = _where(layer)
    try:
        with np.errstate(over="ignore"):  # checked just below, with the layer named
            folded = _fold(layer, chunk)
    except ValueError as exc:
        raise WeightsError(f"{where}: {exc}: damaged file?", path=path) from None
    # Finite values can still fold to inf (a huge scale over a zero variance).
    if not all(part is None or np.isfinite(part).all() for part in folded):
        raise WeightsError(f"{where}: batch norm folds to values beyond float32: damaged file?",
                           path=path)
    layer.weights, layer.bias, layer.output_scale = folded


_LOADERS = {Convolutional: _load_layer, Shortcut: _load_shortcut}


def load_weights(graph: Graph, path: str | Path, expected_sha256: str | None = None) -> str:
    """Fill every conv layer's weights and bias from a darknet .weights file.

    The file size must match the cfg exactly; with `expected_sha256`, so must its hash
    (checked before any value is used). Returns the file's sha256 (hex).
    """
    path = Path(path)
    # Hashed in chunks, then read layer by layer: no copy of the whole file is ever held (the
    # peak is the folded weights plus one layer). A file that must have a given hash is
    # checked before anything else (even its header could be damaged); any other file is
    # first checked by its size, so a wrong large file is not read at all.
    with reading(path, "weights file", WeightsError), path.open("rb") as src:
        if expected_sha256 is not None:
            digest = _sha256(src)
            if digest != expected_sha256:
                raise WeightsDigestError(f"has sha256 {digest}, expected {expected_sha256}",
                                         path=path)
            src.seek(0)
        first = _check_size(graph, path, src)
        if expected_sha256 is None:
            digest = _sha256(src)
        src.seek(first)
        for layer in weighted_layers(graph):
            _LOADERS[type(layer)](layer, src, path)
    for layer in graph.convolutions():
        if layer.shares_weights_of is not None:  # darknet's share_index: the same arrays
            shared = graph.layers[layer.shares_weights_of]
            layer.weights, layer.bias, layer.output_scale = (shared.weights, shared.bias,
                                                             shared.output_scale)
    return digest
