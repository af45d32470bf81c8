"""How yolo8's numba kernels share the CPU between the threads that call a model.

numba runs each parallel kernel on a team of `numba.get_num_threads()` threads, a setting
that numba keeps per calling thread (a thread it has not seen gets NUMBA_NUM_THREADS). yolo8
keeps one budget per process instead (`set_num_threads`, default NUMBA_NUM_THREADS, i.e. the
cores) and splits it between the forwards running at the same moment: alone, a forward's
kernels use the whole budget; with k forwards in flight each uses budget // k (at least 1), so
4 threads calling one model on 2 cores run 4 single-threaded forwards instead of 4 teams of 2
spinning against each other.

numba's `workqueue` threading layer (used when neither OpenMP nor TBB is available) cannot run
parallel regions from two threads at once (numba aborts the process): there, forwards are
serialised with a lock and a notice says so once.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

notices = logging.getLogger("yolo8.notice")

_lock = threading.Lock()
_budget: int | None = None  # None: numba's NUMBA_NUM_THREADS
_in_flight = 0
_serial_lock: threading.Lock | None = None
_layer_checked = False


def set_num_threads(n: int) -> None:
    """Use at most `n` threads for yolo8's kernels in this process (all calling threads
    together; 1 <= n <= NUMBA_NUM_THREADS, which numba fixes when it starts)."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limit:
        raise ValueError(f"the number of threads must be an integer in [1, {limit}] "
                         f"(NUMBA_NUM_THREADS={limit}), got {n!r}")
    global _budget
    _budget = n


def get_num_threads() -> int:
    """The thread budget set by `set_num_threads` (default: NUMBA_NUM_THREADS)."""
    import numba

    return _budget if _budget is not None else numba.config.NUMBA_NUM_THREADS


def threading_layer() -> str:
    """The numba threading layer in use ("omp", "tbb" or "workqueue"); runs a tiny parallel
    kernel the first time so that numba picks one."""
    import numba

    from .kernels.common import warm_parallel_runtime

    warm_parallel_runtime()
    return numba.threading_layer()


def _check_layer() -> None:
    global _layer_checked, _serial_lock
    if _layer_checked:  # every forward passes here: no lock once it is known
        return
    with _lock:
        if _layer_checked:
            return
        if threading_layer() == "workqueue":
            _serial_lock = threading.Lock()
            notices.info("numba's threading layer is 'workqueue', which cannot run parallel "
                         "kernels from several threads at once: calls of a model from several "
                         "threads are serialised (install OpenMP (libgomp) or `pip install tbb` "
                         "for concurrent calls)")
        _layer_checked = True  # last: the lock-free check above must see _serial_lock set


@contextmanager
def kernel_threads() -> Iterator[int]:
    """Around one forward: this thread's share of the budget, set for numba's kernels."""
    import numba

    _check_layer()
    global _in_flight
    serial = _serial_lock
    if serial is not None:
        serial.acquire()
    try:
        with _lock:
            _in_flight += 1
            share = max(1, get_num_threads() // _in_flight)
        previous = numba.get_num_threads()
        numba.set_num_threads(share)
        try:
            yield share
        finally:
            numba.set_num_threads(previous)
            with _lock:
                _in_flight -= 1
    finally:
        if serial is not None:
            serial.release()
