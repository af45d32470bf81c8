"""yolo8: darknet YOLO models on the CPU in FP32, INT8 and XNOR.

    >>> import yolo8
    >>> model = yolo8.load()                    # yolov3-tiny (COCO), weights fetched once
    >>> detections = model.detect(cv2.imread("photo.jpg"))

Importing the package is cheap; numba and OpenCV load when a model does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load", "Model", "Detection", "Yolo8Error", "__version__"]

if TYPE_CHECKING:
    from .api import Model, load
    from .errors import Yolo8Error
    from .postprocess import Detection


def __getattr__(name: str) -> Any:
    if name in ("load", "Model"):
        from . import api
        return getattr(api, name)
    if name == "Detection":
        from .postprocess import Detection
        return Detection
    if name == "Yolo8Error":
        from .errors import Yolo8Error
        return Yolo8Error
    raise AttributeError(f"module 'yolo8' has no attribute {name!r}")
