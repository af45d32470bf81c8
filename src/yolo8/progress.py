"""Progress bars on stderr (tqdm): shown on a terminal, silent otherwise unless asked.

tqdm is imported only when a bar is shown (a few ms that a `yolo8 detect -q` need not pay).
"""
from __future__ import annotations

import sys
from typing import Any, TextIO


class NoBar:
    """What a disabled bar does: nothing, with tqdm's interface (the calls yolo8 makes)."""

    def __init__(self, total: int | None) -> None:
        self.total = total

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(total: int | None, desc: str, enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr, or a NoBar; `enabled=None` means only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return NoBar(total)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                leave=True)


def write(line: str, file: TextIO) -> None:
    """Print a line without breaking a bar that is on screen (tqdm.write when tqdm is in use)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        tqdm_module.tqdm.write(line, file=file)
    else:
        print(line, file=file)
