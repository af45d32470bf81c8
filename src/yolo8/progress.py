"""Progress bars on stderr (tqdm): shown on a terminal, silent otherwise unless asked."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool | None = None) -> tqdm:
    """A tqdm bar on stderr; `enabled=None` means only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=True)
