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
from ..activations import apply

_NAMES_BY_CODE = {code: name for name, code in CODES.items()}


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
    """Plain-numpy reference of `activate`: yolo8.activations.apply (float64 then rounded) for
    the activation of this code."""
    name = _NAMES_BY_CODE.get(code)
    if name is None:
        raise ValueError(f"unknown activation code {code}")
    return apply(x, name)
