"""Reading numba's assembly in the tests: the hot loop of a micro-kernel."""
from __future__ import annotations

import re


def hot_loop(asm: str, function: str, instruction: str) -> list[str]:
    """The K loop: of the single-block loops (a label, straight code, a jump back to it) of
    `function`, the one with the most lines matching `instruction` ([] if none has any)."""
    body = asm[asm.index(function + ":"):]
    lines = body[:body.index(".Lfunc_end")].splitlines()
    label_at, best, best_count = None, [], 0
    for i, line in enumerate(lines):
        if re.fullmatch(r"\.LBB\w+:", line.strip()):
            label_at = i
        jump = re.match(r"\s+j\w+\s+(\.LBB\w+)", line)
        if jump and label_at is not None and lines[label_at].strip() == jump.group(1) + ":":
            loop = lines[label_at:i + 1]
            count = sum(bool(re.search(instruction, text)) for text in loop)
            if count > best_count:
                best, best_count = loop, count
    return best
