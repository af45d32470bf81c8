"""`yolo8 detect --ray` and `yolo8 map --ray` on a 3-node Ray cluster of this machine: the same
outputs as the single-machine runs, a worker node killed mid-run, a corrupt image.

One cluster for the module (head + 2 worker nodes of 1 CPU each, every socket on 127.0.0.1),
started with ray.cluster_utils.Cluster; the `yolo8` drivers are separate processes that join
it by address. RAY_TMPDIR and HOME point to a short temporary folder (Ray's socket paths must
stay short) in every process; YOLO8_CACHE_DIR keeps the user's yolo8 cache (weights and
compiled kernels, shared by all actors of the node).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from yolo8.distributed import Progress, _in_input_order, pack_detections, unpack_detections
from yolo8.errors import Yolo8Error
from yolo8.postprocess import Detection
from yolo8.progress import NoBar

from .conftest import DATA, PHOTOS, data_file, run_yolo8

NAMES = Path(__file__).resolve().parents[1] / "src" / "yolo8" / "cfg" / "coco.names"
OBJECT_STORE = 100 * 2**20


# ------------------------------------------------------------------------- without a cluster


def test_rows_come_back_in_input_order_once_each():
    def batch(idx: list[int], node: str) -> dict:
        return {"idx": np.array(idx), "node": np.array([node] * len(idx), dtype=object),
                "threads": np.ones(len(idx), dtype=np.int64)}

    batches = [batch([2, 3], "b"), batch([0], "a"), batch([3, 1], "a")]
    progress = Progress(NoBar(4), actors=2, threads=1)
    rows = list(_in_input_order(batches, progress, total=4))
    assert [int(r["idx"]) for r in rows] == [0, 1, 2, 3]
    assert progress.duplicates == 1
    assert progress.per_node == {"a": 2, "b": 2}  # idx 3 counted where it came first

    lost = _in_input_order([batch([0, 2], "a")], Progress(NoBar(3), 1, 1), total=3)
    assert int(next(lost)["idx"]) == 0
    with pytest.raises(Yolo8Error, match=r"without the results of 1 of 3 images \(the first: "
                                         r"number 2 in the input\)"):
        next(lost)


def test_detections_cross_the_wire_bit_for_bit():
    dets = [Detection(16, "dog", 0.8712345678901234, (1.0000000001, 2.5, 300.25, 400.125)),
            Detection(0, "person", 1e-300, (0.0, 0.0, 1e-9, 7.0 / 3.0))]
    names = ["person"] + ["x"] * 15 + ["dog"]
    assert unpack_detections(pack_detections(dets), names) == dets
    assert unpack_detections(pack_detections([]), names) == []


def test_image_matches_sent_as_bytes_give_the_reference_metrics(tmp_path):
    """What a map actor sends (metrics.ImageMatch.to_bytes per image), merged on the driver,
    gives the independent evaluators' figures: a VOC-devkit style one and a plain pycocotools
    run (tests/test_metrics.py), with difficult boxes and scores tied across images."""
    from yolo8.data import ImageDetections
    from yolo8.metrics import ImageMatch, evaluate_matches, match_image

    from .test_metrics import (direct_pycocotools, jittered_detections, mark_difficult,
                               reference_map, synthetic_truths)

    rng = np.random.default_rng(11)
    truths, sizes = synthetic_truths(rng, images=40)
    truths = mark_difficult(rng, truths)
    detections = [ImageDetections(d.boxes, d.classes, np.round(d.scores, 1))  # many ties
                  for d in jittered_detections(rng, truths, sizes, num_classes=6)]
    sent = [match_image(t, d, size, 6, 0.5, coco_by_size=True).to_bytes()
            for t, d, size in zip(truths, detections, sizes)]
    result = evaluate_matches([ImageMatch.from_bytes(b) for b in sent], 6, 0.5,
                              coco_by_size=True)
    assert result.voc07 == pytest.approx(reference_map(truths, detections, 6, 0.5, True),
                                         abs=1e-9)
    assert result.voc == pytest.approx(reference_map(truths, detections, 6, 0.5, False),
                                       abs=1e-9)
    stats, _ = direct_pycocotools(truths, detections, sizes, 6, tmp_path)
    assert len(result.coco_stats) == 12
    for ours, theirs in zip(result.coco_stats.values(), stats):
        assert (np.isnan(ours) and theirs == -1) or ours == pytest.approx(theirs, abs=1e-12)
    assert 0.05 < result.voc < 0.95 and result.images == 40


def _python_without_ray(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['ray'] = None; from yolo8.cli import main; "
            f"sys.argv = ['yolo8', *{list(args)!r}]; main()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_ray_missing_says_how_to_install(tmp_path):
    data = data_file(tmp_path, PHOTOS, NAMES)
    for args in (["map", "--data", str(data), "--ray", "local"],
                 ["detect", str(PHOTOS[0]), "--ray", "local"]):
        result = _python_without_ray(*args)
        assert result.returncode == 2, result.stderr
        assert "pip install 'yolo8[ray]'" in result.stderr
        assert "Traceback" not in result.stderr


def test_ray_options_need_ray():
    result = run_yolo8("detect", PHOTOS[0], "--threads", "2", "--no-save")
    assert result.returncode == 2
    assert "--ray-actors and --threads go with --ray" in result.stderr


def test_videos_are_refused_before_any_cluster(tmp_path):
    import cv2

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    result = run_yolo8("detect", PHOTOS[0], clip, "--ray", "local", "--no-save")
    assert result.returncode == 2, result.stderr
    assert f"--ray runs on image files; {clip} is a video or camera" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# ------------------------------------------------------------------------- the cluster


@dataclass
class LocalCluster:
    cluster: object
    workers: list
    address: str


@pytest.fixture(scope="module")
def ray_cluster(default_weights):
    """Head + 2 worker nodes of 1 CPU each on 127.0.0.1; always shut down."""
    from ray.cluster_utils import Cluster

    from yolo8 import models

    base = Path(tempfile.mkdtemp(prefix="y8r", dir="/tmp"))  # Ray's socket paths must be short
    (base / "home").mkdir()
    saved = dict(os.environ)
    os.environ.update(RAY_TMPDIR=str(base), HOME=str(base / "home"),
                      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                      YOLO8_CACHE_DIR=str(models.cache_dir()))
    node = dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE)
    cluster = None
    try:
        try:
            cluster = Cluster(initialize_head=True, head_node_args=dict(
                node, include_dashboard=False))
            workers = [cluster.add_node(**node) for _ in range(2)]
            cluster.wait_for_nodes()
        except Exception as exc:  # noqa: BLE001  (whatever stops Ray here, say it)
            pytest.skip(f"Ray cannot start a local cluster on this machine: {exc!r}")
        yield LocalCluster(cluster, workers, cluster.address)
    finally:
        if cluster is not None:
            cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(base, ignore_errors=True)


def _map(data: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = run_yolo8("map", "--data", data, "--json", out, *extra, timeout=900)
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


def _same_metrics(single: tuple, on_ray: tuple, images: int) -> dict:
    """The printed table and the JSON metrics equal; returns the run's cluster section."""
    (single_run, single_json), (ray_run, ray_json) = single, on_ray
    assert ray_run.stdout == single_run.stdout
    cluster = ray_json.pop("cluster")
    assert ray_json == single_json
    assert single_json["images"] == images
    assert sum(cluster["nodes"].values()) == images  # every image once
    assert cluster["duplicates_dropped"] == 0
    return cluster


@pytest.mark.timeout(900)
@pytest.mark.parametrize("dataset", ["tests/data", "coco128"])
def test_map_on_cluster_equals_single_machine(ray_cluster, dataset, request, tmp_path):
    if dataset == "coco128":
        images = sorted((request.getfixturevalue("coco128") / "images").glob("*.jpg"))
    else:
        images = list(PHOTOS)
    data = data_file(tmp_path, images, NAMES)
    single = _map(data, tmp_path / "single.json", "--save-detections", tmp_path / "single.dets")
    on_ray = _map(data, tmp_path / "ray.json", "--save-detections", tmp_path / "ray.dets",
                  "--ray", ray_cluster.address, "--ray-actors", "2", "--threads", "1")
    cluster = _same_metrics(single, on_ray, len(images))
    assert (tmp_path / "ray.dets").read_bytes() == (tmp_path / "single.dets").read_bytes()
    assert len(cluster["nodes"]) == 2, cluster  # two actors of 1 CPU: two nodes did work
    assert cluster["numba_threads"] == [1]  # numba's pool in each actor (2 cores here)
    assert re.search(rf"map: {len(images)} images in .* on 2 nodes, 2 actors x 1 thread",
                     on_ray[0].stderr)


def _detect(listing: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_yolo8("detect", listing, "--json", folder / "dets.json", "--txt",
                     "--save-dir", folder / "out", *extra, timeout=900)


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.timeout(900)
def test_detect_on_cluster_equals_single_machine(ray_cluster, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in PHOTOS))
    # --resize opencv (not the default): the actors must load the model as the driver says
    single = _detect(listing, tmp_path / "single", "--resize", "opencv")
    on_ray = _detect(listing, tmp_path / "ray", "--resize", "opencv", "--ray", ray_cluster.address,
                     "--ray-actors", "2")
    default = _detect(listing, tmp_path / "default")
    assert single.returncode == on_ray.returncode == default.returncode == 0, on_ray.stderr
    assert default.stdout != single.stdout  # so the option shows in the outputs
    assert on_ray.stdout == single.stdout and single.stdout  # same lines, same order
    single_out, ray_out = _outputs(tmp_path / "single"), _outputs(tmp_path / "ray")
    assert ray_out == single_out  # JSON, label files and annotated copies, byte for byte
    assert len(json.loads(single_out["dets.json"])) > 0


@pytest.mark.timeout(900)
def test_corrupt_image_is_an_error_line(ray_cluster, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTOS[0].read_bytes()[:300])  # a JPEG cut short: no image in it
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in [*PHOTOS[:2], broken, *PHOTOS[2:]]))
    single = _detect(listing, tmp_path / "single")
    on_ray = _detect(listing, tmp_path / "ray", "--ray", ray_cluster.address)
    assert on_ray.returncode == 1, on_ray.stderr
    errors = [line for line in on_ray.stderr.splitlines() if "skipped" in line]
    assert errors == [f"yolo8: skipped: {broken}: is not an image OpenCV can decode (expected "
                      f"JPEG, PNG, BMP, ...)"]
    assert "Traceback" not in on_ray.stderr
    assert on_ray.stdout == single.stdout  # every other image done, in order
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "single")
    files = {entry["file"] for entry in json.loads((tmp_path / "ray" / "dets.json").read_text())}
    assert len(files) >= 3 and str(broken) not in files


# ------------------------------------------------------------------------- a node dies


def _actor_processes(raylet_pid: int) -> list[int]:
    """The yolo8 actor processes a raylet started (Ray names them ray::MapWorker(...))."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == raylet_pid and "MapWorker" in command:
            found.append(int(entry.name))
    return found


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


class _StderrWatch:
    """Reads a process's stderr on a thread; `done` is the progress bar's latest count."""

    def __init__(self, process: subprocess.Popen, total: int) -> None:
        self.text, self.pattern = "", re.compile(rf"(\d+)/{total}\b")
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    @property
    def done(self) -> int:
        counts = self.pattern.findall(self.text)
        return int(counts[-1]) if counts else 0


@pytest.mark.timeout(900)
def test_worker_node_killed_mid_run(ray_cluster, tmp_path):
    """Kill the raylet of a worker node running an actor while the run is under way: the run
    completes, with every image counted exactly once (the metrics equal the single machine's).
    Runs last in this module: the cluster keeps a dead node afterwards."""
    images = list(PHOTOS) * 40  # 200 rows (a list may name an image again; map counts each)
    data = data_file(tmp_path, images, NAMES)
    single = _map(data, tmp_path / "single.json")
    out = tmp_path / "ray.json"
    command = [sys.executable, "-m", "yolo8", "map", "--data", str(data), "--json", str(out),
               "--ray", ray_cluster.address, "--ray-actors", "2", "--progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        watch = _StderrWatch(process, len(images))
        victim, deadline = None, time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and process.poll() is None:
            if watch.done >= 10:  # under way: actors loaded, rows coming back
                victim = next((n for n in ray_cluster.workers
                               if _actor_processes(_raylet_pid(n))), None)
            time.sleep(0.05)
        assert victim is not None, f"no worker node ran an actor mid-run:\n{watch.text}"
        done_at_kill = watch.done
        victim.kill_raylet()
        stdout, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    watch.thread.join(timeout=10)
    assert process.returncode == 0, watch.text
    assert done_at_kill < len(images), "the run ended before the node was killed"
    cluster = _same_metrics(single, (subprocess.CompletedProcess(command, 0, stdout.decode()),
                                     json.loads(out.read_text())), len(images))
    assert len(cluster["nodes"]) >= 2
