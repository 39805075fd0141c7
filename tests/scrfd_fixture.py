"""A stand-in SCRFD ONNX graph for plumbing tests (no real weights: it detects red squares, not faces).

It has the signature of insightface's SCRFD "bnkps" exports: one input ``[1,3,H,W]`` (H, W dynamic,
multiples of 32) and 9 outputs for strides 8/16/32 with 2 anchors per cell, in insightface's order:
scores ``[N_s,1]`` for each stride, then bbox distances ``[N_s,4]``, then keypoint offsets
``[N_s,10]``, where ``N_s = (H/s)*(W/s)*2`` and rows run over cells row-major with the 2 anchors of a
cell adjacent.

What it computes (from the input, so the letterbox/resize/colour handling is exercised):

* stride 32: score = sigmoid(GAIN * (mean of channel 0 over the 32x32 cell - LEVEL)). The network
  input is (RGB - 127.5) / 128, so a cell that is fully pure red in the RGB image (channel 0 ~ +1)
  scores ~0.99 and any cell that is not entirely red (or is blue, if a caller forgot insightface's
  BGR convention) scores ~0;
* strides 8 and 16: score ~0 everywhere;
* bbox distances (left, top, right, bottom) = (0, 0, 1, 1) strides from the anchor point (the cell's
  top-left corner), so a detection is exactly its 32x32 cell;
* keypoints = ``KPS`` (in strides from the anchor point): a plausible face inside that cell.

So a red square covering exactly one stride-32 cell of the network input comes back as one face
whose box is that square mapped back to the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
GAIN, LEVEL = 50.0, 0.9
# left eye, right eye, nose, left mouth corner, right mouth corner; (x, y) in units of the stride
KPS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)


def build_fake_scrfd() -> onnx.ModelProto:
    nodes, inits = [], []
    outputs: dict[str, list] = {"score": [], "bbox": [], "kps": []}

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    shape_name = {k: const(f"shape_{k}", np.array([-1, k], np.int64)) for k in (1, 4, 10)}

    for s in STRIDES:
        pooled = f"pool{s}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], kernel_shape=[s, s], strides=[s, s]))
        heads = {}
        # score logit: channel 0 only, live at stride 32; dead elsewhere
        w = np.zeros((1, 3, 1, 1), np.float32)
        b = np.full((1,), -20.0, np.float32)
        if s == 32:
            w[0, 0, 0, 0] = GAIN
            b[0] = -GAIN * LEVEL
        heads["score"] = (w, b, 1)
        heads["bbox"] = (np.zeros((4, 3, 1, 1), np.float32), np.array([0, 0, 1, 1], np.float32), 4)
        heads["kps"] = (np.zeros((10, 3, 1, 1), np.float32), KPS.reshape(-1).astype(np.float32), 10)
        for kind, (w, b, k) in heads.items():
            base = f"{kind}{s}"
            conv = [pooled, const(f"{base}_w", w), const(f"{base}_b", b)]
            nodes.append(helper.make_node("Conv", conv, [f"{base}_c"]))
            x = f"{base}_c"
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [x], [f"{base}_sig"]))
                x = f"{base}_sig"
            nodes.append(helper.make_node("Transpose", [x], [f"{base}_t"], perm=[0, 2, 3, 1]))  # [1,h,w,k]
            nodes.append(helper.make_node("Concat", [f"{base}_t", f"{base}_t"], [f"{base}_a"], axis=3))  # 2 anchors
            out = f"{base}_out"
            nodes.append(helper.make_node("Reshape", [f"{base}_a", shape_name[k]], [out]))  # [N,k]
            outputs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", k]))

    graph = helper.make_graph(
        nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_fake_pack(root: Path, pack: str = "buffalo_l", fname: str = "det_10g.onnx") -> Path:
    """``root/pack/fname`` holding the stand-in graph; returns the file path."""
    d = Path(root) / pack
    d.mkdir(parents=True, exist_ok=True)
    p = d / fname
    onnx.save(build_fake_scrfd(), str(p))
    return p
