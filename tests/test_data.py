"""Tests of yolo8.data: darknet .data files, image lists, names, label paths and label files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yolo8.data import (
    label_path,
    read_data_file,
    read_ground_truth,
    read_image_list,
    read_labels,
    read_names,
)
from yolo8.errors import InputError

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train"


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """A data set folder with a list and names, and a separate working directory."""
    root = tmp_path / "set"
    write(root / "valid.txt", "images/a.jpg\n")
    write(root / "coco.names", "person\ntraffic light\n")
    write(root / "difficult.txt", "images/difficult_a.jpg\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


# ----------------------------------------------------------------------------------- .data


def test_data_file_comments_crlf_and_spaces(dataset):
    data = write(dataset / "voc.data",
                 "# a comment\n; another\n\nclasses= 2\n  train  =  x.txt\nvalid = valid.txt\n"
                 "names =coco.names\ndifficult= difficult.txt\nbackup = backup/\n",
                 newline="\r\n")
    config = read_data_file(data)
    assert config.classes == 2
    assert config.valid == dataset / "valid.txt"
    assert config.names == dataset / "coco.names"
    assert config.difficult == dataset / "difficult.txt"
    assert config.path == data


def test_data_file_paths_resolve_against_cwd_first(dataset, tmp_path):
    # valid.txt exists both in the working directory and next to the .data file: darknet
    # opens it relative to the working directory, so that one wins.
    write(Path.cwd() / "valid.txt", "other.jpg\n")
    config = read_data_file(write(dataset / "a.data", "classes=1\nvalid=valid.txt\n"))
    assert config.valid == Path.cwd() / "valid.txt"
    assert config.names is None and config.difficult is None


def test_data_file_absolute_paths(dataset):
    config = read_data_file(write(dataset / "a.data",
                                  f"classes=1\nvalid={dataset / 'valid.txt'}\n"))
    assert config.valid == dataset / "valid.txt"


def test_data_file_first_occurrence_of_a_key_wins(dataset):
    config = read_data_file(write(dataset / "a.data", "classes=3\nclasses=5\nvalid=valid.txt\n"))
    assert config.classes == 3


@pytest.mark.parametrize("text, line, key, message", [
    ("classes=2\n", None, "valid", "no 'valid"),
    ("valid=valid.txt\n", None, "classes", "no 'classes"),
    ("classes = two\nvalid=valid.txt\n", 1, "classes", "positive integer"),
    ("classes = 0\nvalid=valid.txt\n", 1, "classes", "positive integer"),
    ("classes = -3\nvalid=valid.txt\n", 1, "classes", "positive integer"),
    ("classes=2\n# x\nvalid = missing.txt\n", 3, "valid", "'missing.txt' not found"),
    ("classes=2\nvalid=valid.txt\nnames = nope.names\n", 3, "names", "not found"),
    ("classes=2\nvalid=valid.txt\ndifficult=\n", 3, "difficult", "expected a file name"),
    ("classes=2\nvalid valid.txt\n", 2, None, "key = value"),
])
def test_data_file_errors_name_file_line_and_key(dataset, text, line, key, message):
    data = write(dataset / "bad.data", text)
    with pytest.raises(InputError, match=message) as caught:
        read_data_file(data)
    assert (caught.value.path, caught.value.line, caught.value.key) == (str(data), line, key)
    assert str(data) in str(caught.value)


def test_missing_data_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_data_file(tmp_path / "none.data")


# ------------------------------------------------------------------------------ image lists


def test_image_list_skips_blanks_and_comments_and_resolves_both_ways(dataset):
    write(dataset / "images" / "a.jpg", "")
    write(Path.cwd() / "images" / "b.jpg", "")
    listing = write(dataset / "list.txt",
                    "# header\nimages/a.jpg\n\n  images/b.jpg  \n/abs/c.png\nimages/gone.jpg\n",
                    newline="\r\n")
    entries = read_image_list(listing)
    assert [(e.path, e.line) for e in entries] == [
        (dataset / "images" / "a.jpg", 2),  # only next to the list
        (Path("images") / "b.jpg", 4),  # in the working directory: kept as written
        (Path("/abs/c.png"), 5),  # missing: returned all the same, with its problem
        (Path("images") / "gone.jpg", 6),  # missing relative entry: as darknet would open it
    ]
    assert [e.problem is None for e in entries] == [True, True, False, False]
    assert all(e.problem.line == e.line and "not found" in str(e.problem)
               for e in entries if e.problem is not None)


def test_detect_calibrate_and_map_read_lists_with_the_same_reader(dataset, monkeypatch):
    """One reader: a list entry resolves to the same path for every command."""
    from yolo8 import calibrate, evaluate, inputs

    write(dataset / "images" / "a.jpg", "")
    listing = write(dataset / "list.txt", "images/a.jpg\n")
    calls = []
    real = read_image_list

    def spy(path):
        calls.append(path)
        return real(path)

    for module in (calibrate, evaluate, inputs):
        monkeypatch.setattr(module, "read_image_list", spy)
    assert calibrate.calibration_images(listing, None) == [dataset / "images" / "a.jpg"]
    assert [s.path for s in inputs.read_input_list(listing).sources] == [dataset / "images" / "a.jpg"]
    assert len(calls) == 2


def test_empty_image_list_is_an_input_error(dataset):
    listing = write(dataset / "empty.txt", "# nothing\n\n")
    with pytest.raises(InputError, match="empty") as caught:
        read_image_list(listing)
    assert caught.value.path == str(listing)


# ------------------------------------------------------------------------------------ names


def test_names_keep_inner_spaces_and_accept_crlf(dataset):
    names = write(dataset / "x.names", "person\ntraffic light \nstop sign\n\n", newline="\r\n")
    assert read_names(names) == ["person", "traffic light", "stop sign"]


def test_a_blank_line_between_names_is_an_error(dataset):
    names = write(dataset / "x.names", "a\n\nb\n")
    with pytest.raises(InputError, match="class 1") as caught:
        read_names(names)
    assert caught.value.line == 2


# ------------------------------------------------------------------------------- label paths


@pytest.mark.parametrize("image, label", [
    ("data/coco/images/train2017/x.jpg", "data/coco/labels/train2017/x.txt"),
    ("/d/coco128/images/000000000009.jpg", "/d/coco128/labels/000000000009.txt"),
    ("VOCdevkit/VOC2007/JPEGImages/000001.JPG", "VOCdevkit/VOC2007/labels/000001.txt"),
    ("images/a.jpeg", "labels/a.txt"),
    ("set/images/b.PNG", "set/labels/b.txt"),
    ("set/images/c.Bmp", "set/labels/c.txt"),
    ("set/images/d.tiff", "set/labels/d.txt"),
    ("set/images/e.webp", "set/labels/e.txt"),
    ("set/images/f.g.jpg", "set/labels/f.g.txt"),
    # the folder nearest the file is replaced, as AlexeyAB's /images/train2017/ rule does
    ("/home/images/coco/images/val2017/x.jpg", "/home/images/coco/labels/val2017/x.txt"),
    # whole folder names only
    ("myimages/x.jpg", "myimages/x.txt"),
    ("images2/x.jpg", "images2/x.txt"),
    # no images folder: darknet's "labels next to the image" layout
    ("data/obj/img1.jpg", "data/obj/img1.txt"),
    ("x.jpg", "x.txt"),
    ("data/images/noext", "data/labels/noext.txt"),
])
def test_label_path(image, label):
    assert label_path(image) == Path(label)
    assert label_path(Path(image)) == Path(label)


# ----------------------------------------------------------------------------------- labels


def test_labels_become_xyxy_pixel_boxes(tmp_path):
    labels = write(tmp_path / "a.txt", "0 0.5 0.5 0.5 0.25\n\n3 0.1 0.9 0.2 0.2\n",
                   newline="\r\n")
    truth = read_labels(labels, num_classes=4, image_width=640, image_height=480)
    # box 1: centre (320, 240), size 320 x 120; box 2: centre (64, 432), size 128 x 96
    np.testing.assert_allclose(truth.boxes, [[160, 180, 480, 300], [0, 384, 128, 480]],
                               rtol=0, atol=1e-9)  # decimal fractions times pixel counts
    assert truth.boxes.dtype == np.float64
    assert truth.classes.tolist() == [0, 3] and truth.classes.dtype == np.int64
    assert truth.difficult.tolist() == [False, False]


def test_missing_label_file_means_no_objects(tmp_path):
    truth = read_labels(tmp_path / "none.txt", 80, 640, 480)
    assert truth.boxes.shape == (0, 4) and truth.classes.shape == (0,)
    assert truth.difficult.shape == (0,)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.1", "found 4 fields"),
    ("0 0.5 0.5 0.1 0.1 0.9", "found 6 fields"),
    ("person 0.5 0.5 0.1 0.1", "class id 'person' is not an integer"),
    ("1.0 0.5 0.5 0.1 0.1", "not an integer"),
    ("0 0.5 x 0.1 0.1", "coordinates must be numbers"),
    ("0 0.5 nan 0.1 0.1", "finite"),
    ("0 0.5 0.5 -0.1 0.1", "width, height >= 0"),
    ("5 0.5 0.5 0.1 0.1", "class id 5 out of range: expected 0..4"),
    ("-1 0.5 0.5 0.1 0.1", "class id -1 out of range"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, line, message):
    labels = write(tmp_path / "bad.txt", f"0 0.5 0.5 0.1 0.1\n\n{line}\n")
    with pytest.raises(InputError, match=message) as caught:
        read_labels(labels, num_classes=5, image_width=100, image_height=100)
    assert caught.value.path == str(labels) and caught.value.line == 3
    assert f"{labels}:3:" in str(caught.value)


def test_ground_truth_with_difficult_list_entry(tmp_path):
    write(tmp_path / "labels" / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp_path / "labels" / "difficult_a.txt", "1 0.25 0.25 0.1 0.1\n")
    truth = read_ground_truth(tmp_path / "images" / "a.jpg", 2, 100, 100,
                              tmp_path / "images" / "difficult_a.jpg")
    assert truth.classes.tolist() == [0, 1]
    assert truth.difficult.tolist() == [False, True]
    np.testing.assert_allclose(truth.boxes[1], [20, 20, 30, 30], rtol=0, atol=1e-12)
    plain = read_ground_truth(tmp_path / "images" / "a.jpg", 2, 100, 100)
    assert plain.difficult.tolist() == [False]


@pytest.mark.skipif(not (COCO128 / "labels").is_dir(),
                    reason="needs ../shared/data/coco128-train (real darknet-layout labels)")
def test_coco128_labels_read_through_the_darknet_layout():
    images = sorted((COCO128 / "images").glob("*.jpg"))
    lines = 0
    for image in images:
        truth = read_labels(label_path(image), 80, 640, 480)
        lines += len(truth.classes)
        # relative coordinates in 0..1 give boxes inside the image (labels are rounded to 1e-6)
        assert np.all(truth.boxes >= -1e-3) and np.all(truth.boxes[:, [0, 2]] <= 640 + 1e-3)
        assert np.all(truth.boxes[:, [1, 3]] <= 480 + 1e-3)
    # Two of the images (000000000250, 000000000508) have no label file: no objects.
    label_files = [COCO128 / "labels" / f"{image.stem}.txt" for image in images]
    expected = sum(len(p.read_text().splitlines()) for p in label_files if p.exists())
    assert len(images) == 128 and lines == expected > 900
