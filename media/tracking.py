"""Face tracks from per-frame detections: IoU association, gap filling, median smoothing, and
interpolation to any frame. Pure numpy; the face stage feeds it detections of sampled frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N,4] against every box in ``b`` [M,4] (x0,y0,x1,y1)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)).astype(np.float32)


def best_pairs(ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the one-to-one matching of largest total IoU (the Hungarian method)."""
    # imported here: scipy.optimize is a quarter second of start-up for every stage actor and CLI command
    # that imports the stage registry, and only the faces stage matches boxes
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(-ious)


@dataclass
class Track:
    """One face over time. ``frames`` are source frame indices of the samples where it was detected
    (after gap filling: also the filled ones, flagged in ``detected``)."""

    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    misses: int = 0

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "frames": [int(f) for f in self.frames],
            "boxes": np.round(np.asarray(self.boxes, np.float64), 2).tolist(),
            "landmarks": np.round(np.asarray(self.landmarks, np.float64), 2).tolist(),
            "scores": [round(float(s), 4) for s in self.scores],
            "detected": [bool(d) for d in self.detected],
        }


def associate(samples: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], *, iou_min: float = 0.3,
              max_gap: int = 2, min_len: int = 2, next_id: int = 0) -> list[Track]:
    """Link detections of consecutive samples into tracks.

    ``samples``: (frame index, boxes [N,4], landmarks [N,5,2], scores [N]) in time order, all within one
    shot. A track survives ``max_gap`` samples without a match; tracks with fewer than ``min_len``
    detections are dropped as noise.
    """
    active: list[Track] = []
    ended: list[Track] = []
    for frame, boxes, kps, scores in samples:
        ious = iou_matrix(np.array([t.boxes[-1] for t in active]).reshape(-1, 4), boxes)
        matched_t, matched_d = set(), set()
        if ious.size:
            rows, cols = best_pairs(ious)
            for r, c in zip(rows, cols):
                if ious[r, c] >= iou_min:
                    t = active[r]
                    t.frames.append(frame)
                    t.boxes.append(boxes[c])
                    t.landmarks.append(kps[c])
                    t.scores.append(float(scores[c]))
                    t.detected.append(True)
                    t.misses = 0
                    matched_t.add(r)
                    matched_d.add(c)
        still = []
        for i, t in enumerate(active):
            if i not in matched_t:
                t.misses += 1
            (ended if t.misses > max_gap else still).append(t)
        active = still
        for c in range(len(boxes)):
            if c not in matched_d:
                active.append(Track(next_id, [frame], [boxes[c]], [kps[c]], [float(scores[c])], [True]))
                next_id += 1
    tracks = [t for t in ended + active if sum(t.detected) >= min_len]
    return sorted(tracks, key=lambda t: (t.first, t.id))


def fill_and_smooth(track: Track, sample_frames: list[int], window: int = 3) -> Track:
    """Fill the samples a track missed between its first and last detection (linear), then median-
    smooth boxes and landmarks over ``window`` samples (odd), which removes single-sample jitter."""
    span = [f for f in sample_frames if track.first <= f <= track.last]
    have = np.array(track.frames)
    boxes = np.asarray(track.boxes, np.float64)
    kps = np.asarray(track.landmarks, np.float64).reshape(len(have), -1)
    sc = np.asarray(track.scores, np.float64)
    grid = np.array(span)
    fb = np.stack([np.interp(grid, have, boxes[:, k]) for k in range(4)], 1)
    fk = np.stack([np.interp(grid, have, kps[:, k]) for k in range(kps.shape[1])], 1)
    fs = np.interp(grid, have, sc)
    detected = np.isin(grid, have)
    if window > 1 and len(grid) >= window:
        half = window // 2
        pad_b = np.pad(fb, ((half, half), (0, 0)), mode="edge")
        pad_k = np.pad(fk, ((half, half), (0, 0)), mode="edge")
        fb = np.median(np.stack([pad_b[i:i + len(grid)] for i in range(window)]), 0)
        fk = np.median(np.stack([pad_k[i:i + len(grid)] for i in range(window)]), 0)
    return Track(track.id, grid.tolist(), list(fb), list(fk.reshape(len(grid), 5, 2)), fs.tolist(),
                 detected.tolist())


def interpolate(track: dict[str, Any], frames: np.ndarray) -> dict[str, np.ndarray]:
    """A track (as stored by ``Track.to_dict``) at arbitrary source frame positions (float ok)."""
    have = np.asarray(track["frames"], np.float64)
    boxes = np.asarray(track["boxes"], np.float64)
    kps = np.asarray(track["landmarks"], np.float64).reshape(len(have), -1)
    sc = np.asarray(track["scores"], np.float64)
    out_b = np.stack([np.interp(frames, have, boxes[:, k]) for k in range(4)], 1)
    out_k = np.stack([np.interp(frames, have, kps[:, k]) for k in range(kps.shape[1])], 1).reshape(-1, 5, 2)
    out_s = np.interp(frames, have, sc)
    return {"boxes": out_b, "landmarks": out_k, "scores": out_s}
