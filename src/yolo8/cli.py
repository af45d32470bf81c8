"""The `yolo8` command: thin click wrappers over the library; errors become one line."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import click

from .errors import Yolo8Error

# Two thread pools share the cores: numba's OpenMP workers (our kernels) and OpenBLAS's
# (numpy's sgemm). By default both keep spinning after each parallel region and steal the
# CPU from each other; on 2 cores that made a yolov3-tiny forward 3-4x slower (215 ms vs
# 54 ms). Ask both to sleep as soon as they are idle, unless the user chose otherwise.
# A short spin is still worth having: a forward is ~20 parallel regions back to back, and
# waking a sleeping vCPU costs more than the gap between two of them. GOMP_SPINCOUNT=10000
# (roughly 0.1 ms; it overrides PASSIVE's 0) made 300 INT8 forwards 9 % faster and `map`
# 3-5 % faster; 200000 made single forwards faster too but `map` 6-8 % slower, its workers
# then spinning against the image-decoding threads.
# The runtimes read these when they load, so the command sets them before numpy or numba
# is imported; the library itself never changes the environment.
THREAD_POOL_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000",
                        "OPENBLAS_THREAD_TIMEOUT": "4"}

EXIT_INPUT = 2  # a user-facing problem (bad input, bad option value)
EXIT_BUG = 70   # an internal error (EX_SOFTWARE)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "yolo8.notice":
            return f"yolo8: {record.getMessage()}"
        return f"yolo8: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    root = logging.getLogger("yolo8")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
    logging.getLogger("yolo8.notice").setLevel(logging.INFO)  # e.g. "compiling kernels ..."


BACKENDS = ["fp32", "int8", "bf16"]
# preprocess.RESIZE_MODES, spelled out: importing preprocess would load cv2 and numba at start
RESIZES = ["darknet", "opencv"]

model_options = [
    click.option("--cfg", type=click.Path(path_type=Path), help="darknet .cfg (default: yolov3-tiny)"),
    click.option("--weights", type=click.Path(path_type=Path), help="darknet .weights for --cfg"),
    click.option("--names", type=click.Path(path_type=Path), help="class names, one per line"),
    click.option("--backend", type=click.Choice(BACKENDS), default="fp32", show_default=True,
                 help="bf16: convolutions in bfloat16 with float32 sums (needs avx512_bf16)"),
    click.option("--calibration", type=click.Path(path_type=Path),
                 help="int8: calibration file from `yolo8 calibrate`"),
    click.option("--resize", type=click.Choice(RESIZES), default="darknet",
                 show_default=True,
                 help="darknet's resize_image (as darknet and yolo2_light), or cv2.resize (as "
                      "OpenCV's dnn module is fed)"),
]


def with_model_options(func):
    for option in reversed(model_options):
        func = option(func)
    return func


ray_options = [
    click.option("--ray", "ray_address", metavar="local|auto|HOST:PORT",
                 help="run on a Ray cluster (pip install 'yolo8[ray]'): 'local' starts one on "
                      "this machine, HOST:PORT joins a head node's"),
    click.option("--ray-actors", type=click.IntRange(1), metavar="N",
                 help="with --ray: N model actors (default: the cluster's CPUs / --threads)"),
    click.option("--threads", type=click.IntRange(1), metavar="T",
                 help="with --ray: kernel threads per actor (each asks Ray for T CPUs; default 1)"),
]


def with_ray_options(func):
    for option in reversed(ray_options):
        func = option(func)
    return func


def _ray_options(address: str | None, actors: int | None, threads: int | None):
    """The RayOptions of --ray (None without it); Ray is imported here, so that a missing
    install is said before any work."""
    if address is None:
        if actors is not None or threads is not None:
            raise click.UsageError("--ray-actors and --threads go with --ray")
        return None
    from .distributed import RayOptions, import_ray

    import_ray(address)
    return RayOptions(address=address, actors=actors, threads=threads or 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="yolo8")
@click.option("-v", "--verbose", is_flag=True, help="log what yolo8 is doing")
def cli(verbose: bool) -> None:
    """Darknet YOLO object detection on the CPU, in FP32 and INT8."""
    _setup_logging(verbose)


@cli.command()
@click.argument("inputs", nargs=-1)
@with_model_options
@click.option("--thresh", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="report detections with a score above this")
@click.option("--nms", type=click.FloatRange(0, 1), default=0.45, show_default=True,
              help="IoU above which a lower-scored box of the same class is suppressed")
@click.option("--letterbox", is_flag=True, default=None,
              help="keep the aspect ratio (darknet's letterbox); default: the cfg's letter_box")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="write detections as COCO-results JSON")
@click.option("--save-dir", type=click.Path(path_type=Path), default=Path("predictions"),
              show_default=True, help="folder for annotated copies (and --txt labels)")
@click.option("--no-save", is_flag=True, help="print only; write no annotated copies")
@click.option("--txt", is_flag=True,
              help="write darknet label files (class cx cy w h, relative) next to the copies")
@click.option("--txt-score", is_flag=True,
              help="with --txt: add the score as a sixth column (darknet cannot read it back)")
@click.option("--camera", "cameras", type=click.IntRange(0), multiple=True, metavar="N",
              help="also read camera N (until Ctrl-C or --frames)")
@click.option("--frames", type=click.IntRange(1), metavar="N",
              help="at most N frames of each video and camera")
@click.option("-r", "--recursive", is_flag=True, help="also take the images in subfolders")
@click.option("-q", "--quiet", is_flag=True, help="do not print the detections")
@click.option("--progress/--no-progress", default=None,
              help="progress bar on stderr (default: on a terminal, for more than one image)")
@with_ray_options
def detect(inputs, cfg, weights, names, backend, calibration, resize, thresh, nms, letterbox,
           json_path,
           save_dir, no_save, txt, txt_score, cameras, frames, recursive, quiet,
           progress, ray_address, ray_actors, threads) -> None:
    """Detect objects in INPUTS: image files, folders, .txt image lists (darknet style), glob
    patterns ('photos/*.jpg') and videos, mixed freely (default model: yolov3-tiny, COCO).

    Prints one line per detection ({input}: {name} {score} box=l,t,r,b; {video}#{frame}: ... for
    video frames) and writes annotated copies to --save-dir. Inputs that cannot be read are
    named on stderr and skipped; the exit code is then 1.
    """
    from .detect import DetectOptions, run_detect

    if txt_score and not txt:
        raise click.UsageError("--txt-score adds a column to the --txt label files: give --txt")
    on_ray = _ray_options(ray_address, ray_actors, threads)
    execute = None
    if on_ray is not None:
        from functools import partial

        from .distributed import detect_images

        execute = partial(detect_images, on_ray)
    failed = run_detect(DetectOptions(
        inputs=list(inputs), cfg=cfg, weights=weights, names=names, backend=backend,
        calibration=calibration, resize=resize, thresh=thresh, nms=nms, letterbox=letterbox,
        json_path=json_path,
        save_dir=save_dir, save_images=not no_save, labels=txt, label_scores=txt_score,
        cameras=list(cameras), frames=frames, recursive=recursive, quiet=quiet,
        progress=progress), execute)
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="list of calibration images, one path per line (darknet style)")
@click.option("--cfg", type=click.Path(path_type=Path), help="darknet .cfg (default: yolov3-tiny)")
@click.option("--weights", type=click.Path(path_type=Path), help="darknet .weights for --cfg")
@click.option("--out", type=click.Path(path_type=Path),
              help="calibration file to write (default: <cfg name>.calibration.json)")
@click.option("--limit", type=click.IntRange(1), help="use the first N images of the list")
@click.option("--cfg-out", type=click.Path(path_type=Path),
              help="also write a copy of the cfg with yolo2_light's input_calibration line")
@click.option("--letterbox", is_flag=True, default=None, help="darknet's letterbox resize")
@click.option("--resize", type=click.Choice(RESIZES), default="darknet",
              show_default=True, help="darknet's resize_image, or cv2.resize (recorded in the "
                                      "calibration: INT8 runs must use the same)")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="also measure per-channel INT8 bias corrections (a third pass)")
@click.option("--progress/--no-progress", default=None,
              help="progress bar on stderr (default: when stderr is a terminal)")
def calibrate(images, cfg, weights, out, limit, cfg_out, letterbox, resize, bias_correction,
              progress) -> None:
    """INT8 input thresholds (KL divergence) from calibration images, for --backend int8."""
    from .api import load
    from .calibrate import (calibrate as run, calibration_images, check_output, report,
                            write_outputs)

    for path in (out, cfg_out):
        if path is not None:
            check_output(path)
    paths = calibration_images(images, limit)
    model = load(cfg, weights, "fp32", resize=resize)
    result = run(model, paths, progress, letterbox, bias_correction)
    out = out or Path(f"{Path(model.graph.path).stem}.calibration.json")
    write_outputs(model, result, out, cfg_out)
    report(result, out)
    if result.skipped:  # written from the readable images; the run still reports the others
        sys.exit(1)


@cli.command("map")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="darknet .data file (classes=, valid=, names=, difficult=)")
@with_model_options
@click.option("--thresh", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="keep detections above this score")
@click.option("--iou-thresh", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="IoU a detection needs to match a ground-truth box (VOC metrics)")
@click.option("--thresh-report", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="score threshold of the precision/recall/F1 report")
@click.option("--nms", type=click.FloatRange(0, 1), default=0.45, show_default=True)
@click.option("--letterbox", is_flag=True, default=None, help="darknet's letterbox resize")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="write the metrics as JSON")
@click.option("--save-detections", type=click.Path(path_type=Path),
              help="write all detections (COCO-results JSON, as detect --json)")
@click.option("--progress/--no-progress", default=None,
              help="progress bar on stderr (default: when stderr is a terminal)")
@with_ray_options
def map_command(data, cfg, weights, names, backend, calibration, resize, thresh, iou_thresh,
                thresh_report, nms, letterbox, json_path, save_detections, progress,
                ray_address, ray_actors, threads) -> None:
    """Mean average precision of a model on a labelled data set.

    Images (or label files) that cannot be read are named on stderr and left out of the
    metrics; the exit code is then 1."""
    from .evaluate import MapOptions, run_map

    if names is not None:
        raise click.UsageError("map takes the class names from the .data file (names=)")
    on_ray = _ray_options(ray_address, ray_actors, threads)
    collect = None
    if on_ray is not None:
        from .distributed import map_collector

        collect = map_collector(on_ray)
    opts = MapOptions(
        data=data, cfg=cfg, weights=weights, backend=backend, calibration=calibration,
        resize=resize, thresh=thresh, iou_thresh=iou_thresh, thresh_report=thresh_report, nms=nms,
        letterbox=letterbox, json_path=json_path, save_detections=save_detections,
        progress=progress)
    result = run_map(opts, collect=collect)
    click.echo(result.format_table())
    if opts.skipped:
        sys.exit(1)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the .onnx file to write")
@with_model_options
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13 or newer)")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="images per run, fixed in the graph")
@click.option("--dynamic-batch", is_flag=True, help="leave the batch size free (overrides --batch)")
@click.option("--decode", is_flag=True,
              help="also output decoded boxes and scores (per anchor and class, no NMS)")
def export(out, cfg, weights, names, backend, calibration, resize, opset, batch, dynamic_batch,
           decode) -> None:
    """Write the model as ONNX: FP32, or INT8 as QuantizeLinear/DequantizeLinear with yolo8's
    calibration. Input and outputs as Model.forward's; preprocessing is in the metadata."""
    from .api import load
    from .export import check_output_path, require_onnx

    require_onnx()
    check_output_path(out)  # before the model loads: a typo fails fast
    model = load(cfg, weights, backend, calibration, names, resize=resize)
    model.export_onnx(out, opset, batch, dynamic_batch, decode)
    click.echo(f"yolo8: wrote {out}", err=True)


@cli.command()
@click.option("--force", is_flag=True, help="fetch again even if the cached file is intact")
def fetch(force: bool) -> None:
    """Download the default model's weights now (e.g. while building an image), verify them
    and print where they are."""
    from . import models

    if force:
        path = models.fetch_default_weights()
    else:
        path = models.default_weights(verify=True)
    click.echo(str(path))


@cli.command()
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="compile this backend's kernels (repeatable; default: all this CPU runs)")
def warmup(backends: tuple[str, ...]) -> None:
    """Compile every numba kernel ahead of time into the kernel cache (for a Docker image:
    the cache is tied to this CPU's instruction-set features). Needs no model file."""
    from . import jit
    from .warmup import warmup as run

    spent = run(backends or None)
    where = jit.CACHE_DIR if jit.CACHE else "nowhere: no writable cache folder"
    for backend, seconds in spent.items():
        click.echo(f"{backend}: kernels ready in {seconds:.1f} s")
    click.echo(f"kernel cache: {where}")


def set_thread_pool_defaults() -> None:
    """THREAD_POOL_DEFAULTS for the variables the user has not set (before numpy loads)."""
    for name, value in THREAD_POOL_DEFAULTS.items():
        os.environ.setdefault(name, value)


@cli.command()
@click.argument("inputs", nargs=-1)
@with_model_options
@click.option("--top", type=click.IntRange(1), default=5, show_default=True,
              help="how many classes to report per image")
@click.option("--json", "json_path", type=click.Path(path_type=Path),
              help="write each input's top classes as JSON")
@click.option("--frames", type=click.IntRange(1), metavar="N", help="at most N frames of each video")
@click.option("-r", "--recursive", is_flag=True, help="also take the images in subfolders")
def classify(inputs, cfg, weights, names, backend, calibration, resize, top, json_path, frames,
             recursive) -> None:
    """Classify INPUTS with a darknet classifier (darknet's `classifier predict`): images,
    folders, .txt image lists, glob patterns and videos, as `detect` takes them.

    Prints the --top classes of each input, best first ({input}: {name} {score}; names from
    --names, one a line, else class indices). Inputs that cannot be read are named on stderr
    and skipped; the exit code is then 1."""
    from .classify import ClassifyOptions, run_classify

    if cfg is None:
        raise click.UsageError("classify needs a classifier: give --cfg and --weights")
    failed = run_classify(ClassifyOptions(
        inputs=list(inputs), cfg=cfg, weights=weights, names=names, backend=backend,
        calibration=calibration, resize=resize, top=top, json_path=json_path, frames=frames,
        recursive=recursive))
    if failed:
        sys.exit(1)


def main() -> None:
    set_thread_pool_defaults()
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("yolo8: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Yolo8Error as exc:
        click.echo(f"yolo8: error: {exc}", err=True)
        sys.exit(EXIT_INPUT)
    except KeyboardInterrupt:
        click.echo("yolo8: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except MemoryError:  # the cfg's bounds passed, but this machine (or its limits) has less
        click.echo("yolo8: error: out of memory: the network and its batch need more memory "
                   "than this process may use (a smaller width/height in the cfg?)", err=True)
        sys.exit(EXIT_INPUT)
    except OSError as exc:  # the system refused a file operation: disk full, permissions, ...
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"yolo8: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(EXIT_INPUT)
    except Exception:  # an internal bug: show everything, ask for a report
        traceback.print_exc()
        click.echo("yolo8: internal error (a bug in yolo8): please report it with the traceback "
                   "above", err=True)
        sys.exit(EXIT_BUG)


if __name__ == "__main__":
    main()
