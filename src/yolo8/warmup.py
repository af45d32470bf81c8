"""`yolo8 warmup`: compile every numba kernel ahead of time, e.g. while building a Docker image.

numba compiles a kernel for its argument types, not for the sizes of the arrays, so a small
network that uses every kind of layer and every convolution method compiles the machine code
that any model needs. It has random weights: no model file and no network access are needed.
The kernels land in the cache folder `yolo8.jit` chose (for this CPU's features).
"""
from __future__ import annotations

import time

import numpy as np

from .graph import Graph

# Every kernel path: the first conv (implicit GEMM, K = 27), both max pools, Winograd F(4x4)
# (fused schedule) and F(2x2) (256 -> 512: the phased schedule), a strided and a 1x1 implicit GEMM, a grouped conv, an XNOR conv, and the
# numpy-side ops (route, shortcut, upsample, [yolo]).
WARMUP_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=64
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=256
size=1
stride=1
pad=0
activation=linear

[convolutional]
filters=512
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=64
size=3
stride=1
pad=1
groups=4
activation=leaky

[convolutional]
batch_normalize=1
xnor=1
filters=64
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=1

[shortcut]
from=-3
activation=linear

[upsample]
stride=2

[route]
layers=-1,1

[convolutional]
filters=255
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=80
num=3
"""


def warmup_graph(seed: int = 0) -> Graph:
    """The warm-up network with random weights (set directly: no .weights file)."""
    from .darknet.cfg import parse_cfg_text
    from .graph import build_graph

    graph = build_graph(parse_cfg_text(WARMUP_CFG, "warmup.cfg"), "warmup.cfg", WARMUP_CFG)
    rng = np.random.default_rng(seed)
    for conv in graph.convolutions():
        cin = conv.in_shape.c // conv.groups
        scale = np.float32(1 / np.sqrt(conv.size * conv.size * cin))
        conv.weights = (rng.standard_normal((conv.filters, conv.size, conv.size, cin),
                                            dtype=np.float32) * scale)
        conv.bias = rng.standard_normal(conv.filters, dtype=np.float32) * np.float32(0.1)
        conv.output_scale = None
    return graph


def _calibrate_kernels(graph: Graph, x: np.ndarray) -> dict[int, float]:
    """The calibration collectors' kernels, on the network input; thresholds for INT8."""
    from .quant import HistogramCollector, RangeCollector

    ranges = RangeCollector()
    ranges.update(0, x)
    HistogramCollector(ranges.ranges).update(0, x)
    return {c.index: 4.0 for c in graph.convolutions()}


def _preprocess_kernels() -> None:
    """darknet's resize_image (images are prepared with it by default)."""
    from .preprocess import to_blob

    to_blob([np.zeros((5, 7, 3), np.uint8)], 4, 3)


def default_backends() -> tuple[str, ...]:
    """Every backend numba's compile target runs (bf16 needs avx512_bf16)."""
    from .kernels.gemm_fp32 import STEP_BF16, step_available

    return ("fp32", "int8") + (("bf16",) if step_available(STEP_BF16) else ())


def warmup(backends: tuple[str, ...] | None = None) -> dict[str, float]:
    """Compile (or load from the cache) every kernel the backends use (default: every one
    this compile target runs); seconds per backend (the first one's include the kernels
    they all share: preprocessing and calibration)."""
    from .api import Model
    from .backends import bf16, fp32, int8

    builders = {"fp32": lambda g, t: fp32.build(g), "int8": int8.build,
                "bf16": lambda g, t: bf16.build(g)}
    start = time.perf_counter()
    graph = warmup_graph()  # the backends read it, none changes it
    x = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)
    thresholds = _calibrate_kernels(graph, x)
    _preprocess_kernels()
    names = [str(i) for i in range(80)]
    spent = {}
    for backend in backends or default_backends():
        # No "compiling ..." notice: compiling is what warmup does.
        model = Model(graph, backend, names, model_id="warmup", compile_notice=False)
        model.program = builders[backend](graph, thresholds)
        model.detect_prepared(x, [(640, 480)] * len(x), thresh=0.0, nms=0.45, letterbox=False)
        now = time.perf_counter()
        spent[backend], start = now - start, now
    return spent
