"""`yolo8 export`: a loaded model as an ONNX graph, FP32 or INT8 (QDQ with yolo8's calibration).

The graph takes what `Model.forward` takes (N, 3, H, W float32 RGB in [0, 1]; N, 1, H, W grey
for a channels=1 cfg) and returns the head tensors as it does (darknet's layout, activations
applied). Layers are emitted by the table in `emitters`; `onnx` is imported only here, so yolo8
runs without it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends.int8 import corrected_bias
from ..errors import Yolo8Error
from ..files import atomic_write_bytes
from ..layers import NETWORK_INPUT
from .emitters import EMITTERS, EmitContext, Int8Conv, refuse

if TYPE_CHECKING:
    from ..api import Model

INSTALL_HINT = "pip install 'yolo8[onnx]' (or: pip install onnx onnxruntime)"
MIN_OPSET = 13  # per-channel DequantizeLinear, Softmax over any axis, Resize's inputs
DEFAULT_OPSET = 17
INPUT_NAME = "images"
# The input's colour by [net] channels (grey: stb_image's luma, see preprocess.stbi_luma)
COLOURS = {3: "RGB", 1: "grey (stb_image luma)"}
EXPORTABLE_BACKENDS = ("fp32", "int8")
MAX_PROTOBUF_BYTES = (1 << 31) - 1  # one protobuf message (the .onnx file without external data)


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    batch: int = 1
    dynamic_batch: bool = False
    decode: bool = False  # also output `boxes` and `scores` (see decode.py)
    # Test build: also output each INT8 conv's float input (`int8_input_<layer>`), its
    # quantized values (`quantized_input_<layer>`, int8), its output before the activation
    # (`int8_preactivation_<layer>`) and its output (`int8_output_<layer>`).
    int8_outputs: bool = False


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise Yolo8Error(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def _check_options(opts: ExportOptions) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opts.opset <= newest:
        raise Yolo8Error(f"--opset {opts.opset}: expected {MIN_OPSET}..{newest} (the installed "
                         f"onnx {onnx.__version__} knows up to {newest})")
    if opts.batch < 1:
        raise Yolo8Error(f"--batch {opts.batch}: expected a positive number of images")


def _int8_layers(model: Model) -> dict[int, Int8Conv]:
    from ..quant import multiplier_for_threshold

    if model.backend not in EXPORTABLE_BACKENDS:
        raise Yolo8Error(f"a {model.backend} model cannot be exported; load it with backend "
                         f"{' or '.join(EXPORTABLE_BACKENDS)}")
    if model.backend == "fp32":
        return {}
    quantization = model.program.quantization
    layers = {}
    for index, threshold in quantization.thresholds.items():
        bias = corrected_bias(model.graph.layers[index], quantization.corrections)
        layers[index] = Int8Conv(np.float32(multiplier_for_threshold(threshold)), bias)
    return layers


def _emit_layers(model: Model, ctx: EmitContext) -> dict[int, str]:
    tensors = {NETWORK_INPUT: INPUT_NAME}
    for layer in model.graph.layers:
        emitter = EMITTERS.get(type(layer))
        if emitter is None:
            raise refuse(layer, model.graph, "the exporter has no emitter for this layer kind")
        tensors[layer.index] = emitter(layer, [tensors[i] for i in layer.inputs], ctx)
    return tensors


def _metadata(model: Model, opts: ExportOptions) -> dict[str, str]:
    """What a consumer needs to prepare inputs and read outputs, as ONNX metadata_props."""
    w, h = model.input_size
    geometry = ("letterbox: scale keeping the aspect ratio, centred on grey 0.5"
                if model.letterbox else "stretch to the input size")
    sampling = {"darknet": "darknet's resize_image (bilinear, corner-aligned: scale = "
                           "(in - 1) / (out - 1))",
                "opencv": "OpenCV's cv2.resize INTER_LINEAR (half-pixel centres)"}[model.resize]
    resize = f"{geometry}; {sampling}"
    heads = [{"kind": head.kind, "layer": head.index, "classes": head.classes,
              "anchors": head.anchors.tolist(),
              "anchor_units": "grid cells" if head.kind == "region" else "input pixels",
              **({"scale_x_y": head.scale_x_y} if head.kind != "region" else {}),
              **({"new_coords": True} if getattr(head, "new_coords", False) else {}),
              **({"point_shift": head.point_shift} if head.kind == "gaussian_yolo" else {})}
             for head in model.heads]
    return {
        "yolo8.model_id": model.model_id,
        "yolo8.backend": model.backend,
        "yolo8.calibration": model.calibration_source or "",
        "yolo8.cfg": Path(model.graph.path).name,
        "yolo8.names": json.dumps(model.names),
        "yolo8.input": json.dumps({"name": INPUT_NAME, "width": w, "height": h,
                                   "layout": "NCHW", "colour": COLOURS[model.graph.net.channels],
                                   "range": [0, 1]}),
        "yolo8.letterbox": str(int(model.letterbox)),
        "yolo8.resize": resize,
        "yolo8.resize_mode": model.resize,
        "yolo8.heads": json.dumps(heads),
        "yolo8.outputs": ("head<k>, one per head: (N, anchors * (5 + classes), H, W), darknet's "
                          "layout: x, y, objectness and classes after their activation, w and h "
                          "raw (new_coords heads: no activation of their own; gaussian_yolo heads: "
                          "anchors * (9 + classes), x, its uncertainty, y, its uncertainty, w, "
                          "..., objectness, classes)" if model.heads else
                          "head0: the network's last layer, (N, C, H, W)")
                         + ("; boxes (N, D, 4): centre x, y, w, h relative to the input "
                                  "(before any letterbox correction); scores (N, D, classes): "
                                  "objectness x class probability (gaussian_yolo: times 1 - the "
                                  "mean uncertainty), no NMS" if opts.decode else ""),
    }


def build_onnx(model: Model, opts: ExportOptions | None = None) -> Any:
    """The ModelProto of `model` (checked by onnx.checker)."""
    onnx = require_onnx()
    opts = opts or ExportOptions()
    _check_options(opts)
    if opts.decode and not model.heads:
        raise Yolo8Error("--decode needs a detection head ([yolo], [region] or [Gaussian_yolo]); "
                         "this model is a classifier or feature extractor", path=model.graph.path)
    from .onnx_graph import OnnxGraph

    g = OnnxGraph()
    ctx = EmitContext(g, model.graph, _int8_layers(model), expose_int8=opts.int8_outputs)
    tensors = _emit_layers(model, ctx)
    batch: int | str = "batch" if opts.dynamic_batch else opts.batch
    f32 = onnx.TensorProto.FLOAT
    for k, index in enumerate(model.graph.outputs):  # the heads, else the last layer
        g.output(tensors[index], f"head{k}", f32, [batch, *model.graph.layers[index].out_shape])
    if opts.decode:
        from .decode import emit_decoded

        boxes, scores = emit_decoded(g, model.graph, tensors)
        g.output(boxes, "boxes", f32, [batch, "boxes", 4])
        g.output(scores, "scores", f32, [batch, "boxes", model.heads[0].classes])
    for layer, x, q, biased, out in ctx.int8_tensors:
        g.output(x, f"int8_input_{layer.index}", f32, [batch, *layer.in_shape])
        g.output(q, f"quantized_input_{layer.index}", onnx.TensorProto.INT8,
                 [batch, *layer.in_shape])
        g.output(biased, f"int8_preactivation_{layer.index}", f32, [batch, *layer.out_shape])
        g.output(out, f"int8_output_{layer.index}", f32, [batch, *layer.out_shape])
    image = onnx.helper.make_tensor_value_info(INPUT_NAME, f32, [batch, *model.graph.input_shape])
    graph = onnx.helper.make_graph(g.nodes, f"yolo8 {Path(model.graph.path).stem} {model.backend}",
                                   [image], g.outputs, g.initializers)
    opset = [onnx.helper.make_opsetid("", opts.opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opset, producer_name="yolo8",
                                   ir_version=onnx.helper.find_min_ir_version_for(opset))
    from .. import __version__

    proto.producer_version = __version__
    onnx.helper.set_model_props(proto, _metadata(model, opts))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_output_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise Yolo8Error(f"the folder {path.parent} does not exist", path=path)
    if path.is_dir():
        raise Yolo8Error("is a directory, expected an .onnx file name", path=path)
    return path


def export_onnx(model: Model, path: str | os.PathLike, opts: ExportOptions | None = None) -> Path:
    """Write `model` as ONNX to `path` atomically (a failed export leaves no file behind)."""
    path = check_output_path(path)
    proto = build_onnx(model, opts)
    if proto.ByteSize() > MAX_PROTOBUF_BYTES:
        raise Yolo8Error(f"the model needs {proto.ByteSize() >> 20} MiB, more than one ONNX file "
                         f"holds without external data (2 GiB)", path=path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
