"""What every layer has, and the context a layer builder reads while the cfg is parsed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from ..darknet.cfg import Section
from ..errors import ConfigError

# Bounds that keep a hostile or mistyped cfg from being allocated or run: each is checked while
# the cfg is parsed, before any weights are read, and names the section that crosses it. Real
# networks are far inside them (yolov4 at 1920x1920: 64M weights, 118M values in its largest
# layer, 0.24G values held at once, 0.64T multiply-adds per image).
MAX_ELEMENTS = 1 << 28       # values in one layer's output (or input, padded) per image: 1 GiB
MAX_WEIGHTS = 1 << 29        # weights and biases of the whole network: 2 GiB of float32
MAX_LIVE_ELEMENTS = 1 << 30  # layer outputs held at once while one image runs: 4 GiB
MAX_WORK = 1 << 46           # multiply-adds (and pooling compares) per image: 100x yolov4 at
                             # 1920, more than ten minutes of this CPU for one image

NETWORK_INPUT = -1  # pseudo layer index of the network's input blob


class Shape(NamedTuple):
    """Per-image shape of a layer output, darknet's (channels, height, width)."""

    c: int
    h: int
    w: int

    @property
    def size(self) -> int:
        return self.c * self.h * self.w

    def __str__(self) -> str:
        return f"{self.w}x{self.h}x{self.c}"


@dataclass(eq=False)
class Layer:
    """A node of the graph: backend-neutral data, shapes already inferred."""

    kind: ClassVar[str] = "layer"
    index: int
    line: int
    inputs: tuple[int, ...]
    out_shape: Shape

    def weight_floats(self) -> int:
        """Floats this layer takes from a darknet .weights file (in file order of layers)."""
        return 0

    def assign_weights(self, values: np.ndarray) -> None:
        """Take this layer's `weight_floats()` values from the .weights file (ValueError if
        they cannot be used, e.g. a negative variance)."""

    def describe(self) -> str:
        """Canonical text of what the layer computes (used in the model fingerprint)."""
        return f"{self.kind} in={self.inputs} out={tuple(self.out_shape)}"


@dataclass
class BuildContext:
    """What a builder may look at: the net input and the layers built so far, and what the
    network costs so far (weights to read, work per image)."""

    input_shape: Shape
    layers: list[Layer] = field(default_factory=list)
    weights: int = 0
    work: int = 0

    def charge(self, section: Section, weights: int = 0, work: int = 0) -> None:
        """Add one layer's weights and work, refusing the layer that takes a total past its
        bound (before anything is read or allocated)."""
        self.weights += weights
        self.work += work
        if self.weights > MAX_WEIGHTS:
            raise ConfigError(f"[{section.name}] brings the network to {self.weights} weights "
                              f"({gib(4 * self.weights)} as float32), more than yolo8 accepts "
                              f"({MAX_WEIGHTS}, {gib(4 * MAX_WEIGHTS)})", path=section.path,
                              line=section.line)
        if self.work > MAX_WORK:
            raise ConfigError(f"[{section.name}] brings the network to {self.work} multiply-adds "
                              f"per image, more than yolo8 accepts ({MAX_WORK})",
                              path=section.path, line=section.line)

    @property
    def index(self) -> int:
        """Index the layer being built will get."""
        return len(self.layers)

    def previous(self) -> tuple[int, Shape]:
        """The layer feeding the one being built (darknet: the previous one)."""
        if not self.layers:
            return NETWORK_INPUT, self.input_shape
        return self.layers[-1].index, self.layers[-1].out_shape

    def resolve(self, section: Section, key: str, value: int) -> int:
        """darknet's layer reference: negative is relative to the current layer."""
        index = self.index + value if value < 0 else value
        if not 0 <= index < self.index:
            raise section.error(
                f"refers to layer {value} (absolute {index}), but only layers 0..{self.index - 1} "
                f"come before layer {self.index}", key)
        return index

    def shape_of(self, index: int) -> Shape:
        return self.input_shape if index == NETWORK_INPUT else self.layers[index].out_shape


def gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"


def checked_shape(section: Section, c: int, h: int, w: int, what: str = "output") -> Shape:
    """Refuse empty or absurdly large outputs at parse time, naming the section's line."""
    if c <= 0 or h <= 0 or w <= 0:
        raise ConfigError(f"[{section.name}] {what} would be {w}x{h}x{c}: every dimension must be "
                          f"positive (input too small for size/stride?)", path=section.path,
                          line=section.line)
    if c * h * w > MAX_ELEMENTS:
        raise ConfigError(f"[{section.name}] {what} would be {w}x{h}x{c} = {c * h * w} values per "
                          f"image, more than yolo8 accepts ({MAX_ELEMENTS})", path=section.path,
                          line=section.line)
    return Shape(c, h, w)
