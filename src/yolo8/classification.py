"""A classifier's output as darknet's `classifier predict` reports it: the top k classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Classification:
    class_id: int
    name: str
    score: float


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first. Ties go to the lower index, as darknet's
    top_k (utils.c) replaces a kept index only for a strictly greater score."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[:max(0, min(k, len(order)))]


def classifications(output: np.ndarray, names: list[str], k: int) -> list[Classification]:
    """One image's network output (H, W, C NHWC slice) -> its top k, read in darknet's
    (C, H, W) order (a [softmax] output is 1x1xC: the class probabilities)."""
    scores = output.transpose(2, 0, 1).ravel()
    return [Classification(int(i), names[i], float(scores[i])) for i in top_k(scores, k)]
