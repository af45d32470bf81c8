"""Collectors of per-layer activation statistics for calibration, kept apart from the math.

Calibration makes two passes over the images: a `RangeCollector` first records max |x| of
each INT8 layer's input, then a `HistogramCollector` built from those ranges counts |x| in
fixed bins over [0, max]. Because the bins are fixed by the first pass, the histograms of
all batches simply add up, and the threshold search sees the exact histogram of every
image together (yolo2_light instead averages per-image multipliers).
`compute_thresholds` then runs the KL search (kl.py) on each layer's histogram.

Layers are identified by an int key (the caller's layer index). Arrays are float32 of any
shape, C-contiguous (the NHWC activations as they are).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
from numba import njit, uint64

from ..jit import CACHE
from ..errors import CalibrationError
from .kl import kl_threshold

log = logging.getLogger(__name__)

DEFAULT_BINS = 2048

# A layer whose input was exactly zero on every calibration image has no scale to learn;
# any threshold quantizes those zeros exactly. 1.0 (multiplier 127) is neutral: it neither
# saturates typical post-activation values at once nor wastes the range on huge ones.
ALL_ZERO_FALLBACK_THRESHOLD = 1.0

_ABS_MASK = np.int32(0x7FFFFFFF)
# float32 bit patterns of |x| at or above this are inf or NaN.
_NONFINITE_BITS = 0x7F800000


# -- max |x| ---------------------------------------------------------------------------
@njit(cache=CACHE, nogil=True)
def _max_abs_bits(bits):
    """Largest (bits & 0x7fffffff) of float32 bit patterns, i.e. the bits of max |x|.

    For non-negative floats the integer order of the bit patterns is the float order,
    and inf/NaN patterns are above every finite one, so one integer max (which vectorises
    without fast-math, unlike a float max that must respect NaN) finds max |x| and flags
    non-finite values at once.
    """
    best = np.int32(0)
    for k in range(bits.size):
        v = bits[k] & _ABS_MASK
        best = v if v > best else best
    return best


def max_abs(x: np.ndarray) -> float:
    """max |x| of a float32 array (0.0 when empty); inf if x holds inf or NaN."""
    flat = _flat_float32(x, "x")
    if flat.size == 0:
        return 0.0
    bits = int(_max_abs_bits(flat.view(np.int32)))
    if bits >= _NONFINITE_BITS:
        return math.inf
    return float(np.int32(bits).view(np.float32))


def max_abs_numpy(x: np.ndarray) -> float:
    """Plain-numpy reference of `max_abs`."""
    if x.size == 0:
        return 0.0
    value = float(np.max(np.abs(x)))
    return math.inf if not math.isfinite(value) else value


# -- histogram of |x| --------------------------------------------------------------------
@njit(cache=CACHE, nogil=True)
def _abs_histogram(flat, edges, inv_width, counts):
    """Add the histogram of |flat| over `edges` (len(counts) + 1 of them) into counts.

    Bin k is [edges[k], edges[k+1]); the last bin also takes edges[-1] and everything
    beyond it, NaN included. The index guess floor(|x| * inv_width) is corrected by one
    against the edges exactly as np.histogram does, so the two agree bin for bin.
    Indices are unsigned so that numba emits no negative-index wraparound code.
    Serial on purpose: a scatter-increment does not vectorise, and prange versions
    measured 3-5x slower than this loop on the 2-core target (numba 0.68, OpenMP layer).
    """
    last = uint64(counts.size - 1)
    limit = edges[counts.size]
    for k in range(flat.size):
        a = abs(np.float64(flat[k]))
        idx = last
        if a < limit:  # False for NaN: it counts in the last bin
            idx = min(uint64(a * inv_width), last)
            # a >= edges[idx + 1] can only hold for idx < last, as a < limit = edges[-1].
            idx = idx - uint64(a < edges[idx]) + uint64(a >= edges[idx + uint64(1)])
        counts[idx] += 1


def abs_histogram(x: np.ndarray, value_range: float, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Counts (int64, `bins` of them) of |x| over [0, value_range] in equal bins.

    Bin k is [k, k+1) * value_range / bins; the last bin is closed and also takes the
    values beyond value_range (and NaN). With value_range == 0 every value is "at or
    beyond the range" and lands in the last bin.
    """
    flat = _flat_float32(x, "x")
    edges, inv_width = _bin_edges(value_range, bins)
    counts = np.zeros(bins, dtype=np.int64)
    if flat.size:
        _abs_histogram(flat, edges, inv_width, counts)
    return counts


def abs_histogram_numpy(x: np.ndarray, value_range: float, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Plain-numpy reference of `abs_histogram` (np.histogram of the clipped |x|)."""
    magnitude = np.abs(x.astype(np.float64).ravel())
    if value_range == 0:
        counts = np.zeros(bins, dtype=np.int64)
        counts[-1] = magnitude.size
        return counts
    clipped = np.where(magnitude < value_range, magnitude, value_range)  # NaN -> range too
    counts, _ = np.histogram(clipped, bins=bins, range=(0.0, float(value_range)))
    return counts.astype(np.int64)


def _bin_edges(value_range: float, bins: int) -> tuple[np.ndarray, float]:
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not (math.isfinite(value_range) and value_range >= 0):
        raise ValueError(f"value_range must be finite and >= 0, got {value_range!r}")
    # The same edges as np.histogram(..., range=(0, value_range)) on float64 data.
    edges = np.linspace(0.0, float(value_range), int(bins) + 1)
    inv_width = bins / value_range if value_range > 0 else 0.0
    return edges, inv_width


def _flat_float32(x: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return x.reshape(-1)


# -- collectors -----------------------------------------------------------------------------
class RangeCollector:
    """Running max |x| per layer over every array given to `update`."""

    def __init__(self) -> None:
        self._ranges: dict[int, float] = {}

    def update(self, key: int, array: np.ndarray) -> None:
        """Fold one batch of layer `key`'s input in. Raises CalibrationError on inf/NaN."""
        value = max_abs(array)
        if not math.isfinite(value):
            raise CalibrationError(
                f"layer {key}: its input holds inf or NaN; the network's output is not "
                "usable for calibration (damaged weights?)"
            )
        self._ranges[key] = max(self._ranges.get(key, 0.0), value)

    @property
    def ranges(self) -> dict[int, float]:
        """max |x| per layer key seen so far (a copy)."""
        return dict(self._ranges)


class HistogramCollector:
    """Histogram of |x| over [0, ranges[key]] per layer, summed over every batch.

    Values beyond the range (possible only if the second pass sees other data than the
    first) count in the last bin, as a clipped value would.
    """

    def __init__(self, ranges: Mapping[int, float], bins: int = DEFAULT_BINS) -> None:
        self.bins = int(bins)
        self._ranges: dict[int, float] = {}
        self._edges: dict[int, tuple[np.ndarray, float]] = {}
        self._counts: dict[int, np.ndarray] = {}
        for key, value_range in ranges.items():
            self._edges[key] = _bin_edges(float(value_range), self.bins)
            self._ranges[key] = float(value_range)
            self._counts[key] = np.zeros(self.bins, dtype=np.int64)

    def update(self, key: int, array: np.ndarray) -> None:
        """Add the histogram of one batch of layer `key`'s input."""
        if key not in self._counts:
            raise ValueError(f"layer {key} has no range: it was not in the first pass")
        flat = _flat_float32(array, "array")
        if flat.size:
            edges, inv_width = self._edges[key]
            _abs_histogram(flat, edges, inv_width, self._counts[key])

    @property
    def ranges(self) -> dict[int, float]:
        return dict(self._ranges)

    def histogram(self, key: int) -> np.ndarray:
        """The counts of layer `key` so far (a copy)."""
        return self._counts[key].copy()

    def bin_width(self, key: int) -> float:
        return self._ranges[key] / self.bins

    def keys(self) -> list[int]:
        return list(self._counts)


def compute_thresholds(hist_collector: HistogramCollector) -> dict[int, float]:
    """The KL (entropy) threshold of |x| for every layer of the collector.

    A layer whose input was all zeros (range 0) gets ALL_ZERO_FALLBACK_THRESHOLD, with a
    warning in the log. Raises ValueError for a layer that received no data at all.
    """
    thresholds: dict[int, float] = {}
    for key in hist_collector.keys():
        counts = hist_collector.histogram(key)
        if counts.sum() == 0:
            raise ValueError(f"layer {key}: no activations were collected")
        value_range = hist_collector.ranges[key]
        if value_range == 0:
            log.warning("layer %d: input is all zeros on every calibration image; "
                        "using threshold %g", key, ALL_ZERO_FALLBACK_THRESHOLD)
            thresholds[key] = ALL_ZERO_FALLBACK_THRESHOLD
            continue
        thresholds[key] = kl_threshold(counts, hist_collector.bin_width(key))
    return thresholds
