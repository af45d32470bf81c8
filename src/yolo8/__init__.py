"""yolo8: darknet YOLO models on the CPU in FP32, INT8 and XNOR.

    >>> import yolo8
    >>> model = yolo8.load()                    # yolov3-tiny (COCO), weights fetched once
    >>> detections = model.detect(cv2.imread("photo.jpg"))

Importing the package is cheap; numba and OpenCV load when a model does. Importing it changes
nothing in the process (no environment variable is set): the `yolo8` command sets its thread-pool
defaults itself (see `yolo8.cli.THREAD_POOL_DEFAULTS`); a program of your own can set the same
variables before it starts, and `yolo8.set_num_threads(n)` caps the kernels' threads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
