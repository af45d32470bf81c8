"""`yolo8 calibrate`: per-layer INT8 input thresholds by KL divergence over calibration images.

Structured as onnxruntime's quantization is: a data reader yields network inputs, collectors
watch the input of every conv layer while the FP32 engine runs, and the threshold search is
kept apart from the collection. Two passes over the images make the histograms exact: the
first finds each layer's range, the second bins |x| over [0, range] with 2048 bins, merged
over all images. A third pass measures each INT8 layer's mean pre-activation error per
output channel (INT8 kernel vs FP32 on the same FP32 input) so the backend can subtract it
from the bias (empirical bias correction): rounding weights to 127 levels shifts the mean
of a channel's output, and small layers feel it. On the held-out half of coco128 it cut
yolov3-tiny's INT8 loss in VOC 11-point mAP from 1.3 to 0.35 points (see the README).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .api import Model
from .data import image_paths, read_image_list
from .errors import InputError, writing
from .layers import Convolutional, Layer
from .pipeline import batched, load_images
from .progress import progress_bar
from .darknet.cfg_rewrite import cfg_with_input_calibration
from .quant import (Calibration, HistogramCollector, RangeCollector, compute_thresholds,
                    multiplier_for_threshold)

log = logging.getLogger(__name__)


class CalibrationDataReader:
    """Network inputs of the calibration images, in batches; unreadable images are skipped
    (and counted) so one bad file does not spoil a calibration run."""

    def __init__(self, model: Model, images: list[Path], batch: int = 4,
                 letterbox: bool | None = None) -> None:
        self.model, self.images, self.batch = model, images, batch
        self.prepare = model.preparer(*model.preprocessing(letterbox))
        self.skipped: list[str] = []
        self.announce = True

    def __len__(self) -> int:
        return len(self.images)

    def batches(self) -> Iterator[np.ndarray]:
        self.skipped = []
        items = load_images(self.images, prepare=self.prepare)
        for group in batched(items, self.batch):
            if group[0].error is not None:
                self.skipped.append(str(group[0].error))
                if self.announce:  # named once, in the first pass
                    log.warning("skipped: %s", group[0].error)
                yield np.empty((0,), np.float32)
                continue
            yield np.stack([item.prepared for item in group])


def _observe_conv_inputs(model: Model, reader: CalibrationDataReader, collector, desc: str,
                         progress: bool | None) -> None:
    def observer(layer: Layer, inputs: list[np.ndarray]) -> None:
        if isinstance(layer, Convolutional):
            collector.update(layer.index, np.ascontiguousarray(inputs[0], dtype=np.float32))

    with progress_bar(len(reader), desc, progress) as bar:
        for blob in reader.batches():
            if blob.size:
                model.program.run(blob, observer=observer)
            bar.update(max(len(blob), 1) if blob.ndim == 4 else 1)


class BiasErrorCollector:
    """Mean INT8-minus-FP32 pre-activation of each INT8 layer, per output channel."""

    def __init__(self, graph, thresholds: dict[int, float]) -> None:
        from .backends.int8 import int8_conv, int8_layers
        from .backends.ops import kernel_stride, with_dilation
        from .kernels.activations import LINEAR
        from .kernels.conv_fp32 import Fp32Conv

        self._ops = {}
        for index in int8_layers(graph):
            layer = graph.layers[index]
            zero = np.zeros(layer.filters, np.float32)
            fp32 = with_dilation(layer, Fp32Conv(layer.weights, zero, kernel_stride(layer),
                                                 layer.pad, layer.groups, LINEAR))
            self._ops[index] = (int8_conv(layer, thresholds[index], zero, LINEAR), fp32)
        self._sums = {i: np.zeros(graph.layers[i].filters) for i in self._ops}
        self._counts = dict.fromkeys(self._ops, 0)

    def update(self, key: int, array: np.ndarray) -> None:
        if key not in self._ops:
            return
        int8_op, fp32_op = self._ops[key]
        diff = (int8_op(array) - fp32_op(array)).reshape(-1, len(self._sums[key]))
        self._sums[key] += diff.sum(axis=0, dtype=np.float64)
        self._counts[key] += len(diff)

    def corrections(self) -> dict[int, list[float]]:
        return {i: (self._sums[i] / self._counts[i]).tolist() for i in self._ops if self._counts[i]}


@dataclass
class CalibrationRun:
    calibration: Calibration  # its num_images: the images that were read and used
    skipped: list[str]


def calibrate(model: Model, images: list[Path], progress: bool | None = None,
              letterbox: bool | None = None, bias_correction: bool = True) -> CalibrationRun:
    """Thresholds for the input of every conv layer of an FP32 model (and bias corrections
    for its INT8 layers)."""
    if model.backend != "fp32":
        raise ValueError("calibration observes the FP32 engine")
    letterbox, resize = model.preprocessing(letterbox)
    reader = CalibrationDataReader(model, images, letterbox=letterbox)
    ranges = RangeCollector()
    passes = 3 if bias_correction else 2
    _observe_conv_inputs(model, reader, ranges, f"calibrate 1/{passes} ranges", progress)
    reader.announce = False
    used = len(images) - len(reader.skipped)
    if used == 0:
        raise InputError(f"none of the {len(images)} calibration images could be read; first: "
                         f"{reader.skipped[0]}")
    histograms = HistogramCollector(ranges.ranges)
    _observe_conv_inputs(model, reader, histograms, f"calibrate 2/{passes} histograms", progress)
    thresholds = compute_thresholds(histograms)
    corrections = {}
    if bias_correction:
        errors = BiasErrorCollector(model.graph, thresholds)
        _observe_conv_inputs(model, reader, errors, "calibrate 3/3 bias errors", progress)
        corrections = errors.corrections()
    cal = Calibration(model_id=model.model_id, thresholds=thresholds, num_images=used,
                      bias_corrections=corrections, letterbox=letterbox, resize=resize,
                      notes=f"KL (entropy) calibration of {Path(model.graph.path).name} on "
                            f"{used} images" + (", with bias correction" if corrections else ""))
    return CalibrationRun(cal, reader.skipped)


def calibration_images(list_path: Path, limit: int | None) -> list[Path]:
    images = image_paths(read_image_list(list_path))
    return images[:limit] if limit else images


def cfg_text_with_calibration(model: Model, cal: Calibration) -> str:
    """The model's cfg with yolo2_light's input_calibration line: one multiplier per conv."""
    multipliers = [multiplier_for_threshold(cal.thresholds[c.index])
                   for c in model.graph.convolutions()]
    return cfg_with_input_calibration(model.graph.text, multipliers)


def check_output(path: Path) -> None:
    """Refuse an output path that cannot be a file before hours of calibration, not after."""
    if path.is_dir():
        raise InputError("is a folder; expected the name of the calibration file to write",
                         path=path)


def _write(path: Path, write: Callable[[Path], None]) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)


def write_outputs(model: Model, run: CalibrationRun, out: Path, cfg_out: Path | None) -> None:
    """The calibration file (atomically) and, on request, the cfg with input_calibration."""
    _write(out, run.calibration.save)
    if cfg_out is not None:
        text = cfg_text_with_calibration(model, run.calibration)
        _write(cfg_out, lambda path: path.write_text(text))


def report(run: CalibrationRun, out: Path) -> None:
    if run.skipped:
        log.warning("%d of %d images could not be read (named above) and were left out",
                    len(run.skipped), run.calibration.num_images + len(run.skipped))
    cal = run.calibration
    print(f"yolo8: calibrated {len(cal.thresholds)} conv layers on {cal.num_images} images "
          f"-> {out}", file=sys.stderr)
