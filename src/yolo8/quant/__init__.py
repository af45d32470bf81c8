"""INT8 calibration: activation collectors, the KL threshold search, the calibration file."""
from .calibration_file import Calibration
from .collect import (
    ALL_ZERO_FALLBACK_THRESHOLD,
    HistogramCollector,
    RangeCollector,
    abs_histogram,
    compute_thresholds,
    max_abs,
)
from .kl import (
    kl_divergences,
    kl_threshold,
    multiplier_for_threshold,
    threshold_for_multiplier,
)

__all__ = [
    "ALL_ZERO_FALLBACK_THRESHOLD",
    "Calibration",
    "HistogramCollector",
    "RangeCollector",
    "abs_histogram",
    "compute_thresholds",
    "kl_divergences",
    "kl_threshold",
    "max_abs",
    "multiplier_for_threshold",
    "threshold_for_multiplier",
]
