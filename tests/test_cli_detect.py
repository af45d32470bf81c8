"""`yolo8 detect` end to end, as a user runs it (a subprocess)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from .conftest import run_yolo8 as run


@pytest.fixture(scope="module")
def photo(default_weights) -> Path:
    from .conftest import DATA
    return DATA / "images" / "000000000049.jpg"


def test_detect_prints_saves_and_writes_json(tmp_path, photo):
    out_json = tmp_path / "dets.json"
    result = run("detect", str(photo), "--save-dir", str(tmp_path / "pred"), "--json", str(out_json))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and all(line.startswith(f"{photo}: ") for line in lines)
    assert any(": person " in line for line in lines)  # the photo shows people
    saved = cv2.imread(str(tmp_path / "pred" / photo.name))
    assert saved is not None and saved.shape == cv2.imread(str(photo)).shape
    assert (saved != cv2.imread(str(photo))).any()  # boxes were drawn
    entries = json.loads(out_json.read_text())
    assert len(entries) == len(lines)
    for e in entries:
        assert set(e) == {"image_id", "file", "category_id", "name", "bbox", "score"}
        assert e["image_id"] == photo.stem and e["score"] > 0.25 and len(e["bbox"]) == 4


def test_annotated_copy_never_overwrites_the_input(tmp_path, photo):
    local = tmp_path / "in.jpg"
    local.write_bytes(photo.read_bytes())
    result = run("detect", "in.jpg", "--save-dir", ".", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert local.read_bytes() == photo.read_bytes()
    assert (tmp_path / "in.pred.jpg").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "missing.jpg", "image not found"),
    (lambda d: (d / "text.jpg").write_text("not an image") and d / "text.jpg", "is not an image"),
])
def test_bad_image_is_one_line_and_nonzero(tmp_path, photo, make, fragment):
    bad = make(tmp_path)
    result = run("detect", str(bad), str(photo), "--no-save")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr and str(bad) in result.stderr
    assert f"{photo}: " in result.stdout  # the good image was still processed


@pytest.mark.parametrize("args, fragment", [
    (["--cfg", "nope.cfg", "--weights", "nope.weights"], "nope.cfg: cfg file not found"),
    (["--cfg", "__CFG__"], "needs its weights"),
    (["--cfg", "__CFG__", "--weights", "__CFG__"], "bytes: too short); wrong weights for this cfg"),
])
def test_bad_model_files_are_one_line(tmp_path, photo, default_cfg, args, fragment):
    args = [a.replace("__CFG__", str(default_cfg)) for a in args]
    result = run("detect", str(photo), "--no-save", *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
