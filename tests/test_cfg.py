"""The cfg parser: darknet's reading rules, its defaults, shape inference, and its errors."""
from __future__ import annotations

import logging

import pytest

from yolo8.errors import ConfigError
from yolo8.layers import Convolutional, MaxPool, Route, Shape, Upsample
from yolo8.postprocess import nms_rule

from .conftest import graph_of

NET = "[net]\nwidth=64\nheight=32\nchannels=3\n"
HEAD = "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\nanchors=10,14\nclasses=1\nnum=1\n"


def test_whitespace_comments_and_crlf_are_darknets():
    text = ("[net]\r\n# comment\r\n; other comment\r\n width = 64 \r\nheight=32\r\n\r\n"
            "[convolutional]\r\nfilters = 6 # trailing comment\r\nsize=1\r\nactivation= linear\r\n"
            "[yolo]\r\nmask = 0\r\nanchors = 10 , 14\r\nclasses=1\r\nnum=1\r\n")
    g = graph_of(text)
    assert g.input_shape == Shape(3, 32, 64)
    assert g.layers[0].filters == 6 and g.layers[0].activation == "linear"
    assert g.layers[1].anchors.tolist() == [[10.0, 14.0]]


def test_darknet_defaults_differ_from_other_frameworks():
    g = graph_of(NET + "[convolutional]\nfilters=4\n[maxpool]\nsize=2\n[maxpool]\nstride=2\n"
                 "[upsample]\n" + HEAD)
    conv, pool_size_only, pool_stride_only, up = g.layers[:4]
    assert conv.activation == "logistic" and conv.size == 1 and conv.pad == 0  # darknet's defaults
    # maxpool: stride defaults to 1, padding to size - 1, so size=2 keeps the size
    assert (pool_size_only.stride, pool_size_only.padding) == (1, 1)
    assert pool_size_only.out_shape == Shape(4, 32, 64)
    # size defaults to stride
    assert (pool_stride_only.size, pool_stride_only.padding) == (2, 1)
    assert pool_stride_only.out_shape == Shape(4, 16, 32)
    assert up.stride == 2 and up.out_shape == Shape(4, 32, 64)


def test_shapes_and_negative_indices():
    g = graph_of(NET + "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
                 "[convolutional]\nfilters=6\nsize=3\npad=1\nactivation=mish\n"
                 "[route]\nlayers=-1,-2\n[route]\nlayers=0\ngroups=2\ngroup_id=1\n"
                 "[convolutional]\nfilters=8\nsize=1\nactivation=leaky\n"
                 "[shortcut]\nfrom=-5\nactivation=linear\n" + HEAD)
    conv0, conv1, route, grouped, _, short = g.layers[:6]
    assert conv0.out_shape == Shape(8, 16, 32) and conv0.pad == 1
    assert route.inputs == (1, 0) and route.out_shape == Shape(14, 16, 32)
    assert grouped.inputs == (0,) and grouped.out_shape == Shape(4, 16, 32)
    assert short.inputs == (4, 0) and short.out_shape == Shape(8, 16, 32)


def test_reorg_and_region_shapes():
    g = graph_of(NET + "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n[reorg]\nstride=2\n"
                 "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
                 "[region]\nanchors=1,1,2,2\nclasses=2\nnum=2\ncoords=4\nsoftmax=1\n")
    assert g.layers[1].out_shape == Shape(16, 16, 32)
    assert g.heads == [3]


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        graph_of(text)
    return info.value


@pytest.mark.parametrize("body, line, fragment", [
    ("[convolutional]\nfilters=abc\n", 6, "expected an integer, got 'abc'"),
    ("[convolutional]\nfilters=4\nactivation=tanhh\n", 7, "unknown activation 'tanhh'"),
    ("[convolutional]\nfilters=0\n", 6, "must be >= 1"),
    ("[convolutional]\nfilters=4\nsize=40\n" + HEAD, 5, "output would be 25x-7x4"),
    ("[bogus]\nx=1\n", 5, "unknown or unsupported section [bogus]"),
    ("[route]\nlayers=-3\n", 6, "refers to layer -3"),
    ("[convolutional]\nfilters=4\n[shortcut]\nfrom=5\n", 8, "refers to layer 5"),
    ("[convolutional]\nfilters=4\nantialiasing=1\n", 7, "not supported"),
    ("[convolutional]\nfilters=17\nsize=1\n[yolo]\nmask=0\nanchors=10,14\nclasses=1\nnum=1\n", 8,
     "has 17 filters, expected 6 (1 anchors x (5 + 1 classes))"),
    ("[convolutional]\nfilters=12\nsize=1\n[yolo]\nmask=0,3\nanchors=10,14,1,1\nclasses=1\nnum=2\n",
     9, "must be <= 1"),
    ("[convolutional]\nfilters=6\nsize=1\n[yolo]\nmask=0\nanchors=10\nclasses=1\nnum=1\n", 10,
     "expected 2 values"),
    ("[convolutional]\nfilters=4\n[softmax]\ngroups=3\n", 8, "groups=3 does not divide"),
    ("width\n", 5, "expected 'key=value'"),
    ("[convolutional\n", 5, "malformed section header"),
    ("[convolutional]\nfilters=6\nsize=1\n[yolo]\nmask=0\nanchors=10,14\nnum=1\nclasses=1\n"
     "nms_kind=diou\n", 13, "expected one of default, greedynms, diounms, cornersnms, got 'diou'"),
])
def test_errors_name_line_and_problem(body, line, fragment):
    err = _error(NET + body)
    assert fragment in str(err)
    assert err.path == "test.cfg"
    if line is not None:
        assert err.line == line, str(err)
        assert f"test.cfg:{line}:" in str(err)


def test_a_cfg_without_head_is_a_classifier_whose_output_is_its_last_layer():
    g = graph_of(NET + "[convolutional]\nfilters=4\n")
    assert g.heads == [] and g.outputs == [0] and not g.is_detector


def test_first_section_must_be_net():
    assert "first section must be [net]" in str(_error("[convolutional]\nfilters=1\n"))


def test_unknown_keys_warned_once(caplog):
    with caplog.at_level(logging.WARNING, logger="yolo8"):
        graph_of(NET + "[convolutional]\nfilters=4\nfoo=1\n[convolutional]\nfilters=4\nfoo=1\n" + HEAD)
    warnings = [r.getMessage() for r in caplog.records if "foo" in r.getMessage()]
    assert len(warnings) == 1 and "test.cfg:7: unknown key 'foo' in [convolutional]" in warnings[0]


def test_training_keys_are_not_reported(caplog, default_cfg):
    from yolo8.graph import load_graph

    with caplog.at_level(logging.WARNING, logger="yolo8"):
        load_graph(default_cfg)
    assert not caplog.records


def test_yolov3_tiny_graph(default_cfg):
    from yolo8.graph import load_graph

    g = load_graph(default_cfg)
    assert len(g.layers) == 24 and g.heads == [16, 23]
    assert g.layers[23].anchors.tolist() == [[23, 27], [37, 58], [81, 82]]  # mask 1,2,3
    assert isinstance(g.layers[11], MaxPool) and g.layers[11].out_shape == Shape(512, 13, 13)
    assert isinstance(g.layers[20], Route) and g.layers[20].out_shape == Shape(384, 26, 26)
    assert isinstance(g.layers[19], Upsample)
    assert sum(isinstance(l, Convolutional) for l in g.layers) == 13


@pytest.mark.parametrize("keys, beta", [
    ("", None), ("nms_kind=default\n", None), ("nms_kind=cornersnms\n", None),
    # greedynms: AlexeyAB's box_diou has the exponent 0.6 built in, beta_nms is not read
    ("nms_kind=greedynms\nbeta_nms=0.9\n", 0.6), ("nms_kind=diounms\nbeta_nms=0.9\n", 0.9),
    ("nms_kind=diounms\n", 0.6),
])
def test_nms_kind_sets_the_diou_exponent(keys, beta, caplog):
    with caplog.at_level(logging.WARNING, logger="yolo8"):
        g = graph_of(NET + HEAD + keys)
    assert g.layers[g.heads[-1]].diou_nms_beta == beta
    assert nms_rule([g.layers[h] for h in g.heads]) == beta  # what detection uses
    assert not caplog.records


def test_shipped_yolov4_cfgs_use_greedy_diou_nms():
    from pathlib import Path

    from yolo8.graph import load_graph

    for name in ("yolov4.cfg", "yolov4-tiny.cfg"):
        g = load_graph(Path(__file__).parents[1] / "cfg" / name)
        assert [g.layers[h].diou_nms_beta for h in g.heads] == [0.6] * len(g.heads)
