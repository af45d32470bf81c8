"""Annotated copies of images: a box and a label per detection."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

from .postprocess import Detection


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """A copy of the BGR image with each detection drawn (lowest score first, best on top)."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    scale = max(0.4, min(image.shape[:2]) / 900)
    for det in sorted(detections, key=lambda d: d.score):
        color = class_color(det.class_id)
        left, top, right, bottom = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (left, top), (right, bottom), color, thickness)
        label = f"{det.name} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = max(top, th + base)
        cv2.rectangle(out, (left, y - th - base), (left + tw, y), color, cv2.FILLED)
        cv2.putText(out, label, (left, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out
