"""Property-based tests (hypothesis) of the cfg parser and the weights reader (issue 8).

* Valid networks are generated from random layer sequences, together with the shape of every
  layer worked out here (darknet's formulas, written independently of yolo8.layers): parsing must
  give exactly those shapes and inputs, whatever the formatting (CRLF, BOM, spaces, comments).
* Mutated versions (lines dropped or duplicated, numbers changed to 0, negative, huge or
  non-numeric, sections swapped, garbage inserted, text cut) and plain garbage must either parse
  into a consistent graph (the invariants below) or raise ConfigError: never another exception.
* Weights files of random lengths around the expected size: only the exact size loads; every
  other length raises WeightsError naming both sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from yolo8.darknet.cfg import read_cfg
from yolo8.graph import load_weights
from yolo8.errors import ConfigError, WeightsError
from yolo8.graph import Graph, build_graph
from yolo8.layers import (AvgPool, Convolutional, Dropout, MaxPool, Region, Reorg, Route, Shape,
                          Shortcut, Upsample, Yolo)
from yolo8.layers import Connected, Cost, Crop, Softmax
from yolo8.layers.base import MAX_ELEMENTS, MAX_WEIGHTS

from .conftest import graph_of

ACTIVATIONS = ["linear", "leaky", "relu", "logistic", "mish", "swish"]
def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ valid networks, with oracle


@dataclass
class Expected:
    kind: type
    shape: tuple[int, int, int]  # (c, h, w)
    inputs: tuple[int, ...]


@dataclass
class Network:
    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    layers: list[Expected] = field(default_factory=list)
    weight_floats: int = 0  # what the .weights file must hold, counted here

    def add(self, name: str, options: dict, expected: Expected) -> None:
        self.sections.append((name, [(k, str(v)) for k, v in options.items()]))
        self.layers.append(expected)

    def shape(self, index: int) -> tuple[int, int, int]:
        return self.layers[index].shape

    def text(self, crlf: bool = False, bom: bool = False, spaces: bool = False,
             comments: bool = False) -> str:
        eq = " = " if spaces else "="
        out = []
        for name, options in self.sections:
            out.append(f"[{name}]")
            if comments:
                out.append(f"# options of [{name}]")
            out += [f"{k}{eq}{v}" + ("  # trailing" if comments and spaces else "")
                    for k, v in options]
            out.append("")
        text = ("\r\n" if crlf else "\n").join(out)
        return ("\ufeff" if bom else "") + text


def _ref(draw, index: int, target: int) -> int:
    """darknet lets a reference be absolute or relative (negative)."""
    return target if draw(st.booleans()) else target - index


def _conv(draw, net: Network, shape, filters: int | None = None, size: int | None = None) -> None:
    c, h, w = shape
    index = len(net.layers)
    size = size or draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 1, 2]))
    pad_flag = draw(st.booleans()) or h < size or w < size  # pad=1 always fits: pad = size // 2
    pad = size // 2 if pad_flag else 0
    groups = draw(st.sampled_from([1, 2])) if c % 2 == 0 and filters is None else 1
    filters = filters or groups * draw(st.integers(1, 12))
    bn = draw(st.booleans())
    options = {"batch_normalize": int(bn), "filters": filters, "size": size, "stride": stride,
               "pad": int(pad_flag), "activation": draw(st.sampled_from(ACTIVATIONS))}
    if groups > 1:
        options["groups"] = groups
    out = (filters, (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1)
    net.weight_floats += filters * (4 if bn else 1) + filters * (c // groups) * size * size
    net.add("convolutional", options, Expected(Convolutional, out, (index - 1,)))


def _layer(draw, net: Network) -> None:
    """One random non-head layer after the current last one."""
    index = len(net.layers)
    shape = net.shape(index - 1)
    c, h, w = shape
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "upsample", "route", "shortcut",
                                 "dropout", "reorg", "avgpool"]))
    if kind == "maxpool":
        size, stride = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2]))
        options = {"size": size, "stride": stride}
        padding = size - 1  # darknet's default
        if draw(st.booleans()) and h >= size and w >= size:
            options["padding"] = padding = 0
        out = (c, (h + padding - size) // stride + 1, (w + padding - size) // stride + 1)
        net.add("maxpool", options, Expected(MaxPool, out, (index - 1,)))
    elif kind == "upsample" and h * w <= 32 * 32:
        net.add("upsample", {"stride": 2}, Expected(Upsample, (c, 2 * h, 2 * w), (index - 1,)))
    elif kind == "route":
        first = draw(st.integers(0, index - 1))
        fits = [j for j in range(index) if net.shape(j)[1:] == net.shape(first)[1:]
                and net.layers[j].kind not in (Yolo, Region)]
        if net.layers[first].kind in (Yolo, Region):
            return _conv(draw, net, shape)
        chosen = [first] + draw(st.lists(st.sampled_from(fits), max_size=2))
        groups = 2 if draw(st.booleans()) and all(net.shape(j)[0] % 2 == 0 for j in chosen) else 1
        options = {"layers": ",".join(str(_ref(draw, index, j)) for j in chosen)}
        if groups > 1:
            options.update(groups=2, group_id=draw(st.integers(0, 1)))
        channels = sum(net.shape(j)[0] // groups for j in chosen)
        net.add("route", options,
                Expected(Route, (channels,) + net.shape(first)[1:], tuple(chosen)))
    elif kind == "shortcut":
        same = [j for j in range(index) if net.shape(j) == shape
                and net.layers[j].kind not in (Yolo, Region)]
        if not same:
            return _conv(draw, net, shape)
        source = draw(st.sampled_from(same))
        net.add("shortcut", {"from": _ref(draw, index, source),
                             "activation": draw(st.sampled_from(ACTIVATIONS))},
                Expected(Shortcut, shape, (index - 1, source)))
    elif kind == "dropout":
        net.add("dropout", {"probability": 0.5}, Expected(Dropout, shape, (index - 1,)))
    elif kind == "reorg" and h % 2 == 0 and w % 2 == 0:
        net.add("reorg", {"stride": 2}, Expected(Reorg, (4 * c, h // 2, w // 2), (index - 1,)))
    elif kind == "avgpool" and draw(st.integers(0, 3)) == 0:
        net.add("avgpool", {}, Expected(AvgPool, (c, 1, 1), (index - 1,)))
    else:
        _conv(draw, net, shape)


def _head(draw, net: Network, kind: str, classes: int) -> None:
    anchors = lambda n: ",".join(str(draw(st.integers(1, 400))) for _ in range(2 * n))  # noqa: E731
    if kind == "yolo":
        total = draw(st.integers(1, 6))
        mask = draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=total, unique=True))
        _conv(draw, net, net.shape(len(net.layers) - 1), filters=len(mask) * (5 + classes), size=1)
        shape = net.shape(len(net.layers) - 1)
        net.add("yolo", {"mask": ",".join(map(str, mask)), "anchors": anchors(total),
                         "classes": classes, "num": total},
                Expected(Yolo, shape, (len(net.layers) - 1,)))
    else:
        num = draw(st.integers(1, 4))
        _conv(draw, net, net.shape(len(net.layers) - 1), filters=num * (5 + classes), size=1)
        shape = net.shape(len(net.layers) - 1)
        net.add("region", {"anchors": anchors(num), "classes": classes, "num": num, "coords": 4},
                Expected(Region, shape, (len(net.layers) - 1,)))


@st.composite
def networks(draw) -> Network:
    net = Network()
    width, height = draw(st.integers(4, 80)), draw(st.integers(4, 80))
    net.sections.append(("net", [("width", str(width)), ("height", str(height)),
                                 ("channels", "3")]))
    _conv(draw, net, (3, height, width))  # layer 0 reads the network input (index -1)
    for _ in range(draw(st.integers(0, 7))):
        _layer(draw, net)
    kind, classes = draw(st.sampled_from(["yolo", "region"])), draw(st.integers(1, 4))
    _head(draw, net, kind, classes)
    if draw(st.booleans()):  # a second head on an earlier branch (yolov3-tiny's shape)
        index = len(net.layers)
        source = draw(st.sampled_from([j for j in range(index - 1)
                                       if net.layers[j].kind not in (Yolo, Region)]))
        net.add("route", {"layers": _ref(draw, index, source)},
                Expected(Route, net.shape(source), (source,)))
        _head(draw, net, kind, classes)
    return net


def parse(text: str) -> Graph:
    return graph_of(text, "fuzz.cfg")


@fast(250)
@given(net=networks(), crlf=st.booleans(), bom=st.booleans(), spaces=st.booleans(),
       comments=st.booleans())
def test_valid_networks_parse_to_the_shapes_worked_out_independently(net, crlf, bom, spaces,
                                                                      comments):
    graph = parse(net.text(crlf, bom, spaces, comments))
    assert len(graph.layers) == len(net.layers)
    for layer, expected in zip(graph.layers, net.layers):
        assert type(layer) is expected.kind
        assert tuple(layer.out_shape) == expected.shape, (layer.index, layer.describe())
        assert layer.inputs == expected.inputs
    assert sum(c.weight_floats() for c in graph.convolutions()) == net.weight_floats
    check_invariants(graph)


# ------------------------------------------------------------------------- generic invariants


def check_invariants(graph: Graph) -> None:
    """What must hold for any graph the parser accepts, mutated or not."""
    def shape_of(i: int) -> Shape:
        return graph.input_shape if i == -1 else graph.layers[i].out_shape

    # Without a head the graph is a classifier (or feature extractor): its last layer is the output.
    assert graph.outputs == (graph.heads or [graph.layers[-1].index])
    assert len({graph.layers[h].classes for h in graph.heads}) <= 1
    weights = 0
    for layer in graph.layers:
        assert all(-1 <= i < layer.index for i in layer.inputs), layer.describe()
        out = layer.out_shape
        assert min(out) >= 1 and out.size <= MAX_ELEMENTS
        first = shape_of(layer.inputs[0])
        if isinstance(layer, Convolutional):
            assert layer.inputs == (layer.index - 1,) and layer.in_shape == first
            h = (first.h + 2 * layer.pad - layer.size) // layer.stride + 1
            w = (first.w + 2 * layer.pad - layer.size) // layer.stride + 1
            assert out == (layer.filters, h, w)
            assert first.c % layer.groups == 0 and layer.filters % layer.groups == 0
            weights += layer.weight_floats()
        elif isinstance(layer, MaxPool):
            h = (first.h + layer.padding - layer.size) // layer.stride + 1
            w = (first.w + layer.padding - layer.size) // layer.stride + 1
            assert out == (first.c, h, w)
        elif isinstance(layer, Route):
            shapes = [shape_of(i) for i in layer.inputs]
            assert all(s[1:] == out[1:] for s in shapes)
            assert out.c == sum(s.c // layer.groups for s in shapes)
        elif isinstance(layer, Shortcut):
            # darknet's shortcut keeps the previous layer's shape and adds the channels it shares
            # with each `from` layer, which must have the same width and height
            assert out == first and len(layer.inputs) >= 2
            assert all(shape_of(i)[1:] == out[1:] for i in layer.inputs[1:])
        elif isinstance(layer, Upsample):
            assert out == (first.c, first.h * layer.stride, first.w * layer.stride)
        elif isinstance(layer, Reorg):
            s = layer.stride
            assert out == (first.c * s * s, first.h // s, first.w // s)
        elif isinstance(layer, AvgPool):
            assert out == (first.c, 1, 1)
        elif isinstance(layer, Yolo):
            assert first.c == layer.num_anchors * (5 + layer.classes) and out == first
        elif isinstance(layer, Region):
            assert first.c == layer.num_anchors * (layer.coords + 1 + layer.classes)
        elif isinstance(layer, Connected):
            assert out == (layer.outputs, 1, 1) and layer.in_shape == first
            weights += layer.weight_floats()
        elif isinstance(layer, Crop):
            assert out.c == first.c and out.h <= first.h and out.w <= first.w
        else:
            assert isinstance(layer, (Dropout, Softmax, Cost)) and out == first
    assert weights <= MAX_WEIGHTS


# ------------------------------------------------------------------------------- mutated cfgs

ODD_VALUES = ["0", "-1", "-7", "1048577", str(2 ** 31), "9" * 60, "9" * 400, "1e9", "1e400",
              "nan", "-inf", "abc", "", "1.5", "0x10", "1_0", "٣", "3 3", ",", "1,,2", "=", "[",
              "\x00"]


@st.composite
def mutated(draw) -> str:
    lines = draw(networks()).text().split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "duplicate", "number", "number", "swap", "garbage",
                                       "cut"]))
        if action == "drop":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "number" and "=" in lines[i]:
            key, value = lines[i].split("=", 1)
            parts = value.split(",")
            j = draw(st.integers(0, len(parts) - 1))
            parts[j] = draw(st.sampled_from(ODD_VALUES) | st.integers(-10 ** 6, 10 ** 7).map(str))
            lines[i] = f"{key}={','.join(parts)}"
        elif action == "swap":
            headers = [k for k, line in enumerate(lines) if line.startswith("[")]
            if len(headers) >= 2:
                a, b = sorted(draw(st.lists(st.sampled_from(headers), min_size=2, max_size=2,
                                            unique=True)))
                ends = headers + [len(lines)]
                end_a = ends[ends.index(a) + 1]
                end_b = ends[ends.index(b) + 1]
                lines = lines[:a] + lines[b:end_b] + lines[end_a:b] + lines[a:end_a] + lines[end_b:]
        elif action == "garbage":
            lines.insert(i, draw(st.text(max_size=30)))
        elif action == "cut":
            lines = lines[:i]
        if not lines:
            lines = [""]
    return "\n".join(lines)


@fast(500)
@given(text=mutated())
def test_mutated_cfgs_parse_consistently_or_raise_config_error(text):
    try:
        graph = parse(text)
    except ConfigError as exc:
        event("refused with ConfigError")  # --hypothesis-show-statistics shows the mix
        assert exc.path == "fuzz.cfg" and str(exc).startswith("fuzz.cfg")
        assert exc.line is None or 1 <= exc.line <= text.count("\n") + 1
        return
    event("parsed")
    check_invariants(graph)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fast(200)
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_arbitrary_bytes_as_a_cfg_file_raise_config_error(data, scratch):
    path = scratch / "random.cfg"
    path.write_bytes(data)
    try:
        text, sections = read_cfg(path)
        graph = build_graph(sections, str(path), text)
    except ConfigError as exc:
        assert exc.path == str(path)
        return
    check_invariants(graph)


# ---------------------------------------------------------------------------------- weights


def _header(major: int, minor: int) -> tuple[bytes, int]:
    """A darknet header and its length: `seen` is 8 bytes from format 0.2 on (darknet's rule)."""
    seen = 8 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 4
    return np.array([major, minor, 0], "<i4").tobytes() + bytes(seen), 12 + seen


@fast(200)
@given(net=networks(), version=st.sampled_from([(0, 1), (0, 2), (1, 0)]),
       delta=st.integers(-40, 40) | st.integers(-10 ** 5, 10 ** 5), payload_seed=st.integers(0, 99))
def test_only_the_exact_weights_size_loads(net, version, delta, payload_seed, scratch):
    header, header_size = _header(*version)
    expected = header_size + 4 * net.weight_floats
    length = max(0, expected + delta)
    if length == expected:  # plausible values: BN variance 1, everything else small
        floats = np.random.default_rng(payload_seed).uniform(0.5, 1.0, net.weight_floats)
        data = header + floats.astype("<f4").tobytes()
    else:
        rng = np.random.default_rng(payload_seed)
        data = (header + rng.integers(0, 256, max(0, length - len(header)), np.uint8).tobytes())
        data = data[:length]
    path = scratch / "fuzz.weights"
    path.write_bytes(data)
    graph = parse(net.text())
    if length == expected:
        load_weights(graph, path)
        assert all(c.weights is not None and np.isfinite(c.weights).all()
                   for c in graph.convolutions())
        return
    with pytest.raises(WeightsError) as info:
        load_weights(graph, path)
    message = str(info.value)
    assert f"is {length} bytes" in message, message
    # The expected size is named: the exact one, or (for a file too short to hold a header)
    # the one of darknet's current format.
    assert f"{expected} bytes" in message or f"exactly {expected}" in message or (
        length < 16 and f"expected {20 + 4 * net.weight_floats} bytes" in message), message
