"""Shots: hard-cut boundaries with PySceneDetect, so that no clip ever crosses a cut.

Frames are decoded once, at a small width (cut detection needs colour/edge change, not detail), and
fed to PySceneDetect's detector directly.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import Candidate, Resources, Stage
from .media import open_local
from .video import open_frames


class ShotSplit(Stage):
    name: ClassVar[str] = "shots"
    stats_schema: ClassVar[dict[str, str]] = {"n_shots": "int64", "frames_decoded": "int64",
                                              "longest_shot_s": "float64"}

    detector: Literal["content", "adaptive"] = "content"
    threshold: float = Field(27.0, gt=0, description="ContentDetector threshold (adaptive: adaptive_threshold)")
    min_shot_seconds: float = Field(0.5, ge=0)
    decode_width: int = Field(192, ge=32, description="frames are decoded at this width for cut detection")
    chunk_frames: int = Field(250, ge=1)
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0))

    def _make_detector(self, fps: float):
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        min_len = max(1, int(round(self.min_shot_seconds * fps)))
        if self.detector == "adaptive":
            return AdaptiveDetector(adaptive_threshold=self.threshold / 9.0, min_scene_len=min_len)
        return ContentDetector(threshold=self.threshold, min_scene_len=min_len)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        from scenedetect import FrameTimecode

        probe = cand.info["probe"]
        with open_local(cand.source) as path:
            video = open_frames(path, probe, self.decode_width)
            det = self._make_detector(video.fps)
            cuts: list[int] = []
            last = None
            for idx, frames in video.batches(None, self.chunk_frames):
                for i, rgb in zip(idx, frames):
                    last = FrameTimecode(i, fps=video.fps)
                    cuts += [tc.frame_num for tc in det.process_frame(last, rgb[..., ::-1])]
            if last is not None:
                cuts += [tc.frame_num for tc in det.post_process(last)]
        bounds = [0, *sorted({c for c in cuts if 0 < c < video.n_frames}), video.n_frames]
        shots = [[a, b] for a, b in zip(bounds, bounds[1:]) if b > a]
        cand.info["video"] = {"fps": video.fps, "n_frames": video.n_frames}
        cand.info["frame_clock"] = video.clock.to_info()
        cand.info["shots"] = shots
        longest = max((video.time_of(b) - video.time_of(a) for a, b in shots), default=0.0)
        return {"n_shots": len(shots), "frames_decoded": video.n_frames, "longest_shot_s": longest}
