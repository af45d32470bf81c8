"""Numeric backends, found by naming convention: `yolo8.backends.<name>` exposes
`build_for_model(graph, model_id, calibration, default_calibration) -> (Program, source)`.
Each is small: a table from layer kind to op maker."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ..errors import Yolo8Error

_NOT_BACKENDS = {"base", "ops"}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_BACKENDS)


def get_backend(name: str) -> ModuleType:
    if name not in available():
        raise Yolo8Error(f"unknown backend '{name}'; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")
