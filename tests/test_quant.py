"""Tests of yolo8.quant: the KL threshold search, the collectors and the calibration file.

The KL search is checked against `reference_divergences`, a plain Python loop over
candidates and bins that follows TensorRT's description step by step; the collectors
against np.histogram / np.max; the file and cfg helpers by round trips and damaged input.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from yolo8.darknet.cfg_rewrite import cfg_with_input_calibration
from yolo8.errors import CalibrationError, ConfigError
from yolo8.quant import (
    ALL_ZERO_FALLBACK_THRESHOLD,
    Calibration,
    HistogramCollector,
    RangeCollector,
    abs_histogram,
    compute_thresholds,
    kl_divergences,
    kl_threshold,
    max_abs,
    multiplier_for_threshold,
    threshold_for_multiplier,
)
from yolo8.quant.collect import abs_histogram_numpy, max_abs_numpy
from yolo8.quant.kl import EMPTY_BIN_EPS, best_candidate

from .conftest import graph_of

# kl_divergences sums in another order and as (sum P log P - sum P log Q) / N, which
# loses ~eps * log(N) * (number of terms) ~ 1e-13 in absolute terms against the
# straightforward sum of p * log(p / q); relative 1e-9 covers tiny divergences.
KL_ATOL = 1e-12
KL_RTOL = 1e-9


# -- the reference: TensorRT's description, one step at a time ---------------------------
def reference_divergences(hist, levels=128, start_bin=128):
    hist = [float(c) for c in hist]
    result = []
    for kept in range(start_bin, len(hist)):
        # P: the first `kept` bins, outliers folded into the last kept bin.
        p = hist[:kept]
        p[kept - 1] += sum(hist[kept:])
        # Q: the first `kept` bins (no outliers) merged into `levels` levels...
        level_sum = [0.0] * levels
        level_nonzero = [0] * levels
        for j in range(kept):
            level = j * levels // kept
            level_sum[level] += hist[j]
            if hist[j] != 0:
                level_nonzero[level] += 1
        # ...then each level's sum spread over its bins that are non-zero in hist.
        q = [0.0] * kept
        for j in range(kept):
            level = j * levels // kept
            if hist[j] != 0:
                q[j] = level_sum[level] / level_nonzero[level]
        if sum(q) == 0:  # nothing kept: undefined, never chosen
            result.append(math.inf)
            continue
        if p[kept - 1] > 0 and q[kept - 1] == 0:  # MXNet-style eps for the empty bin
            q[kept - 1] = EMPTY_BIN_EPS
        p_sum, q_sum = sum(p), sum(q)
        divergence = 0.0
        for j in range(kept):
            pj, qj = p[j] / p_sum, q[j] / q_sum
            if pj > 0:
                divergence += pj * math.log(pj / qj)
        result.append(divergence)
    return result


def reference_choice(divergences, start_bin=128):
    """Smallest i whose divergence is within 1e-12 of the least; largest i if none finite."""
    finite = [d for d in divergences if math.isfinite(d)]
    if not finite:
        return start_bin + len(divergences) - 1
    least = min(finite)
    for offset, d in enumerate(divergences):
        if math.isfinite(d) and d <= least + 1e-12:
            return start_bin + offset


def histogram_of(x, bins):
    magnitude = np.abs(np.asarray(x, dtype=np.float64))
    top = magnitude.max()
    counts, _ = np.histogram(magnitude, bins=bins, range=(0.0, top))
    return counts, top / bins


def sparse_histogram(bins, seed):
    rng = np.random.default_rng(seed)
    counts = np.zeros(bins, dtype=np.int64)
    where = rng.choice(bins - 1, size=9, replace=False)
    counts[where] = rng.integers(1, 1000, size=where.size)
    counts[-1] = 3  # the max itself always lands in the last bin
    return counts


def one_bin(bins, at, count=1000):
    counts = np.zeros(bins, dtype=np.int64)
    counts[at] = count
    return counts


_rng = np.random.default_rng(20240611)
HISTOGRAMS = {
    # name: (counts, bin_width); the pure-Python reference is slow, so most use 512 bins.
    "gaussian-2048": histogram_of(_rng.standard_normal(200_000), 2048),
    "gaussian": histogram_of(_rng.standard_normal(50_000), 512),
    "laplacian": histogram_of(_rng.laplace(size=50_000), 512),
    "uniform": histogram_of(_rng.uniform(-3, 3, size=50_000), 512),
    "laplacian-outliers": histogram_of(np.r_[_rng.laplace(size=50_000), 400, -380, 390], 512),
    "relu-like": histogram_of(np.maximum(_rng.standard_normal(50_000), 0), 512),
    "sparse-a": (sparse_histogram(512, 1), 0.01),
    "sparse-b": (sparse_histogram(300, 2), 0.5),
    "one-bin-inside": (one_bin(512, 300), 0.1),
    "one-bin-low": (one_bin(512, 5), 0.1),
    "one-bin-last": (one_bin(512, 511), 0.1),
    "odd-size": histogram_of(_rng.gamma(2.0, size=30_001), 333),
}


@pytest.mark.parametrize("name", sorted(HISTOGRAMS))
def test_kl_matches_the_step_by_step_reference(name):
    counts, width = HISTOGRAMS[name]
    expected = reference_divergences(counts)
    got = kl_divergences(counts)
    assert got.shape == (len(counts) - 128,)
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], np.asarray(expected)[finite],
                               rtol=KL_RTOL, atol=KL_ATOL)
    kept = reference_choice(expected)
    assert kl_threshold(counts, width) == (kept + 0.5) * width


def test_kl_on_the_tensorrt_slide_example():
    # GTC 2017 slide: P = [1, 0, 2, 3, 5, 3, 1, 7] into 2 levels gives
    # Q = [2, 0, 2, 2, 4, 4, 4, 4]; one candidate (i = 8), no outliers.
    p = np.array([1, 0, 2, 3, 5, 3, 1, 7])
    q = np.array([2, 0, 2, 2, 4, 4, 4, 4])
    hist = np.r_[p, 0]
    expected = sum(pi / 22 * math.log(pi / qi) for pi, qi in zip(p, q) if pi)
    got = kl_divergences(hist, num_quantized_bins=2, start_bin=8)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-12)


def test_kl_small_configuration_matches_reference():
    rng = np.random.default_rng(5)
    for _ in range(20):
        counts = rng.integers(0, 4, size=int(rng.integers(9, 40)))
        counts[-1] += 1
        expected = reference_divergences(counts, levels=4, start_bin=6)
        got = kl_divergences(counts, num_quantized_bins=4, start_bin=6)
        np.testing.assert_allclose(got, expected, rtol=KL_RTOL, atol=KL_ATOL)
        assert best_candidate(got, 6) == reference_choice(expected, 6)


def test_threshold_is_far_below_the_max_for_a_laplacian_with_outliers():
    rng = np.random.default_rng(1)
    x = np.r_[rng.laplace(size=200_000), 1000.0, -990.0, 995.0, 1000.0]
    counts, width = histogram_of(x, 2048)
    threshold = kl_threshold(counts, width)
    # The body of the Laplacian (b = 1) ends near |x| = 13; the least threshold the
    # search can choose is 128.5 bins = 6.3% of the max. Without the outliers' fold it
    # would pick that minimum; the four outliers must not drag it to the max.
    assert threshold < 0.1 * 1000
    assert threshold == pytest.approx(128.5 * width)


def test_threshold_clips_the_tail_of_a_gaussian_but_not_a_uniform():
    rng = np.random.default_rng(2)
    gaussian = rng.standard_normal(1_000_000)
    counts, width = histogram_of(gaussian, 2048)
    threshold = kl_threshold(counts, width)
    assert 2.5 < threshold < np.abs(gaussian).max() * 0.98  # some of the tail is clipped
    uniform = rng.uniform(-2.0, 2.0, 1_000_000)
    counts, width = histogram_of(uniform, 2048)
    assert kl_threshold(counts, width) > 0.99 * 2.0  # nothing worth clipping


def test_one_bin_histograms_land_where_expected():
    width = 0.25
    # All mass in bin 1000: any candidate below it keeps nothing; 1001 bins keep it all.
    assert kl_threshold(one_bin(2048, 1000), width) == (1001 + 0.5) * width
    # All mass in bin 3 (< 128): every candidate is exact, the tightest wins.
    assert kl_threshold(one_bin(2048, 3), width) == (128 + 0.5) * width
    # All mass in the last bin: no candidate keeps anything; clip nothing.
    assert kl_threshold(one_bin(2048, 2047), width) == (2047 + 0.5) * width


def test_best_candidate_takes_the_smallest_of_ties():
    # Within 1e-12 of the least counts as a tie (float noise of the vectorised sums).
    divergences = np.array([0.5, 0.2 + 1e-14, 0.2, 0.3, 0.2, np.inf])
    assert best_candidate(divergences, start_bin=10) == 11
    assert best_candidate(np.array([0.5, 0.2 + 1e-9, 0.2]), start_bin=10) == 12
    assert best_candidate(np.array([np.inf, np.inf]), start_bin=10) == 11


@pytest.mark.parametrize("hist, width, message", [
    (np.ones((2, 300)), 1.0, "1-D"),
    (np.ones(128), 1.0, "more than start_bin"),
    (np.zeros(300), 1.0, "empty"),
    (np.r_[np.ones(299), -1.0], 1.0, "non-negative"),
    (np.r_[np.ones(299), np.nan], 1.0, "finite"),
    (np.ones(300), 0.0, "bin_width"),
    (np.ones(300), math.inf, "bin_width"),
    (np.array(["a"] * 300), 1.0, "counts"),
])
def test_kl_threshold_rejects_bad_input(hist, width, message):
    with pytest.raises(ValueError, match=message):
        kl_threshold(hist, width)


def test_kl_rejects_fewer_start_bins_than_levels():
    with pytest.raises(ValueError, match="start_bin"):
        kl_divergences(np.ones(300), num_quantized_bins=128, start_bin=100)


def test_multiplier_is_127_over_threshold():
    assert multiplier_for_threshold(127.0) == 1.0
    assert multiplier_for_threshold(0.5) == 254.0
    assert threshold_for_multiplier(multiplier_for_threshold(3.7)) == pytest.approx(3.7, rel=1e-15)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            multiplier_for_threshold(bad)


# -- collectors -------------------------------------------------------------------------------
ODD_SHAPES = [(1, 13, 17, 5), (2, 7, 9, 3), (1, 1, 1, 1), (3, 11, 5, 19)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_max_abs_matches_numpy(shape):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[rng.integers(x.size)] = -50.0  # the largest magnitude is negative
    assert max_abs(x) == max_abs_numpy(x) == 50.0
    assert max_abs(np.zeros(shape, np.float32)) == 0.0
    assert max_abs(np.zeros((0, 4), np.float32)) == 0.0


def test_max_abs_flags_non_finite_values():
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((1, 5, 7, 3), np.float32)
        x[0, 2, 3, 1] = bad
        assert max_abs(x) == math.inf == max_abs_numpy(x)


def test_max_abs_rejects_misuse():
    with pytest.raises(ValueError, match="float32"):
        max_abs(np.ones(5))
    with pytest.raises(ValueError, match="contiguous"):
        max_abs(np.ones((4, 6), np.float32)[:, ::2])


def test_range_collector_is_the_max_over_all_batches():
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((1, 9, 11, c)) * s).astype(np.float32)
               for c, s in ((3, 1.0), (3, 7.0), (3, 2.0))]
    collector = RangeCollector()
    for batch in batches:
        collector.update(4, batch)
        collector.update(9, batch[..., :1].copy())
    assert collector.ranges[4] == float(np.max(np.abs(np.concatenate(batches))))
    assert collector.ranges[9] == float(np.max(np.abs(np.concatenate(batches)[..., :1])))


def test_range_collector_refuses_nan():
    collector = RangeCollector()
    x = np.zeros((1, 3, 3, 2), np.float32)
    x[0, 1, 1, 1] = np.nan
    with pytest.raises(CalibrationError, match="layer 7"):
        collector.update(7, x)


def np_abs_histogram(x, value_range, bins):
    """np.histogram of |x| clipped to the range (values beyond count in the last bin)."""
    magnitude = np.minimum(np.abs(x.astype(np.float64)).ravel(), value_range)
    counts, _ = np.histogram(magnitude, bins=bins, range=(0.0, value_range))
    return counts


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("bins", [2048, 333])
def test_abs_histogram_matches_np_histogram(shape, bins):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    top = float(np.max(np.abs(x)))
    expected = np_abs_histogram(x, top, bins)
    assert np.array_equal(abs_histogram(x, top, bins), expected)
    assert np.array_equal(abs_histogram_numpy(x, top, bins), expected)
    # A smaller range: everything beyond counts in the last bin.
    assert np.array_equal(abs_histogram(x, top / 3, bins), np_abs_histogram(x, top / 3, bins))


@pytest.mark.parametrize("value_range, bins", [(1.6625982522964478, 2048),
                                                (13.518299102783203, 333), (6.1, 2048)])
def test_abs_histogram_puts_values_on_the_edges_where_np_histogram_does(value_range, bins):
    # Values exactly on (or one ulp around) bin edges are where floor(x / width) and
    # np.histogram's edge comparisons can disagree; the kernel must side with the edges.
    edges = np.linspace(0.0, value_range, bins + 1).astype(np.float32)
    x = np.concatenate([edges, np.nextafter(edges, np.float32(0)),
                        np.nextafter(edges, np.float32(100))])
    x = np.where(np.arange(x.size) % 2 == 0, x, -x).astype(np.float32)
    expected = np_abs_histogram(x, value_range, bins)
    assert np.array_equal(abs_histogram(x, value_range, bins), expected)
    if value_range != 6.1:  # these ranges were picked because the shortcut fails there:
        magnitude = np.abs(x.astype(np.float64))
        shortcut = np.minimum((magnitude * (bins / value_range)).astype(np.int64), bins - 1)
        assert not np.array_equal(np.bincount(shortcut, minlength=bins), expected)


def test_abs_histogram_special_values():
    x = np.array([0.0, -0.0, 1.0, 2.0, 3.5, np.inf, np.nan], np.float32)
    counts = abs_histogram(x, 2.0, 4)
    # Bins [0, .5) [.5, 1) [1, 1.5) [1.5, 2]; 2.0 and beyond (inf, NaN, 3.5) in the last.
    assert counts.tolist() == [2, 0, 1, 4]
    assert np.array_equal(abs_histogram_numpy(x, 2.0, 4), counts)
    # Range 0 (an all-zero layer): everything is at or beyond the range.
    zeros = np.zeros((1, 3, 5, 2), np.float32)
    assert abs_histogram(zeros, 0.0, 8).tolist() == [0] * 7 + [30]
    assert np.array_equal(abs_histogram_numpy(zeros, 0.0, 8), abs_histogram(zeros, 0.0, 8))


def test_histogram_collector_merging_equals_one_histogram_of_everything():
    rng = np.random.default_rng(8)
    batches = [(rng.laplace(size=(1, h, w, 7)) * s).astype(np.float32)
               for h, w, s in ((13, 17, 1.0), (5, 3, 4.0), (29, 11, 0.5), (1, 1, 2.0))]
    ranges = RangeCollector()
    for batch in batches:
        ranges.update(2, batch)
    collector = HistogramCollector(ranges.ranges, bins=2048)
    for batch in batches:
        collector.update(2, batch)
    everything = np.concatenate([b.ravel() for b in batches])
    top = ranges.ranges[2]
    assert np.array_equal(collector.histogram(2), np_abs_histogram(everything, top, 2048))
    assert collector.histogram(2).sum() == everything.size
    assert collector.bin_width(2) == top / 2048


def test_histogram_collector_rejects_misuse():
    collector = HistogramCollector({1: 2.0}, bins=300)
    with pytest.raises(ValueError, match="no range"):
        collector.update(5, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="float32"):
        collector.update(1, np.ones(3, np.float64))
    with pytest.raises(ValueError, match="value_range"):
        HistogramCollector({1: -1.0})


def test_compute_thresholds_per_layer_with_all_zero_fallback(caplog):
    rng = np.random.default_rng(9)
    layers = {
        0: rng.standard_normal((1, 21, 19, 3)).astype(np.float32),
        3: np.maximum(rng.laplace(size=(1, 13, 13, 8)), 0).astype(np.float32),
        5: np.zeros((1, 7, 7, 4), np.float32),
    }
    ranges = RangeCollector()
    for key, x in layers.items():
        ranges.update(key, x)
    hists = HistogramCollector(ranges.ranges)
    for key, x in layers.items():
        hists.update(key, x)
    with caplog.at_level("WARNING"):
        thresholds = compute_thresholds(hists)
    assert set(thresholds) == {0, 3, 5}
    for key in (0, 3):
        assert thresholds[key] == kl_threshold(hists.histogram(key), hists.bin_width(key))
        assert 0 < thresholds[key] < ranges.ranges[key]
    assert thresholds[5] == ALL_ZERO_FALLBACK_THRESHOLD
    assert "layer 5" in caplog.text


def test_compute_thresholds_refuses_a_layer_without_data():
    with pytest.raises(ValueError, match="layer 4"):
        compute_thresholds(HistogramCollector({4: 1.0}))


# -- calibration file -----------------------------------------------------------------------
def make_calibration(**changes):
    fields = dict(model_id="yolov3-tiny:sha256:0123456789abcdef", num_images=37,
                  thresholds={1: 1.0 / 3.0, 4: 12.75, 17: 0.0078125}, notes="coco val 37")
    fields.update(changes)
    return Calibration(**fields)


def test_calibration_round_trip(tmp_path):
    calibration = make_calibration()
    path = tmp_path / "model.calib.json"
    calibration.save(path)
    loaded = Calibration.load(path)
    assert loaded == calibration
    assert loaded.thresholds[1] == 1.0 / 3.0  # exact, not rounded
    assert loaded.method == "kl" and loaded.bins == 2048
    assert loaded.created_by.startswith("yolo8 ")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_calibration_round_trip_with_bias_corrections(tmp_path):
    base = make_calibration()
    corrected = Calibration(model_id=base.model_id, thresholds=base.thresholds, num_images=3,
                            bias_corrections={2: [0.1, -1 / 3, 0.0]})
    path = tmp_path / "c.json"
    corrected.save(path)
    loaded = Calibration.load(path)
    assert loaded == corrected and loaded.bias_corrections == {2: (0.1, -1 / 3, 0.0)}
    assert "bias_corrections" not in base.to_json()  # optional: absent when there are none


def write_document(tmp_path, change):
    document = json.loads(make_calibration().to_json())
    change(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _set_threshold(key, value):
    return lambda d: d["thresholds"].__setitem__(key, value)


@pytest.mark.parametrize("change, message", [
    (_set("format", "something-else"), "not a yolo8 calibration"),
    (lambda d: d.pop("format"), "not a yolo8 calibration"),
    (_set("version", 3), "newer"),
    (_set("preprocessing", {"letterbox": False}), "preprocessing"),
    (_set("preprocessing", {"letterbox": 1, "resize": "darknet"}), "letterbox.*true or false"),
    (_set("preprocessing", {"letterbox": True, "resize": "cubic"}), "resize.*darknet, opencv"),
    (_set("version", "1"), "integer"),
    (lambda d: d.pop("thresholds"), "missing field.*thresholds"),
    (lambda d: d.pop("model_id"), "missing field.*model_id"),
    (_set("thresholds", {}), "not be empty"),
    (_set("thresholds", [1.0]), "layer indices"),
    (_set_threshold("2", -1.0), "layer 2.*> 0"),
    (_set_threshold("2", 0), "layer 2.*> 0"),
    (_set_threshold("2", "3.5"), "not a number"),
    (_set_threshold("2", True), "not a number"),
    (_set_threshold("x", 1.0), "layer index 'x'"),
    (_set_threshold("-1", 1.0), "layer index '-1'"),
    (_set_threshold("01", 1.0), "layer index '01'"),
    (_set("num_images", 0), "num_images"),
    (_set("bins", 2.5), "bins"),
    (_set("model_id", ""), "model_id"),
    (_set("notes", 5), "notes"),
    (_set("bias_corrections", [0.1]), "bias_corrections.*lists of numbers"),
    (_set("bias_corrections", {"2": []}), "layer 2: bias corrections must be a non-empty list"),
    (_set("bias_corrections", {"2": [0.1, "x"]}), "layer 2: bias correction 'x' is not a finite"),
    (_set("bias_corrections", {"2": [0.1, True]}), "not a finite number"),
    (_set("bias_corrections", {"x": [0.1]}), "layer index 'x'"),
])
def test_load_refuses_wrong_content(tmp_path, change, message):
    path = write_document(tmp_path, change)
    with pytest.raises(CalibrationError, match=message) as caught:
        Calibration.load(path)
    assert str(path) in str(caught.value)


def test_load_refuses_non_finite_thresholds(tmp_path):
    text = make_calibration().to_json().replace("12.75", "NaN")
    path = tmp_path / "nan.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CalibrationError, match="NaN") as caught:
        Calibration.load(path)
    assert str(path) in str(caught.value)
    path.write_text(text.replace("NaN", "Infinity"), encoding="utf-8")
    with pytest.raises(CalibrationError, match="Infinity"):
        Calibration.load(path)


def test_load_refuses_damaged_and_missing_files(tmp_path):
    good = make_calibration().to_json()
    cut = tmp_path / "cut.json"
    cut.write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(CalibrationError, match="damaged") as caught:
        Calibration.load(cut)
    assert str(cut) in str(caught.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CalibrationError, match="binary.json"):
        Calibration.load(binary)
    with pytest.raises(CalibrationError, match="not found"):
        Calibration.load(tmp_path / "absent.json")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CalibrationError, match="not a yolo8 calibration"):
        Calibration.load(not_object)


def test_constructor_refuses_bad_thresholds():
    for thresholds in ({1: 0.0}, {1: -2.0}, {1: math.nan}, {1: math.inf}, {-1: 1.0}, {}):
        with pytest.raises(ValueError):
            make_calibration(thresholds=thresholds)
    with pytest.raises(ValueError):
        make_calibration(num_images=0)


def test_check_model_accepts_its_own_model_and_refuses_another(tmp_path):
    calibration = make_calibration()
    calibration.check_model("yolov3-tiny:sha256:0123456789abcdef", tmp_path / "c.json")
    with pytest.raises(CalibrationError) as caught:
        calibration.check_model("yolov4-tiny:sha256:fedcba", tmp_path / "c.json")
    message = str(caught.value)
    assert "another model" in message and "c.json" in message
    assert "yolov3-tiny" in message and "yolov4-tiny" in message
    # Long ids sharing a prefix are cut short but still show where they differ.
    long_a, long_b = "sha256:" + "a" * 40 + "1" * 24, "sha256:" + "a" * 40 + "2" * 24
    with pytest.raises(CalibrationError) as caught:
        make_calibration(model_id=long_a).check_model(long_b)
    message = str(caught.value)
    assert long_a not in message and long_b not in message
    assert "a" * 40 + "1" in message and "a" * 40 + "2" in message


# -- yolo2_light's input_calibration ----------------------------------------------------------
CFG = """[net]
# Testing
batch=1
width=416
height=416

[convolutional]
batch_normalize=1
filters=16
size=3
activation=leaky

[maxpool]
size=2

[conv]
filters=32
activation=leaky

# a commented section must not count
#[convolutional]

[convolutional]
filters=255
activation=linear

[yolo]
mask = 0,1,2
"""


def test_input_calibration_is_added_to_net_and_read_back():
    multipliers = [127.0, 15.497, 1.0 / 3.0]
    out = cfg_with_input_calibration(CFG, multipliers)
    added = [line for line in out.split("\n") if line not in CFG.split("\n")]
    assert len(added) == 1 and added[0].startswith("input_calibration =")
    key, value = added[0].split("=", 1)
    assert _read_input_calibration(value) == multipliers
    # Inserted after the last option of [net]; removing it gives back the original.
    lines = out.split("\n")
    assert lines[lines.index("height=416") + 1] == added[0]
    assert "\n".join(line for line in lines if line != added[0]) == CFG


def test_input_calibration_keeps_crlf():
    crlf = CFG.replace("\n", "\r\n")
    out = cfg_with_input_calibration(crlf, [1.5, 2.5, 3.5])
    assert "\n" not in out.replace("\r\n", "")  # every line end is still CRLF
    assert out.count("\r\n") == crlf.count("\r\n") + 1
    assert out.replace("input_calibration = 1.5, 2.5, 3.5\r\n", "") == crlf


def test_existing_input_calibration_is_replaced_in_place():
    crlf = CFG.replace("\n", "\r\n")
    original = crlf.replace("batch=1\r\n", "batch=1\r\n input_calibration=9,9,9 \r\n")
    with_duplicate = original.replace("width=416\r\n", "width=416\r\ninput_calibration=8\r\n")
    for text in (original, with_duplicate):
        out = cfg_with_input_calibration(text, [4.0, 5.0, 6.0])
        assert out == crlf.replace("batch=1\r\n",
                                   "batch=1\r\ninput_calibration = 4.0, 5.0, 6.0\r\n")
    # Twice in a row gives the same text as once.
    once = cfg_with_input_calibration(CFG, [1.0, 2.0, 3.0])
    assert cfg_with_input_calibration(once, [1.0, 2.0, 3.0]) == once


def test_input_calibration_leaves_comments_and_other_sections_alone():
    text = CFG.replace("[maxpool]", "[maxpool]\ninput_calibration=7").replace(
        "# Testing", "#input_calibration = 1, 2")
    out = cfg_with_input_calibration(text, [1.0, 2.0, 3.0])
    assert "#input_calibration = 1, 2" in out and "[maxpool]\ninput_calibration=7" in out
    assert out.count("input_calibration = 1.0, 2.0, 3.0") == 1


def test_input_calibration_with_a_bare_net_section_and_no_final_newline():
    text = "[net]\r\n\r\n[convolutional]\r\nsize=3"
    out = cfg_with_input_calibration(text, [2.0])
    assert out == "[net]\r\ninput_calibration = 2.0\r\n\r\n[convolutional]\r\nsize=3"
    with pytest.raises(ValueError, match="no \\[convolutional\\]"):
        cfg_with_input_calibration("[net]\nwidth=416", [])


def test_input_calibration_refuses_misuse():
    with pytest.raises(ValueError, match="2 multipliers for 3 conv"):
        cfg_with_input_calibration(CFG, [1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        cfg_with_input_calibration(CFG, [1.0, 0.0, 2.0])
    with pytest.raises(ConfigError, match=r"\[net\]"):
        cfg_with_input_calibration(CFG.replace("[net]", "[convolutional]"), [1.0] * 4)


def _read_input_calibration(value: str) -> list[float]:
    """The multipliers yolo8 reads from `input_calibration = value` in [net] (graph.py)."""
    text = ("[net]\nwidth=32\nheight=32\nchannels=3\ninput_calibration=" + value + "\n"
            "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
            "[yolo]\nmask=0\nanchors=10,14\nclasses=1\nnum=1\n")
    return graph_of(text, "t.cfg").net.input_calibration


def test_input_calibration_reads_yolo2_light_values():
    # The line yolo2_light ships in its yolov3-tiny.cfg (13 conv layers + its trailing 16).
    value = (" 15.7342, 4.41852, 9.17237, 9.70713, 13.1849, 14.9823, 15.1913, 8.62978, "
             "15.7353, 15.6297, 15.6939, 15.4093, 15.8055, 16")
    values = _read_input_calibration(value)
    assert len(values) == 14 and values[0] == 15.7342 and values[-1] == 16.0
    # a trailing comma is darknet's list syntax (its option lists tolerate one)
    assert _read_input_calibration("1.5, 2.5,") == [1.5, 2.5]


@pytest.mark.parametrize("value, message", [
    ("", "expected a comma-separated list"),
    ("1.5,,2", "expected a comma-separated list"),
    ("1.5, abc", "expected a list of numbers, got '1.5,abc'"),
    ("1.5, 0", "multipliers must be positive"),
    ("-3", "multipliers must be positive"),
    ("nan", "expected finite numbers"),
    ("inf", "expected finite numbers"),
])
def test_input_calibration_errors(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _read_input_calibration(value)
    assert caught.value.key == "input_calibration" and caught.value.line == 5


def test_calibration_records_its_preprocessing_and_refuses_another(tmp_path):
    made = make_calibration(letterbox=False, resize="darknet")
    path = tmp_path / "c.json"
    made.save(path)
    loaded = Calibration.load(path)
    assert (loaded.letterbox, loaded.resize) == (False, "darknet")
    loaded.check_preprocessing(False, "darknet", path)
    with pytest.raises(CalibrationError, match="resize=darknet but this run uses resize=opencv"):
        loaded.check_preprocessing(False, "opencv", path)
    with pytest.raises(CalibrationError, match="letterbox=off but this run uses letterbox=on"):
        loaded.check_preprocessing(True, "darknet", path)


def test_version_1_files_were_made_with_opencv_resize(tmp_path):
    document = json.loads(make_calibration().to_json())
    document["version"] = 1
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    loaded = Calibration.load(path)
    assert (loaded.letterbox, loaded.resize) == (None, "opencv")
    loaded.check_preprocessing(True, "opencv")  # letterbox was not recorded: not checked
    with pytest.raises(CalibrationError, match="resize=opencv"):
        loaded.check_preprocessing(False, "darknet")
