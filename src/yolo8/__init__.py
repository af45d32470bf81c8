"""yolo8: darknet YOLO models on the CPU in FP32, INT8 and XNOR.

    >>> import yolo8
    >>> model = yolo8.load()                    # yolov3-tiny (COCO), weights fetched once
    >>> detections = model.detect(cv2.imread("photo.jpg"))

Importing the package is cheap; numba and OpenCV load when a model does.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# Two thread pools share the cores: numba's OpenMP workers (our kernels) and OpenBLAS's
# (numpy's sgemm). By default both keep spinning after each parallel region and steal the
# CPU from each other; on 2 cores that made a yolov3-tiny forward 3-4x slower (215 ms vs
# 54 ms). Ask both to sleep as soon as they are idle, unless the user chose otherwise.
# (They are read when the runtimes load: importing yolo8 before numpy makes them count.)
# A short spin is still worth having: a forward is ~20 parallel regions back to back, and
# waking a sleeping vCPU costs more than the gap between two of them. GOMP_SPINCOUNT=10000
# (roughly 0.1 ms; it overrides PASSIVE's 0) made 300 INT8 forwards 9 % faster and `map`
# 3-5 % faster; 200000 made single forwards faster too but `map` 6-8 % slower, its workers
# then spinning against the image-decoding threads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
__all__ = ["load", "Model", "Detection", "Yolo8Error", "set_num_threads", "get_num_threads",
           "__version__"]

if TYPE_CHECKING:
    from .api import Model, load
    from .errors import Yolo8Error
    from .postprocess import Detection
    from .threads import get_num_threads, set_num_threads


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from . import api
        return getattr(api, name)
    if name in ("set_num_threads", "get_num_threads"):
        from . import threads
        return getattr(threads, name)
    if name == "Detection":
        from .postprocess import Detection
        return Detection
    if name == "Yolo8Error":
        from .errors import Yolo8Error
        return Yolo8Error
    raise AttributeError(f"module 'yolo8' has no attribute {name!r}")
