"""darknet's activation functions by name (activations.h / activations.c), without numba.

The cfg parser checks names here, so reading a cfg imports no compiled kernel. Two kinds:

* fused: the kernels apply these themselves, chosen by a small integer code (FUSED_CODES);
* elementwise: every other activation darknet defines, applied in numpy after the layer's
  kernel has run with LINEAR (they are rare in real cfgs: relu6, ramp, elu, ...).

`apply(x, name)` is the float64-then-float32 numpy version of any of them, the reference the
kernels' fused activations are tested against.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

LINEAR, LEAKY, RELU, LOGISTIC, MISH, SWISH = range(6)

# Activations the compiled kernels fuse, by the code they take.
FUSED_CODES: dict[str, int] = {
    "linear": LINEAR,
    "leaky": LEAKY,
    "relu": RELU,
    "logistic": LOGISTIC,
    "mish": MISH,
    "swish": SWISH,
}
CODES = FUSED_CODES  # the name kernels and their tests know it by

# darknet's softplus inside mish switches to the asymptotes beyond this (MISH_THRESHOLD).
SOFTPLUS_THRESHOLD = 20.0


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > SOFTPLUS_THRESHOLD, x,
                    np.where(x < -SOFTPLUS_THRESHOLD, np.exp(x), np.log1p(np.exp(x))))


def _stair(x: np.ndarray) -> np.ndarray:
    n = np.floor(x)
    return np.where(n % 2 == 0, np.floor(x / 2), (x - n) + np.floor(x / 2))


def _hard_mish(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.where(x > -2, x * x / 2 + x, 0.0))


def _leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.float32(0.1) * x.astype(np.float32))  # float32, as darknet


# Each darknet activation on float64 values (formulas of activations.h). darknet's CPU
# activate() has no case for relu6 and returns 0 for it; its GPU kernel and relu6_activate
# clamp to [0, 6], which is what the cfgs using it (efficientnet-lite) are trained with.
_FORMULAS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "leaky": _leaky,
    "revleaky": _leaky,  # darknet's activate() treats it as leaky
    "relu": lambda x: np.maximum(x, 0.0),
    "logistic": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "relie": lambda x: np.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "tanh": lambda x: 2.0 / (1.0 + np.exp(-2.0 * x)) - 1.0,
    "plse": lambda x: np.where(x < -4, 0.01 * (x + 4), np.where(x > 4, 0.01 * (x - 4) + 1,
                                                                 0.125 * x + 0.5)),
    "elu": lambda x: np.where(x >= 0, x, np.expm1(x)),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.797885 * x + 0.035677 * x ** 3)),
    "loggy": lambda x: 2.0 / (1.0 + np.exp(-x)) - 1.0,
    "stair": _stair,
    "hardtan": lambda x: np.clip(x, -1.0, 1.0),
    "lhtan": lambda x: np.where(x < 0, 0.001 * x, np.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "hard_mish": _hard_mish,
}
NAMES = tuple(_FORMULAS)

# darknet names that are not elementwise (they normalise across channels): refused by name.
NOT_ELEMENTWISE = ("normalize_channels", "normalize_channels_softmax",
                   "normalize_channels_softmax_maxval")


def is_fused(name: str) -> bool:
    return name in FUSED_CODES


def kernel_code(name: str) -> int:
    """The code a kernel gets for this activation: its own if fused, else LINEAR (the
    activation is then applied after the kernel, by `apply`)."""
    return FUSED_CODES.get(name, LINEAR)


def apply(x: np.ndarray, name: str) -> np.ndarray:
    """darknet's activation `name` on x, computed in float64 and rounded to float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _FORMULAS[name](np.asarray(x, dtype=np.float64)).astype(np.float32)


def check_name(section, key: str = "activation", default: str = "linear") -> str:
    """The section's activation name, refused (file, line, key) unless darknet defines it
    as an elementwise function."""
    name = section.get_str(key, default)
    if name in NOT_ELEMENTWISE:
        raise section.error(f"activation '{name}' (a normalisation across channels) is not "
                            f"supported", key)
    if name not in _FORMULAS:
        raise section.error(f"unknown activation '{name}'; expected one of {', '.join(NAMES)}",
                            key)
    return name
