"""The .weights reader: header variants, exact size, batch-norm folding."""
from __future__ import annotations

import numpy as np
import pytest

from yolo8.darknet.weights import expected_size
from yolo8.graph import load_weights
from yolo8.errors import WeightsError

from .conftest import graph_of

CFG = ("[net]\nwidth=8\nheight=8\nchannels=2\n"
       "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=3\npad=1\nactivation=leaky\n"
       "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
       "[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnum=1\n")
FLOATS = (3 + 3 * 3 + 3 * 2 * 9) + (6 + 6 * 3)


def _graph():
    return graph_of(CFG, "t.cfg")


def _header(major: int, minor: int) -> bytes:
    seen = np.zeros(1, "<i8" if major * 10 + minor >= 2 else "<i4").tobytes()
    return np.array([major, minor, 0], "<i4").tobytes() + seen


@pytest.mark.parametrize("major, minor, header", [(0, 2, 20), (0, 1, 16), (1, 0, 20)])
def test_header_sizes(tmp_path, major, minor, header):
    g = _graph()
    assert expected_size(FLOATS, major, minor) == header + 4 * FLOATS
    path = tmp_path / "w.weights"
    path.write_bytes(_header(major, minor) + np.ones(FLOATS, "<f4").tobytes())
    load_weights(g, path)
    assert g.layers[1].weights.shape == (6, 1, 1, 3)


@pytest.mark.parametrize("delta, word", [(-4, "short"), (4, "long"), (-4 * FLOATS, "short")])
def test_wrong_size_names_both_sizes(tmp_path, delta, word):
    path = tmp_path / "w.weights"
    data = _header(0, 2) + np.ones(FLOATS, "<f4").tobytes()
    path.write_bytes(data[:len(data) + delta] if delta < 0 else data + b"\0" * delta)
    with pytest.raises(WeightsError) as info:
        load_weights(_graph(), path)
    msg = str(info.value)
    assert f"is {len(data) + delta} bytes" in msg and f"needs exactly {len(data)}" in msg
    assert f"too {word}" in msg and str(path) in msg


@pytest.mark.parametrize("content", [b"", b"\1\2\3"])
def test_empty_and_tiny_files(tmp_path, content):
    path = tmp_path / "w.weights"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="too short for a darknet weights header"):
        load_weights(_graph(), path)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(_graph(), tmp_path / "nope.weights")


def test_nan_weights_refused(tmp_path):
    values = np.ones(FLOATS, "<f4")
    values[-1] = np.nan
    path = tmp_path / "w.weights"
    path.write_bytes(_header(0, 2) + values.tobytes())
    with pytest.raises(WeightsError, match="layer 1 .*non-finite"):
        load_weights(_graph(), path)


def test_batch_norm_folding_equals_darknets_formula(tmp_path):
    """conv(x, w) then (y - mean) / (sqrt(var) + 1e-6) * scale + bias, computed directly."""
    rng = np.random.default_rng(3)
    bias, scale, mean = rng.normal(size=3), rng.uniform(0.5, 2, 3), rng.normal(size=3)
    var = rng.uniform(0.1, 2, 3)
    w = rng.normal(size=(3, 2, 3, 3))  # darknet order (Cout, Cin, kh, kw)
    rest = rng.normal(size=6 + 18)
    floats = np.concatenate([bias, scale, mean, var, w.ravel(), rest]).astype("<f4")
    path = tmp_path / "w.weights"
    path.write_bytes(_header(0, 2) + floats.tobytes())
    g = _graph()
    load_weights(g, path)
    conv = g.layers[0]
    patch = rng.normal(size=(2, 3, 3))  # one input patch (Cin, kh, kw)
    w32, p32 = w.astype(np.float32).astype(np.float64), patch
    direct = (np.einsum("oihw,ihw->o", w32, p32) - mean.astype(np.float32)) / (
        np.sqrt(var.astype(np.float32)) + 1e-6) * scale.astype(np.float32) + bias.astype(np.float32)
    folded = np.einsum("ohwi,ihw->o", conv.weights.astype(np.float64), p32) + conv.bias
    np.testing.assert_allclose(folded, direct, rtol=1e-5, atol=1e-5)
    # The second conv has no batch norm: its values are taken as they are (transposed).
    np.testing.assert_array_equal(g.layers[1].bias, rest[:6].astype(np.float32))
