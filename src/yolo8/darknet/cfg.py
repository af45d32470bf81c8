"""Reading darknet .cfg text into sections of options, remembering where each came from.

darknet's read_cfg removes every whitespace character of a line before splitting it at
'=', so `mask = 1, 2, 3` and `mask=1,2,3` are the same; we do the same. Comment lines start
with '#' or ';'; we also drop a trailing '# ...' after a value (darknet's atoi would silently
ignore it too). Values are read through typed getters that mark the key as used, so unknown
keys can be reported once the layer is built.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, reading

log = logging.getLogger(__name__)

# Sanity bound on any integer in a cfg: larger values are typos, and refusing them early keeps
# absurd networks from being allocated (1 << 20 covers any real width or filter count).
MAX_INT = 1 << 20

# Line ends as editors count them (not str.splitlines, which also breaks at form feeds,
# U+2028 and friends and would shift every line number after them).
_LINE_END = re.compile(r"\r\n|\r|\n")
_SHOWN = 60  # characters of a bad value or line quoted in a message


def _show(text: str) -> str:
    """A value or line as quoted in a message: cut short, so binary garbage stays one line."""
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _fmt(value: float) -> str:
    """A number for a message; ints stay exact (and huge ones are not converted to float)."""
    if isinstance(value, int):
        digits = str(value)
        return digits if len(digits) <= 24 else f"{digits[:12]}... ({len(digits)} digits)"
    return f"{value:g}"


def _plain(raw: str) -> bool:
    """darknet reads numbers with atoi/atof: ASCII only. Python's int() and float() would also
    take '1_000' and non-ASCII digits, which darknet reads differently (as 1, as 0)."""
    return raw.isascii() and "_" not in raw


def _to_float(text: str) -> float | None:
    """darknet's atof on a whole value, or None when it is not a plain number."""
    try:
        return float(text) if _plain(text) else None
    except ValueError:
        return None


@dataclass
class Option:
    value: str
    line: int
    used: bool = False


@dataclass
class Section:
    """One `[name]` block of a cfg file."""

    name: str
    line: int
    path: str
    options: dict[str, Option] = field(default_factory=dict)

    # -- typed getters -------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.options

    def error(self, message: str, key: str | None = None) -> ConfigError:
        line = self.options[key].line if key in self.options else self.line
        return ConfigError(f"[{self.name}] {message}", path=self.path, line=line, key=key)

    def _raw(self, key: str) -> str | None:
        opt = self.options.get(key)
        if opt is None:
            return None
        opt.used = True
        return opt.value

    def _raw_or_required(self, key: str, default: object) -> str | None:
        """The key's text; None when it is absent and has a default; an error when it has none."""
        raw = self._raw(key)
        if raw is None and default is None:
            raise self.error("is required", key)
        return raw

    def get_str(self, key: str, default: str | None = None) -> str | None:
        raw = self._raw(key)
        return default if raw is None else raw

    def get_int(self, key: str, default: int | None = None, *, low: int | None = None,
                high: int = MAX_INT) -> int:
        raw = self._raw_or_required(key, default)
        if raw is None:
            return default
        value = self._parse_int(key, raw)
        self._check_range(key, value, low, high)
        return value

    def get_float(self, key: str, default: float | None = None, *, low: float | None = None,
                  high: float | None = None) -> float:
        raw = self._raw_or_required(key, default)
        if raw is None:
            return default
        value = _to_float(raw)
        if value is None:
            raise self.error(f"expected a number, got '{_show(raw)}'", key)
        if not math.isfinite(value):
            raise self.error(f"expected a finite number, got '{_show(raw)}'", key)
        self._check_range(key, value, low, high)
        return value

    def get_ints(self, key: str, default: list[int] | None = None, *, low: int | None = None,
                 high: int = MAX_INT) -> list[int]:
        raw = self._raw_or_required(key, default)
        if raw is None:
            return list(default)
        values = [self._parse_int(key, item) for item in self._items(key, raw)]
        for v in values:
            self._check_range(key, v, low, high)
        return values

    def get_floats(self, key: str, default: list[float] | None = None) -> list[float]:
        raw = self._raw_or_required(key, default)
        if raw is None:
            return list(default)
        values = []
        for item in self._items(key, raw):
            v = _to_float(item)
            if v is None:
                raise self.error(f"expected a list of numbers, got '{_show(raw)}'", key)
            if not math.isfinite(v):
                raise self.error(f"expected finite numbers, got '{_show(raw)}'", key)
            values.append(v)
        return values

    def require_default(self, key: str, default: float) -> None:
        """Refuse a darknet feature yolo8 does not implement unless it has its neutral value."""
        raw = self._raw(key)
        if raw is None:
            return
        try:
            ok = float(raw) == default
        except ValueError:
            ok = False
        if not ok:
            raise self.error(f"value '{_show(raw)}' is not supported by yolo8 (only {default:g})",
                             key)

    def ignore(self, *keys: str) -> None:
        """Mark keys as known but irrelevant to inference (training settings)."""
        for key in keys:
            if key in self.options:
                self.options[key].used = True

    def unused_keys(self) -> list[tuple[str, int]]:
        return [(k, o.line) for k, o in self.options.items() if not o.used]

    # -- helpers -------------------------------------------------------------------------
    def _items(self, key: str, raw: str) -> list[str]:
        items = raw.split(",")
        if items and items[-1] == "":  # darknet tolerates a trailing comma
            items.pop()
        if not items or any(item == "" for item in items):
            raise self.error(f"expected a comma-separated list, got '{_show(raw)}'", key)
        return items

    def _parse_int(self, key: str, raw: str) -> int:
        if _plain(raw):
            try:
                return int(raw)
            except ValueError:  # not an integer, or more digits than int() takes
                pass
        # darknet reads some ints with atof (e.g. "1.0"); accept integral floats only.
        f = _to_float(raw)
        if f is None or not math.isfinite(f) or f != int(f):
            raise self.error(f"expected an integer, got '{_show(raw)}'", key)
        return int(f)

    def _check_range(self, key: str, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            raise self.error(f"must be >= {_fmt(low)}, got {_fmt(value)}", key)
        if high is not None and value > high:
            raise self.error(f"must be <= {_fmt(high)}, got {_fmt(value)}", key)


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[Section]:
    """Split cfg text into sections. Raises ConfigError on malformed lines."""
    sections: list[Section] = []
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (Windows editors write one)
    for number, raw_line in enumerate(_LINE_END.split(text), start=1):
        line = "".join(raw_line.split())  # darknet's strip(): all whitespace goes
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"malformed section header '{_show(raw_line.strip())}', "
                                  "expected '[name]'",
                                  path=path, line=number)
            sections.append(Section(line[1:-1].lower(), number, path))
            continue
        if "#" in line:
            line = line[: line.index("#")]
        if "=" not in line:
            raise ConfigError(f"expected 'key=value', got '{_show(raw_line.strip())}'", path=path,
                              line=number)
        if not sections:
            raise ConfigError("option before the first [section]", path=path, line=number)
        key, value = line.split("=", 1)
        if not key:
            raise ConfigError(f"missing key in '{_show(raw_line.strip())}'", path=path, line=number)
        section = sections[-1]
        if key in section.options:
            log.warning("%s:%d: '%s' repeated in [%s]; the last value is used",
                        path, number, key, section.name)
        section.options[key] = Option(value, number)
    if not sections:
        raise ConfigError("no sections found; expected a darknet cfg starting with [net]", path=path)
    return sections


def read_cfg(path: str | Path) -> tuple[str, list[Section]]:
    """Read a cfg file. Returns its text (for fingerprints and --cfg-out) and its sections."""
    path = Path(path)
    with reading(path, "cfg file", ConfigError):
        data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte order mark is dropped, not part of [net]
    except UnicodeDecodeError:
        raise ConfigError("is not a text file, expected a darknet .cfg file", path=path) from None
    if "\x00" in text:
        raise ConfigError("is not a text file, expected a darknet .cfg file", path=path)
    return text, parse_cfg_text(text, str(path))
