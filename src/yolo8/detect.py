"""`yolo8 detect`: run a model over images, folders, lists, globs, videos and cameras; print the
detections, write annotated copies, darknet label files and COCO-results JSON.

Outputs, all under `save_dir`:

* an annotated copy of each image, under its own file name (a folder's entries keep their path
  below that folder). Names are unique by stem within one run: when two inputs from different
  folders share a stem (`a/x.jpg`, `b/x.jpg`, or `x.jpg` next to `x.png`), the later one is
  written as `x_2.jpg` (then `_3`, ...) and a warning names both, so nothing is silently
  overwritten and each image keeps its own label file. A target that is itself an input becomes
  `x.pred.jpg`: an input is never overwritten. Files left by earlier runs are overwritten.
* for a video, an annotated video with every frame, same size and frame rate: `.avi` inputs as
  MJPG in `.avi`, all others as MPEG-4 Part 2 (`mp4v`) in `.mp4` (OpenCV's bundled FFmpeg
  writes both; it has no H.264 encoder). A camera is written as `cameraN.avi` (MJPG).
* with `labels`, a darknet label file per image (`class cx cy w h`, relative to the image; with
  `label_scores` a sixth column, the score) where darknet looks for the labels of the annotated
  copy: next to it, or in `../labels/` when `save_dir` is an `images` folder. For video frames:
  `<video stem>_<frame:06d>.txt` next to the annotated video. Labels are written even without
  annotated copies (`save_images=False`, the CLI's --no-save).

The score column is opt-in because darknet reads label files with
`fscanf("%d %f %f %f %f")` in a loop: a sixth number shifts every later box (and
`yolo8.data.read_labels` rejects it).

Printed lines: `{input}: {name} {score:.2f} box=l,t,r,b`, for frames `{video}#{frame}: ...`
(frames count from 0, as the JSON's "frame"). Inputs that fail are named on stderr in one line
(`yolo8: skipped: ...`) and the run goes on; `run_detect` returns them.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Iterable

import cv2
import numpy as np

from .api import Model, load
from .data import label_path
from .draw import draw_detections
from .errors import InputError, Yolo8Error, writing
from .files import atomic_write_bytes, make_parent, reserve_twin, settle_twin
from .inputs import Expanded, Source, expand_inputs, open_capture, source_groups
from .pipeline import Item, batched, load_images, read_frames
from .postprocess import Detection
from . import progress
from .progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_FPS = 25.0  # when a video or camera does not say


@dataclass
class DetectOptions:
    inputs: list[str]
    cfg: Path | None = None
    weights: Path | None = None
    names: Path | None = None
    backend: str = "fp32"
    calibration: Path | None = None
    thresh: float = 0.25
    nms: float = 0.45
    letterbox: bool | None = None
    resize: str = "darknet"         # darknet's resize_image, or "opencv" (cv2.resize)
    json_path: Path | None = None
    save_dir: Path | None = Path("predictions")  # None: write nothing there (no copies, no labels)
    save_images: bool = True        # annotated copies of images and videos
    labels: bool = False            # darknet label files (--txt)
    label_scores: bool = False      # a sixth column with the score
    cameras: list[int] = field(default_factory=list)
    frames: int | None = None       # at most this many frames per video and camera
    recursive: bool = False
    quiet: bool = False             # no per-detection lines
    progress: bool | None = None    # None: on a terminal, when there is more than one image
    batch: int = 4
    failures: list[str] = field(default_factory=list)


def coco_result(det: Detection, path: str, frame: int | None = None) -> dict:
    """One entry of the COCO-results style JSON (category_id is darknet's 0-based class)."""
    entry = {"image_id": Path(path).stem, "file": str(path), "category_id": det.class_id,
             "name": det.name, "bbox": [round(v, 3) for v in det.xywh], "score": round(det.score, 6)}
    if frame is not None:
        entry["frame"] = frame
    return entry


def format_detection(path: str, det: Detection) -> str:
    left, top, right, bottom = (int(round(v)) for v in det.box)
    return f"{path}: {det.name} {det.score:.2f} box={left},{top},{right},{bottom}"


def label_line(det: Detection, width: int, height: int, with_score: bool = False) -> str:
    """A darknet label row: `class x_center y_center width height [score]`, relative."""
    left, top, right, bottom = det.box
    row = (f"{det.class_id} {(left + right) / 2 / width:.6f} {(top + bottom) / 2 / height:.6f} "
           f"{(right - left) / width:.6f} {(bottom - top) / height:.6f}")
    return f"{row} {det.score:.6f}" if with_score else row


# ---------------------------------------------------------------------------------- output names


class OutputNames:
    """Names under the save folder, unique by stem (case-insensitively) within one run, never
    an input file."""

    def __init__(self, save_dir: Path, sources: Iterable[Source]) -> None:
        self.save_dir = save_dir
        self._inputs = {_resolved(s.path) for s in sources if s.path is not None}
        self._taken: dict[str, str] = {}  # stem key -> the input that has it

    def _free(self, relative: PurePath) -> bool:
        key = str(relative.with_suffix("")).casefold()
        return key not in self._taken and _resolved(self.save_dir / relative) not in self._inputs

    def claim(self, relative: PurePath, owner: str) -> PurePath:
        base = relative
        if _resolved(self.save_dir / base) in self._inputs:  # would overwrite an input
            base = base.with_name(f"{base.stem}.pred{base.suffix}")
        candidate, number = base, 2
        while not self._free(candidate):
            candidate = base.with_name(f"{base.stem}_{number}{base.suffix}")
            number += 1
        if candidate != base:
            log.warning("%s: %s is taken by %s; writing %s instead", owner, base,
                        self._taken.get(str(base.with_suffix("")).casefold(), "an input"),
                        candidate)
        self._taken[str(candidate.with_suffix("")).casefold()] = owner
        return candidate


def _resolved(path: Path) -> Path:
    return Path(path).resolve()


# ------------------------------------------------------------------------------------- writing


def write_image(path: Path, image: np.ndarray) -> Path:
    """Encode by the file's extension, or as PNG (under a .png name) when OpenCV cannot write
    that format; returns the path written."""
    data = _encode(path.suffix, image)
    if data is None:
        path = path.with_suffix(".png")
        data = _encode(".png", image)
    atomic_write_bytes(path, data)
    return path


def _encode(suffix: str, image: np.ndarray) -> bytes | None:
    if not suffix or not cv2.haveImageWriter(f"x{suffix}"):
        return None
    try:
        ok, data = cv2.imencode(suffix, image)
    except cv2.error:  # a format OpenCV reads but does not write
        return None
    return data.tobytes() if ok else None


def write_labels(path: Path, dets: list[Detection], width: int, height: int,
                 with_score: bool) -> None:
    """A darknet label file; empty when nothing was found (darknet: an image without objects)."""
    atomic_write_bytes(path, "".join(label_line(d, width, height, with_score) + "\n"
                                     for d in dets).encode())


def _video_codec(path: PurePath) -> str:
    return "MJPG" if path.suffix.lower() == ".avi" else "mp4v"


def video_output_name(source: Source) -> PurePath:
    """The annotated video's name: `.avi` stays (MJPG); anything else becomes `.mp4` (mp4v)."""
    relative = source.relative if source.relative is not None else PurePath(source.display)
    return relative if relative.suffix.lower() == ".avi" else relative.with_suffix(".mp4")


class VideoWriteError(Yolo8Error):
    """OpenCV could not open a video writer: that input is skipped, the others go on."""


class VideoOut:
    """An annotated video, opened at the first frame (its size), same frame rate. The codecs'
    4:2:0 chroma makes an odd width or height one pixel smaller in the file. It is written under
    a temporary name and renamed when closed (also after Ctrl-C: then it holds the frames done),
    so no half-written container is ever left under its name."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._temp: Path | None = None  # the file being written (files.reserve_twin)

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self._open(frame.shape[1], frame.shape[0])
        if (frame.shape[1], frame.shape[0]) != self.size:  # a writer drops odd-sized frames
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        self.size = (width, height)
        codec = _video_codec(self.path)
        self._temp = reserve_twin(self.path)
        self.writer = cv2.VideoWriter(str(self._temp), cv2.VideoWriter_fourcc(*codec), self.fps,
                                      self.size)
        if not self.writer.isOpened():
            self._finish(keep=False)
            raise VideoWriteError(f"OpenCV cannot write this video ({codec}, {width}x{height} at "
                                  f"{self.fps:g} fps)", path=self.path)

    def _finish(self, keep: bool) -> None:
        """Release the writer; rename the file into place (keep) or drop it."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        temp, self._temp = self._temp, None
        if temp is not None:
            settle_twin(temp, self.path, keep)

    def close(self) -> None:
        self._finish(keep=True)


def _stream_fps(capture: cv2.VideoCapture, name: str) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not math.isfinite(fps) or not 0 < fps <= 1000:
        log.info("%s: no usable frame rate (%s); writing at %g fps", name, fps, DEFAULT_FPS)
        return DEFAULT_FPS
    return fps


# ------------------------------------------------------------------------------- JSON outputs


class JsonArrayOut:
    """`--json x.json`: one COCO-results array, written (atomically) when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict] = []

    def add(self, entries: list[dict]) -> None:
        self.entries.extend(entries)

    def close(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.entries, indent=1).encode())


class JsonLinesOut:
    """`--json x.jsonl`: one JSON object per line and detection, written as the run goes and
    flushed after each image or frame (one write each: a crash or Ctrl-C loses at most the
    frame in progress, never half a line), so an endless stream never grows in memory."""

    def __init__(self, path: Path) -> None:
        make_parent(path)
        with writing(path):
            self.file = path.open("w", encoding="utf-8")
        self.path = path

    def add(self, entries: list[dict]) -> None:
        if entries:
            with writing(self.path):
                self.file.write("".join(json.dumps(e) + "\n" for e in entries))
                self.file.flush()

    def close(self) -> None:
        with writing(self.path):
            self.file.close()


JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def open_json_output(path: Path | None, endless: bool) -> JsonArrayOut | JsonLinesOut | None:
    """The writer `--json PATH` asks for: JSON Lines by the extension, else an array."""
    if path is None:
        return None
    if path.suffix.lower() in JSON_LINES_SUFFIXES:
        return JsonLinesOut(path)
    if endless:
        log.warning("--json %s is written when the run ends (a camera runs until Ctrl-C, keeping "
                    "every detection in memory until then); name it %s to stream one JSON line "
                    "per detection as frames are done", path, path.with_suffix(".jsonl"))
    return JsonArrayOut(path)


# ----------------------------------------------------------------------------------------- run


class _Interrupted(Exception):
    """Ctrl-C while reading a camera: the normal end of a camera run."""


class DetectRun:
    """One `yolo8 detect` run over expanded sources: detection, printing, outputs, JSON."""

    def __init__(self, model: Model, opts: DetectOptions, sources: list[Source]) -> None:
        self.model, self.opts = model, opts
        self.letterbox, resize = model.preprocessing(opts.letterbox)  # checked against calibration
        self._prepare = model.preparer(self.letterbox, resize)  # once, not per image
        saving = opts.save_dir is not None and (opts.save_images or opts.labels)
        self.names = OutputNames(opts.save_dir, sources) if saving else None  # None: save nothing
        self.json_out = open_json_output(opts.json_path, any(s.kind == "camera" for s in sources))
        self.count = 0
        self.bar = progress_bar(_initial_total(sources), "detect", _progress_enabled(opts, sources))

    # --- reporting -------------------------------------------------------------------------
    def say(self, line: str) -> None:
        progress.write(line, sys.stdout)  # keeps a progress bar (on stderr) intact

    def skip(self, name: str, error: Yolo8Error) -> None:
        progress.write(f"yolo8: skipped: {error}", sys.stderr)
        self.opts.failures.append(name)

    def _found(self, name: str, dets: list[Detection], frame: int | None = None) -> None:
        if not self.opts.quiet:
            where = name if frame is None else f"{name}#{frame}"
            for det in dets:
                self.say(format_detection(where, det))
        if self.json_out is not None:
            self.json_out.add([coco_result(det, name, frame) for det in dets])

    # --- images ----------------------------------------------------------------------------
    def _detect(self, batch: list[Item]) -> list[list[Detection]]:
        blob = np.stack([item.prepared for item in batch])
        sizes = [(item.image.shape[1], item.image.shape[0]) for item in batch]
        return self.model.detect_prepared(blob, sizes, self.opts.thresh, self.opts.nms,
                                          self.letterbox)

    def images(self, sources: list[Source]) -> None:
        items = load_images([s.path for s in sources], prepare=self._prepare)
        for batch in batched(items, self.opts.batch):
            if batch[0].error is not None:
                self.skip(sources[batch[0].index].display, batch[0].error)
                self.bar.update(1)
                continue
            for item, dets in zip(batch, self._detect(batch)):
                source = sources[item.index]
                self._found(source.display, dets)
                self._save_image(source, item.image, dets)
            self.count += len(batch)
            self.bar.update(len(batch))

    def _save_image(self, source: Source, image: np.ndarray, dets: list[Detection]) -> None:
        if self.names is None:
            return
        relative = self.names.claim(source.relative, source.display)
        target = self.opts.save_dir / relative
        if self.opts.save_images:
            write_image(target, draw_detections(image, dets))
        if self.opts.labels:
            write_labels(label_path(target), dets, image.shape[1], image.shape[0],
                         self.opts.label_scores)

    # --- videos and cameras ----------------------------------------------------------------
    def stream(self, source: Source) -> None:
        try:
            capture = open_capture(source)
        except InputError as exc:
            self.skip(source.display, exc)
            return
        try:
            read = self._stream(source, capture)
        except VideoWriteError as exc:
            self.skip(source.display, exc)
            return
        finally:
            capture.release()
        if read == 0 and source.kind == "video":
            self.skip(source.display, InputError("no frame could be read (an empty or damaged "
                                                 "video)", path=source.display))

    def _stream(self, source: Source, capture: cv2.VideoCapture) -> int:
        """Detect in every frame; returns how many frames were read."""
        self._grow_total(capture)
        video, label_base = self._stream_outputs(source, capture)
        live = source.kind == "camera"
        frames = read_frames(capture, source.path or Path(source.display), prepare=self._prepare,
                             ahead=2 if live else 8, limit=self.opts.frames)
        read = 0
        try:
            for batch in batched(frames, 1 if live else self.opts.batch):
                for item, dets in zip(batch, self._detect(batch)):
                    self._found(source.display, dets, item.index)
                    self._save_frame(item, dets, video, label_base)
                read += len(batch)
                self.count += len(batch)
                self.bar.update(len(batch))
        except KeyboardInterrupt:
            if not live:
                raise
            raise _Interrupted from None  # Ctrl-C ends a camera run: outputs are finished normally
        finally:
            frames.close()  # joins the reader before the capture is released
            if video is not None:
                video.close()
        return read

    def _save_frame(self, item: Item, dets: list[Detection], video: VideoOut | None,
                    label_base: Path | None) -> None:
        if video is not None:
            video.write(draw_detections(item.image, dets))
        if label_base is not None:
            write_labels(label_base.with_name(f"{label_base.stem}_{item.index:06d}.txt"), dets,
                         item.image.shape[1], item.image.shape[0], self.opts.label_scores)

    def _stream_outputs(self, source: Source, capture: cv2.VideoCapture
                        ) -> tuple[VideoOut | None, Path | None]:
        if self.names is None:
            return None, None
        relative = self.names.claim(video_output_name(source), source.display)
        target = self.opts.save_dir / relative
        video = VideoOut(target, _stream_fps(capture, source.display)) \
            if self.opts.save_images else None
        return video, (label_path(target) if self.opts.labels else None)

    def _grow_total(self, capture: cv2.VideoCapture) -> None:
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        if self.bar.total is not None and math.isfinite(count) and count > 0:
            frames = int(count) if self.opts.frames is None else min(int(count), self.opts.frames)
            self.bar.total += frames
            self.bar.refresh()

    # --- all -------------------------------------------------------------------------------
    def run(self, sources: list[Source]) -> None:
        start = time.perf_counter()
        try:
            for group in source_groups(sources):
                if group[0].is_stream:
                    self.stream(group[0])
                else:
                    self.images(group)
        except _Interrupted:
            log.info("camera stopped (Ctrl-C)")
        finally:
            self.bar.close()
            if self.json_out is not None:
                self.json_out.close()
        elapsed = time.perf_counter() - start
        log.info("%d images/frames in %.2f s (%.2f per second)", self.count, elapsed,
                 self.count / elapsed if elapsed else 0.0)


def _initial_total(sources: list[Source]) -> int | None:
    if any(s.kind == "camera" for s in sources):
        return None  # endless
    return sum(1 for s in sources if s.kind == "image")  # videos add their frames when opened


def _progress_enabled(opts: DetectOptions, sources: list[Source]) -> bool | None:
    if opts.progress is not None:
        return opts.progress
    more_than_one = len(sources) > 1 or any(s.is_stream for s in sources)
    return None if more_than_one else False  # None: when stderr is a terminal


def _usable_sources(expanded: Expanded, opts: DetectOptions) -> list[Source]:
    """Report the arguments that gave nothing; a hard error when nothing at all is left."""
    if not expanded.sources:
        if len(expanded.problems) == 1:
            raise expanded.problems[0]
        for problem in expanded.problems:
            print(f"yolo8: skipped: {problem}", file=sys.stderr)
        raise InputError("nothing left to detect in (see the lines above)")
    for problem in expanded.problems:
        print(f"yolo8: skipped: {problem}", file=sys.stderr)
        opts.failures.append(problem.path or "")
    if expanded.repeated:
        log.warning("%d inputs were named more than once and are processed once (first: %s)",
                    len(expanded.repeated), expanded.repeated[0].display)
    return expanded.sources


def run_detect(opts: DetectOptions,
               execute: Callable[[DetectRun, list[Source]], None] | None = None) -> list[str]:
    """Detect in every input; returns the inputs that failed (each reported on stderr in one
    line as it happened). Raises InputError when there is nothing to process at all.
    `execute` runs the sources instead of `DetectRun.run` (e.g. on a Ray cluster)."""
    if not opts.inputs and not opts.cameras:
        raise InputError("no input given: name images, folders, .txt lists, glob patterns or "
                         "videos, or use --camera N")
    if opts.batch < 1:
        raise ValueError(f"batch must be >= 1, got {opts.batch}")
    sources = _usable_sources(expand_inputs(opts.inputs, opts.cameras, opts.recursive), opts)
    model = load(opts.cfg, opts.weights, opts.backend, opts.calibration, opts.names,
                 resize=opts.resize)
    (execute or DetectRun.run)(DetectRun(model, opts, sources), sources)
    return opts.failures
