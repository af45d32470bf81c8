"""Darknet's activation functions, as numba scalar functions and numpy references.

Each fused activation has a small integer code (yolo8.activations) so that compiled kernels
can take it as an argument (numba cannot dispatch on strings cheaply). `activate(x, code)` inlines into
the caller's loop; `activate_numpy` is the plain reference the tests compare with.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..jit import CACHE

# The codes and names live outside kernels/ (a cfg parse must not import numba).
from ..activations import CODES, LEAKY, LINEAR, LOGISTIC, MISH, RELU, SWISH  # noqa: F401
from ..activations import SOFTPLUS_THRESHOLD as _SOFTPLUS_THRESHOLD


@njit(inline="always", cache=CACHE)
def _softplus(x):
    if x > _SOFTPLUS_THRESHOLD:
        return x
    if x < -_SOFTPLUS_THRESHOLD:
        return math.exp(x)
    return math.log1p(math.exp(x))


@njit(inline="always", cache=CACHE)
def activate(x, code):
    """darknet's activate() for one float32 value."""
    if code == LEAKY:
        return x if x > 0 else np.float32(0.1) * x
    if code == LINEAR:
        return x
    if code == RELU:
        return x if x > 0 else np.float32(0.0)
    if code == LOGISTIC:
        return np.float32(1.0 / (1.0 + math.exp(-x)))
    if code == MISH:
        return np.float32(x * math.tanh(_softplus(x)))
    # SWISH
    return np.float32(x / (1.0 + math.exp(-x)))


def activate_numpy(x: np.ndarray, code: int) -> np.ndarray:
    """Plain-numpy reference of `activate`, computed in float64 then rounded."""
    x64 = x.astype(np.float64)
    if code == LINEAR:
        y = x64
    elif code == LEAKY:
        y = np.where(x64 > 0, x64, np.float32(0.1) * x.astype(np.float32))
    elif code == RELU:
        y = np.maximum(x64, 0.0)
    elif code == LOGISTIC:
        y = 1.0 / (1.0 + np.exp(-x64))
    elif code == MISH:
        sp = np.where(
            x64 > _SOFTPLUS_THRESHOLD,
            x64,
            np.where(x64 < -_SOFTPLUS_THRESHOLD, np.exp(x64), np.log1p(np.exp(x64))),
        )
        y = x64 * np.tanh(sp)
    elif code == SWISH:
        y = x64 / (1.0 + np.exp(-x64))
    else:
        raise ValueError(f"unknown activation code {code}")
    return y.astype(np.float32)
