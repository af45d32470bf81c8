"""Every bad input ends cleanly (issue 8): a corpus of broken cfgs, weights, images, lists, data
sets and calibration files fed to `yolo8 detect`, `calibrate`, `map` (as a user runs them: a
subprocess) and to the Python API. Each case checks the exit code (or the exception type), that
the message names the file (and line and key where known) and the problem, and that no traceback
is shown. Then: valid inputs in unusual clothes, the bounds that refuse a hostile cfg before
anything is allocated (under an address-space limit), and the default-model fetch (cache check,
safe extraction, atomic writes).

Most cases use a tiny network (TINY, 64x64, one class) with seeded random weights: the checks
are about input handling, not accuracy, and the tiny model keeps each run well under a second.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

import yolo8
from yolo8 import models
from yolo8.errors import (CalibrationError, ConfigError, InputError, ModelFetchError, WeightsError,
                          Yolo8Error)

from .conftest import DATA, PHOTOS, graph_of, run_yolo8
from .oracle import WEIGHTS_HEADER


TINY = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""
# Floats of TINY's weights, counted by hand from darknet's layout (bias, [scale, mean, var],
# weights): 8 + 3*8 + 8*3*3*3, then 16 + 3*16 + 16*8*3*3, then 18 + 18*16.
TINY_FLOATS = (8 + 24 + 216) + (16 + 48 + 1152) + (18 + 288)


def tiny_weights_bytes(floats: np.ndarray | None = None) -> bytes:
    """Plausible weights for TINY: BN scale 1, mean 0, variance 1, small random filters."""
    if floats is None:
        rng = np.random.default_rng(8)
        floats = rng.normal(0, 0.1, TINY_FLOATS).astype("<f4")
        for start, n in ((0, 8), (248, 16)):  # BN blocks: scale, mean, var after the biases
            floats[start + n: start + 2 * n] = 1.0
            floats[start + 2 * n: start + 3 * n] = 0.0
            floats[start + 3 * n: start + 4 * n] = 1.0
    return WEIGHTS_HEADER + np.asarray(floats, "<f4").tobytes()


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding `needle` (its n-th occurrence)."""
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")


run_cli = functools.partial(run_yolo8, timeout=300)


# ------------------------------------------------------------------------------------ the kit


@dataclass
class Kit:
    """A folder of good files (tiny model, photos, a labelled data set) to break copies of."""

    root: Path
    cfg: Path = field(init=False)
    weights: Path = field(init=False)
    photo: Path = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = self.write("tiny.cfg", TINY)
        self.weights = self.write_bytes("tiny.weights", tiny_weights_bytes())
        self.photo = self.copy_photo(PHOTOS[4], "photo.jpg")

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def copy_photo(self, source: Path, name: str) -> Path:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def cfg_with(self, name: str, old: str, new: str, count: int = 1) -> Path:
        assert TINY.count(old) >= count, old
        return self.write(name, TINY.replace(old, new, count))

    def model_args(self, cfg: Path | None = None, weights: Path | None = None) -> list[str]:
        return ["--cfg", str(cfg or self.cfg), "--weights", str(weights or self.weights)]

    def data_set(self, name: str, images: dict[str, bytes | Path | None],
                 labels: dict[str, str] | None = None, data_text: str | None = None) -> Path:
        """A darknet data set: images/<name> (None: listed but absent), labels/<stem>.txt
        (default: one box of class 0 each), a list, a names file and a .data file."""
        folder = self.root / name
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(exist_ok=True)
        labels = labels or {}
        for image, content in images.items():
            target = folder / "images" / image
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            elif content is not None:
                target.write_bytes(content)
            stem = Path(image).stem
            (folder / "labels" / f"{stem}.txt").write_text(labels.get(stem, "0 0.5 0.5 0.3 0.4\n"))
        (folder / "valid.txt").write_text("".join(f"images/{i}\n" for i in images))
        (folder / "one.names").write_text("thing\n")
        text = data_text if data_text is not None else (
            "classes=1\nvalid=valid.txt\nnames=one.names\n")
        return self.write(f"{name}/set.data", text)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    return Kit(tmp_path_factory.mktemp("kit"))


# ---------------------------------------------------------------------------- the corpus table


@dataclass
class Expect:
    """What a case must produce: exit code (CLI) or exception type (API), and message parts."""

    fragments: list[str]
    exit_code: int = 2
    error: type[Exception] = Yolo8Error
    line: int | None = None  # the API error's line, when the case knows it
    key: str | None = None


@dataclass
class Case:
    name: str
    via: str  # "cli" or "api"
    make: Callable[[Kit], tuple[object, Expect]]  # -> (argv or a callable, expectations)


def cfg_case(name: str, old: str, new: str, fragments: list[str], key: str | None,
             needle: str | None = None, occurrence: int = 1, via: str = "api",
             command: str = "detect", named_line: bool = True) -> Case:
    """A TINY cfg with `old` replaced by `new`; the error must name the line holding `needle`
    (default: `new`'s first line; its n-th `occurrence`) and `key`."""
    def make(kit: Kit):
        cfg = kit.cfg_with(f"{name}.cfg", old, new)
        line = line_of(cfg, needle or new.split("\n")[0], occurrence) if named_line else None
        where = f"{cfg}:{line}:" if line else f"{cfg}: "
        expect = Expect([where, *([f"'{key}'"] if key else []), *fragments], error=ConfigError,
                        line=line, key=key)
        if via == "api":
            return (lambda: yolo8.load(cfg, kit.weights)), expect
        if command == "calibrate":
            images = kit.write(f"{name}.list", f"{kit.photo}\n")
            return ["calibrate", "--images", images, "--out", kit.root / f"{name}.json",
                    *kit.model_args(cfg)[:2], "--weights", kit.weights], expect
        if command == "map":
            data = kit.data_set(f"{name}-set", {"a.jpg": kit.photo})
            return ["map", "--data", data, *kit.model_args(cfg)], expect
        return ["detect", kit.photo, "--no-save", *kit.model_args(cfg)], expect
    return Case(name, via, make)


def file_case(name: str, content: Callable[[Kit], Path], error: type[Exception],
              fragments: list[str], via: str = "api", role: str = "cfg") -> Case:
    """The whole cfg (or weights) file replaced by `content`."""
    def make(kit: Kit):
        path = content(kit)
        expect = Expect([str(path), *fragments], error=error)
        cfg, weights = (path, kit.weights) if role == "cfg" else (kit.cfg, path)
        if via == "api":
            return (lambda: yolo8.load(cfg, weights)), expect
        return ["detect", kit.photo, "--no-save", *kit.model_args(cfg, weights)], expect
    return Case(name, via, make)


def _many_big_convs(kit: Kit) -> Path:
    # 3x3x1024 -> 1024 convs hold 9.4M weights each: the 58th takes the total past 2^29.
    body = "[convolutional]\nfilters=1024\nsize=3\npad=1\nactivation=leaky\n\n" * 60
    return kit.write("many_big.cfg", TINY.replace("[maxpool]", body + "[maxpool]", 1))


def _weights_scaled(kit: Kit, name: str, edit: Callable[[np.ndarray], None]) -> Path:
    floats = np.frombuffer(tiny_weights_bytes()[20:], "<f4").copy()
    edit(floats)
    return kit.write_bytes(name, tiny_weights_bytes(floats))


def _calibration_for_tiny(kit: Kit, name: str, edit: Callable[[dict], None] | None = None) -> Path:
    """A calibration file for TINY (its own model id), written by yolo8, then edited."""
    from yolo8.quant import Calibration

    model = yolo8.load(kit.cfg, kit.weights)
    cal = Calibration(model_id=model.model_id, thresholds={2: 4.0}, num_images=1)
    document = json.loads(cal.to_json())
    if edit:
        edit(document)
    return kit.write(name, json.dumps(document))


def _map_case(name: str, images: dict, labels: dict | None, data_text: str | None,
              fragments: Callable[[Kit, Path], list[str]], exit_code: int = 2,
              error: type[Exception] = InputError, via: str = "cli") -> Case:
    def make(kit: Kit):
        resolved = {k: (kit.photo if v == "PHOTO" else v) for k, v in images.items()}
        data = kit.data_set(name, resolved, labels, data_text)
        expect = Expect(fragments(kit, data.parent), exit_code=exit_code, error=error)
        if via == "api":
            from yolo8.evaluate import MapOptions, run_map
            options = MapOptions(data=data, cfg=kit.cfg, weights=kit.weights)
            return (lambda: run_map(options)), expect
        return ["map", "--data", data, *kit.model_args()], expect
    return Case(name, via, make)


TRUNCATED_JPEG = PHOTOS[0].read_bytes()[:5000]

CASES = [
    # ---- cfg: absurd sizes, references, heads, values, lines, files
    cfg_case("filters-too-many", "filters=8", "filters=1048577", ["must be <= 1048576"], "filters",
             via="cli"),
    cfg_case("filters-huge-output", "filters=16", "filters=900000",
             ["output would be 32x32x900000", "more than yolo8 accepts"], None,
             needle="[convolutional]", occurrence=2),  # the section's header line
    cfg_case("width-zero", "width=64", "width=0", ["must be >= 1, got 0"], "width", via="cli"),
    cfg_case("height-negative", "height=64", "height=-64", ["must be >= 1, got -64"], "height"),
    cfg_case("size-zero", "size=3", "size=0", ["must be >= 1, got 0"], "size"),
    cfg_case("stride-negative", "stride=1\npad=1", "stride=-2\npad=1", ["must be >= 1, got -2"],
             "stride", via="cli", command="calibrate"),
    cfg_case("route-to-missing-layer", "[convolutional]\nfilters=18",
             "[route]\nlayers=-9\n\n[convolutional]\nfilters=18", ["refers to layer -9"], "layers",
             needle="layers=-9", via="cli", command="map"),
    cfg_case("route-sizes-do-not-fit", "[convolutional]\nfilters=18",
             "[route]\nlayers=-1,0\n\n[convolutional]\nfilters=18",
             ["routed layers must have the same width and height"], "layers", needle="layers=-1,0"),
    cfg_case("shortcut-forward-reference", "[convolutional]\nfilters=18",
             "[shortcut]\nfrom=5\n\n[convolutional]\nfilters=18", ["refers to layer 5"], "from",
             needle="from=5"),
    cfg_case("shortcut-shapes-differ", "[convolutional]\nfilters=18",
             "[shortcut]\nfrom=0\n\n[convolutional]\nfilters=18", ["darknet adds layers of equal width and height only"],
             "from", needle="from=0"),
    cfg_case("mask-outside-anchors", "mask=0,1,2", "mask=0,1,7", ["must be <= 2, got 7"], "mask",
             via="cli"),
    cfg_case("head-filters-wrong", "filters=18", "filters=17",
             ["has 17 filters, expected 18 (3 anchors x (5 + 1 classes))"], None, needle="[yolo]",
             via="cli"),
    cfg_case("unknown-activation", "activation=leaky", "activation=swishy",
             ["unknown activation 'swishy'"], "activation"),
    cfg_case("value-does-not-parse", "filters=8", "filters=8x", ["expected an integer, got '8x'"],
             "filters"),
    cfg_case("value-with-500-digits", "filters=8", "filters=" + "9" * 500,
             ["must be <= 1048576, got 999999999999... (500 digits)"], "filters",
             needle="filters=999"),
    cfg_case("value-underscored", "filters=16", "filters=1_6", ["expected an integer, got '1_6'"],
             "filters"),
    cfg_case("anchor-not-finite", "anchors=10,14", "anchors=10,inf", ["expected finite numbers"],
             "anchors"),
    cfg_case("malformed-line", "stride=2\n", "stride 2\n", ["expected 'key=value', got 'stride 2'"],
             None),
    cfg_case("malformed-section", "[maxpool]", "[maxpool", ["malformed section header"], None,
             via="cli"),
    cfg_case("unknown-section", "[maxpool]", "[lstm]", ["unknown or unsupported section [lstm]"],
             None),
    cfg_case("two-channel-model", "channels=3", "channels=2",
             ["channels=2", "RGB (channels=3) or grey (channels=1) only"], "channels", via="cli"),
    file_case("cfg-binary-garbage",
              lambda k: k.write_bytes("garbage.cfg", bytes(np.random.default_rng(1).integers(
                  0, 256, 4096, dtype=np.uint8))), ConfigError, ["is not a text file"], via="cli"),
    file_case("cfg-empty", lambda k: k.write("empty.cfg", ""), ConfigError,
              ["no sections found"], via="cli"),
    file_case("cfg-is-a-directory", lambda k: (k.root / "cfgdir").mkdir(exist_ok=True)
              or k.root / "cfgdir", ConfigError, ["is a directory"], via="cli"),
    file_case("cfg-weights-past-2-GiB", _many_big_convs, ConfigError,
              ["more than yolo8 accepts (536870912, 2.0 GiB)"], via="cli"),
    file_case("cfg-input-too-large",
              lambda k: k.write("wide.cfg", TINY.replace("width=64\nheight=64\nchannels=3",
                                                         "width=16384\nheight=16384\nchannels=64")),
              ConfigError, [":1:", "[net] input would be 16384x16384x64"]),
    # ---- weights
    file_case("weights-empty", lambda k: k.write_bytes("empty.weights", b""), WeightsError,
              ["is 0 bytes, too short for a darknet weights header"], via="cli", role="weights"),
    file_case("weights-header-only", lambda k: k.write_bytes("header.weights", WEIGHTS_HEADER),
              WeightsError, ["is 20 bytes but", f"needs exactly {20 + 4 * TINY_FLOATS}"],
              via="cli", role="weights"),
    file_case("weights-truncated", lambda k: k.write_bytes("half.weights",
                                                           tiny_weights_bytes()[:3000]),
              WeightsError, ["is 3000 bytes", "too short"], role="weights"),
    file_case("weights-one-float-short", lambda k: k.write_bytes("short.weights",
                                                                 tiny_weights_bytes()[:-4]),
              WeightsError, [f"is {16 + 4 * TINY_FLOATS} bytes but",
                             f"needs exactly {20 + 4 * TINY_FLOATS}", "-4 bytes: too short"],
              via="cli", role="weights"),
    file_case("weights-one-float-long", lambda k: k.write_bytes("long.weights",
                                                                tiny_weights_bytes() + b"\0" * 4),
              WeightsError, [f"needs exactly {20 + 4 * TINY_FLOATS}", "+4 bytes: too long"],
              role="weights"),
    file_case("weights-garbage-nan",
              lambda k: k.write_bytes("nan.weights", WEIGHTS_HEADER + b"\xff" * (4 * TINY_FLOATS)),
              WeightsError, ["non-finite values"], role="weights"),
    file_case("weights-batch-norm-overflows",
              # first BN scale 3e38 over a zero variance: scale / (sqrt(0) + 1e-6) = 3e44
              lambda k: _weights_scaled(k, "bn.weights",
                                        lambda f: f.__setitem__([8, 24], [3e38, 0])),
              WeightsError, ["layer 0", "beyond float32"], via="cli", role="weights"),
    file_case("weights-is-a-directory", lambda k: (k.root / "wdir").mkdir(exist_ok=True)
              or k.root / "wdir", WeightsError, ["is a directory"], role="weights"),
    # ---- calibration files
    Case("calibration-damaged", "cli", lambda k: (
        ["detect", k.photo, "--no-save", "--backend", "int8", *k.model_args(), "--calibration",
         k.write("damaged.json", _calibration_for_tiny(k, "whole.json").read_text()[:-40])],
        Expect([str(k.root / "damaged.json"), "not valid JSON", "the file is damaged"]))),
    Case("calibration-for-another-model", "cli", lambda k: (
        ["detect", k.photo, "--no-save", "--backend", "int8", *k.model_args(), "--calibration",
         models.default_calibration()],
        Expect([str(models.default_calibration()), "made for another model"]))),
    Case("calibration-binary-garbage", "api", lambda k: (
        lambda: yolo8.load(k.cfg, k.weights, "int8", k.write_bytes("bin.json", b"\x89\xff\x00")),
        Expect([str(k.root / "bin.json"), "cannot read the calibration file"],
               error=CalibrationError))),
    Case("calibration-threshold-negative", "api", lambda k: (
        lambda: yolo8.load(k.cfg, k.weights, "int8", _calibration_for_tiny(
            k, "neg.json", lambda d: d["thresholds"].__setitem__("2", -1.0))),
        Expect([str(k.root / "neg.json"), "layer 2: threshold -1.0 must be finite and > 0"],
               error=CalibrationError, key="thresholds"))),
    # ---- lists, folders, data sets, labels
    Case("calibrate-empty-list", "cli", lambda k: (
        ["calibrate", "--images", k.write("empty.list", "# nothing\r\n\r\n"), *k.model_args()],
        Expect([str(k.root / "empty.list"), "empty image list"]))),
    Case("calibrate-out-is-a-folder", "cli", lambda k: (
        ["calibrate", "--images", k.write("one.list", f"{k.photo}\n"), *k.model_args(), "--out",
         k.root], Expect([str(k.root), "is a folder"]))),
    Case("detect-empty-folder", "cli", lambda k: (
        ["detect", (k.root / "nothing").mkdir(exist_ok=True) or k.root / "nothing",
         *k.model_args()], Expect([str(k.root / "nothing"), "empty folder"]))),
    _map_case("data-without-valid", {"a.jpg": "PHOTO"}, None, "classes=1\nnames=one.names\n",
              lambda k, d: [f"{d}/set.data", "'valid'", "no 'valid = <list of images>' line"]),
    _map_case("data-classes-zero", {"a.jpg": "PHOTO"}, None, "classes=0\nvalid=valid.txt\n",
              lambda k, d: [f"{d}/set.data:1:", "'classes'", "expected a positive integer"]),
    _map_case("data-valid-missing", {"a.jpg": "PHOTO"}, None, "classes=1\nvalid=nope.txt\n",
              lambda k, d: [f"{d}/set.data:2:", "'valid'", "file 'nope.txt' not found"], via="api"),
    _map_case("data-classes-differ-from-model", {"a.jpg": "PHOTO"}, None,
              "classes=3\nvalid=valid.txt\n",
              lambda k, d: [f"{d}/set.data", "classes=3, but the model detects 1 classes"]),
    _map_case("map-no-image-readable", {"a.jpg": b"", "b.jpg": TRUNCATED_JPEG}, None, None,
              lambda k, d: [f"{d}/valid.txt", "none of the 2 images listed could be read"]),
    # ---- API misuse a user can make
    Case("api-cfg-without-weights", "api", lambda k: (
        lambda: yolo8.load(k.cfg), Expect([str(k.cfg), "needs its weights"]))),
    Case("api-unknown-backend", "api", lambda k: (
        lambda: yolo8.load(k.cfg, k.weights, "int4"), Expect(["unknown backend 'int4'"]))),
    Case("api-names-too-few", "api", lambda k: (
        lambda: yolo8.load(k.cfg, k.weights, names=k.write("none.names", "\n\n")),
        Expect([str(k.root / "none.names"), "the names file is empty"], error=InputError))),
]


def test_the_corpus_is_large_and_covers_every_entry_point(kit: Kit):
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)
    entry_points = set()
    for case in CASES:
        action, _ = case.make(kit)
        entry_points.add(action[0] if case.via == "cli" else "api")
    assert entry_points == {"detect", "calibrate", "map", "api"}


def _check_cli(argv: list, expect: Expect, cwd: Path) -> None:
    result = run_cli(*argv, cwd=cwd)
    assert result.returncode == expect.exit_code, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    if expect.exit_code == 2:
        assert last.startswith("yolo8: error: "), result.stderr
    for fragment in expect.fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def _check_api(call: Callable[[], object], expect: Expect) -> None:
    with pytest.raises(expect.error) as info:
        call()
    message = str(info.value)
    for fragment in expect.fragments:
        assert fragment in message, (fragment, message)
    if expect.line is not None:
        assert info.value.line == expect.line, message
    if expect.key is not None:
        assert info.value.key == expect.key, message


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input_ends_cleanly(case: Case, kit: Kit):
    action, expect = case.make(kit)
    if case.via == "cli":
        _check_cli(action, expect, kit.root)
    else:
        _check_api(action, expect)


# ------------------------------------------------------------------- batches: skip, go on, fail


def test_map_skips_a_truncated_image_and_a_bad_label_file_and_exits_1(kit: Kit):
    data = kit.data_set("mixed", {"a.jpg": kit.photo, "broken.jpg": TRUNCATED_JPEG,
                                  "b.jpg": PHOTOS[1], "badlabel.jpg": kit.photo},
                        labels={"badlabel": "0 0.5 0.5 0.2 0.2\n0 0.5 nope 0.2 0.2\n"})
    out = kit.root / "mixed.json"
    result = run_cli("map", "--data", data, *kit.model_args(), "--json", out)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    broken, label = data.parent / "images" / "broken.jpg", data.parent / "labels" / "badlabel.txt"
    assert f"{broken}: is not an image" in result.stderr
    assert f"{label}:2: expected 'class x_center y_center width height'" in result.stderr
    assert "2 of 4 images could not be read" in result.stderr
    assert "mean over the" in result.stdout  # the metrics of the other two are printed
    metrics = json.loads(out.read_text())
    assert metrics["images"] == 2 and metrics["skipped_images"] == 2


def test_calibrate_skips_an_unreadable_image_writes_the_file_and_exits_1(kit: Kit):
    text_jpg = kit.write("calib/text.jpg", "this is text, not a JPEG")
    images = kit.write("calib/list.txt", f"{kit.photo}\n{text_jpg}\n{PHOTOS[1]}\n")
    out = kit.root / "calib" / "new" / "tiny.json"  # its folder does not exist yet
    result = run_cli("calibrate", "--images", images, *kit.model_args(), "--out", out)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{text_jpg}: is not an image" in result.stderr
    assert result.stderr.count(str(text_jpg)) == 1  # named once, not once per pass
    assert "1 of 3 images could not be read" in result.stderr
    model = yolo8.load(kit.cfg, kit.weights)
    from yolo8.quant import Calibration
    cal = Calibration.load(out)
    cal.check_model(model.model_id)
    assert cal.num_images == 2


def test_detect_skips_an_empty_image_file_and_exits_1(kit: Kit):
    empty = kit.write_bytes("det/empty.jpg", b"")
    out = kit.root / "det" / "out"
    result = run_cli("detect", empty, kit.photo, "--save-dir", out, *kit.model_args())
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{empty}: is not an image" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [kit.photo.name]  # the good one was done


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a 'decompression bomb')."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))) + chunk(b"IEND", b""))


def test_an_image_claiming_too_many_pixels_is_skipped(kit: Kit):
    bomb = kit.write_bytes("bomb/huge.png", _png_claiming(100_000, 100_000))
    data = kit.data_set("bomb-set", {"a.jpg": kit.photo, "huge.png": bomb})
    result = run_cli("map", "--data", data, *kit.model_args())
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert result.returncode == 1 and "huge.png" in result.stderr


def test_weights_that_overflow_the_network_give_no_nan_boxes(kit: Kit):
    """Weights of the right size whose values overflow float32 inside the network (inf - inf
    = NaN reaches the box centres): the run ends normally, without NaN boxes, and says why."""
    cfg = kit.write("nan/two.cfg", "[net]\nwidth=32\nheight=32\nchannels=3\n"
                    "[convolutional]\nfilters=2\nsize=3\npad=1\nactivation=linear\n"
                    "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
                    "[yolo]\nmask=0\nanchors=10,14\nclasses=1\nnum=1\n")
    first = np.full((2, 3, 3, 3), 3e37, "<f4")  # bright pixels: +inf in both channels
    second = np.ones((6, 2, 1, 1), "<f4")
    second[0, 1] = -1  # x = inf - inf = NaN; objectness and class = inf -> 1
    weights = kit.write_bytes("nan/two.weights", WEIGHTS_HEADER + np.zeros(2, "<f4").tobytes()
                              + first.tobytes() + np.zeros(6, "<f4").tobytes() + second.tobytes())
    result = run_cli("detect", kit.photo, "--no-save", *kit.model_args(cfg, weights))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "not finite (inf or NaN)" in result.stderr
    assert "nan" not in result.stdout.lower()
    for line in result.stdout.splitlines():
        left, top, right, bottom = map(int, re.search(r"box=(.*)$", line).group(1).split(","))
        assert 0 <= left <= right and 0 <= top <= bottom


# ---------------------------------------------------- hostile sizes, under an address-space limit

LIMIT = 2 << 30  # 2 GiB of address space: enough for yolo8 itself, far too little for these


def _live_hog(kit: Kit) -> tuple[Path, int]:
    """Every layer within the per-layer bound (8192x8192x4 = 2^28 values), but routes keep five
    such outputs alive at once: 5 GiB for one image. Refused at the 5th conv."""
    conv = "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n\n"
    text = ("[net]\nwidth=8192\nheight=8192\nchannels=3\n\n" + conv * 5
            + "[route]\nlayers=0\n\n[route]\nlayers=1\n\n[route]\nlayers=2\n\n"
            "[maxpool]\nsize=8\nstride=8\n\n"
            "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n\n"
            + TINY[TINY.index("[yolo]"):])
    cfg = kit.write("hog/live.cfg", text)
    floats = (4 + 4 * 3) + 4 * (4 + 4 * 4) + (18 + 18 * 4)  # 1x1 convs: biases + weights
    kit.write_bytes("hog/live.weights", WEIGHTS_HEADER + np.zeros(floats, "<f4").tobytes())
    return cfg, line_of(cfg, "[convolutional]", 5)


def test_many_gigabytes_of_activations_are_refused_at_parse_time(kit: Kit):
    cfg, line = _live_hog(kit)
    result = run_cli("detect", kit.photo, "--no-save", "--cfg", cfg, "--weights",
                     kit.root / "hog" / "live.weights", address_space=LIMIT)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "out of memory" not in result.stderr
    assert f"{cfg}:{line}: [convolutional] one image would need" in result.stderr
    assert "more than yolo8 accepts" in result.stderr


def test_a_weights_file_of_gigabytes_is_refused_from_its_size(kit: Kit):
    huge = kit.root / "hog" / "huge.weights"
    huge.parent.mkdir(exist_ok=True)
    with huge.open("wb") as out:  # sparse: 3 GiB long, no disk used
        out.write(WEIGHTS_HEADER)
        out.truncate(3 << 30)
    result = run_cli("detect", kit.photo, "--no-save", *kit.model_args(weights=huge),
                     address_space=LIMIT)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{huge}: is {3 << 30} bytes but" in result.stderr and "too long" in result.stderr


# ------------------------------------------------------------ valid inputs in unusual clothes


def _in_unusual_clothes(text: str) -> str:
    """Same network: BOM, CRLF, spaces around '=', comments, blank lines."""
    lines = []
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            line = f"  {key} =  {value}   # was: {line}"
        lines.append(line)
        lines.append("; a comment" if line.startswith("[") else "")
    return "\ufeff# converted on Windows\r\n" + "\r\n".join(lines) + "\r\n"


def test_cfg_in_unusual_clothes_is_the_same_network(default_cfg):
    from yolo8.graph import load_graph

    plain = load_graph(default_cfg)
    dressed = graph_of(_in_unusual_clothes(default_cfg.read_text()), "x.cfg")
    assert dressed.structure_digest() == plain.structure_digest()
    assert len(dressed.layers) == 24  # not an empty match: yolov3-tiny's 24 layers


def test_detect_and_map_with_unusual_files_give_the_same_results(tmp_path, default_cfg,
                                                                 default_weights):
    """A cfg with BOM + CRLF, a PNG named .JPG, folders and names with spaces, a CRLF .data file
    and list: the same detections and metrics as the plain files."""
    plain_dir, odd_dir = tmp_path / "plain", tmp_path / "odd folder"
    for folder in (plain_dir, odd_dir):
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
    shutil.copyfile(PHOTOS[4], plain_dir / "images" / "p.jpg")
    ok, png = cv2.imencode(".png", cv2.imread(str(PHOTOS[4])))
    assert ok
    (odd_dir / "images" / "my photo.JPG").write_bytes(png.tobytes())  # lossless: same pixels
    label = (DATA / "labels" / f"{PHOTOS[4].stem}.txt").read_text()
    (plain_dir / "labels" / "p.txt").write_text(label)
    (odd_dir / "labels" / "my photo.txt").write_text(label.replace("\n", "\r\n"))
    cfg = odd_dir / "my model.cfg"
    cfg.write_bytes(_in_unusual_clothes(default_cfg.read_text()).encode())
    names = DATA.parent.parent / "cfg" / "coco.names"
    (plain_dir / "valid.txt").write_text(f"{plain_dir / 'images' / 'p.jpg'}\n")
    (odd_dir / "valid list.txt").write_bytes(
        f"\ufeff{odd_dir / 'images' / 'my photo.JPG'}\r\n".encode())
    (plain_dir / "set.data").write_text(f"classes=80\nvalid=valid.txt\nnames={names}\n")
    (odd_dir / "my set.data").write_bytes(
        f"classes = 80\r\nvalid = valid list.txt\r\nnames = {names}\r\n".encode())

    runs = {}
    for name, folder, image, data, model_cfg in (
            ("plain", plain_dir, "images/p.jpg", "set.data", default_cfg),
            ("odd", odd_dir, "images/my photo.JPG", "my set.data", cfg)):
        model = ["--cfg", model_cfg, "--weights", default_weights]
        detect = run_cli("detect", image, "--no-save", *model, cwd=folder)
        measured = run_cli("map", "--data", data, *model, "--json", "m.json", cwd=folder)
        assert detect.returncode == 0 and measured.returncode == 0, detect.stderr + measured.stderr
        boxes = [line.split(": ", 1)[1] for line in detect.stdout.splitlines()]
        runs[name] = boxes, json.loads((folder / "m.json").read_text())
    assert runs["plain"][0] and runs["odd"][0] == runs["plain"][0]
    assert runs["odd"][1]["voc07"] == runs["plain"][1]["voc07"] > 0


# ---------------------------------------------------------------------------- the model fetch


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
MEMBER = "pkg-1.0/pkg/model.weights"


def _no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_extract_member_copies_a_regular_file(tmp_path):
    archive = _tar_gz(tmp_path / "a.tar.gz", [_regular("pkg-1.0/README", b"hi"),
                                              _regular(MEMBER, PAYLOAD)])
    target = tmp_path / "cache" / "model.weights"
    models.extract_member(archive, MEMBER, len(PAYLOAD), _sha(PAYLOAD), target)
    assert target.read_bytes() == PAYLOAD
    assert _no_leftovers(target.parent) == ["model.weights"]


@pytest.mark.parametrize("members, member, fragment", [
    ([_link(MEMBER, "/etc/passwd", tarfile.SYMTYPE)], MEMBER, "is not a regular file"),
    ([_regular("pkg-1.0/other", PAYLOAD), _link(MEMBER, "pkg-1.0/other", tarfile.LNKTYPE)],
     MEMBER, "is not a regular file"),
    ([_regular(MEMBER, PAYLOAD[:-1])], MEMBER, f"is {len(PAYLOAD) - 1} bytes, expected"),
    ([_regular("../escape.weights", PAYLOAD)], "../escape.weights", "not a plain relative path"),
    ([_regular("/tmp/abs.weights", PAYLOAD)], "/tmp/abs.weights", "not a plain relative path"),
    ([_regular("pkg-1.0/../../escape.weights", PAYLOAD)], MEMBER, "has no " + MEMBER),
    ([_regular(MEMBER, PAYLOAD[::-1])], MEMBER, "has sha256"),
], ids=["symlink", "hardlink", "wrong-size", "dot-dot", "absolute", "traversal-elsewhere",
        "wrong-hash"])
def test_extract_member_refuses_unsafe_or_wrong_members(tmp_path, members, member, fragment):
    archive = _tar_gz(tmp_path / "a.tar.gz", members)
    cache = tmp_path / "deep" / "cache"
    cache.mkdir(parents=True)
    target = cache / "model.weights"
    with pytest.raises(ModelFetchError, match=re.escape(fragment)):
        models.extract_member(archive, member, len(PAYLOAD), _sha(PAYLOAD), target)
    assert _no_leftovers(cache) == []  # no target, no temporary file
    assert not (tmp_path / "escape.weights").exists()
    assert not (tmp_path / "deep" / "escape.weights").exists()


def test_damaged_archive_and_interrupted_copy_leave_the_old_file_alone(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "model.weights"
    target.parent.mkdir()
    target.write_bytes(b"the previous, verified file")
    whole = _tar_gz(tmp_path / "a.tar.gz", [_regular(MEMBER, PAYLOAD)]).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelFetchError, match="damaged|ends after"):
        models.extract_member(cut, MEMBER, len(PAYLOAD), _sha(PAYLOAD), target)

    def interrupted(archive, member, size, out):
        out.write(PAYLOAD[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_copy_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.extract_member(tmp_path / "a.tar.gz", MEMBER, len(PAYLOAD), _sha(PAYLOAD), target)
    assert target.read_bytes() == b"the previous, verified file"
    assert _no_leftovers(target.parent) == ["model.weights"]


def test_corrupted_cached_weights_are_detected_and_fetched_again(tmp_path, monkeypatch,
                                                                 default_weights):
    """Same size, one byte flipped (the header's minor version, so the file no longer even
    parses as these weights): yolo8.load() refetches from the registry (~10 s) and works."""
    cache = tmp_path / "cache"
    cache.mkdir()
    corrupted = bytearray(default_weights.read_bytes())
    corrupted[4] ^= 0x02
    (cache / models.WEIGHTS_NAME).write_bytes(bytes(corrupted))
    monkeypatch.setenv("YOLO8_CACHE_DIR", str(cache))
    model = yolo8.load()
    fetched = cache / models.WEIGHTS_NAME
    assert _sha(fetched.read_bytes()) == models.WEIGHTS_SHA256
    assert _no_leftovers(cache) == [models.WEIGHTS_NAME]
    assert any(d.name == "dog" for d in model.detect(cv2.imread(str(PHOTOS[4]))))
