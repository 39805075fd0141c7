"""Per-character face crops of a clip at the output frame rate, from the source, in one decode."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .media import open_local
from .video import FrameClock, open_frames


def clip_source_frames(clock: FrameClock, cand_start: float, t0: float, n_out: int, out_fps: float) -> np.ndarray:
    """Source frame index of every output frame of a clip starting at file time ``cand_start``: output
    frame j is shown at ``cand_start + j/out_fps`` (the clip encode is constant-rate), which is
    ``t0`` (file time of the video start) later than the source clock's time."""
    return clock.index_at(cand_start - t0 + np.arange(n_out) / out_fps)


def square_crop(img: np.ndarray, box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """A ``size``x``size`` crop centred on ``box``, side = ``scale`` x the box's longer side; the part
    outside the frame is black (faces at the frame edge keep their place in the crop)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0, 2.0) * scale / 2
    # affine map from the crop square to the frame: warpAffine pads with black and resamples once
    s = size / (2 * half)
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def face_crops(cand: Any, *, size: int, scale: float, batch_frames: int = 32) -> np.ndarray:
    """uint8 RGB ``[n_characters, T, size, size, 3]`` for a clip candidate with ``info['clip_faces']``.

    Each needed source frame is decoded once at full resolution, and both characters are cropped from
    it; frames repeated by frame-rate conversion are decoded once too.
    """
    faces = cand.info["clip_faces"]
    probe = cand.info["probe"]
    chars = faces["characters"]
    n_out = int(faces["frames"])
    out = np.zeros((len(chars), n_out, size, size, 3), np.uint8)
    boxes = [np.asarray(c["boxes"], np.float64) for c in chars]
    with open_local(cand.source) as path:
        video = open_frames(path, probe, None)
        src = clip_source_frames(video.clock, float(cand.start or 0.0), float(probe.get("video_start") or 0.0),
                                 n_out, faces["fps"])
        unique = sorted(set(src.tolist()))
        where: dict[int, list[int]] = {}
        for j, f in enumerate(src.tolist()):
            where.setdefault(f, []).append(j)
        for idx, frames in video.batches(unique, batch_frames):
            for f, img in zip(idx, frames):
                for j in where[f]:
                    for k in range(len(chars)):
                        out[k, j] = square_crop(img, boxes[k][j], scale, size)
    return out


def audio_16k(cand: Any, rate: int = 16000) -> np.ndarray:
    """The clip's mixture, mono float32 at ``rate``, decoded by ffmpeg from the source (argument list)."""
    from .media import ff_input, run_tool

    start = float(cand.start or 0.0)
    dur = float(cand.end or 0.0) - start
    with open_local(cand.source) as path:
        raw = run_tool(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.6f}", "-t", f"{dur:.6f}",
                        "-i", ff_input(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", "-"],
                       what=f"{cand.source} audio [{start:.2f}s, +{dur:.2f}s]")
    audio = np.frombuffer(raw, np.float32).copy()
    want = int(round(dur * rate))
    return np.pad(audio, (0, max(0, want - len(audio))))[:want]
