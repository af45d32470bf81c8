"""yolo9000's WordTree (`tree=`, darknet's read_tree) and class map (`map=`, read_map).

A tree file has one node a line, `name parent_index` (-1 for a root); consecutive lines with the
same parent form a group of siblings, over which the hierarchical softmax normalises. A map file
has one node index a line: the tree node each output class (e.g. COCO's 80) is read from.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, reading
from .cfg import Section


@dataclass(frozen=True, eq=False)
class WordTree:
    names: list[str]
    parent: np.ndarray        # (n,) parent index, -1 for a root
    group_offset: np.ndarray  # (groups,) first node of each sibling group
    group_size: np.ndarray    # (groups,) nodes in it (the first may be 0, as in read_tree)
    child: np.ndarray         # (n,) the group of a node's children, -1 for a leaf
    levels: list[tuple[np.ndarray, np.ndarray]]  # hierarchy_predictions' order, see below
    digest: str

    @property
    def n(self) -> int:
        return len(self.names)


def resolve(section: Section, key: str) -> Path:
    """A file named by a cfg key: from the working directory as darknet opens it, else from the
    cfg's folder."""
    value = section.get_str(key)
    tried = [Path(value), Path(section.path).parent / value]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise section.error(f"file '{value}' not found (looked in the working directory and in "
                            f"the cfg's folder)", key)
    return found


def _read_lines(path: Path, what: str) -> list[str]:
    with reading(path, what, ConfigError):
        data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"is not a text file, expected a {what}", path=path) from None


def _tree_line(path: Path, number: int, line: str) -> tuple[str, int]:
    fields = line.split()
    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
        raise ConfigError(f"expected 'name parent_index', got '{line.strip()[:60]}'",
                          path=path, line=number)
    return fields[0], int(fields[1])


def _groups(parents: list[int]) -> tuple[list[int], list[int], list[int]]:
    """read_tree's grouping: a group closes where the parent changes. The first group starts
    with parent -1 even when the first line has another parent (then group 0 is empty).
    pjreddie's read_tree also records `child[parent]` = the group being filled (AlexeyAB's
    leaves `child` unset, and its hierarchy_top_prediction would read a null pointer). Its
    `child[n] = -1` on each node's own line undoes that for a parent listed after its child
    (reproduced: such a parent counts as a leaf in hierarchy_top_prediction)."""
    offsets, sizes, child = [], [], [-1] * len(parents)
    last_parent, size = -1, 0
    for n, parent in enumerate(parents):
        child[n] = -1
        if parent != last_parent:
            offsets.append(n - size)
            sizes.append(size)
            size, last_parent = 0, parent
        if parent >= 0:
            child[parent] = len(offsets)
        size += 1
    offsets.append(len(parents) - size)
    sizes.append(size)
    return offsets, sizes, child


def _levels(parent: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """hierarchy_predictions multiplies each node in index order by its parent's value as it is
    then: already a path probability if the parent comes earlier, still raw if it comes later.
    Level 0: roots and nodes with a later parent (their factor is raw); level d: nodes whose
    earlier parent is at level d-1. Each level is (nodes, parents)."""
    depth = np.zeros(len(parent), dtype=np.int64)
    for j, p in enumerate(parent):
        depth[j] = depth[p] + 1 if 0 <= p < j else 0
    return [(np.flatnonzero(depth == d), parent[depth == d]) for d in range(int(depth.max()) + 1)]


def read_tree(path: Path) -> WordTree:
    lines = _read_lines(path, "WordTree file")
    entries = [_tree_line(path, i, line) for i, line in enumerate(lines, 1) if line.strip()]
    numbers = [i for i, line in enumerate(lines, 1) if line.strip()]
    if not entries:
        raise ConfigError("has no nodes, expected 'name parent_index' lines", path=path)
    parents = [p for _, p in entries]
    for number, p in zip(numbers, parents):
        if not -1 <= p < len(entries):
            raise ConfigError(f"parent index {p} is not -1 or a node (0..{len(entries) - 1})",
                              path=path, line=number)
    offsets, sizes, child = _groups(parents)
    parent = np.array(parents, dtype=np.int64)
    return WordTree(names=[name for name, _ in entries], parent=parent,
                    group_offset=np.array(offsets, dtype=np.int64),
                    group_size=np.array(sizes, dtype=np.int64),
                    child=np.array(child, dtype=np.int64), levels=_levels(parent),
                    digest=hashlib.sha256("\n".join(f"{n} {p}" for n, p in entries).encode())
                    .hexdigest()[:16])


def read_map(path: Path, nodes: int) -> np.ndarray:
    """One node index a line (darknet's read_map, which atoi's each line, blank ones to 0:
    yolo8 refuses a line that is not an index into the tree)."""
    lines = _read_lines(path, "class map file")
    values = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text.isdigit() or int(text) >= nodes:
            raise ConfigError(f"expected a node index 0..{nodes - 1}, got '{text[:40]}'",
                              path=path, line=number)
        values.append(int(text))
    if not values:
        raise ConfigError("is empty, expected one node index a line", path=path)
    return np.array(values, dtype=np.int64)
