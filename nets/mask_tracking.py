"""Following each character's mask through a clip with SAM2: where to prompt (the frame where the weaker
face is best seen), what counts as drift (the mask leaves its tracked face box), and the propagation with
re-prompts on drift. What each produced frame leaves is kept compactly (``FrameMasks``); the ``masks``
stage turns it into its outputs (``mask_outputs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtcc.media import rle as rle_codec
from mtcc.media.geometry import LatentGeometry, letterbox_mask
from mtcc.nets import sam2_model


def box_area(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def prompt_frame(boxes: np.ndarray, scores: np.ndarray) -> int:
    """The frame where the weakest character is best seen: argmax over frames of min over characters of
    score x box area (``boxes`` ``[C, T, 4]``, ``scores`` ``[C, T]``); the first such frame on ties."""
    quality = np.asarray(scores, np.float64) * box_area(boxes)
    return int(np.argmax(quality.min(axis=0)))


def best_frame(boxes: np.ndarray, scores: np.ndarray) -> int:
    """One character's best frame (score x box area), as the plain references pick it."""
    return int(np.argmax(np.asarray(scores, np.float64) * box_area(boxes)))


def face_cover(mask: np.ndarray, box: np.ndarray) -> float:
    """Fraction of the face box's in-frame pixels that the mask covers; NaN when the box has none (a
    face off screen says nothing about drift)."""
    h, w = mask.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    xa, ya = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    xb, yb = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if xb <= xa or yb <= ya:
        return float("nan")
    return float(mask[ya:yb, xa:xb].mean())


def drifted(covers: np.ndarray, min_cover: float) -> np.ndarray:
    """Frames (bool ``[T]``) where any character's mask covers less than ``min_cover`` of its face box."""
    c = np.asarray(covers, np.float64)
    with np.errstate(invalid="ignore"):
        return np.any(c < min_cover, axis=0)


# -- per-frame results ------------------------------------------------------------------------------------

@dataclass
class FrameMasks:
    """What is kept of each produced frame: RLE per character, face-box coverage, the letterboxed canvas
    masks bit-packed (480x720 -> 43 kB per character). Re-produced frames overwrite their entry."""

    boxes: np.ndarray  # [C, T, 4] tracked face boxes at clip resolution
    geo: LatentGeometry
    size: tuple[int, int]  # (h, w)
    rles: list[dict[int, dict[str, Any]]] = field(default_factory=list)
    covers: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    packed: dict[int, np.ndarray] = field(default_factory=dict)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reverse: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    produced: int = 0

    def __post_init__(self) -> None:
        c, t = self.boxes.shape[:2]
        self.rles = [{} for _ in range(c)]
        self.covers = np.full((c, t), np.nan)
        self.order = np.full(t, -1, np.int64)
        self.reverse = np.zeros(t, bool)

    def put(self, frame: int, masks: np.ndarray, reverse: bool) -> None:
        """``masks``: bool ``[C, h, w]`` at clip resolution."""
        canv = []
        for k, m in enumerate(masks):
            self.rles[k][frame] = rle_codec.encode(m)
            self.covers[k, frame] = face_cover(m, self.boxes[k, frame])
            canv.append(np.packbits(letterbox_mask(m, self.geo), axis=None))
        self.packed[frame] = np.stack(canv)
        self.order[frame] = self.produced
        self.reverse[frame] = reverse
        self.produced += 1

    @property
    def n_frames(self) -> int:
        return len(self.order)

    def complete(self) -> bool:
        return bool((self.order >= 0).all())

    def rle_lists(self) -> list[list[dict[str, Any]]]:
        return [[seq[f] for f in range(self.n_frames)] for seq in self.rles]

    def canvas(self, start: int, end: int) -> np.ndarray:
        n = self.geo.height * self.geo.width
        out = np.stack([np.unpackbits(self.packed[f], axis=1, count=n) for f in range(start, end)], axis=1)
        return out.reshape(out.shape[0], end - start, self.geo.height, self.geo.width)


# -- tracking -----------------------------------------------------------------------------------------------

def track(model: Any, state: dict[str, Any], out: FrameMasks, landmarks: np.ndarray, first: int, *,
          min_cover: float, max_reprompts: int) -> tuple[list[int], int]:
    """Prompt every character on frame ``first``, propagate forward then backward, re-prompt on drift.
    Results go to ``out``; returns the prompt frames and the number of re-prompts."""
    def prompt(frame: int) -> None:
        masks = None
        for k in range(out.boxes.shape[0]):
            pts = np.asarray(landmarks[k][frame], np.float64).reshape(-1, 2)
            pts = pts[np.isfinite(pts).all(axis=1)]
            _, _, masks = model.add_new_points_or_box(
                state, frame_idx=frame, obj_id=k, box=out.boxes[k, frame].astype(np.float32),
                points=pts.astype(np.float32) if len(pts) else None,
                labels=np.ones(len(pts), np.int32) if len(pts) else None)
        # the last call returns every object's mask on this frame; propagation from frame 0 backwards
        # yields nothing, so the prompt frame's result is recorded here
        out.put(frame, (masks[:, 0] > 0).cpu().numpy(), False)

    def propagate(start: int, reverse: bool) -> None:
        for f, _, logits in model.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
            out.put(int(f), (logits[:, 0] > 0).cpu().numpy(), reverse)

    prompts = [first]
    prompt(first)
    propagate(first, False)
    propagate(first, True)
    reprompts = 0
    while reprompts < max_reprompts:
        bad = drifted(out.covers, min_cover)
        bad[prompts] = False  # a prompt frame re-prompted with the same input gives the same mask
        if not bad.any():
            break
        candidates = np.flatnonzero(bad)
        d = int(candidates[np.argmin(out.order[candidates])])
        direction = bool(out.reverse[d])
        sam2_model.forget_frame(state, d)
        prompts.append(d)
        reprompts += 1
        prompt(d)
        propagate(d, direction)
    return prompts, reprompts
