"""Entropy (KL-divergence) calibration: the clipping threshold of one layer's input.

This is the search TensorRT describes for INT8 calibration (Migacz, "8-bit Inference with
TensorRT", GTC 2017). `hist` counts |x| over [0, max] in equal bins (2048 by default).
For every candidate i (the number of bins kept, start_bin <= i < len(hist)):

  P  = hist[:i], with every outlier (the counts of bins >= i) added to P[i-1]: clipping
       at the threshold saturates them to the largest level;
  Q  = hist[:i] (without the outliers) merged into `num_quantized_bins` levels, each
       level's sum then spread evenly over the bins of its group that are non-zero in
       hist (empty bins stay empty: quantization does not create values where there were
       none);
  KL(P || Q) after normalising both to sum 1.

The i with the least divergence wins and threshold = (i + 0.5) * bin_width.

Choices where the description is silent, and why:
- Groups: bin j of a candidate i belongs to level floor(j * levels / i), so group sizes
  differ by at most one (as NVIDIA's pytorch-quantization does; MXNet instead makes every
  group floor(i / levels) wide and gives the remainder to the last one).
- P > 0 where Q == 0: this only happens at bin i-1, when it is empty in hist but
  outliers were folded into it. Like MXNet (`_smooth_distribution`, which adds eps = 1e-4
  counts to every empty bin of P and of Q), that bin of Q gets EMPTY_BIN_EPS = 1e-4 counts
  before Q is normalised; only that bin, since P == 0 terms contribute 0 anyway. The
  outliers then cost about (their share) x log(their count / eps): finite, and growing
  with how much is clipped. (A plain KL such as scipy.stats.entropy, which NVIDIA's
  pytorch-quantization uses, makes it +inf: a few distant outliers beyond empty bins then
  veto every candidate and nothing is clipped.) As in MXNet, a candidate that keeps no
  mass at all (Q entirely zero: every count is at or beyond bin i) is +inf.
- Ties: divergences within float noise of the minimum (see `_TIE_ATOL`) count as equal
  and the smallest such i wins: the tightest threshold gives the finest resolution for
  the same information loss (a sparse histogram has whole plateaus of KL == 0).
- Every candidate infinite (all the mass in the last bin): keep the largest i, so that
  nothing is clipped; there is no information to clip on.

Why not yolo2_light's `entropy_calibration` (src/yolov2_forward_network_quantized.c),
which is the same idea:
1. Its bins have a fixed absolute width (1/16, 4096 bins) instead of max|x| / 2048, and its
   search starts at 128 bins, so its threshold can never be below (128 + 0.5) / 16 = 8.03,
   i.e. its multiplier never above 127 / 8.03 = 15.8. Its shipped cfgs show it: every
   measured `input_calibration` value is <= 15.8. A layer whose inputs stay within [0, 1]
   then uses 16 of the 127 levels (4 bits). Here bins scale with each layer's own range,
   so the search covers [128/2048, 1] x max|x| whatever that max is.
2. Its quantizer truncates: `int16_t src = x * multiplier` (and the weights, passed as
   float to max_abs(int, int)) converts toward zero, so the error is up to a whole step
   and biased toward zero, instead of at most half a step with rounding (its lround() is
   commented out). The threshold from this search assumes round-to-nearest: the INT8
   engine must round, q = clip(round(x * 127 / threshold), -127, 127).
(It also averages per-image multipliers over the calibration images instead of searching
one histogram of all of them, and writes them with 6 significant digits.)
"""
from __future__ import annotations

import math

import numpy as np

# Divergences closer than this to the minimum are ties. The vectorised sums below lose
# about eps * log(max count) * a few tens in absolute terms (~1e-13 for 1e9 counts), far
# below the gap between the best and the runner-up candidate on real histograms (1e-6 and
# more on 1e6-sample Gaussian, Laplacian and ReLU data); two implementations of the same
# search then agree on the chosen i.
_TIE_ATOL = 1e-12

# Mass (in counts) given to the empty bin of Q where P needs one; MXNet's smoothing eps.
EMPTY_BIN_EPS = 1e-4

# Largest signed 8-bit level: x is quantized to round(x * 127 / threshold).
INT8_MAX_LEVEL = 127


def kl_divergences(
    hist: np.ndarray, num_quantized_bins: int = 128, start_bin: int = 128
) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i = start_bin .. len(hist) - 1, in that order.

    See the module docstring for P and Q; +inf for a candidate that keeps no mass.
    All candidates are computed at once from prefix sums: O(candidates x levels) work,
    no loop over bins.
    """
    counts = _checked_histogram(hist, num_quantized_bins, start_bin)
    levels = num_quantized_bins
    kept = np.arange(start_bin, counts.size, dtype=np.int64)  # candidate i: bins kept

    total = counts.sum()
    cum = _prefix_sum(counts)  # cum[k] = sum(counts[:k])
    cum_nonzero = _prefix_sum((counts > 0).astype(np.float64))
    cum_plogp = _prefix_sum(_xlogx(counts))

    level_sum, q_value = _quantized_levels(cum, cum_nonzero, kept, levels)
    # Every non-zero bin j of level g has Q_j = q_value[g], so hist's bins contribute
    # sum_g level_sum[g] * log(q_value[g]) to sum_j h_j log Q_j.
    sum_h_log_q = (level_sum * _log_or_zero(q_value)).sum(axis=1)

    last = kept - 1
    last_count = counts[last]
    outliers = total - cum[kept]
    kept_sum = cum[kept]
    # Bin i-1 of P holds outliers while Q has nothing there: Q gets EMPTY_BIN_EPS there.
    smoothed = (outliers > 0) & (last_count == 0) & (kept_sum > 0)
    p_last = last_count + outliers
    # sum_j P_j log P_j: bins below i-1 are unchanged; bin i-1 carries the outliers.
    sum_p_log_p = cum_plogp[last] + _xlogx(p_last)
    # sum_j P_j log Q_j: as for hist, plus the outliers at bin i-1, where Q is the last
    # level's value if counts[i-1] > 0, else EMPTY_BIN_EPS.
    q_last = np.where(last_count > 0, q_value[:, -1], np.where(smoothed, EMPTY_BIN_EPS, 0.0))
    sum_p_log_q = sum_h_log_q + outliers * _log_or_zero(q_last)

    # With p = P/total and q = Q/q_sum (Q keeps the mass of hist[:i], plus eps if smoothed):
    # KL = sum p log(p/q) = (sum P log P - sum P log Q) / total + log(q_sum / total).
    q_sum = kept_sum + np.where(smoothed, EMPTY_BIN_EPS, 0.0)
    divergence = (sum_p_log_p - sum_p_log_q) / total + _log_or_zero(q_sum / total)
    divergence[kept_sum == 0] = np.inf  # nothing kept: Q is all zeros
    return divergence


def _quantized_levels(
    cum: np.ndarray, cum_nonzero: np.ndarray, kept: np.ndarray, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate and level: the level's sum, and its value spread over non-zero bins.

    Level g of candidate i covers bins [ceil(g*i/levels), ceil((g+1)*i/levels)), which is
    exactly the set of j with floor(j*levels/i) == g. Both arrays: (candidates, levels).
    """
    g = np.arange(levels + 1, dtype=np.int64)
    edges = (g[None, :] * kept[:, None] + levels - 1) // levels
    level_sum = cum[edges[:, 1:]] - cum[edges[:, :-1]]
    level_nonzero = cum_nonzero[edges[:, 1:]] - cum_nonzero[edges[:, :-1]]
    q_value = np.divide(level_sum, level_nonzero, out=np.zeros_like(level_sum),
                        where=level_nonzero > 0)
    return level_sum, q_value


def best_candidate(divergences: np.ndarray, start_bin: int = 128) -> int:
    """The chosen number of bins kept, given `kl_divergences(...)` (ties: smallest i)."""
    divergences = np.asarray(divergences, dtype=np.float64)
    if divergences.ndim != 1 or divergences.size == 0:
        raise ValueError("divergences must be a non-empty 1-D array")
    finite = np.isfinite(divergences)
    if not finite.any():
        return start_bin + divergences.size - 1  # nothing to learn: clip nothing
    least = divergences[finite].min()
    near_least = finite & (divergences <= least + _TIE_ATOL)
    return start_bin + int(np.argmax(near_least))


def kl_threshold(
    hist: np.ndarray,
    bin_width: float,
    num_quantized_bins: int = 128,
    start_bin: int = 128,
) -> float:
    """The clipping threshold of |x| that minimises KL(P || Q) (TensorRT's entropy method).

    `hist[k]` counts |x| in [k * bin_width, (k + 1) * bin_width) (the last bin also holds
    everything beyond). Returns (i + 0.5) * bin_width for the best number i of bins kept,
    start_bin <= i < len(hist). Raises ValueError for an empty or invalid histogram.
    """
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be finite and > 0, got {bin_width!r}")
    divergences = kl_divergences(hist, num_quantized_bins, start_bin)
    kept = best_candidate(divergences, start_bin)
    return (kept + 0.5) * bin_width


def multiplier_for_threshold(threshold: float) -> float:
    """The input multiplier of an INT8 layer: x_int8 = round(x * multiplier), clipped.

    yolo2_light's `input_calibration` values are such multipliers (127 / threshold).
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be finite and > 0, got {threshold!r}")
    return INT8_MAX_LEVEL / threshold


def threshold_for_multiplier(multiplier: float) -> float:
    """The inverse of `multiplier_for_threshold`."""
    if not (math.isfinite(multiplier) and multiplier > 0):
        raise ValueError(f"multiplier must be finite and > 0, got {multiplier!r}")
    return INT8_MAX_LEVEL / multiplier


# -- helpers ------------------------------------------------------------------------------
def _checked_histogram(hist: np.ndarray, levels: int, start_bin: int) -> np.ndarray:
    hist = np.asarray(hist)
    if hist.ndim != 1:
        raise ValueError(f"hist must be 1-D, got shape {hist.shape}")
    if not (np.issubdtype(hist.dtype, np.integer) or np.issubdtype(hist.dtype, np.floating)):
        raise ValueError(f"hist must hold counts (integers or floats), got {hist.dtype}")
    if levels < 1:
        raise ValueError(f"num_quantized_bins must be >= 1, got {levels}")
    # Every level must own at least one bin, hence i >= levels for every candidate.
    if start_bin < levels:
        raise ValueError(f"start_bin ({start_bin}) must be >= num_quantized_bins ({levels})")
    if hist.size <= start_bin:
        raise ValueError(f"hist needs more than start_bin={start_bin} bins, got {hist.size}")
    counts = hist.astype(np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("hist must hold finite, non-negative counts")
    if counts.sum() <= 0:
        raise ValueError("hist is empty (all counts are zero)")
    return counts


def _prefix_sum(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(values, out=out[1:])
    return out


def _log_or_zero(x: np.ndarray) -> np.ndarray:
    """log(x) where x > 0, else 0 (callers multiply it by a weight that is 0 there)."""
    x = np.asarray(x, dtype=np.float64)
    return np.log(x, out=np.zeros_like(x), where=x > 0)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x * log(x) with 0 * log(0) = 0."""
    x = np.asarray(x, dtype=np.float64)
    return x * _log_or_zero(x)
