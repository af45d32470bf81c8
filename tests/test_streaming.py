"""`--json x.jsonl` streams: an interrupted video run leaves valid JSON Lines for every finished
frame, and no output file half-written."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from .conftest import PHOTOS, run_yolo8

FRAMES, SIZE = 240, (320, 240)


def _video(path: Path) -> Path:
    """A photo panned 1 px per frame (MJPG .avi)."""
    width, height = SIZE
    photo = cv2.resize(cv2.imread(str(PHOTOS[1])), (width + FRAMES, height))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, SIZE)
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.ascontiguousarray(photo[:, i:i + width]))
    writer.release()
    return path


def _by_frame(path: Path) -> dict[int, list[dict]]:
    frames = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        entry = json.loads(line)  # every line is one whole JSON object
        frames[entry["frame"]].append(entry)
    return dict(frames)


def test_sigint_mid_video_leaves_valid_json_lines_for_every_finished_frame(tmp_path,
                                                                           default_weights):
    video = _video(tmp_path / "clip.avi")
    full = run_yolo8("detect", video, "--json", tmp_path / "full.jsonl", "--no-save", "-q",
                     "--thresh", "0.05", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    expected = _by_frame(tmp_path / "full.jsonl")
    assert len(expected) > FRAMES // 2, "too few frames with detections to compare"

    out = tmp_path / "cut.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "yolo8", "detect", str(video), "--json",
                                str(out), "--save-dir", str(tmp_path / "saved"), "-q",
                                "--thresh", "0.05"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 20:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    cut = _by_frame(out)
    assert cut and max(cut) < FRAMES - 1, "the interruption came too late to test anything"
    for frame, entries in cut.items():  # each frame written is complete and as in the full run
        assert entries == expected[frame], f"frame {frame}"
    leftovers = [p.name for p in tmp_path.rglob("*.part*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    annotated = cv2.VideoCapture(str(tmp_path / "saved" / "clip.avi"))
    assert annotated.isOpened() and annotated.read()[0], "the annotated video is not readable"
    annotated.release()
