"""Shot boundaries with PySceneDetect, fed frame by frame from the faces stage's one sequential decode of the
video, so that no clip ever crosses a cut. Cut detection needs colour/edge change, not detail: each frame
is scaled down to ``analysis_width`` first."""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ShotSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detector: Literal["content", "adaptive"] = Field("content", description="PySceneDetect's ContentDetector "
                                                                              "or AdaptiveDetector")
    threshold: float = Field(27.0, gt=0, description="ContentDetector threshold (adaptive: adaptive_threshold)")
    min_shot_seconds: float = Field(0.5, ge=0, description="cuts closer than this are merged (flash filter)")
    analysis_width: int = Field(192, ge=32, description="frames are scaled to this width for cut detection")


class ShotDetector:
    """Cuts of one video, one frame at a time. A cut may be reported up to ``delay`` frames after the
    frame it starts at (PySceneDetect's flash filter merges cuts closer than the minimum shot length)."""

    def __init__(self, settings: ShotSettings, fps: float):
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        min_len = max(1, int(round(settings.min_shot_seconds * fps)))
        if settings.detector == "adaptive":
            self._det: Any = AdaptiveDetector(adaptive_threshold=settings.threshold / 9.0, min_scene_len=min_len)
        else:
            self._det = ContentDetector(threshold=settings.threshold, min_scene_len=min_len)
        self.fps = fps
        self.width = settings.analysis_width
        self.delay = int(getattr(self._det, "event_buffer_length", 0) or 0) + 1
        self._last: Any = None

    def frame(self, index: int, rgb: np.ndarray) -> list[int]:
        """Feed frame ``index`` (RGB, any size); the cuts reported now (frame numbers where shots start)."""
        from scenedetect import FrameTimecode

        h, w = rgb.shape[:2]
        # halving first: OpenCV's area filter has a fast path for exact halves and is ~3x slower at any
        # other ratio, and this runs on every frame of every video
        while w >= 2 * self.width:
            rgb = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
            h, w = rgb.shape[:2]
        if w > self.width:
            rgb = cv2.resize(rgb, (self.width, max(2, int(round(h * self.width / w)))), interpolation=cv2.INTER_AREA)
        self._last = FrameTimecode(index, fps=self.fps)
        return [tc.frame_num for tc in self._det.process_frame(self._last, np.ascontiguousarray(rgb[..., ::-1]))]

    def finish(self) -> list[int]:
        return [tc.frame_num for tc in self._det.post_process(self._last)] if self._last is not None else []
