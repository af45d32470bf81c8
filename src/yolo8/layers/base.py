"""What every layer has, and the context a layer builder reads while the cfg is parsed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from ..darknet.cfg import Section
from ..errors import ConfigError

# Bound on the elements of one layer's output for one image: a cfg asking for more is a typo,
# refused before anything is allocated (1 << 28 floats is 1 GiB).
MAX_ELEMENTS = 1 << 28

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

    def describe(self) -> str:
        """Canonical text of what the layer computes (used in the model fingerprint)."""
        return f"{self.kind} in={self.inputs} out={tuple(self.out_shape)}"


@dataclass
class BuildContext:
    """What a builder may look at: the net input and the layers built so far."""

    input_shape: Shape
    layers: list[Layer] = field(default_factory=list)

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


def checked_shape(section: Section, c: int, h: int, w: int) -> Shape:
    """Refuse empty or absurdly large outputs at parse time, naming the section's line."""
    if c <= 0 or h <= 0 or w <= 0:
        raise ConfigError(f"[{section.name}] output would be {w}x{h}x{c}: every dimension must be "
                          f"positive (input too small for size/stride?)", path=section.path,
                          line=section.line)
    if c * h * w > MAX_ELEMENTS:
        raise ConfigError(f"[{section.name}] output would be {w}x{h}x{c} = {c * h * w} values per "
                          f"image, more than yolo8 accepts ({MAX_ELEMENTS})", path=section.path,
                          line=section.line)
    return Shape(c, h, w)
