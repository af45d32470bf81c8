"""Every layer kind and option yolo8 runs, exported to ONNX and run in ONNX Runtime (an
independent engine) against yolo8's own FP32 and INT8 engines, on cfgs with random weights:
small cfgs written for one feature each, the zoo cfgs of tests/data/cfg (classifiers) and
tests/data/cfg/detectors.

Bounds:
- FP32: max |ORT - yolo8| <= 1e-4 x max |yolo8| per output (FP32_RTOL), as in
  test_export_onnx: float32 with other summation orders, and yolo8's elementwise activations
  are computed in float64 then rounded where ONNX Runtime stays in float32 (a few ulps).
  Measured: at most 3.2e-5 (tanh and hardtan, whose outputs are small next to the
  pre-activations they round), below 2e-6 elsewhere (printed with -s).
- INT8, per conv layer: bit for bit. yolo8's INT8 convolution (linear) on ONNX Runtime's input
  of each INT8 layer equals ONNX Runtime's output before the activation, every value; the
  activation on those values within 1e-5 relative (+ 5e-6 absolute: ONNX Runtime's Sigmoid
  is a float32 approximation, 1.5e-6 off in swish's tail) of yolo8's, value by value
  (which tells darknet's truncated selu constants from ONNX's exact ones).
- INT8, end to end: the FP32 layers' last-bit differences flip a few roundings of the next
  INT8 layer's input, which spread downstream; outputs within INT8_RTOL = 3 % of their largest
  magnitude (measured: 1.0 % on enet-coco's 85 INT8 convs, 0.26 % on yolov4-sam's 124, below
  1e-6 elsewhere; printed with -s).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import yolo8  # noqa: E402
from yolo8 import activations  # noqa: E402
from yolo8.backends import int8  # noqa: E402
from yolo8.errors import ConfigError, Yolo8Error  # noqa: E402
from yolo8.export import ExportOptions, build_onnx  # noqa: E402
from yolo8.export.emitters import ACTIVATIONS  # noqa: E402
from yolo8.graph import load_graph  # noqa: E402
from yolo8.layers import Convolutional, GaussianYolo, Yolo  # noqa: E402
from yolo8.preprocess import read_image, to_blob  # noqa: E402

from .conftest import DATA, PHOTOS, net  # noqa: E402
from .oracle import WEIGHTS_HEADER, cfg_for_opencv, random_weights  # noqa: E402

pytestmark = pytest.mark.timeout(300)

FP32_RTOL = 1e-4
INT8_RTOL = 0.03


# -- helpers ---------------------------------------------------------------------------------------

def _blob(model, photos=PHOTOS[:2]) -> np.ndarray:
    w, h = model.input_size
    return to_blob([read_image(p) for p in photos], w, h,
                   channels=model.graph.net.channels).transpose(0, 3, 1, 2).copy()


def _session_outputs(proto, blob: np.ndarray) -> dict[str, np.ndarray]:
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": blob})))


def _max_rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / np.abs(ours).max())


def _check_fp32(model, label: str, decode: bool = False) -> dict[str, np.ndarray]:
    """ORT on the FP32 export vs yolo8's FP32 forward, every output; returns ORT's outputs."""
    blob = _blob(model)
    outs = _session_outputs(build_onnx(model, ExportOptions(dynamic_batch=True, decode=decode)),
                            blob)
    ours = model.forward(blob)
    assert len(ours) == len([k for k in outs if k.startswith("head")])
    worst = 0.0
    for k, mine in enumerate(ours):
        assert float(mine.std()) > 1e-3 * float(np.abs(mine).max()), "outputs barely vary"
        worst = max(worst, _max_rel(mine, outs[f"head{k}"]))
    print(f"\nMEASURED fp32 {label}: max |diff| / max |out| = {worst:.2g}")
    assert worst <= FP32_RTOL
    return outs


def _plain_weights(graph, path: Path, gain: float, seed: int = 0) -> None:
    """Weights for cfgs of conv layers without batch norm (and weightless layers): biases
    N(0, 0.5) and weights of gain `gain` per unit of input, so activations see a wide range."""
    rng = np.random.default_rng(seed)
    parts = [WEIGHTS_HEADER]
    for layer in graph.weighted_layers():
        assert isinstance(layer, Convolutional) and not layer.batch_normalize
        fan_in = layer.size * layer.size * layer.in_shape.c // layer.groups
        parts.append(np.concatenate([rng.normal(0, 0.5, layer.filters),
                                     rng.normal(0, gain / np.sqrt(fan_in),
                                                layer.filters * fan_in)]).astype("<f4").tobytes())
    path.write_bytes(b"".join(parts))


def _write(tmp_path: Path, text: str, name: str = "test.cfg", gain: float | None = None
           ) -> tuple[Path, Path]:
    cfg, weights = tmp_path / name, tmp_path / f"{Path(name).stem}.weights"
    cfg.write_text(text)
    if gain is None:
        random_weights(load_graph(cfg), weights)
    else:
        _plain_weights(load_graph(cfg), weights, gain)
    return cfg, weights


def _int8_model(cfg: Path, weights: Path):
    """The cfg calibrated with max-abs thresholds of every conv input over the two photos
    (yolo2_light's input_calibration line), loaded INT8."""
    fp32 = yolo8.load(cfg, weights)
    largest: dict[int, float] = {}

    def observe(layer, inputs) -> None:
        if isinstance(layer, Convolutional):
            largest[layer.index] = max(largest.get(layer.index, 0.0),
                                       float(np.abs(inputs[0]).max()))

    fp32.program.run(np.ascontiguousarray(_blob(fp32).transpose(0, 2, 3, 1)), observe)
    multipliers = [127 / largest[c.index] for c in fp32.graph.convolutions()]
    text = cfg.read_text().replace("[net]\n", "[net]\ninput_calibration="
                                   + ",".join(f"{m:.6g}" for m in multipliers) + "\n", 1)
    calibrated = cfg.with_name(f"{cfg.stem}-int8.cfg")
    calibrated.write_text(text)
    return yolo8.load(calibrated, weights, backend="int8")


def _check_int8(model, label: str) -> None:
    """Each INT8 conv bit for bit on ORT's input (before the activation), the activation and
    the outputs end to end within their bounds."""
    thresholds = model.program.quantization.thresholds
    assert thresholds, "no layer runs INT8: proves nothing"
    blob = _blob(model)
    outs = _session_outputs(build_onnx(model, ExportOptions(dynamic_batch=True,
                                                            int8_outputs=True)), blob)
    for index, threshold in thresholds.items():
        layer = model.graph.layers[index]
        x = np.ascontiguousarray(outs[f"int8_input_{index}"].transpose(0, 2, 3, 1))
        linear = int8.int8_conv(layer, threshold, layer.bias, activations.LINEAR)
        pre = outs[f"int8_preactivation_{index}"]
        assert np.array_equal(linear(x).transpose(0, 3, 1, 2), pre), f"layer {index}"
        # The activation alone, value by value: float32 formulas against yolo8's float64 ones
        # rounded (a few ulps; absolute near the zeros where they cancel, e.g. loggy, elu).
        np.testing.assert_allclose(outs[f"int8_output_{index}"],
                                   activations.apply(pre, layer.activation), rtol=1e-5,
                                   atol=5e-6, err_msg=f"layer {index}'s activation")
    worst = max(_max_rel(mine, outs[f"head{k}"]) for k, mine in enumerate(model.forward(blob)))
    print(f"\nMEASURED int8 {label}: {len(thresholds)} INT8 convs bit for bit; outputs max "
          f"|diff| / max |out| = {worst:.2g}")
    assert worst <= INT8_RTOL


# -- activations -----------------------------------------------------------------------------------

def test_every_activation_yolo8_defines_has_an_onnx_form():
    assert set(ACTIVATIONS) == set(activations.NAMES)


ACTIVATION_CFG = """[net]
width=24
height=24
channels=3
[convolutional]
filters=8
size=3
pad=1
activation=linear
[convolutional]
filters=8
size=3
pad=1
activation={act}
[convolutional]
filters=8
size=1
activation={act}
"""


@pytest.mark.parametrize("name", activations.NAMES)
def test_activation_in_fp32_and_int8(name, tmp_path):
    """The second conv runs INT8, the last (the output) FP32; weights of gain 4 spread the
    pre-activations over +-10, across every piece of the piecewise activations."""
    cfg, weights = _write(tmp_path, ACTIVATION_CFG.format(act=name), gain=4.0)
    model = yolo8.load(cfg, weights)
    seen = []
    model.program.run(np.ascontiguousarray(_blob(model).transpose(0, 2, 3, 1)),
                      lambda layer, inputs: seen.append(inputs[0]))
    assert seen[1].min() < -4 and seen[1].max() > 4  # conv 0's (linear) output
    _check_fp32(model, f"activation {name}")
    _check_int8(_int8_model(cfg, weights), f"activation {name}")


# -- classifiers -------------------------------------------------------------------------------------

CLASSIFIER_CFG = """[net]
width=28
height=28
channels=3
[crop]
crop_width=24
crop_height=20
{noadjust}
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[maxpool]
size=2
stride=2
[convolutional]
filters=16
size=3
pad=1
activation=leaky
[dropout]
probability=.5
[connected]
output=24
batch_normalize=1
activation=leaky
[connected]
output=12
activation=linear
[softmax]
groups={groups}
temperature={temperature}
[cost]
"""


@pytest.mark.parametrize("noadjust, groups, temperature", [("", 1, 1), ("noadjust=1", 2, 0.5),
                                                           ("", 3, 3.0)])
def test_crop_connected_softmax_cost(noadjust, groups, temperature, tmp_path):
    cfg, weights = _write(tmp_path, CLASSIFIER_CFG.format(noadjust=noadjust, groups=groups,
                                                          temperature=temperature))
    model = yolo8.load(cfg, weights)
    assert not model.graph.is_detector
    outs = _check_fp32(model, f"crop/connected/softmax groups={groups} t={temperature}")
    sums = outs["head0"].reshape(2, groups, -1).sum(axis=2)
    np.testing.assert_allclose(sums, 1, rtol=1e-5)  # a softmax per group
    _check_int8(_int8_model(cfg, weights), f"classifier groups={groups}")


AVGPOOL_CFG = """[net]
width=20
height=20
channels=3
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=16
size=3
stride=2
pad=1
activation=mish
[convolutional]
filters=10
size=1
activation=linear
[avgpool]
[softmax]
"""


def test_avgpool_classifier(tmp_path):
    cfg, weights = _write(tmp_path, AVGPOOL_CFG)
    model = yolo8.load(cfg, weights)
    _check_fp32(model, "avgpool + softmax")
    _check_int8(_int8_model(cfg, weights), "avgpool classifier")


CLASSIFIERS = sorted(p.name for p in (DATA / "cfg").glob("*.cfg") if p.name != "resnet50.cfg")


def test_resnet50_is_left_out_because_yolo8_itself_refuses_it():
    """resnet50's shortcut adds layers of other widths: the parser refuses it (not export)."""
    with pytest.raises(ConfigError, match="equal width and height"):
        load_graph(DATA / "cfg" / "resnet50.cfg")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_zoo_classifier(name, tmp_path):
    cfg, weights = _write(tmp_path, (DATA / "cfg" / name).read_text(), name)
    _check_fp32(yolo8.load(cfg, weights), name)


@pytest.mark.parametrize("name", ["tiny.cfg", "efficientnet_b0.cfg"])
def test_zoo_classifier_int8(name, tmp_path):
    cfg, weights = _write(tmp_path, (DATA / "cfg" / name).read_text(), name)
    _check_int8(_int8_model(cfg, weights), name)


def test_decode_is_refused_for_a_classifier(tmp_path):
    cfg, weights = _write(tmp_path, AVGPOOL_CFG)
    with pytest.raises(Yolo8Error, match="--decode needs a detection head"):
        build_onnx(yolo8.load(cfg, weights), ExportOptions(decode=True))


# -- conv dilation ---------------------------------------------------------------------------------------

DILATION_CFG = """[net]
width={w}
height={h}
channels=3
[convolutional]
filters=8
size=3
pad=1
activation=leaky
[convolutional]
filters=9
size={size}
pad=1
dilation={dilation}
stride={stride}
activation=leaky
[convolutional]
filters=6
size={size}
pad=1
dilation={dilation}
activation=linear
"""


@pytest.mark.parametrize("size, dilation, stride, h, w", [(3, 2, 1, 17, 16), (3, 3, 1, 20, 20),
                                                         (5, 2, 1, 14, 22), (3, 3, 2, 22, 20)])
def test_dilation_in_fp32_and_int8(size, dilation, stride, h, w, tmp_path):
    cfg, weights = _write(tmp_path, DILATION_CFG.format(size=size, dilation=dilation,
                                                        stride=stride, h=h, w=w))
    model = yolo8.load(cfg, weights)
    assert model.graph.layers[1].dilation == dilation
    label = f"dilation={dilation} size={size} stride={stride}"
    _check_fp32(model, label)
    _check_int8(_int8_model(cfg, weights), label)


# -- shortcut, scale_channels, sam, reorg3d, local_avgpool --------------------------------------------

# net(): [net], the body, then conftest's TAIL (which starts with the body's last newline).
SHORTCUT_CFG = net("[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"  # 0: 4 channels
                   "[convolutional]\nfilters=6\nsize=3\npad=1\nactivation=leaky\n"  # 1: 6 channels
                   "[convolutional]\nfilters=5\nsize=3\npad=1\nactivation=leaky\n"  # 2: 5 channels
                   "[shortcut]\nfrom={sources}\n{extra}", h=16, w=16)               # 3: 5 channels


@pytest.mark.parametrize("sources, extra", [
    ("0", ""), ("1", "activation=leaky"), ("0,1", ""), ("0,1", "weights_type=per_feature"),
    ("0,1", "weights_type=per_channel"),
    ("0,1", "weights_type=per_feature\nweights_normalization=relu"),
    ("1,0", "weights_type=per_channel\nweights_normalization=softmax"),
    ("0,1", "weights_type=per_layer\nweights_normalization=avg_relu\nactivation=mish")])
def test_shortcut_across_channel_counts_and_weighted(sources, extra, tmp_path):
    """From layers with fewer (4) and more (6) channels than the previous one (5)."""
    cfg, weights = _write(tmp_path, SHORTCUT_CFG.format(sources=sources, extra=extra))
    model = yolo8.load(cfg, weights)
    label = f"shortcut from={sources} {extra.replace(chr(10), ' ')}"
    _check_fp32(model, label)
    _check_int8(_int8_model(cfg, weights), label)


ATTENTION_CFG = net("[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"     # 0: 12x16x8
                    "[avgpool]\n"                                                       # 1: 1x1x8
                    "[convolutional]\nfilters=8\nsize=1\nactivation=logistic\n"         # 2
                    "[scale_channels]\nfrom=-3\n"                                       # 3: SE
                    "[convolutional]\nfilters=1\nsize=1\nactivation=logistic\n"         # 4: 12x16x1
                    "[scale_channels]\nfrom=-2\nscale_wh=1\nactivation=leaky\n"         # 5
                    "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=logistic\n"  # 6
                    "[sam]\nfrom=-2\n"                                                  # 7
                    "[reorg3d]\nstride=2\n"                                             # 8: 6x8x32
                    "[local_avgpool]\nsize={size}\nstride={stride}\n{padding}"          # 9
                    "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky", h=16, w=12)


@pytest.mark.parametrize("size, stride, padding", [(2, 2, None), (3, 1, None), (4, 4, None),
                                                   (3, 2, 0), (3, 2, 4)])
def test_scale_channels_sam_reorg3d_local_avgpool(size, stride, padding, tmp_path):
    extra = "" if padding is None else f"padding={padding}\n"
    cfg, weights = _write(tmp_path, ATTENTION_CFG.format(size=size, stride=stride,
                                                         padding=extra))
    model = yolo8.load(cfg, weights)
    kinds = [layer.kind for layer in model.graph.layers]
    assert kinds.count("scale_channels") == 2 and {"sam", "reorg3d", "local_avgpool"} <= set(kinds)
    label = f"scale_channels/sam/reorg3d/local_avgpool size={size} stride={stride} pad={padding}"
    _check_fp32(model, label)
    _check_int8(_int8_model(cfg, weights), label)


# -- heads: new_coords, Gaussian_yolo, and --decode ------------------------------------------------------

HEAD_CFG = net("[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
               "[convolutional]\nfilters=8\nsize=3\npad=1\nactivation=leaky\n", h=16, w=20,
               tail="{head}")
NEW_COORDS_HEAD = ("[convolutional]\nfilters=14\nsize=1\nactivation=logistic\n"
                   "[yolo]\nclasses=2\nnum=3\nmask=1,2\nanchors=10,14, 23,27, 37,58\n"
                   "scale_x_y={scale}\nnew_coords=1\n")
GAUSSIAN_HEAD = ("[convolutional]\nfilters=22\nsize=1\nactivation=linear\n"
                 "[Gaussian_yolo]\nclasses=2\nnum=3\nmask=0,2\nanchors=10,14, 23,27, 37,58\n"
                 "scale_x_y=1.1\nyolo_point={point}\n")


def _check_decoded(model, outs: dict[str, np.ndarray]) -> None:
    """--decode's boxes and scores vs yolo8's decoding (postprocess) of ORT's own head
    outputs, every row kept (threshold -1): float32 in the graph, float64 in yolo8, so 1e-5
    relative."""
    from yolo8.postprocess import decode_gaussian_yolo, decode_yolo

    w, h = model.input_size
    decoders = {Yolo: lambda out, head: decode_yolo(out, head, w, h, -1.0),
                GaussianYolo: lambda out, head: decode_gaussian_yolo(out, head, w, h, -1.0)}
    for image in range(2):
        parts = [decoders[type(head)](outs[f"head{k}"][image].transpose(1, 2, 0), head)
                 for k, head in enumerate(model.heads)]
        boxes = np.concatenate([p.boxes for p in parts])
        probs = np.concatenate([p.probs for p in parts])
        assert outs["boxes"][image].shape == boxes.shape and len(boxes) > 100
        np.testing.assert_allclose(outs["boxes"][image], boxes, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(outs["scores"][image], probs, rtol=1e-5, atol=1e-7)
        assert (probs > 0).sum() > 100


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_new_coords_head_and_decode(scale, tmp_path):
    cfg, weights = _write(tmp_path, HEAD_CFG.format(head=NEW_COORDS_HEAD.format(scale=scale)))
    model = yolo8.load(cfg, weights)
    assert model.heads[0].new_coords
    _check_decoded(model, _check_fp32(model, f"new_coords scale_x_y={scale}", decode=True))
    _check_int8(_int8_model(cfg, weights), f"new_coords scale_x_y={scale}")


@pytest.mark.parametrize("point", ["center", "left_top", "right_bottom"])
def test_gaussian_yolo_head_and_decode(point, tmp_path):
    """The head tensor exactly as Model.forward returns it (within the FP32 bound)."""
    cfg, weights = _write(tmp_path, HEAD_CFG.format(head=GAUSSIAN_HEAD.format(point=point)))
    model = yolo8.load(cfg, weights)
    assert isinstance(model.heads[0], GaussianYolo)
    _check_decoded(model, _check_fp32(model, f"gaussian_yolo yolo_point={point}", decode=True))
    _check_int8(_int8_model(cfg, weights), f"gaussian_yolo yolo_point={point}")


# -- the zoo detectors ---------------------------------------------------------------------------------------

DETECTORS = sorted(p.name for p in (DATA / "cfg" / "detectors").glob("*.cfg"))


def _zoo(name: str, tmp_path: Path) -> tuple[Path, Path]:
    text = cfg_for_opencv((DATA / "cfg" / "detectors" / name).read_text(), 128, 128)
    return _write(tmp_path, text, name)


@pytest.mark.parametrize("name", DETECTORS)
def test_zoo_detector_with_decode(name, tmp_path):
    """yolov7/yolov4-csp/p5/x-mish (new_coords), yolov3-tiny-prn and csresnext50 (partial
    shortcuts), enet-coco (scale_channels), yolov4-sam (sam, reorg3d), resnet152_trident
    (dilation, share_index), Gaussian_yolov3_BDD."""
    cfg, weights = _zoo(name, tmp_path)
    model = yolo8.load(cfg, weights)
    _check_decoded(model, _check_fp32(model, name, decode=True))


@pytest.mark.parametrize("name", ["yolov7-tiny.cfg", "yolov3-tiny-prn.cfg", "enet-coco.cfg",
                                  "yolov4-sam-mish-csp-reorg-bfm.cfg", "resnet152_trident.cfg",
                                  "Gaussian_yolov3_BDD.cfg"])
def test_zoo_detector_int8(name, tmp_path):
    cfg, weights = _zoo(name, tmp_path)
    _check_int8(_int8_model(cfg, weights), name)


# -- metadata and the oldest opset ----------------------------------------------------------------------

def test_metadata_describes_the_new_heads_and_a_classifiers_output(tmp_path):
    import json

    cfg, weights = _write(tmp_path, HEAD_CFG.format(head=GAUSSIAN_HEAD.format(point="left_top")))
    meta = {p.key: p.value for p in build_onnx(yolo8.load(cfg, weights)).metadata_props}
    head = json.loads(meta["yolo8.heads"])[0]
    assert (head["kind"], head["point_shift"], head["scale_x_y"]) == ("gaussian_yolo", 0.5, 1.1)
    assert "gaussian_yolo heads: anchors * (9 + classes)" in meta["yolo8.outputs"]
    cfg, weights = _write(tmp_path, HEAD_CFG.format(head=NEW_COORDS_HEAD.format(scale=2.0)),
                          "new.cfg")
    meta = {p.key: p.value for p in build_onnx(yolo8.load(cfg, weights)).metadata_props}
    assert json.loads(meta["yolo8.heads"])[0]["new_coords"] is True
    cfg, weights = _write(tmp_path, AVGPOOL_CFG, "classifier.cfg")
    meta = {p.key: p.value for p in build_onnx(yolo8.load(cfg, weights)).metadata_props}
    assert json.loads(meta["yolo8.heads"]) == []
    assert meta["yolo8.outputs"] == "head0: the network's last layer, (N, C, H, W)"


@pytest.mark.parametrize("name", ["classifier", "attention", "yolov4-sam-mish-csp-reorg-bfm.cfg",
                                  "Gaussian_yolov3_BDD.cfg"])
def test_oldest_opset_gives_the_same_outputs(name, tmp_path):
    """Opset 13 (Softmax over one axis, Pad's pads as an input, SpaceToDepth, ...) computes
    what the default opset does, value for value, INT8 included."""
    texts = {"classifier": CLASSIFIER_CFG.format(noadjust="", groups=2, temperature=0.5),
             "attention": ATTENTION_CFG.format(size=3, stride=2, padding="padding=4\n")}
    cfg, weights = (_write(tmp_path, texts[name]) if name in texts else _zoo(name, tmp_path))
    for model in (yolo8.load(cfg, weights), _int8_model(cfg, weights)):
        blob = _blob(model)
        newest = _session_outputs(build_onnx(model, ExportOptions(decode=bool(model.heads),
                                                                  batch=2)), blob)
        oldest = _session_outputs(build_onnx(model, ExportOptions(opset=13, batch=2,
                                                                  decode=bool(model.heads))), blob)
        assert newest.keys() == oldest.keys()
        assert all(np.array_equal(newest[k], oldest[k]) for k in newest)
