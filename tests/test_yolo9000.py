"""yolo9000: [region] with a WordTree (tree=) and a class map (map=), against transcriptions
of darknet's loops (tests/darknet_reference.py: read_tree, softmax_tree, forward_region_layer,
hierarchy_predictions, hierarchy_top_prediction, get_region_detections) on a small synthetic
tree; OpenCV does not run yolo9000.

Bounds: the softmax differs from darknet's loop only in summation order and exp's rounding
(rtol 1e-5); products and boxes to float32 rounding (rtol 1e-6)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yolo8.backends.ops import FP32_OPS
from yolo8.darknet.wordtree import read_tree
from yolo8.errors import ConfigError
from yolo8.postprocess import HIER_THRESH, decode_region

from . import darknet_reference as ref
from .conftest import DATA, graph_of, run_yolo8

pytestmark = pytest.mark.timeout(300)

# Synthetic WordTree with darknet's quirks: siblings split in two groups (pine after the dog
# breeds), a parent listed after its child (rock -> mineral), three levels.
TREE = """animal -1
plant -1
thing -1
dog 0
cat 0
oak 1
terrier 3
poodle 3
pine 1
rock 10
mineral 2
granite 9
"""
MAP = "3\n5\n10\n4\n"  # dog, oak, mineral, cat
CLASSES, NUM = 12, 2


def region_cfg(tree: str = "t.tree", class_map: str | None = "m.map", classes: int = CLASSES,
               thresh_lines: str = "") -> str:
    mapped = f"map = {class_map}\n" if class_map else ""
    return ("[net]\nwidth=32\nheight=32\nchannels=3\n"
            "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
            f"[convolutional]\nfilters={NUM * (5 + classes)}\nsize=1\nactivation=linear\n"
            f"[region]\nanchors = 0.8,1.1, 3.0,4.3\nclasses={classes}\ncoords=4\nnum={NUM}\n"
            f"softmax=1\nthresh=.6\n{thresh_lines}tree={tree}\n{mapped}")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "t.tree").write_text(TREE)
    (tmp_path / "m.map").write_text(MAP)
    return tmp_path


def graph_at(folder: Path, text: str):
    (folder / "y9k.cfg").write_text(text)
    return graph_of(text, str(folder / "y9k.cfg"))


@pytest.mark.parametrize("lines", [TREE.splitlines(), ["a 3", "b 3", "c -1", "d -1"],
                                   ["a -1", "b 0", "c 0", "d -1", "e 3", "f 1"]])
def test_tree_groups_and_children_are_read_trees(tmp_path, lines):
    path = tmp_path / "x.tree"
    path.write_text("\n".join(lines) + "\n")
    ours, theirs = read_tree(path), ref.read_tree(lines)
    assert ours.parent.tolist() == theirs["parent"]
    assert ours.group_offset.tolist() == theirs["group_offset"]
    assert ours.group_size.tolist() == theirs["group_size"]
    assert ours.child.tolist() == theirs["child"]
    assert ours.names == theirs["name"]


def random_head_input(h: int, w: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (1, h, w, NUM * (5 + classes))).astype(np.float32)
    v = x.reshape(1, h, w, NUM, 5 + classes)
    v[..., 5:] *= 4  # confident class values, so the tree walks go deep
    return x


def test_softmax_tree_forward_equals_darknet(files):
    graph = graph_at(files, region_cfg())
    layer = graph.layers[2]
    x = random_head_input(3, 4, CLASSES, seed=1)
    out = FP32_OPS[type(layer)](layer, graph)(x)
    flat = ref.region_forward_tree(np.ascontiguousarray(x[0].transpose(2, 0, 1)).ravel(), NUM,
                                   CLASSES, 3, 4, ref.read_tree(TREE.splitlines()))
    ours = out.reshape(-1, 5 + CLASSES)  # NHWC is darknet's flattened box-major order
    theirs = flat.reshape(-1, 5 + CLASSES)
    np.testing.assert_allclose(ours[:, 4:], theirs[:, 4:], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ours[:, 2:4], theirs[:, 2:4])  # w, h raw
    # each sibling group sums to 1 in every box
    for offset, size in zip(ref.read_tree(TREE.splitlines())["group_offset"],
                            ref.read_tree(TREE.splitlines())["group_size"]):
        if size:
            np.testing.assert_allclose(ours[:, 5 + offset:5 + offset + size].sum(axis=1), 1,
                                       rtol=1e-6)


@pytest.mark.parametrize("class_map", [MAP.split(), None], ids=["map", "top_prediction"])
def test_region_tree_detections_equal_darknet(files, class_map):
    graph = graph_at(files, region_cfg(class_map="m.map" if class_map else None))
    layer = graph.layers[2]
    tree = ref.read_tree(TREE.splitlines())
    h, w, thresh = 4, 5, 0.3
    x = random_head_input(h, w, CLASSES, seed=2)
    out = FP32_OPS[type(layer)](layer, graph)(x)
    flat = ref.region_forward_tree(np.ascontiguousarray(x[0].transpose(2, 0, 1)).ravel(), NUM,
                                   CLASSES, h, w, tree)
    dets = ref.region_detections_tree(flat, NUM, CLASSES, h, w, layer.anchors, thresh, tree,
                                      None if class_map is None else [int(c) for c in class_map],
                                      HIER_THRESH)
    cands = decode_region(out[0], layer, thresh)
    np.testing.assert_allclose(cands.boxes, np.array([d[0] for d in dets]), rtol=1e-6, atol=1e-7)
    theirs = np.array([d[1] for d in dets])
    assert cands.probs.shape == theirs.shape == (h * w * NUM, len(class_map or TREE.splitlines()))
    np.testing.assert_array_equal(cands.probs > 0, theirs > 0)
    np.testing.assert_allclose(cands.probs, theirs, rtol=1e-5)
    assert (theirs > 0).sum() >= 5
    if class_map is None:  # the walks reached more than the roots
        assert (np.flatnonzero((theirs > 0).any(axis=0)) >= 3).any()


def test_model_detects_with_mapped_classes_paths_from_the_cfg_folder(files, tmp_path,
                                                                     monkeypatch):
    import yolo8

    from .oracle import random_weights

    graph = graph_at(files, region_cfg())
    random_weights(graph, files / "y9k.weights", seed=3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # t.tree and m.map are found next to the cfg
    model = yolo8.load(files / "y9k.cfg", files / "y9k.weights")
    assert model.names == ["0", "1", "2", "3"]  # the map's classes
    image = (np.random.default_rng(4).uniform(0, 255, (40, 48, 3))).astype(np.uint8)
    dets = model.detect(image, thresh=0.05)
    assert dets and all(0 <= d.class_id < 4 for d in dets)
    [head] = model.forward(np.zeros((1, 3, 32, 32), np.float32))
    assert head.shape == (1, NUM * (5 + CLASSES), 32, 32)


def test_paths_are_looked_up_from_the_working_directory_first(files, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.tree").write_text(TREE.replace("granite 9", "basalt 9"))
    (data / "m.map").write_text("0\n")
    monkeypatch.chdir(tmp_path)
    layer = graph_at(files, region_cfg("data/t.tree", "data/m.map")).layers[2]
    assert layer.tree.names[-1] == "basalt" and layer.class_map.tolist() == [0]


@pytest.mark.parametrize("tree, class_map, classes, where, message", [
    ("missing.tree", None, CLASSES, "y9k.cfg:21: 'tree'", "'missing.tree' not found"),
    ("t.tree", "missing.map", CLASSES, "y9k.cfg:22: 'map'", "'missing.map' not found"),
    ("t.tree", None, 11, "y9k.cfg:21: 'tree'", "12 nodes but classes=11"),
    ("bad.tree", None, CLASSES, "bad.tree:3:", "expected 'name parent_index'"),
    ("orphan.tree", None, CLASSES, "orphan.tree:2:", "parent index 12"),
    ("t.tree", "bad.map", CLASSES, "bad.map:2:", "node index 0..11, got '12'"),
    ("t.tree", "word.map", CLASSES, "word.map:1:", "got 'dog'"),
])
def test_bad_tree_and_map_files_are_refused_naming_file_and_line(files, tree, class_map,
                                                                 classes, where, message):
    lines = TREE.splitlines()
    (files / "bad.tree").write_text("\n".join(lines[:2] + ["dog"] + lines[3:]) + "\n")
    (files / "orphan.tree").write_text("\n".join(lines[:1] + ["plant 12"] + lines[2:]) + "\n")
    (files / "bad.map").write_text("3\n12\n")
    (files / "word.map").write_text("dog\n")
    with pytest.raises(ConfigError, match=message) as info:
        graph_at(files, region_cfg(tree, class_map, classes))
    assert where in str(info.value)


def test_cli_reports_a_bad_tree_in_one_line(files):
    (files / "y9k.cfg").write_text(region_cfg("missing.tree"))
    result = run_yolo8("detect", DATA / "images" / "000000000009.jpg", "--cfg", files / "y9k.cfg",
                       "--weights", files / "none.weights", "--no-save", timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "missing.tree" in result.stderr


def synthetic_9k_tree(nodes: int = 9418) -> str:
    """A tree of the real one's size: 20 roots, then each node's children in one group."""
    lines, frontier, n = [f"root{i} -1" for i in range(20)], list(range(20)), 20
    while n < nodes:
        parent = frontier.pop(0)
        for _ in range(min(7, nodes - n)):
            lines.append(f"n{n} {parent}")
            frontier.append(n)
            n += 1
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(600)
def test_real_yolo9000_cfg_runs_with_random_weights(tmp_path, monkeypatch):
    import yolo8
    from yolo8.backends import int8
    from yolo8.graph import load_graph

    from .oracle import random_weights

    cfg = DATA / "cfg" / "wordtree" / "yolo9000.cfg"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "9k.tree").write_text(synthetic_9k_tree())
    (tmp_path / "data" / "coco9k.map").write_text(
        "".join(f"{(i * 113) % 9418}\n" for i in range(80)))
    monkeypatch.chdir(tmp_path)  # tree=data/9k.tree, as darknet is run from its own folder
    graph = load_graph(cfg)
    head = graph.layers[graph.heads[0]]
    assert head.tree.n == head.classes == 9418 and head.detected_classes == 80
    convs = graph.convolutions()  # INT8 rules as for any detector
    assert int8.int8_layers(graph) == [c.index for c in convs[1:-1]] and len(convs) == 19
    random_weights(graph, tmp_path / "y9k.weights")
    model = yolo8.load(cfg, tmp_path / "y9k.weights")
    [out] = model.forward(np.full((1, 3, 64, 64), 0.5, np.float32))
    assert out.shape == (1, 3 * (5 + 9418), 2, 2) and np.isfinite(out).all()
    image = (np.random.default_rng(5).uniform(0, 255, (60, 80, 3))).astype(np.uint8)
    dets = model.detect(image, thresh=0.0005)
    assert model.names[:2] == ["person", "bicycle"]  # 80 mapped classes: COCO's names
    assert all(0 <= d.class_id < 80 for d in dets)


def test_calibrate_and_int8_with_a_tree_head(files):
    """calibrate works on a tree model; INT8 runs the middle conv, FP32 the first and the one
    feeding [region], and the tree softmax still normalises every sibling group."""
    import yolo8
    from yolo8.backends import int8
    from yolo8.calibrate import calibrate
    from yolo8.preprocess import read_image, to_blob

    from .conftest import PHOTOS
    from .oracle import random_weights

    text = region_cfg().replace("[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n",
                                "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
                                "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n")
    graph = graph_at(files, text)
    random_weights(graph, files / "y9k.weights", seed=6)
    model = yolo8.load(files / "y9k.cfg", files / "y9k.weights")
    run = calibrate(model, PHOTOS[:2], progress=False)
    assert int8.int8_layers(model.graph) == [1]
    program = int8.build(model.graph, run.calibration.thresholds,
                         {k: np.asarray(v, np.float32)
                          for k, v in run.calibration.bias_corrections.items()})
    x = to_blob([read_image(PHOTOS[2])], 32, 32)
    [ours], [ref_out] = program.run(x), model.program.run(x)
    assert 0 < np.abs(ours - ref_out).max() <= 0.05 * np.abs(ref_out).max()
    classes = ours.reshape(-1, 5 + CLASSES)[:, 5:]
    np.testing.assert_allclose(classes[:, :3].sum(axis=1), 1, rtol=1e-5)  # the roots


def test_onnx_export_refuses_the_tree_head(files):
    """The exporter would write a plain softmax: it names the layer instead."""
    pytest.importorskip("onnx")
    import yolo8
    from yolo8.export import build_onnx

    from .oracle import random_weights

    graph = graph_at(files, region_cfg())
    random_weights(graph, files / "y9k.weights", seed=3)
    model = yolo8.load(files / "y9k.cfg", files / "y9k.weights")
    with pytest.raises(ConfigError, match="hierarchical softmax") as info:
        build_onnx(model)
    assert "y9k.cfg:14" in str(info.value)
