"""On-screen text: PP-OCRv4's text detector (DB, 4.7 MB) and recogniser (CRNN, 10.8 MB), the ONNX models
that ship inside the ``rapidocr-onnxruntime`` wheel, run by that wheel's own classes (``TextDetector``'s
pre- and post-processing, ``TextRecognizer``) with onnxruntime on the CPU. No download.

The detector alone fires on some faces (an open mouth with teeth at a box score of ~0.55 on the real single
talking head, whole drawn faces of the generated samples); the recogniser reads each box, and a box whose
reading it is not sure of (``text_score``, as RapidOCR's own pipeline does) or that reads as fewer than
``min_chars`` letters or digits is dropped: those faces read as one character ("4", "9", "T"), up to 0.89
sure of it.

    ScreenTextReader().read(frames)   # [N, H, W, 3] RGB uint8 -> per frame, its TextBox list
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtcc.nets.loading import WeightsError, packaged_models

INSTALL = "pip install pyclipper shapely && pip install --no-deps rapidocr-onnxruntime==1.4.4"
DETECTOR, RECOGNISER = "ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"


def model_dir(path: str | Path | None = None) -> Path:
    """A folder holding the two PP-OCRv4 ONNX files: ``path`` when given, else the wheel's ``models/``."""
    return packaged_models(path, "rapidocr_onnxruntime", "models", (DETECTOR, RECOGNISER), model="PP-OCRv4",
                           install=INSTALL)


@dataclass(frozen=True)
class TextBox:
    """One line of text: its box (x0, y0, x1, y1, pixels of the image read), what it reads and how sure the
    recogniser is (0-1)."""

    box: tuple[float, float, float, float]
    text: str
    score: float


class ScreenTextReader:
    """One detector and one recogniser session."""

    def __init__(self, path: str | Path | None = None, threads: int = 1, size: int = 640,
                 box_score: float = 0.5, text_score: float = 0.5, min_chars: int = 2):
        try:
            from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
        except ImportError as e:
            raise WeightsError(f"PP-OCRv4 needs the rapidocr-onnxruntime package and its needs ({e}): "
                               f"{INSTALL}") from e
        d = model_dir(path)
        session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "use_cuda": False, "use_dml": False}
        # limit_type "max": the picture's longer side is brought to ``size`` (RapidOCR's default brings the
        # shorter side to 736, a 1312x736 input for a 720p frame: 5x the work for text we can read at 640)
        self.detector = TextDetector({**session, "model_path": str(d / DETECTOR), "limit_side_len": size,
                                      "limit_type": "max", "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "box_thresh": box_score, "unclip_ratio": 1.6, "use_dilation": True,
                                      "score_mode": "fast"})
        self.recogniser = TextRecognizer({**session, "model_path": str(d / RECOGNISER),
                                          "rec_img_shape": [3, 48, 320], "rec_batch_num": 8})
        self.size = size
        self.text_score = text_score
        self.min_chars = min_chars

    def read(self, frames: np.ndarray) -> list[list[TextBox]]:
        """The text lines of each ``[N, H, W, 3]`` RGB frame (all of one size), in that frame's pixels."""
        frames = np.asarray(frames)
        if not len(frames):
            return []
        h, w = frames.shape[1:3]
        bgr = np.ascontiguousarray(frames[..., ::-1])  # the models were trained on OpenCV's channel order
        prep = self.detector.get_preprocess(max(h, w))
        # one frame a forward: a batch costs the same CPU time and holds every frame's activations at once
        maps = [self.detector.infer(prep(img))[0][0] for img in bgr]
        found: list[list[tuple[float, float, float, float]]] = []
        crops: list[np.ndarray] = []
        for img, m in zip(bgr, maps):
            quads, _ = self.detector.postprocess_op(m[None], (h, w))
            boxes = []
            for q in quads:
                x0, y0 = np.clip(q.min(axis=0), 0, [w, h])
                x1, y1 = np.clip(q.max(axis=0), 0, [w, h])
                if x1 - x0 > 3 and y1 - y0 > 3:
                    boxes.append((float(x0), float(y0), float(x1), float(y1)))
                    crops.append(img[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))])
            found.append(boxes)
        readings = self.recogniser(crops)[0] if crops else []
        out: list[list[TextBox]] = []
        at = 0
        for boxes in found:
            lines = [TextBox(b, str(t), float(s)) for b, (t, s) in zip(boxes, readings[at:at + len(boxes)])]
            at += len(boxes)
            out.append([t for t in lines if t.score >= self.text_score
                        and sum(ch.isalnum() for ch in t.text) >= self.min_chars])
        return out
