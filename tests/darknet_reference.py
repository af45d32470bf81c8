"""Plain transcriptions of AlexeyAB/darknet's C loops (flat NCHW buffers, one image), for the
layers OpenCV does not run. Written from darknet's src/*.c, not from yolo8's code: slow and
literal on purpose."""
from __future__ import annotations

import math

import numpy as np


def shortcut_multilayer(inp: np.ndarray, adds: list[np.ndarray], weights: np.ndarray | None,
                        normalization: str | None) -> np.ndarray:
    """blas.c shortcut_multilayer_cpu for one image: inp and adds flat (C*H*W), weights flat
    (nweights) or None; normalization None, "relu" or "softmax"."""
    n = len(adds)
    src_outputs = inp.size
    nweights = 0 if weights is None else weights.size
    layer_step = nweights // (n + 1)
    step = src_outputs // layer_step if nweights > 0 else 0
    out = np.empty(src_outputs, np.float32)
    for src_i in range(src_outputs):
        total, max_val = np.float32(1), -np.inf
        if weights is not None and normalization:
            if normalization == "softmax":
                for i in range(n + 1):
                    max_val = max(max_val, weights[src_i // step + i * layer_step])
            total = np.float32(0.0001)
            for i in range(n + 1):
                w = weights[src_i // step + i * layer_step]
                total += np.float32(max(w, 0)) if normalization == "relu" else \
                    np.float32(math.exp(w - max_val))

        def weight(i):
            w = weights[src_i // step + i * layer_step]
            if normalization == "relu":
                return np.float32(max(w, 0) / total)
            if normalization == "softmax":
                return np.float32(math.exp(w - max_val) / total)
            return w

        out[src_i] = inp[src_i] * weight(0) if weights is not None else inp[src_i]
        for i in range(n):
            if src_i < adds[i].size:
                out[src_i] += adds[i][src_i] * weight(i + 1) if weights is not None \
                    else adds[i][src_i]
    return out


def scale_channels(inp: np.ndarray, from_output: np.ndarray, out_c: int, out_h: int, out_w: int,
                   scale_wh: bool) -> np.ndarray:
    """scale_channels_layer.c forward_scale_channels_layer (one image, linear)."""
    size = out_c * out_h * out_w
    channel_size = out_h * out_w
    batch_size = out_c * out_h * out_w
    out = np.empty(size, np.float32)
    for i in range(size):
        if scale_wh:
            out[i] = inp[i % channel_size + (i // batch_size) * channel_size] * from_output[i]
        else:
            out[i] = inp[i // channel_size] * from_output[i]
    return out


def reorg3d(x: np.ndarray, w: int, h: int, c: int, stride: int) -> np.ndarray:
    """reorg_layer.c forward_reorg_layer (reverse=0): reorg_cpu(input, out_w, out_h, out_c,
    batch, stride, 0, output)."""
    out_w, out_h, out_c = w // stride, h // stride, c * stride * stride
    in_c = out_c // (stride * stride)
    out = np.empty(out_w * out_h * out_c, np.float32)
    for k in range(out_c):
        for j in range(out_h):
            for i in range(out_w):
                in_index = i + out_w * (j + out_h * k)
                c2 = k % in_c
                offset = k // in_c
                w2 = i * stride + offset % stride
                h2 = j * stride + offset // stride
                out_index = w2 + out_w * stride * (h2 + out_h * stride * c2)
                out[in_index] = x[out_index]
    return out


def local_avgpool(x: np.ndarray, w: int, h: int, c: int, size: int, stride: int,
                  pad: int) -> np.ndarray:
    """maxpool_layer.c forward_local_avgpool_layer (one image)."""
    out_w = (w + pad - size) // stride + 1
    out_h = (h + pad - size) // stride + 1
    offset = -(pad // 2)  # C's -l.pad / 2 truncates towards zero
    out = np.empty(out_w * out_h * c, np.float32)
    for k in range(c):
        for i in range(out_h):
            for j in range(out_w):
                total, counter = np.float32(0), 0
                for n in range(size):
                    for m in range(size):
                        cur_h, cur_w = offset + i * stride + n, offset + j * stride + m
                        if 0 <= cur_h < h and 0 <= cur_w < w:
                            counter += 1
                            total += x[cur_w + w * (cur_h + h * k)]
                out[j + out_w * (i + out_h * k)] = total / counter
    return out


def _logistic(v: float) -> np.float32:
    return np.float32(1.0 / (1.0 + math.exp(-v)))


def gaussian_yolo_forward(x: np.ndarray, n: int, classes: int, h: int, w: int,
                          scale_x_y: float) -> np.ndarray:
    """gaussian_yolo_layer.c forward_gaussian_yolo_layer at inference (one image)."""
    out = x.astype(np.float32).copy()
    plane = w * h

    def index(a, entry):
        return a * plane * (9 + classes) + entry * plane

    for a in range(n):
        for entry, count in ((0, 2), (2, 2), (5, 1), (7, 1), (8, 1 + classes)):
            start = index(a, entry)
            for i in range(start, start + count * plane):
                out[i] = _logistic(out[i])
        for entry in (0, 2):
            start = index(a, entry)
            for i in range(start, start + plane):
                out[i] = np.float32(out[i] * np.float32(scale_x_y)
                                    + np.float32(-0.5 * (scale_x_y - 1)))
    return out


def gaussian_yolo_detections(out: np.ndarray, n: int, classes: int, h: int, w: int,
                             anchors: np.ndarray, netw: int, neth: int, thresh: float,
                             point: str = "center") -> list[tuple[tuple, list]]:
    """get_gaussian_yolo_detections (relative boxes, no letterbox): [(box x, y, w, h), probs]."""
    plane = w * h
    dets = []

    def at(a, loc, entry):
        return out[a * plane * (9 + classes) + entry * plane + loc]

    for i in range(plane):
        row, col = i // w, i % w
        for a in range(n):
            objectness = at(a, i, 8)
            if objectness <= thresh:
                continue
            bw = math.exp(at(a, i, 4)) * anchors[a][0] / netw
            bh = math.exp(at(a, i, 6)) * anchors[a][1] / neth
            bx = (col + at(a, i, 0)) / w
            by = (row + at(a, i, 2)) / h
            if point == "left_top":
                bx, by = bx + bw / 2, by + bh / 2
            elif point == "right_bottom":
                bx, by = bx - bw / 2, by - bh / 2
            uc = [at(a, i, e) for e in (1, 3, 5, 7)]
            uc_aver = np.float32((uc[0] + uc[1] + uc[2] + uc[3]) / np.float32(4.0))
            probs = []
            for j in range(classes):
                prob = np.float32(float(objectness * at(a, i, 9 + j)) * (1.0 - float(uc_aver)))
                probs.append(float(prob) if prob > thresh else 0.0)
            dets.append(((bx, by, bw, bh), probs))
    return dets


def yolo_box(t: np.ndarray, anchor: tuple[float, float], col: int, row: int, lw: int, lh: int,
             netw: int, neth: int, new_coords: bool) -> tuple[float, float, float, float]:
    """yolo_layer.c get_yolo_box for one entry t = (x, y, w, h) of the head output."""
    if new_coords:
        return ((col + t[0]) / lw, (row + t[1]) / lh, t[2] * t[2] * 4 * anchor[0] / netw,
                t[3] * t[3] * 4 * anchor[1] / neth)
    return ((col + t[0]) / lw, (row + t[1]) / lh, math.exp(t[2]) * anchor[0] / netw,
            math.exp(t[3]) * anchor[1] / neth)


def dilated_conv(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, pad: int,
                 dilation: int, stride: int = 1) -> np.ndarray:
    """convolutional_layer.c with im2col_cpu_ext (one group), float64: x (C, H, W),
    weights (N, C, k, k) -> (N, Ho, Wo), padding pad * dilation as darknet passes it."""
    c, h, w = x.shape
    n, _, k, _ = weights.shape
    p = pad * dilation
    out_h = (h + 2 * p - (dilation * (k - 1) + 1)) // stride + 1
    out_w = (w + 2 * p - (dilation * (k - 1) + 1)) // stride + 1
    cols = np.zeros((c * k * k, out_h * out_w))
    row = 0
    for ch in range(c):
        for ky in range(k):
            for kx in range(k):
                for oy in range(out_h):
                    iy = -p + ky * dilation + oy * stride
                    for ox in range(out_w):
                        ix = -p + kx * dilation + ox * stride
                        if 0 <= iy < h and 0 <= ix < w:
                            cols[row, oy * out_w + ox] = x[ch, iy, ix]
                row += 1
    out = weights.reshape(n, -1).astype(np.float64) @ cols
    return (out + bias[:, None]).reshape(n, out_h, out_w)


# --- yolo9000: WordTree (tree.c), softmax_tree (softmax_layer.c / blas.c softmax), region ---

def read_tree(lines: list[str]) -> dict:
    """tree.c read_tree (pjreddie's, which also fills `child`; AlexeyAB's leaves it unset)."""
    t = {"parent": [], "name": [], "group": [], "group_offset": [], "group_size": []}
    # t.child is realloc'ed to n + 1 entries per line: a write for a parent listed later lands
    # past its end, and that parent's own line then sets its entry to -1 (modelled here with
    # an array of the final size)
    t["child"] = [None] * len(lines)
    last_parent, group_size, groups, n = -1, 0, 0, 0
    for line in lines:
        fields = line.split()
        name, parent = fields[0], int(fields[1])
        t["parent"].append(parent)
        t["child"][n] = -1
        t["name"].append(name)
        if parent != last_parent:
            groups += 1
            t["group_offset"].append(n - group_size)
            t["group_size"].append(group_size)
            group_size = 0
            last_parent = parent
        t["group"].append(groups)
        if parent >= 0:
            t["child"][parent] = groups
        n += 1
        group_size += 1
    groups += 1
    t["group_offset"].append(n - group_size)
    t["group_size"].append(group_size)
    t["n"], t["groups"] = n, groups
    return t


def softmax(values: np.ndarray, start: int, n: int) -> None:
    """blas.c softmax (temp 1, stride 1) in place on values[start:start + n], in float32."""
    largest = np.float32(-np.finfo(np.float32).max)
    for i in range(n):
        largest = max(largest, values[start + i])
    total = np.float32(0.0)
    for i in range(n):
        e = np.float32(math.exp(float(values[start + i] - largest)))
        total = np.float32(total + e)
        values[start + i] = e
    for i in range(n):
        values[start + i] = np.float32(values[start + i] / total)


def softmax_tree(values: np.ndarray, start: int, tree: dict) -> None:
    """softmax_tree (batch 1): one softmax per group, groups laid end to end."""
    count = 0
    for i in range(tree["groups"]):
        softmax(values, start + count, tree["group_size"][i])
        count += tree["group_size"][i]


def region_forward_tree(x: np.ndarray, n: int, classes: int, h: int, w: int,
                        tree: dict) -> np.ndarray:
    """forward_region_layer (CPU, one image, softmax_tree): x in darknet's (C, H, W) order is
    flattened to box-major order (flatten(..., w*h, size*n, 1, 1)), then per box the logistic
    on the objectness and softmax_tree on the classes. Returns the flattened buffer."""
    size = 5 + classes
    layers, plane = size * n, w * h
    out = np.empty(layers * plane, dtype=np.float32)
    for c in range(layers):
        for i in range(plane):
            out[i * layers + c] = x[c * plane + i]
    for i in range(plane * n):
        index = size * i
        out[index + 4] = _logistic(out[index + 4])
        softmax_tree(out, index + 5, tree)
    return out


def hierarchy_predictions(p: np.ndarray, start: int, n: int, tree: dict) -> None:
    """tree.c hierarchy_predictions (only_leaves 0), in place."""
    for j in range(n):
        parent = tree["parent"][j]
        if parent >= 0:
            p[start + j] = np.float32(p[start + j] * p[start + parent])


def hierarchy_top_prediction(p: np.ndarray, start: int, tree: dict, thresh: float) -> int:
    """tree.c hierarchy_top_prediction with stride 1."""
    prob, group = np.float32(1.0), 0
    while True:
        top, top_i = np.float32(0.0), 0
        for i in range(tree["group_size"][group]):
            index = i + tree["group_offset"][group]
            if p[start + index] > top:
                top_i, top = index, p[start + index]
        if np.float32(prob * top) > np.float32(thresh):
            prob = np.float32(prob * top)
            group = tree["child"][top_i]
            if tree["child"][top_i] < 0:
                return top_i
        elif group == 0:
            return top_i
        else:
            return tree["parent"][tree["group_offset"][group]]


def region_detections_tree(out: np.ndarray, n: int, classes: int, h: int, w: int,
                           anchors: np.ndarray, thresh: float, tree: dict,
                           class_map: list[int] | None, hier_thresh: float
                           ) -> list[tuple[tuple, list]]:
    """get_region_detections' tree branch (relative boxes, no letterbox) on the flattened
    buffer, box `i*n + a` at (i*n + a) * (classes + 5) as get_region_boxes reads it; boxes by
    get_region_box (logistic on x, y there). [(box x, y, w, h), probs] in box order."""
    out = out.copy()
    dets = []
    for i in range(w * h):
        row, col = i // w, i % w
        for a in range(n):
            index = (i * n + a) * (classes + 5)
            scale = out[index + 4]
            box = ((col + float(_logistic(out[index]))) / w,
                   (row + float(_logistic(out[index + 1]))) / h,
                   math.exp(out[index + 2]) * anchors[a][0] / w,
                   math.exp(out[index + 3]) * anchors[a][1] / h)
            hierarchy_predictions(out, index + 5, classes, tree)
            if class_map is not None:
                probs = [0.0] * len(class_map)
                for j, node in enumerate(class_map):
                    prob = np.float32(scale * out[index + 5 + node])
                    probs[j] = float(prob) if prob > thresh else 0.0
            else:
                probs = [0.0] * classes
                j = hierarchy_top_prediction(out, index + 5, tree, hier_thresh)
                probs[j] = float(scale) if scale > thresh else 0.0
            dets.append((box, probs))
    return dets


# --- one-channel input: image.c load_image_stb with channels = 1 (stb_image.h) ---

def stbi_compute_y(r: int, g: int, b: int) -> int:
    """stb_image.h stbi__compute_y."""
    return ((r * 77) + (g * 150) + (29 * b)) >> 8


def load_image_stb_grey(rgb: np.ndarray) -> np.ndarray:
    """load_image_stb(filename, 1) from decoded 8-bit RGB pixels (H, W, 3): stbi__convert_format
    3 -> 1 (stbi__compute_y per pixel), then im.data[i + w*j] = data[i + w*j] / 255. as float.
    Returns (1, H, W)."""
    h, w = rgb.shape[:2]
    out = np.empty((1, h, w), dtype=np.float32)
    for j in range(h):
        for i in range(w):
            r, g, b = (int(v) for v in rgb[j, i])
            out[0, j, i] = np.float32(stbi_compute_y(r, g, b) / 255.)
    return out
