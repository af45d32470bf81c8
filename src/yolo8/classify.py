"""`yolo8 classify`: darknet's `classifier predict` over images and video frames (the inputs
`yolo8 detect` takes): each input's top classes with their scores, printed and as JSON."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import Model, load
from .classification import Classification
from .errors import InputError, Yolo8Error
from .files import atomic_write_bytes
from .inputs import Source, expand_inputs, open_capture, source_groups
from .pipeline import Item, batched, load_images, read_frames


@dataclass
class ClassifyOptions:
    inputs: list[str]
    cfg: Path | None = None
    weights: Path | None = None
    names: Path | None = None
    backend: str = "fp32"
    calibration: Path | None = None
    resize: str = "darknet"
    top: int = 5
    json_path: Path | None = None
    frames: int | None = None       # at most this many frames per video
    recursive: bool = False
    batch: int = 4
    failures: list[str] = field(default_factory=list)


def format_classification(where: str, c: Classification) -> str:
    return f"{where}: {c.name} {c.score:.6f}"


def json_entry(path: str, top: list[Classification], frame: int | None = None) -> dict:
    entry = {"image_id": Path(path).stem, "file": str(path),
             "top": [{"class_id": c.class_id, "name": c.name, "score": round(c.score, 6)}
                     for c in top]}
    if frame is not None:
        entry["frame"] = frame
    return entry


class ClassifyRun:
    def __init__(self, model: Model, opts: ClassifyOptions) -> None:
        self.model, self.opts = model, opts
        # a calibration made with another preprocessing is refused here
        self.prepare = model.preparer(*model.preprocessing())
        self.results: list[dict] = []

    def skip(self, name: str, error: Yolo8Error) -> None:
        print(f"yolo8: skipped: {error}", file=sys.stderr)
        self.opts.failures.append(name)

    def _report(self, batch: list[Item], names: list[str], frame: bool) -> None:
        tops = self.model.classify_prepared(np.stack([item.prepared for item in batch]),
                                            self.opts.top)
        for item, name, top in zip(batch, names, tops):
            where = f"{name}#{item.index}" if frame else name
            for c in top:
                print(format_classification(where, c))
            self.results.append(json_entry(name, top, item.index if frame else None))

    def images(self, sources: list[Source]) -> None:
        items = load_images([s.path for s in sources], prepare=self.prepare)
        for batch in batched(items, self.opts.batch):
            if batch[0].error is not None:
                self.skip(sources[batch[0].index].display, batch[0].error)
                continue
            self._report(batch, [sources[item.index].display for item in batch], frame=False)

    def video(self, source: Source) -> None:
        try:
            capture = open_capture(source)
        except InputError as exc:
            self.skip(source.display, exc)
            return
        frames = read_frames(capture, source.path, prepare=self.prepare,
                             limit=self.opts.frames)
        read = 0
        try:
            for batch in batched(frames, self.opts.batch):
                self._report(batch, [source.display] * len(batch), frame=True)
                read += len(batch)
        finally:
            frames.close()
            capture.release()
        if read == 0:
            self.skip(source.display, InputError("no frame could be read (an empty or damaged "
                                                 "video)", path=source.display))

    def run(self, sources: list[Source]) -> None:
        """In input order: consecutive images through one decode-ahead pipeline, videos alone."""
        for group in source_groups(sources):
            if group[0].is_stream:
                self.video(group[0])
            else:
                self.images(group)
        if self.opts.json_path is not None:  # whole or absent, as detect's JSON
            atomic_write_bytes(self.opts.json_path, json.dumps(self.results, indent=1).encode())


def run_classify(opts: ClassifyOptions) -> list[str]:
    """Classify every input; returns the inputs that failed (each named on stderr)."""
    if not opts.inputs:
        raise InputError("no input given: name images, folders, .txt lists, glob patterns or "
                         "videos")
    expanded = expand_inputs(opts.inputs, (), opts.recursive)
    for problem in expanded.problems:
        print(f"yolo8: skipped: {problem}", file=sys.stderr)
        opts.failures.append(str(problem.path or ""))
    if not expanded.sources:
        raise InputError("nothing left to classify (see the lines above)")
    model = load(opts.cfg, opts.weights, opts.backend, opts.calibration, opts.names,
                 resize=opts.resize)
    model.require(detector=False,
                  message="is a detector ([yolo]/[region] layers): use `yolo8 detect`")
    ClassifyRun(model, opts).run(expanded.sources)
    return opts.failures
