"""Images decoded (and resized) ahead of the network on worker threads, in input order.

OpenCV's decode and resize release the GIL, so two threads keep the network (which runs
on the main thread) busy. A bad item becomes an `Item` carrying its error; the stream goes on.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .errors import Yolo8Error
from .preprocess import read_image


@dataclass
class Item:
    index: int
    path: Path
    image: np.ndarray | None = None     # BGR uint8
    prepared: np.ndarray | None = None  # what `prepare` returned (e.g. the network input)
    error: Yolo8Error | None = None


def _load(index: int, path: Path, prepare: Callable[[np.ndarray], np.ndarray] | None) -> Item:
    try:
        image = read_image(path)
    except Yolo8Error as exc:
        return Item(index, path, error=exc)
    return Item(index, path, image, prepare(image) if prepare else None)


def load_images(paths: Iterable[Path], prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                workers: int | None = None, ahead: int = 8) -> Iterator[Item]:
    """Yield every path as an Item, in order, decoding up to `ahead` images in advance."""
    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yolo8-decode") as pool:
        pending: deque = deque()
        for index, path in enumerate(paths):
            pending.append(pool.submit(_load, index, Path(path), prepare))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Group good items into batches; bad items come through alone (a batch of one, error set)."""
    batch: list[Item] = []
    for item in items:
        if item.error is not None:
            yield [item]
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
