"""A clip's media as every stage after the cut reads them: the clip's mp4, its 16 kHz mixture, and ONE set
of per-character face crops that all crop-based stages derive their own from.

The shared crops are 224x224 squares of side 1.4 x the face box's longer side, centred 0.2 x that side below
the box centre: syncnet_python's face crop (``crop_video`` with cs = 0.4), which is also clearvoice's (the
AV-MossFormer2 lip crop is its grey 112x112 centre). Any other square crop of the same face (prescore's
mouth crops, Light-ASD's) lies at a fixed place inside it, whatever the box: it is one affine warp away
(:func:`derive`), so no stage decodes the clip to crop faces.

The ``cut`` stage makes all three in one pass over the source (see stages/cut.py) and leaves them in the
node's workspace; a worker on another node (no such folder there) rebuilds them once per node from the
clip's own members (``mp4``, ``mix.flac``), never from the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class CropGeometry:
    """A square face crop: ``size`` pixels, side ``scale`` x the face box's longer side, centre ``shift`` x
    that side below the box centre."""

    size: int
    scale: float
    shift: float = 0.0

    @classmethod
    def from_crop_scale(cls, size: int, crop_scale: float) -> CropGeometry:
        """The crop of syncnet_python's ``crop_video`` (its ``cs``) and clearvoice's ``cropScale``: side
        ``(1 + crop_scale)`` x the box's longer side, centre ``crop_scale / 2`` x that side below the box centre."""
        return cls(size, 1.0 + crop_scale, crop_scale / 2)


SHARED_CROPS = CropGeometry(224, 1.4, 0.2)


def clip_source_frames(clock: Any, cand_start: float, t0: float, n_out: int, out_fps: float) -> np.ndarray:
    """Source frame index of every output frame of a clip starting at file time ``cand_start`` (``t0``: file
    time of the video start, where the source clock starts). The encode's fps filter puts each source frame
    at the output frame nearest its time and holds it until the next source frame's: output frame j shows
    the last source frame starting before ``cand_start + (j + 1/2) / out_fps``. (Rounding each output time to
    the nearest source frame instead is wrong by a frame where the source is slower than the clip: at 16 fps,
    on a fifth of the frames.)"""
    t = cand_start - t0 + (np.arange(n_out) + 0.5) / out_fps
    if clock.times is None:
        idx = np.ceil(t * clock.fps - 1e-6).astype(int) - 1
    else:
        idx = np.searchsorted(clock.times, t - 1e-6, side="left") - 1
    return np.clip(idx, 0, max(0, clock.n_frames - 1))


def square_crop(img: np.ndarray, box: np.ndarray, scale: float, size: int, shift: float = 0.0) -> np.ndarray:
    """A ``size``x``size`` crop of side ``scale`` x the box's longer side, centred ``shift`` x that side below
    the box centre; the part outside the frame is black (faces at the frame edge keep their place)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 2.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + shift * side
    half = side * scale / 2
    # affine map from the crop square to the frame: warpAffine pads with black and resamples once
    s = size / (2 * half)
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_characters(img: np.ndarray, boxes: np.ndarray, geom: CropGeometry = SHARED_CROPS) -> np.ndarray:
    """``[C, S, S, 3]``: each character's crop of one frame (``boxes`` ``[C, 4]`` in the frame's pixels)."""
    return np.stack([square_crop(img, b, geom.scale, geom.size, geom.shift) for b in boxes])


def derive(crops: np.ndarray, geom: CropGeometry, base: CropGeometry = SHARED_CROPS) -> np.ndarray:
    """Crops of geometry ``geom`` cut from crops of geometry ``base`` (``[..., S, S, 3]``): both are squares
    around the same box, so ``geom``'s square sits at the same place in every ``base`` crop. Outside
    ``base``'s square is black, as outside the frame."""
    if geom == base:
        return crops
    s = base.size / base.scale  # base crop pixels per box side
    cx = base.size / 2
    cy = base.size / 2 + (geom.shift - base.shift) * s
    half = geom.scale * s / 2
    k = geom.size / (2 * half)
    m = np.array([[k, 0, geom.size / 2 - k * cx], [0, k, geom.size / 2 - k * cy]], np.float32)
    flags = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    flat = crops.reshape(-1, *crops.shape[-3:])
    out = np.empty((len(flat), geom.size, geom.size, crops.shape[-1]), np.uint8)
    for i, img in enumerate(flat):
        out[i] = cv2.warpAffine(img, m, (geom.size, geom.size), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0).reshape(out.shape[1:])
    return out.reshape(*crops.shape[:-3], geom.size, geom.size, crops.shape[-1])


def clip_boxes(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """``[C, T, 4]`` face boxes of a clip (source pixels) in its mp4's pixels (``scale``: mp4 px per source
    px)."""
    sx, sy = scale
    return np.asarray(boxes, np.float64) * [sx, sy, sx, sy]


def box_in_crop(boxes: np.ndarray, geom: CropGeometry = SHARED_CROPS) -> np.ndarray:
    """Where the face box lies in its own crop of ``geom``: ``[..., 4]`` boxes (any pixels) -> ``[..., 4]``
    in crop pixels. It depends on the box's shape only (the crop is cut around it), so no frame is read."""
    b = np.asarray(boxes, np.float64)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    side = np.maximum(np.maximum(w, h), 2.0)
    k = geom.size / (geom.scale * side)  # crop pixels per box pixel
    cx, cy = geom.size / 2, geom.size / 2 - geom.shift * side * k
    return np.stack([cx - w * k / 2, cy - h * k / 2, cx + w * k / 2, cy + h * k / 2], axis=-1)
