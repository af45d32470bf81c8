"""OpenCV 4.x dnn as an independent FP32 implementation of darknet models.

OpenCV decodes [yolo]/[region] outputs itself: one row per (cell, anchor) with x, y, w, h
relative to the input, objectness, and objectness x class probability.
`opencv_rows_to_darknet` undoes that so both are compared in darknet's raw layout.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from yolo8.layers import Region, Yolo


def cfg_for_opencv(text: str, width: int | None = None, height: int | None = None) -> str:
    """A test copy of a cfg: OpenCV zeroes class probabilities below the [yolo]/[region] key
    `thresh` (default 0.2), so set it to 0; optionally change the input size."""
    text = re.sub(r"(?m)^\s*thresh\s*=.*$", "", text)
    text = re.sub(r"(?m)^\[(yolo|region)\]\s*$", lambda m: f"[{m.group(1)}]\nthresh=0\nnms_threshold=0", text)
    if width is not None:
        text = re.sub(r"(?m)^\s*width\s*=.*$", f"width={width}", text)
    if height is not None:
        text = re.sub(r"(?m)^\s*height\s*=.*$", f"height={height}", text)
    return text


def opencv_forward(cfg: Path, weights: Path, blob_nchw: np.ndarray) -> list[np.ndarray]:
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(blob_nchw)
    return list(net.forward(net.getUnconnectedOutLayersNames()))


def opencv_rows_to_darknet(rows: np.ndarray, head: Yolo | Region, h: int, w: int, net_w: int,
                           net_h: int) -> np.ndarray:
    """Undo OpenCV's decoding: rows (H*W*A, 5+C) -> darknet's (A*(5+C), H, W) head output
    (x, y, objectness and classes after their activation, w and h raw)."""
    a = head.num_anchors
    per = rows.shape[1]
    v = rows.astype(np.float64).reshape(h, w, a, per)
    rows_idx, cols_idx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(v)
    out[..., 0] = v[..., 0] * w - cols_idx[..., None]
    out[..., 1] = v[..., 1] * h - rows_idx[..., None]
    scale_w, scale_h = (net_w, net_h) if isinstance(head, Yolo) else (w, h)
    with np.errstate(divide="ignore"):
        out[..., 2] = np.log(v[..., 2] * scale_w / head.anchors[:, 0])
        out[..., 3] = np.log(v[..., 3] * scale_h / head.anchors[:, 1])
        out[..., 4] = v[..., 4]
        out[..., 5:] = np.where(v[..., 4:5] > 0, v[..., 5:] / v[..., 4:5], 0.0)
    return out.transpose(2, 3, 0, 1).reshape(a * per, h, w)


# darknet .weights header of format 0.2 (major, minor, revision, 8-byte `seen`): 20 bytes
WEIGHTS_HEADER = np.array([0, 2, 0], dtype="<i4").tobytes() + np.zeros(1, dtype="<i8").tobytes()


def random_weights(graph, path: Path, seed: int = 0) -> None:
    """A darknet .weights file for `graph`, its layers' floats in darknet's order (conv layers
    and weighted shortcuts, load_weights_upto), with values that keep activations in a sane
    range: unit-gain convolutions, and small ones into each residual sum so deep nets do not
    explode."""
    from yolo8.layers import Convolutional, Shortcut

    rng = np.random.default_rng(seed)
    parts = [WEIGHTS_HEADER]
    for layer in graph.layers:
        if isinstance(layer, Shortcut) and layer.weight_floats():
            parts.append(rng.uniform(0.2, 1.2, layer.weight_floats()).astype("<f4").tobytes())
        if not isinstance(layer, Convolutional):
            continue
        n = layer.filters
        fan_in = layer.size * layer.size * layer.in_shape.c // layer.groups
        following = graph.layers[layer.index + 1] if layer.index + 1 < len(graph.layers) else None
        gain = 0.1 if isinstance(following, Shortcut) else 1.0
        chunks = [rng.normal(0, 0.1, n)]
        if layer.batch_normalize:
            chunks += [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
        chunks.append(rng.normal(0, 1.0, n * fan_in) * np.sqrt(gain / fan_in))
        parts.append(np.concatenate(chunks).astype("<f4").tobytes())
    path.write_bytes(b"".join(parts))
