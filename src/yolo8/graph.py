"""The layer graph: backend-neutral data built from a darknet cfg, shapes inferred while parsing."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .darknet.cfg import Section, read_cfg
from .darknet.weights import WeightsFile
from .errors import ConfigError, WeightsError
from .layers import BUILDERS, HEAD_KINDS, NETWORK_INPUT, BuildContext, Convolutional, Layer, Shape
from .layers.base import MAX_LIVE_ELEMENTS, checked_shape, gib

log = logging.getLogger(__name__)

# [net] keys that only matter for training; read so they are not reported as unknown.
_NET_TRAINING_KEYS = (
    "batch", "subdivisions", "momentum", "decay", "angle", "saturation", "exposure", "hue",
    "learning_rate", "burn_in", "max_batches", "policy", "steps", "scales", "step", "gamma",
    "power", "rate", "mosaic", "mixup", "cutmix", "blur", "flip", "jitter", "random", "min_crop",
    "max_crop", "aspect", "track", "time_steps", "adam", "B1", "B2", "eps", "max_chart_loss",
    "label_smooth_eps", "optimized_memory", "workspace_size_limit_MB", "gaussian_noise",
    "ema_alpha", "loss_scale", "dynamic_minibatch", "resize_step", "use_cuda_graph", "inputs",
    "seq_scales", "mosaic_bound", "contrastive", "unsupervised", "sequential_subdivisions",
    "try_fix_nan", "burn_in_update", "adversarial_lr", "attention", "letter_box_x")


@dataclass
class NetParams:
    """What [net] says about the input."""

    width: int
    height: int
    channels: int
    letterbox: bool
    input_calibration: list[float] | None  # yolo2_light's per-conv input multipliers
    channels_line: int = 0  # where `channels` is set (the [net] line if it is not)


@dataclass
class Graph:
    path: str
    text: str
    net: NetParams
    layers: list[Layer]
    heads: list[int] = field(default_factory=list)  # the [yolo]/[region] layers

    @property
    def outputs(self) -> list[int]:
        """What a forward returns: the detection heads, else (classifiers, feature
        extractors) the last layer, as darknet's network_predict."""
        return self.heads or [self.layers[-1].index]

    @property
    def is_detector(self) -> bool:
        return bool(self.heads)

    @property
    def input_shape(self) -> Shape:
        return Shape(self.net.channels, self.net.height, self.net.width)

    def convolutions(self) -> list[Convolutional]:
        return [layer for layer in self.layers if isinstance(layer, Convolutional)]

    def weighted_layers(self) -> list[Layer]:
        """The layers that take values from a .weights file, in file order."""
        return [layer for layer in self.layers if layer.weight_floats()]

    def structure_digest(self) -> str:
        """sha256 of what the graph computes (not of the cfg's text, comments, or training keys)."""
        text = "\n".join([f"input={tuple(self.input_shape)}"] + [l.describe() for l in self.layers])
        return hashlib.sha256(text.encode()).hexdigest()

    def consumers(self) -> dict[int, list[int]]:
        """For each layer, the layers that read its output."""
        users: dict[int, list[int]] = {l.index: [] for l in self.layers}
        for layer in self.layers:
            for source in layer.inputs:
                if source >= 0:
                    users[source].append(layer.index)
        return users


def _parse_net(section: Section) -> NetParams:
    if section.name not in ("net", "network"):
        raise section.error("the first section must be [net]")
    width = section.get_int("width", low=1, high=16384)
    height = section.get_int("height", low=1, high=16384)
    channels = section.get_int("channels", 3, low=1, high=64)
    checked_shape(section, channels, height, width, "input")
    letterbox = bool(section.get_int("letter_box", 0, low=0, high=1))
    calibration = None
    if section.has("input_calibration"):
        calibration = section.get_floats("input_calibration")
        if any(v <= 0 for v in calibration):
            raise section.error("multipliers must be positive", "input_calibration")
    section.ignore(*_NET_TRAINING_KEYS)
    channels_line = section.options["channels"].line if section.has("channels") else section.line
    return NetParams(width, height, channels, letterbox, calibration, channels_line)


def _warn_unused(sections: list[Section]) -> None:
    """darknet prints every unused key; we warn once per key per file."""
    seen: set[tuple[str, str]] = set()
    for section in sections:
        for key, line in section.unused_keys():
            if (section.name, key) not in seen:
                seen.add((section.name, key))
                log.warning("%s:%d: unknown key '%s' in [%s] ignored", section.path, line, key,
                            section.name)


def freed_after(layers: list[Layer], heads: list[int]) -> dict[int, list[int]]:
    """The outputs (NETWORK_INPUT included) whose last reader is layer i, by i; `heads` (the
    network's outputs) are kept to the end (key len(layers)). Backends free an output after
    its last use."""
    last_use = {NETWORK_INPUT: -1}
    for layer in layers:
        for source in layer.inputs:
            last_use[source] = layer.index
    for head in heads:
        last_use[head] = len(layers)
    freed: dict[int, list[int]] = {}
    for source, last in last_use.items():
        freed.setdefault(last, []).append(source)
    return freed


def _check_live_values(input_shape: Shape, layers: list[Layer], heads: list[int],
                       path: str) -> None:
    """Refuse a network that would hold more than MAX_LIVE_ELEMENTS values at once for one
    image. Outputs are counted as the backends keep them: from the layer that makes them to
    their last reader (heads and unread outputs to the end)."""
    freed = freed_after(layers, heads)
    size = {NETWORK_INPUT: input_shape.size} | {l.index: l.out_shape.size for l in layers}
    live = input_shape.size
    for layer in layers:
        live += layer.out_shape.size  # its inputs are still held while it runs
        if live > MAX_LIVE_ELEMENTS:
            raise ConfigError(
                f"[{layer.kind}] one image would need {live} layer-output values held at once here "
                f"({gib(4 * live)}), more than yolo8 accepts ({MAX_LIVE_ELEMENTS}): "
                f"a smaller width/height in [net]?", path=path, line=layer.line)
        live -= sum(size[i] for i in freed.get(layer.index, ()))


def build_graph(sections: list[Section], path: str, text: str) -> Graph:
    net = _parse_net(sections[0])
    ctx = BuildContext(Shape(net.channels, net.height, net.width))
    for section in sections[1:]:
        builder = BUILDERS.get(section.name)
        if builder is None:
            raise ConfigError(f"unknown or unsupported section [{section.name}]; yolo8 supports "
                              f"[{'], ['.join(sorted(set(BUILDERS)))}]", path=section.path,
                              line=section.line)
        ctx.layers.append(builder(section, ctx))
    if not ctx.layers:
        raise ConfigError("the cfg has no layers after [net]", path=path)
    _warn_unused(sections)
    heads = [l.index for l in ctx.layers if isinstance(l, HEAD_KINDS)]
    # No head: a classifier (or a feature extractor), whose output is its last layer.
    _check_live_values(ctx.input_shape, ctx.layers, heads or [ctx.layers[-1].index], path)
    classes = {ctx.layers[i].classes for i in heads}
    if len(classes) > 1:
        first = ctx.layers[heads[0]]
        odd = next(ctx.layers[i] for i in heads if ctx.layers[i].classes != first.classes)
        raise ConfigError(f"[{odd.kind}] has classes={odd.classes} but the head at line {first.line} "
                          f"has classes={first.classes}: all heads must agree", path=path,
                          line=odd.line, key="classes")
    return Graph(path=path, text=text, net=net, layers=ctx.layers, heads=heads)


def load_graph(cfg_path: str | Path) -> Graph:
    """Parse a darknet cfg file into a graph with every shape inferred."""
    text, sections = read_cfg(cfg_path)
    return build_graph(sections, str(cfg_path), text)


def _assign(layer: Layer, values: np.ndarray, path: Path) -> None:
    where = f"layer {layer.index} ([{layer.kind}] at cfg line {layer.line})"
    if not np.isfinite(values).all():
        raise WeightsError(f"{where} has non-finite values (NaN or inf): damaged file?", path=path)
    try:
        with np.errstate(over="ignore"):  # checked just below, with the layer named
            layer.assign_weights(values)
    except ValueError as exc:
        raise WeightsError(f"{where}: {exc}: damaged file?", path=path) from None
    # Finite values can still fold to inf (a huge scale over a zero variance).
    if not all(np.isfinite(v).all() for v in vars(layer).values() if isinstance(v, np.ndarray)):
        raise WeightsError(f"{where}: batch norm folds to values beyond float32: damaged file?",
                           path=path)


def load_weights(graph: Graph, path: str | Path, expected_sha256: str | None = None) -> str:
    """Give every weighted layer its values from a darknet .weights file (batch norm folded).

    The file size must match the cfg exactly; with `expected_sha256`, so must its hash
    (checked before any value is used). Returns the file's sha256 (hex).
    """
    path = Path(path)
    layers = graph.weighted_layers()
    with WeightsFile(path, [l.weight_floats() for l in layers], graph.path,
                     expected_sha256) as weights:
        for layer, values in zip(layers, weights.arrays()):
            _assign(layer, values, path)
    for layer in graph.convolutions():
        if layer.shares_weights_of is not None:  # darknet's share_index: the same arrays
            shared = graph.layers[layer.shares_weights_of]
            layer.weights, layer.bias, layer.output_scale = (shared.weights, shared.bias,
                                                             shared.output_scale)
    return weights.sha256
