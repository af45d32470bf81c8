"""`yolo8 detect` over folders, lists, globs, videos, cameras and mixed inputs (issue 7).

The user-level contract (exit codes, one error line, no traceback) is checked in a subprocess, as a
user runs it. The rest runs `yolo8.cli.main` in this process with one model loaded per module, to
keep the file fast. Both use yolov3-tiny's real weights with the network input shrunk to 96x96:
what is tested here (which inputs are read, what is written where) does not depend on the network
size, and 96x96 costs ~1/19 of 416x416 per image (it still finds objects at --thresh 0.1).
"""
from __future__ import annotations

import _thread
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import yolo8
from yolo8 import cli, inputs
from yolo8.data import read_labels
from yolo8.detect import OutputNames, label_line
from yolo8.inputs import Source, expand_inputs
from yolo8.errors import InputError
from yolo8.pipeline import Item, batched, read_frames
from yolo8.postprocess import Detection

from .conftest import PHOTOS
from .conftest import run_yolo8 as run

VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS = 15, (320, 240), 12.0


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory, default_cfg) -> Path:
    text = default_cfg.read_text()
    assert "width=416" in text and "height=416" in text
    path = tmp_path_factory.mktemp("cfg") / "yolov3-tiny-96.cfg"
    path.write_text(text.replace("width=416", "width=96").replace("height=416", "height=96"))
    return path


@pytest.fixture(scope="module")
def model_args(small_cfg, default_weights) -> list[str]:
    return ["--cfg", str(small_cfg), "--weights", str(default_weights)]


@pytest.fixture(scope="module")
def small_model(small_cfg, default_weights) -> yolo8.api.Model:
    return yolo8.load(small_cfg, default_weights)



@pytest.fixture
def detect(monkeypatch, capsys, small_model):
    """`yolo8 detect ARGS` in this process (cwd as given), the model already loaded:
    returns (exit code, stdout, stderr)."""
    monkeypatch.setattr("yolo8.detect.load", lambda *args, **kwargs: small_model)

    def invoke(*args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["yolo8", "detect", *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def copy_photos(folder: Path, count: int, prefix: str = "p") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = [folder / f"{prefix}{i:02d}.jpg" for i in range(count)]
    for i, copy in enumerate(copies):
        shutil.copyfile(PHOTOS[i % len(PHOTOS)], copy)
    return copies


def write_video(path: Path, fourcc: str, frames: int = VIDEO_FRAMES) -> None:
    """A test photo panned 2 px per frame, VIDEO_SIZE at VIDEO_FPS."""
    width, height = VIDEO_SIZE
    photo = cv2.resize(cv2.imread(str(PHOTOS[0])), (width + 2 * frames, height))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), VIDEO_FPS, VIDEO_SIZE)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} here"
    for i in range(frames):
        writer.write(np.ascontiguousarray(photo[:, 2 * i:2 * i + width]))
    writer.release()


def video_facts(path: Path) -> tuple[int, tuple[int, int], float]:
    """Frames actually decodable (not the container's claim), size, fps."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert capture.isOpened(), path
    frames = 0
    while capture.read()[0]:
        frames += 1
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, size, fps


def printed_inputs(stdout: str) -> list[str]:
    """The input named by each detection line, in order."""
    return [line.split(": ", 1)[0] for line in stdout.splitlines()]


def xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


# ------------------------------------------------------------------ expanding arguments (no model)


def test_folder_takes_images_by_extension_in_any_case_sorted(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.png", "a.JPG", "c.Tiff", "d.txt", "e.mp4", ".hidden.jpg", "sub/f.jpeg"]:
        (folder / name).write_bytes(b"x")
    got = expand_inputs([str(folder)])
    assert [s.path.name for s in got.sources] == ["a.JPG", "b.png", "c.Tiff"]
    assert all(s.kind == "image" for s in got.sources) and not got.problems
    deep = expand_inputs([str(folder)], recursive=True)
    assert [str(s.relative) for s in deep.sources] == ["a.JPG", "b.png", "c.Tiff", "sub/f.jpeg"]


def test_list_resolves_cwd_first_then_list_folder(tmp_path, monkeypatch):
    work, lists = tmp_path / "work", tmp_path / "lists"
    (work / "img").mkdir(parents=True)
    (lists / "img").mkdir(parents=True)
    for path in [work / "img/both.jpg", lists / "img/both.jpg", lists / "img/only_list.jpg",
                 lists / "clip.MP4"]:
        path.write_bytes(b"x")
    listing = lists / "images.txt"
    listing.write_bytes("\ufeff# a comment\r\nimg/both.jpg\r\n\r\n  img/only_list.jpg  \r\n"
                        "img/nowhere.jpg\r\nclip.MP4\r\n".encode())
    monkeypatch.chdir(work)
    got = expand_inputs([str(listing)])
    assert [s.path for s in got.sources] == [Path("img/both.jpg"), lists / "img/only_list.jpg",
                                             lists / "clip.MP4"]
    assert [s.kind for s in got.sources] == ["image", "image", "video"]
    [problem] = got.problems
    assert problem.line == 5 and "img/nowhere.jpg" in str(problem) and str(listing) in str(problem)


def test_glob_only_for_paths_that_do_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["x1.jpg", "x2.png", "x3.txt", "x[1].jpg", "v.avi"]:
        (tmp_path / name).write_bytes(b"x")
    assert [s.display for s in expand_inputs(["x*"]).sources] == ["x1.jpg", "x2.png", "x[1].jpg"]
    assert [s.display for s in expand_inputs(["x[1].jpg"]).sources] == ["x[1].jpg"]  # exists
    assert [s.kind for s in expand_inputs(["*.avi"]).sources] == ["video"]
    assert "nothing matches" in str(expand_inputs(["y*.jpg"]).problems[0])


@pytest.mark.parametrize("arg, fragment", [
    ("gone.jpg", "gone.jpg: image not found"),
    ("gone.mkv", "gone.mkv: video not found"),
    ("gone.txt", "gone.txt: image list not found"),
    ("gone", "gone: file or folder not found"),
])
def test_missing_argument_says_what_is_missing(tmp_path, monkeypatch, arg, fragment):
    monkeypatch.chdir(tmp_path)
    got = expand_inputs([arg])
    assert not got.sources and [str(p) for p in got.problems] == [fragment]


def test_a_file_named_twice_is_kept_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_photos(tmp_path / "f", 2)
    got = expand_inputs(["f", "f/p01.jpg", "f/*.jpg", "./f/p00.jpg"], cameras=[0, 0])
    assert [s.display for s in got.sources] == ["f/p00.jpg", "f/p01.jpg", "camera0"]
    assert len(got.repeated) == 5


def test_output_names_never_clash_and_never_hit_an_input(tmp_path):
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "X.png"
    sources = [Source("image", str(p), p, Path(p.name)) for p in (a, b)]
    names = OutputNames(tmp_path / "out", sources)
    assert names.claim(Path("x.jpg"), str(a)) == Path("x.jpg")
    assert names.claim(Path("X.png"), str(b)) == Path("X_2.png")  # same stem as x, any case
    assert names.claim(Path("X.png"), "again") == Path("X_3.png")
    assert names.claim(Path("sub/x.jpg"), "deep") == Path("sub/x.jpg")  # another folder
    in_place = OutputNames(tmp_path / "a", sources)  # --save-dir is the input's folder
    assert in_place.claim(Path("x.jpg"), str(a)) == Path("x.pred.jpg")


def test_label_line_is_relative_centre_size():
    det = Detection(3, "motorbike", 0.5, (10.0, 20.0, 110.0, 70.0))
    assert label_line(det, 200, 100) == "3 0.300000 0.450000 0.500000 0.500000"
    assert label_line(det, 200, 100, with_score=True).endswith(" 0.500000")


# ---------------------------------------------------------------------------- frame reader


def test_batched_keeps_input_order_around_bad_items():
    items = [Item(i, Path(f"{i}.jpg"), error=InputError("bad") if i in (2, 3) else None)
             for i in range(8)]
    assert [[item.index for item in batch] for batch in batched(items, 3)] == [
        [0, 1], [2], [3], [4, 5, 6], [7]]


def test_read_frames_in_order_with_limit_and_early_close(tmp_path):
    video = tmp_path / "v.avi"
    write_video(video, "MJPG")
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    items = list(read_frames(capture, video, prepare=lambda im: im.shape, ahead=3))
    assert [i.index for i in items] == list(range(VIDEO_FRAMES))
    assert all(i.prepared == (240, 320, 3) and i.path == video for i in items)
    capture.release()

    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    assert [i.index for i in read_frames(capture, video, limit=4)] == [0, 1, 2, 3]
    frames = read_frames(capture, video, ahead=1)
    next(frames)
    frames.close()  # must join the reader thread, so the capture can be released safely
    assert not [t for t in threading.enumerate() if t.name == "yolo8-frames"]
    capture.release()


def test_read_frames_hands_reader_errors_to_the_consumer(tmp_path):
    video = tmp_path / "v.avi"
    write_video(video, "MJPG", frames=3)
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)

    def prepare(image):
        raise RuntimeError("prepare failed")

    with pytest.raises(RuntimeError, match="prepare failed"):
        list(read_frames(capture, video, prepare=prepare))
    capture.release()


# ------------------------------------------------------------- the contract, as a user runs it


def test_folder_of_12_photos_gives_12_annotated_images(tmp_path, model_args):
    photos = copy_photos(tmp_path / "photos", 12)
    result = run("detect", "photos", "--save-dir", "out", *model_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "%|" not in result.stderr and "skipped" not in result.stderr  # no bar: not a TTY
    assert set(printed_inputs(result.stdout)) <= {f"photos/{p.name}" for p in photos}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in photos]
    for photo in photos:
        original, annotated = cv2.imread(str(photo)), cv2.imread(str(tmp_path / "out" / photo.name))
        assert annotated is not None and annotated.shape == original.shape


def test_15_frame_video_gives_15_frame_annotated_video(tmp_path, model_args):
    write_video(tmp_path / "clip.mp4", "mp4v")
    result = run("detect", "clip.mp4", "--save-dir", "out", "--json", "d.json", "--thresh", "0.05",
                 *model_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert video_facts(tmp_path / "out" / "clip.mp4") == (VIDEO_FRAMES, VIDEO_SIZE, VIDEO_FPS)
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("clip.mp4#") for line in lines)
    entries = json.loads((tmp_path / "d.json").read_text())
    assert len(entries) == len(lines)
    assert {e["frame"] for e in entries} <= set(range(VIDEO_FRAMES))
    assert all(e["file"] == "clip.mp4" and e["image_id"] == "clip" for e in entries)
    assert [f"clip.mp4#{e['frame']}" for e in entries] == printed_inputs(result.stdout)


def test_corrupt_files_are_named_skipped_and_fail_the_run(tmp_path, model_args):
    good = copy_photos(tmp_path / "photos", 3)
    (tmp_path / "photos" / "broken.jpg").write_text("this is text, not a JPEG")
    (tmp_path / "broken.mp4").write_text("this is text, not a video")
    result = run("detect", "photos", "broken.mp4", "--save-dir", "out", *model_args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == 2, result.stderr
    assert "photos/broken.jpg" in errors[0] and "is not an image" in errors[0]
    assert "broken.mp4" in errors[1] and "is not a video" in errors[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in good]


@pytest.mark.parametrize("make, fragment", [
    (lambda d: "missing.jpg", "missing.jpg: image not found"),
    (lambda d: (d / "empty.txt").write_text("# only a comment\r\n\r\n") and "empty.txt",
     "empty.txt: empty image list"),
    (lambda d: (d / "nothing").mkdir() or "nothing", "nothing: empty folder"),
])
def test_missing_file_or_empty_list_is_one_clear_line(tmp_path, make, fragment):
    result = run("detect", make(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"yolo8: error: {fragment}"), result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------- the rest, in-process


def test_list_and_glob(tmp_path, detect):
    photos = copy_photos(tmp_path / "data" / "images", 4)
    listing = tmp_path / "data" / "valid.txt"  # entries relative to the list's folder
    listing.write_bytes(b"# validation\r\nimages/p02.jpg\r\nimages/p00.jpg\r\n")
    code, out, err = detect(str(listing), "data/images/p0[13].jpg", "--save-dir", "out",
                            cwd=tmp_path)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in photos)
    order = {str(listing.parent / "images/p02.jpg"): 0, str(listing.parent / "images/p00.jpg"): 1,
             "data/images/p01.jpg": 2, "data/images/p03.jpg": 3}
    named = printed_inputs(out)
    assert set(named) <= set(order) and named == sorted(named, key=order.__getitem__)


def test_mixed_inputs_keep_their_order_and_all_outputs(tmp_path, detect):
    single = copy_photos(tmp_path, 1, prefix="single")[0]
    copy_photos(tmp_path / "folder", 2, prefix="f")
    listed = copy_photos(tmp_path / "listed", 2, prefix="l")
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in listed))
    write_video(tmp_path / "clip.avi", "MJPG", frames=3)
    code, out, err = detect(single.name, "clip.avi", "folder", "list.txt", "--save-dir", "out",
                            "--json", "d.json", "--thresh", "0.05", cwd=tmp_path)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "clip.avi", "f00.jpg", "f01.jpg", "l00.jpg", "l01.jpg", "single00.jpg"]
    assert video_facts(tmp_path / "out" / "clip.avi")[0] == 3
    files = [e["file"] for e in json.loads((tmp_path / "d.json").read_text())]
    order = [single.name, "clip.avi", "folder/f00.jpg", "folder/f01.jpg", str(listed[0]),
             str(listed[1])]
    assert set(files) == set(order)  # thresh 0.05: every input has detections
    assert files == sorted(files, key=order.index)


def test_missing_file_among_good_ones_is_skipped(tmp_path, detect):
    copy_photos(tmp_path, 2)
    code, out, err = detect("p00.jpg", "missing.jpg", "p01.jpg", "--save-dir", "out", cwd=tmp_path)
    assert code == 1
    assert err.splitlines() == ["yolo8: skipped: missing.jpg: image not found"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p00.jpg", "p01.jpg"]


def test_txt_labels_read_back_give_the_json_boxes(tmp_path, detect):
    photos = copy_photos(tmp_path / "photos", len(PHOTOS))
    code, out, err = detect("photos", "--txt", "--no-save", "--json", "d.json", "--thresh", "0.1",
                            "--quiet", "--save-dir", "out", cwd=tmp_path)
    assert code == 0, err
    assert out == ""  # --quiet
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{p.stem}.txt" for p in photos]
    entries = json.loads((tmp_path / "d.json").read_text())
    assert entries
    for photo in photos:
        height, width = cv2.imread(str(photo)).shape[:2]
        truth = read_labels(tmp_path / "out" / f"{photo.stem}.txt", 80, width, height)
        mine = [e for e in entries if e["file"] == f"photos/{photo.name}"]
        assert truth.classes.tolist() == [e["category_id"] for e in mine]
        # JSON rounds pixels to 0.001 (x+w: <= 0.001 off); labels keep 6 decimals of a relative
        # value (<= 0.5e-6 * 640 px per value, < 0.001 px for centre +- half size): 0.005 px
        # leaves room for both.
        np.testing.assert_allclose(truth.boxes, [xyxy(e["bbox"]) for e in mine], atol=0.005)


def test_txt_score_column_and_video_frame_labels(tmp_path, detect):
    write_video(tmp_path / "clip.mp4", "mp4v", frames=4)
    code, out, err = detect("clip.mp4", "--txt", "--txt-score", "--no-save", "--json", "d.json",
                            "--thresh", "0.05", "--frames", "3", "--save-dir", "out", cwd=tmp_path)
    assert code == 0, err
    labels = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in labels] == [f"clip_{i:06d}.txt" for i in range(3)]  # no video
    entries = json.loads((tmp_path / "d.json").read_text())
    for frame, path in enumerate(labels):
        rows = [line.split() for line in path.read_text().splitlines()]
        scores = [e["score"] for e in entries if e["frame"] == frame]
        assert all(len(row) == 6 for row in rows)
        # the JSON keeps 6 decimals of the score, the label file too
        np.testing.assert_allclose([float(r[5]) for r in rows], scores, atol=1e-6)


def test_name_clash_between_folders_is_not_overwritten(tmp_path, detect):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copyfile(PHOTOS[0], tmp_path / "a" / "x.jpg")   # 640x480
    shutil.copyfile(PHOTOS[4], tmp_path / "b" / "x.jpg")   # 381x500
    code, out, err = detect("a", "b", "--save-dir", "out", "--txt", cwd=tmp_path)
    assert code == 0, err
    assert "b/x.jpg" in err and "a/x.jpg" in err and "x_2.jpg" in err  # a warning names both
    assert cv2.imread(str(tmp_path / "out" / "x.jpg")).shape == (480, 640, 3)
    assert cv2.imread(str(tmp_path / "out" / "x_2.jpg")).shape == (500, 381, 3)
    assert (tmp_path / "out" / "x.txt").exists() and (tmp_path / "out" / "x_2.txt").exists()


def test_recursive_folder_keeps_subfolders_in_the_output(tmp_path, detect):
    copy_photos(tmp_path / "tree", 1)
    copy_photos(tmp_path / "tree" / "deeper", 1)
    code, out, err = detect("tree", "-r", "--save-dir", "out", "--no-progress", cwd=tmp_path)
    assert code == 0, err
    assert (tmp_path / "out" / "p00.jpg").exists() and (tmp_path / "out/deeper/p00.jpg").exists()


def test_progress_bar_on_request(tmp_path, detect):
    copy_photos(tmp_path, 2)
    code, out, err = detect("p00.jpg", "p01.jpg", "--no-save", "--progress", cwd=tmp_path)
    assert code == 0 and "detect: 100%" in err and "2/2" in err


def test_no_progress_bar_loads_no_tqdm():
    """A run without a bar does not pay for importing tqdm, and its lines still print."""
    code = ("import sys\n"
            "from yolo8.progress import progress_bar, write\n"
            "with progress_bar(3, 'x', enabled=False) as bar:\n"
            "    bar.update(2); bar.total += 1; bar.refresh()\n"
            "write('a line', sys.stdout)\n"
            "print('tqdm' in sys.modules)\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert child.stdout.splitlines() == ["a line", "False"]


# ------------------------------------------------------------------------------------ camera


REAL_CAPTURE = cv2.VideoCapture


class FakeCamera:
    """A camera made of a video file; `interrupt_at`: press Ctrl-C when that frame is read."""

    def __init__(self, video: Path, interrupt_at: int | None = None) -> None:
        self.capture = REAL_CAPTURE(str(video), cv2.CAP_FFMPEG)
        self.reads, self.interrupt_at = 0, interrupt_at

    def read(self):
        if self.reads == self.interrupt_at:
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread
        self.reads += 1
        return self.capture.read()

    def __getattr__(self, name):
        return getattr(self.capture, name)


@pytest.mark.parametrize("interrupt_at, frames", [(None, 5), (8, None)])
def test_camera_until_frames_or_ctrl_c(tmp_path, detect, monkeypatch, interrupt_at, frames):
    write_video(tmp_path / "scene.avi", "MJPG")
    monkeypatch.setattr(inputs.cv2, "VideoCapture", lambda source, *args: (
        FakeCamera(tmp_path / "scene.avi", interrupt_at) if source == 2
        else REAL_CAPTURE(source, *args)))
    limit = ["--frames", str(frames)] if frames else []
    code, out, err = detect("--camera", "2", *limit, "--save-dir", "out", "--json", "d.json",
                            "--thresh", "0.05", cwd=tmp_path)
    assert code == 0, err  # Ctrl-C is how a camera run ends: not an error
    written, size, _ = video_facts(tmp_path / "out" / "camera2.avi")
    assert size == VIDEO_SIZE
    if frames:
        assert written == frames
    else:
        # The reader runs at most 3 frames ahead (2 queued + 1 being read), so when frame 8 is
        # read frames 0-4 are done; the video is complete (readable) up to where Ctrl-C landed.
        assert 5 <= written < VIDEO_FRAMES
    entries = json.loads((tmp_path / "d.json").read_text())
    assert entries and {e["frame"] for e in entries} <= set(range(written))
    assert all(line.startswith("camera2#") for line in out.splitlines())
    assert "d.jsonl" in err  # a camera with a .json array: told that .jsonl streams


def test_camera_with_jsonl_streams_one_line_per_detection(tmp_path, detect, monkeypatch):
    write_video(tmp_path / "scene.avi", "MJPG")
    monkeypatch.setattr(inputs.cv2, "VideoCapture", lambda source, *args: (
        FakeCamera(tmp_path / "scene.avi", 8) if source == 2 else REAL_CAPTURE(source, *args)))
    code, out, err = detect("--camera", "2", "--no-save", "--json", "d.jsonl", "--thresh", "0.05",
                            cwd=tmp_path)
    assert code == 0, err
    assert ".jsonl" not in err
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert entries and all(e["file"] == "camera2" or "frame" in e for e in entries)
    printed = [line for line in out.splitlines() if line.startswith("camera2#")]
    assert len(printed) == len(entries)  # every printed detection is in the file
