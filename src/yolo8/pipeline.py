"""Images decoded (and resized) ahead of the network on worker threads, in input order.

OpenCV's decode and resize release the GIL, so two threads keep the network (which runs
on the main thread) busy. A bad item becomes an `Item` carrying its error; the stream goes on.
Video frames are read (and resized) the same way, on one thread per stream (`read_frames`).
"""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
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
    """Group good items into batches; bad items come through alone (a batch of one, error set).
    Input order is kept: the good items before a bad one come out first, as a smaller batch."""
    batch: list[Item] = []
    for item in items:
        if item.error is not None:
            if batch:
                yield batch
                batch = []
            yield [item]
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_END = object()


@dataclass
class _Raised:
    exc: BaseException


def _put(slots: queue.Queue, value, stop: threading.Event) -> bool:
    """Put unless told to stop (checked every 0.1 s while the queue is full)."""
    while not stop.is_set():
        try:
            slots.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _read_into(capture: cv2.VideoCapture, path: Path, prepare, limit: int | None,
               slots: queue.Queue, stop: threading.Event) -> None:
    try:
        index = 0
        while limit is None or index < limit:
            ok, frame = capture.read()
            if not ok:
                break
            item = Item(index, path, frame, prepare(frame) if prepare else None)
            if not _put(slots, item, stop):
                return
            index += 1
    except BaseException as exc:  # handed to the consumer, raised there
        _put(slots, _Raised(exc), stop)
    _put(slots, _END, stop)


def read_frames(capture: cv2.VideoCapture, path: Path,
                prepare: Callable[[np.ndarray], np.ndarray] | None = None, ahead: int = 8,
                limit: int | None = None) -> Iterator[Item]:
    """The frames of an opened capture as Items (index = frame number from 0), read and prepared
    up to `ahead` frames in advance on a thread; at most `limit` frames.

    The capture stays the caller's: it is read only while the generator runs, and no longer once
    the generator is closed (the reader thread is joined then), so the caller may release it.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    slots: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    reader = threading.Thread(target=_read_into, args=(capture, Path(path), prepare, limit, slots,
                                                       stop),
                              name="yolo8-frames", daemon=True)
    reader.start()
    try:
        while True:
            got = slots.get()
            if got is _END:
                return
            if isinstance(got, _Raised):
                raise got.exc
            yield got
    finally:
        stop.set()
        reader.join()
