"""`yolo8 detect --ray` and `yolo8 map --ray`: the same runs on a Ray cluster (Ray Data).

The driver (the `yolo8` process) expands the inputs as on one machine and makes a dataset of
`(idx, path, ...)` rows: paths, not pixels. `map_batches` runs them through a pool of actors
(`--ray-actors N`, each asking Ray for `num_cpus=T` and running yolo8's kernels on T threads),
each loading the model once from paths every node can read. An actor decodes and prepares
each image with yolo8's own reader and preprocessing and runs the same `detect_prepared`, so
a row's detections are exactly the single-machine ones (a detection does not depend on the
batch it ran in). The actors send back compact rows: for `detect` the detections as packed
records (44 bytes each; the actor writes the annotated copy and label file itself), for `map`
the image's share of the metrics, matched on the actor against its labels
(`metrics.match_image`: VOC outcomes, ground-truth classes, pycocotools' per-image
evaluation; ~46 bytes a detection, no boxes unless --save-detections). The driver takes the
rows with `iter_batches` as they stream in, puts them back in input order
(`_in_input_order`) and hands them to the single-machine code: the printed lines, JSON and
label files of `detect`; for `map`, `metrics.evaluate_matches`, the data-set half of
`metrics.evaluate` (same rows in the same order: same tie-breaks, same figures).

Failures: an image (or label file) that cannot be read is an error row, reported like on one
machine; a worker process or node that dies is Ray's business (actor restarts and task
retries stay on, Ray Data's defaults), and a row that would still come twice is dropped by
the driver, so nothing is counted twice.

Ray is an optional dependency (`pip install 'yolo8[ray]'`), imported here only.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .errors import Yolo8Error

INSTALL_HINT = "pip install 'yolo8[ray]'"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
ACTOR_START_TIMEOUT = 600  # s for the actor pool to start (a node may compile kernels, ~15 s)
MAX_BLOCK_ROWS = 64

# One detection on the wire: exact float64 scores and boxes (the metrics must equal the
# single machine's to the last bit), the class as int32.
DETECTION_RECORD = np.dtype([("class_id", "<i4"), ("score", "<f8"), ("box", "<f8", (4,))])


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: `address` is "local" (a cluster of this machine, started
    for the run), "auto" (the cluster this node belongs to) or HOST:PORT of a head node."""

    address: str
    actors: int | None = None  # None: as many as the cluster's CPUs allow (CPUs // threads)
    threads: int = 1           # numba threads (and Ray CPUs) per actor
    batch: int = 4             # images per forward in an actor


@dataclass(frozen=True)
class ModelSpec:
    """What every actor loads (absolute paths: a worker's working folder is not the driver's)."""

    cfg: str | None
    weights: str | None
    backend: str
    calibration: str | None
    names: str | None
    resize: str

    @classmethod
    def of(cls, opts, names) -> "ModelSpec":
        """From DetectOptions or MapOptions (and the names file the actors need)."""
        def absolute(path):
            return None if path is None else _absolute(path)
        return cls(absolute(opts.cfg), absolute(opts.weights), opts.backend,
                   absolute(opts.calibration), absolute(names), opts.resize)

    def load(self):
        from .api import load

        return load(self.cfg, self.weights, self.backend, self.calibration, self.names,
                    resize=self.resize)


def _absolute(path) -> str:
    """The path from the root, symlinks kept: label files are found by the image's path as
    named (an `images` folder that is a link must still map to its `labels`)."""
    return os.path.abspath(path)


# ------------------------------------------------------------------------------ Ray itself


def on_loopback(address: str) -> bool:
    """Whether --ray names this machine's own cluster: "local", or a loopback HOST:PORT."""
    return address == "local" or address.rsplit(":", 1)[0] in LOOPBACK_HOSTS


def import_ray(address: str) -> Any:
    """The `ray` module with Ray Data, or a Yolo8Error saying how to install it.

    For this machine's cluster every socket must stay on 127.0.0.1, but Ray replaces a
    loopback address by the machine's routable one (services.resolve_ip_for_localhost)
    unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when Ray is imported: set it before (for
    this process and those it starts: a local cluster, its workers) and after (if Ray was
    imported already)."""
    if on_loopback(address):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        import ray.data  # noqa: F401  (the pipeline's engine)
        from ray._private import ray_constants
    except ImportError as exc:
        raise Yolo8Error(f"--ray needs Ray (with Ray Data), which is not installed here "
                         f"({exc}): {INSTALL_HINT}") from None
    if on_loopback(address):
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


def _quiet_ray(ray) -> None:
    """Ray Data's own progress bars and INFO lines would drown yolo8's output."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _cluster_messages_to_stderr() -> None:
    """Ray prints the cluster's error messages (e.g. "Raylet is terminated" when a node dies)
    on the driver's stdout, where yolo8 prints detections and metrics: send them to stderr.
    (ray._private.worker.print_to_stdstream, looked up at each message, in the pinned 2.60.)"""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "yolo8_stderr", False):
        return

    def to_stderr(data: dict, ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.yolo8_stderr = True
    worker.print_to_stdstream = to_stderr


def connect(address: str) -> Any:
    """Join (or, for "local", start) a Ray cluster; returns the ray module."""
    ray = import_ray(address)
    _cluster_messages_to_stderr()
    # Ray's notes (its C++ core's too) would drown yolo8's output; its errors still show.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.ERROR)
    try:
        if address == "local":
            # Every socket on the loopback interface: a machine-local cluster is no network
            # service (Ray would otherwise bind the machine's routable address).
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                     **kwargs)
        else:
            if on_loopback(address):  # this machine's cluster: reach it on the loopback
                kwargs["_node_ip_address"] = "127.0.0.1"
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Yolo8Error(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    _quiet_ray(ray)
    return ray


def _pool_size(ray, ray_opts: RayOptions) -> int:
    """--ray-actors, else as many actors of --threads CPUs as the cluster holds; refused when
    the cluster cannot hold them (Ray would wait for the missing CPUs forever)."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    actors = ray_opts.actors or max(1, cpus // ray_opts.threads)
    if actors * ray_opts.threads > cpus:
        raise Yolo8Error(f"the Ray cluster has {cpus} CPUs: {_count(actors, 'actor')} x "
                         f"{_count(ray_opts.threads, 'thread')} need {actors * ray_opts.threads} "
                         f"(fewer --ray-actors or --threads)")
    return actors


def _rows_per_block(rows: int, actors: int) -> int:
    """Images per Ray block (and per actor call): about 4 blocks per actor so the work
    spreads evenly and results stream back early, at most MAX_BLOCK_ROWS."""
    return max(1, min(MAX_BLOCK_ROWS, -(-rows // (4 * actors))))


# ------------------------------------------------------------------------------ the actors


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of an actor's process: numba's pool sized to the actor's CPUs (numba ignores
    OMP_NUM_THREADS, which Ray sets), and the `yolo8` command's thread-pool settings."""
    from .cli import THREAD_POOL_DEFAULTS

    env = {name: os.environ.get(name, value) for name, value in THREAD_POOL_DEFAULTS.items()}
    env["NUMBA_NUM_THREADS"] = str(threads)
    return env


def pack_detections(dets) -> bytes:
    records = np.zeros(len(dets), DETECTION_RECORD)
    for record, det in zip(records, dets):
        record["class_id"], record["score"], record["box"] = det.class_id, det.score, det.box
    return records.tobytes()


def unpack_detections(data: bytes, names: list[str]) -> list:
    """The Detections packed by `pack_detections` (the same Python floats, bit for bit)."""
    from .postprocess import Detection

    records = np.frombuffer(data, DETECTION_RECORD)
    return [Detection(int(r["class_id"]), _name(names, int(r["class_id"])), float(r["score"]),
                      tuple(float(v) for v in r["box"])) for r in records]


def _name(names: list[str], class_id: int) -> str:
    return names[class_id] if class_id < len(names) else str(class_id)  # as to_detections


class _ModelActor:
    """Loads the model once per actor; runs batches of image paths through it."""

    def __init__(self, spec: ModelSpec, threads: int, batch: int, letterbox: bool,
                 thresh: float, nms: float) -> None:
        import numba
        import ray

        from . import threads as kernel_threads

        self.model = spec.load()
        # The budget is per process and re-applied by every forward, whatever thread Ray
        # Data calls the actor from (numba's own setting is per thread); numba's pool itself
        # has `threads` threads (NUMBA_NUM_THREADS in the actor's runtime_env), reported
        # with every row.
        self.threads = numba.config.NUMBA_NUM_THREADS
        kernel_threads.set_num_threads(min(threads, self.threads))
        self.batch, self.thresh, self.nms = batch, thresh, nms
        # letterbox as the driver resolved (and checked) it; the resize is the model's (spec)
        self.letterbox = letterbox
        self.prepare = self.model.preparer(letterbox, self.model.resize)
        self.node = ray.get_runtime_context().get_node_id()

    def _detect(self, paths: Iterable[str]) -> Iterator[tuple[Any, list | None, str]]:
        """(Item, detections or None, error message or "") per path, in order."""
        from .pipeline import batched, load_images

        for group in batched(load_images([Path(p) for p in paths], self.prepare, workers=1),
                             self.batch):
            if group[0].error is not None:
                yield group[0], None, str(group[0].error)
                continue
            blob = np.stack([item.prepared for item in group])
            sizes = [(item.image.shape[1], item.image.shape[0]) for item in group]
            found = self.model.detect_prepared(blob, sizes, self.thresh, self.nms, self.letterbox)
            for item, dets in zip(group, found):
                yield item, dets, ""

    def _rows(self, batch: dict[str, np.ndarray], columns: dict[str, list]) -> dict[str, Any]:
        count = len(batch["idx"])
        return {"idx": batch["idx"], "node": np.array([self.node] * count, dtype=object),
                "threads": np.full(count, self.threads, dtype=np.int64),
                **{name: np.array(values, dtype=object) for name, values in columns.items()}}


class DetectActor(_ModelActor):
    """Detections per image; writes the annotated copy and label file the driver named."""

    def __init__(self, spec: ModelSpec, threads: int, batch: int, letterbox: bool,
                 thresh: float, nms: float, save_dir: str | None, save_images: bool,
                 labels: bool, label_scores: bool) -> None:
        super().__init__(spec, threads, batch, letterbox, thresh, nms)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.save_images, self.labels, self.label_scores = save_images, labels, label_scores

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        errors, packed = [], []
        for (item, dets, error), target in zip(self._detect(batch["path"]), batch["target"]):
            if not error and target:
                error = self._save(Path(target), item.image, dets)
            errors.append(error)
            packed.append(pack_detections(dets) if dets is not None else b"")
        return self._rows(batch, {"error": errors, "detections": packed})

    def _save(self, relative: Path, image: np.ndarray, dets: list) -> str:
        """Write the outputs of one image; "" or what went wrong (an error row)."""
        from .data import label_path
        from .detect import write_image, write_labels
        from .draw import draw_detections

        target = self.save_dir / relative
        try:
            if self.save_images:
                write_image(target, draw_detections(image, dets))
            if self.labels:
                write_labels(label_path(target), dets, image.shape[1], image.shape[0],
                             self.label_scores)
        except (Yolo8Error, OSError) as exc:
            return f"{target}: cannot write the outputs ({exc})"
        return ""


class MapActor(_ModelActor):
    """Matches each image's detections against its labels on the actor and returns the
    image's share of the metrics (`metrics.ImageMatch`, ~46 bytes a detection, no boxes),
    plus the detections themselves only for --save-detections."""

    def __init__(self, spec: ModelSpec, threads: int, batch: int, letterbox: bool,
                 thresh: float, nms: float, classes: int, iou_thresh: float,
                 keep_detections: bool) -> None:
        super().__init__(spec, threads, batch, letterbox, thresh, nms)
        self.classes, self.iou_thresh = classes, iou_thresh
        self.keep_detections = keep_detections

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        columns: dict[str, list] = {"error": [], "match": [], "detections": []}
        for (item, dets, error), hard in zip(self._detect(batch["path"]), batch["difficult"]):
            match = b""
            if not error:
                try:
                    match = self._match(item, dets, hard or None)
                except Yolo8Error as exc:  # its label file
                    error = str(exc)
            columns["error"].append(error)
            columns["match"].append(match)
            columns["detections"].append(pack_detections(dets) if match and
                                         self.keep_detections else b"")
        return self._rows(batch, columns)

    def _match(self, item, dets: list, hard: str | None) -> bytes:
        from .data import read_ground_truth
        from .evaluate import _as_arrays
        from .metrics import match_image

        height, width = item.image.shape[:2]
        truth = read_ground_truth(item.path, self.classes, width, height, hard)
        return match_image(truth, _as_arrays(dets), (width, height), self.classes,
                           self.iou_thresh).to_bytes()


# ------------------------------------------------------------------------------ the driver


@dataclass
class Progress:
    """Images done, the rate and the nodes that did them, on the driver's bar."""

    bar: Any
    actors: int
    threads: int
    start: float = field(default_factory=time.perf_counter)
    per_node: dict[str, int] = field(default_factory=dict)
    numba_threads: set[int] = field(default_factory=set)  # the actors' numba pool sizes
    duplicates: int = 0
    first: float | None = None  # when the first results came (the actors were up) ...
    first_rows: int = 0         # ... and how many they were

    def arrived(self, rows: int) -> None:
        """A batch of results came back."""
        if self.first is None:
            self.first, self.first_rows = time.perf_counter(), rows

    def done(self, node: str, numba_threads: int) -> None:
        self.per_node[node] = self.per_node.get(node, 0) + 1
        self.numba_threads.add(numba_threads)
        self.bar.update(1)
        if hasattr(self.bar, "set_postfix_str"):
            self.bar.set_postfix_str(f"{len(self.per_node)} nodes", refresh=False)

    def summary(self, what: str) -> str:
        images = sum(self.per_node.values())
        now = time.perf_counter()
        elapsed = now - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        steady = ""
        if self.first is not None and images > self.first_rows and now > self.first:
            later = images - self.first_rows
            steady = f", {later / (now - self.first):.1f} after the first results"
        return (f"yolo8: {what}: {images} images in {elapsed:.1f} s ({rate:.1f} images/s"
                f"{steady}) on {_count(len(self.per_node), 'node')}, "
                f"{_count(self.actors, 'actor')} x {_count(self.threads, 'thread')}")

    def to_json(self) -> dict:
        return {"nodes": dict(self.per_node), "actors": self.actors, "threads": self.threads,
                "numba_threads": sorted(self.numba_threads),
                "duplicates_dropped": self.duplicates}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _in_input_order(batches: Iterable[dict[str, np.ndarray]], progress: Progress, total: int
                    ) -> Iterator[dict[str, Any]]:
    """The result rows one by one, in `idx` order (0, 1, ..., total - 1), as soon as each is
    next. Rows come back in any order (the actors run side by side); a row delivered again
    (work redone after a failure) is dropped, so every image counts exactly once, and a row
    that never comes is an error, never a silent loss."""
    waiting: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()
    next_idx = 0
    for batch in batches:
        progress.arrived(len(batch["idx"]))
        for position, idx in enumerate(batch["idx"].tolist()):
            if idx in seen:
                progress.duplicates += 1
                continue
            seen.add(idx)
            waiting[idx] = {name: column[position] for name, column in batch.items()}
            progress.done(str(waiting[idx]["node"]), int(waiting[idx]["threads"]))
        while next_idx in waiting:
            yield waiting.pop(next_idx)
            next_idx += 1
    if next_idx < total:
        missing = total - next_idx - len(waiting)
        raise Yolo8Error(f"the Ray run ended without the results of {missing} of {total} "
                         f"images (the first: number {next_idx + 1} in the input)")


def _run_pipeline(ray_opts: RayOptions, rows: list[dict], actor: type, actor_kwargs: dict,
                  bar: Any) -> tuple[Iterator[dict[str, Any]], Progress]:
    """Start the actor pool over `rows`; the results in input order, and the run's Progress."""
    ray = connect(ray_opts.address)
    actors = _pool_size(ray, ray_opts)
    # Start dispatching once the whole pool is up: otherwise the first actor ready takes the
    # first blocks while the others still load the model.
    ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT
    block = _rows_per_block(len(rows), actors)
    dataset = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // block))
    results = dataset.map_batches(
        actor, fn_constructor_kwargs=dict(threads=ray_opts.threads, batch=ray_opts.batch,
                                          **actor_kwargs),
        batch_size=block, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=ray_opts.threads,
        runtime_env={"env_vars": _worker_env(ray_opts.threads)})
    progress = Progress(bar, actors, ray_opts.threads)
    return _in_input_order(results.iter_batches(batch_size=None, batch_format="numpy"),
                           progress, len(rows)), progress


@contextmanager
def _cluster_run() -> Iterator[None]:
    """Leave the cluster at the end; a failure Ray reports (e.g. an actor that cannot load
    the model on some node) becomes one line instead of a traceback."""
    try:
        yield
    except Exception as exc:
        ray = sys.modules.get("ray")
        if ray is not None and isinstance(exc, ray.exceptions.RayError):
            first = next((line for line in str(exc).splitlines() if line.strip()), repr(exc))
            raise Yolo8Error(f"the run on the Ray cluster failed: {first}") from None
        raise
    finally:
        _shutdown()


def _shutdown() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _detect_rows(run, sources: list) -> list[dict]:
    """One row per image, with the name of its outputs under --save-dir, claimed here in
    input order (unique names, never an input) as one machine claims them."""
    streams = [s.display for s in sources if s.is_stream]
    if streams:
        raise Yolo8Error(f"--ray runs on image files; {streams[0]} is a video or camera "
                         f"(run those without --ray)")
    rows = []
    for idx, source in enumerate(sources):
        target = run.names.claim(source.relative, source.display) if run.names else None
        rows.append({"idx": idx, "path": _absolute(source.path),
                     "target": str(target) if target is not None else ""})
    return rows


def detect_images(ray_opts: RayOptions, run, sources: list) -> None:
    """`yolo8 detect --ray`: what `DetectRun.run` does on one machine, for images."""
    opts = run.opts
    actor_kwargs = dict(
        spec=ModelSpec.of(opts, opts.names),
        letterbox=run.letterbox, thresh=opts.thresh, nms=opts.nms,
        save_dir=_absolute(opts.save_dir) if run.names else None,
        save_images=opts.save_images, labels=opts.labels, label_scores=opts.label_scores)
    try:
        rows = _detect_rows(run, sources)
        with _cluster_run():
            ordered, progress = _run_pipeline(ray_opts, rows, DetectActor, actor_kwargs, run.bar)
            for row in ordered:
                source = sources[row["idx"]]
                if row["error"]:
                    run.skip(source.display, Yolo8Error(row["error"]))
                    continue
                run._found(source.display, unpack_detections(row["detections"], run.model.names))
                run.count += 1
    finally:
        run.bar.close()
        if run.json_out is not None:
            run.json_out.close()
    print(progress.summary("detect"), file=sys.stderr)


def map_collector(ray_opts: RayOptions) -> Callable:
    """A drop-in for evaluate._run: the same _Collected, gathered on the cluster."""
    def collect(model, images: list[Path], difficult: list[Path] | None, classes: int, opts,
                preprocessing: tuple[bool, str]):
        from .detect import coco_result
        from .evaluate import _Collected, _skip
        from .metrics import ImageMatch
        from .progress import progress_bar

        rows = [{"idx": idx, "path": _absolute(path),
                 "difficult": _absolute(difficult[idx]) if difficult else ""}
                for idx, path in enumerate(images)]
        actor_kwargs = dict(
            spec=ModelSpec.of(opts, None),
            letterbox=preprocessing[0], thresh=opts.thresh, nms=opts.nms, classes=classes,
            iou_thresh=opts.iou_thresh, keep_detections=opts.save_detections is not None)
        out = _Collected()
        bar = progress_bar(len(images), "map", opts.progress)
        try:
            with _cluster_run():
                ordered, progress = _run_pipeline(ray_opts, rows, MapActor, actor_kwargs, bar)
                for row in ordered:
                    if row["error"]:
                        _skip(out, Yolo8Error(row["error"]))
                        continue
                    out.matches.append(ImageMatch.from_bytes(row["match"]))
                    dets = unpack_detections(row["detections"], model.names)
                    out.results.extend(coco_result(d, str(images[row["idx"]])) for d in dets)
        finally:
            bar.close()
        print(progress.summary("map"), file=sys.stderr)
        opts.cluster = progress.to_json()  # into the metrics JSON: who did the work
        return out
    return collect

