"""Rewriting darknet cfg text: yolo2_light's `input_calibration` line in [net].

Kept apart from the reader (cfg.py) because it edits the text byte for byte rather than
parsing it: every other line, comment and line end of the file stays as it was.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import ConfigError


_INPUT_CALIBRATION = "input_calibration"


def cfg_with_input_calibration(cfg_text: str, multipliers: Sequence[float]) -> str:
    """The cfg text with `input_calibration = m0, m1, ...` in its [net] section.

    How yolo2_light reads it (src/additionally.c, parse_net_options; and
    quantinization_and_get_multipliers in src/yolov2_forward_network_quantized.c):
    - the values are positional, one per [convolutional] (or [conv]) section in file
      order, counting every conv layer, quantized or not: value k is the input
      multiplier (127 / threshold) of the k-th conv layer. Non-conv layers take none.
    - the first conv layer always runs in FP32 on yolo2_light's CPU path, so value 0 is
      read but unused there; it must still be present to keep the others in place
      (yolo2_light's own calibrator writes its measured value; 127 / max|input| is the
      natural choice, i.e. 127 for images in [0, 1]).
    - value k+1 also sets conv k's output rescale (its `output_multipler`), so the list
      yolo2_light writes has one extra trailing value (it writes "16"); a list exactly as
      long as the conv layers leaves the last conv at the default of 40, which only its
      legacy path reads (the last conv has a linear activation and runs in FP32).
    - a shorter list: the missing layers get 40 and it prints a warning. Extra values
      are ignored. Values are read with atof: an empty item reads as 0.
    - darknet's reader deletes all whitespace of a line, and the first occurrence of a
      key wins.

    So `multipliers` must hold one value (finite, > 0) per conv section of cfg_text, in
    order, first layer included; ValueError otherwise. An existing input_calibration line
    of [net] (the first one; later duplicates are removed) is replaced in place,
    otherwise the line is added after the last option of [net]. Every other byte is kept,
    including CRLF line ends (read the cfg with newline="" to keep them). ConfigError if
    the text has no [net]/[network] section first.
    """
    values = [float(m) for m in multipliers]
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"multipliers must be finite and > 0, got {bad[0]!r}")
    lines = cfg_text.split("\n")  # each keeps its '\r', if any: rejoining is byte-exact
    sections = _section_starts(lines)
    if not sections or sections[0][1] not in ("net", "network"):
        raise ConfigError("the cfg does not start with a [net] section", key=_INPUT_CALIBRATION)
    conv_count = sum(1 for _, name in sections if name in ("convolutional", "conv"))
    if conv_count == 0:
        raise ValueError("the cfg has no [convolutional] section")
    if len(values) != conv_count:
        raise ValueError(f"got {len(values)} multipliers for {conv_count} conv layers")

    net_start = sections[0][0]
    net_end = sections[1][0] if len(sections) > 1 else len(lines)
    existing = [i for i in range(net_start + 1, net_end)
                if _option_key(lines[i]) == _INPUT_CALIBRATION]
    text = f"{_INPUT_CALIBRATION} = " + ", ".join(repr(v) for v in values)
    if existing:
        first = existing[0]
        lines[first] = text + ("\r" if lines[first].endswith("\r") else "")
        for i in reversed(existing[1:]):
            del lines[i]
        return "\n".join(lines)
    options = [i for i in range(net_start + 1, net_end) if _option_key(lines[i]) is not None]
    after = options[-1] if options else net_start
    # [net] is followed by a conv section (there is at least one), so `after` is never
    # the last line: it has a line end whose style the new line copies.
    lines.insert(after + 1, text + ("\r" if lines[after].endswith("\r") else ""))
    return "\n".join(lines)


def _section_starts(lines: list[str]) -> list[tuple[int, str]]:
    """(line index, name) of every `[name]` header (darknet: a line starting with '[')."""
    starts = []
    for i, line in enumerate(lines):
        squeezed = "".join(line.split())
        if squeezed.startswith("["):
            starts.append((i, squeezed[1:].split("]", 1)[0]))
    return starts


def _option_key(line: str) -> str | None:
    """The key of a `key = value` line as darknet reads it; None for blank/comment lines."""
    squeezed = "".join(line.split())
    if not squeezed or squeezed[0] in "#;[" or "=" not in squeezed:
        return None
    return squeezed.split("=", 1)[0]
