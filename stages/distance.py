"""Distance: how close the two characters are, relative to their face size (paper §4.1: exclude pairs
whose bodies are too distant), and how similar their face sizes are.

The face-size ratio (smaller / larger face area) is recorded, never used to reject: characters at
different depths of one scene (an old man and a boy on a bench, a host and a guest across a desk) are
exactly the same-scene pairs the dataset is for, and the paper's filter is face size against the distance
between the characters only. A user who wants similar sizes filters the manifest on ``distance.size_ratio``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces
from mtcc.media.clip import CHARACTERS

from .base import RESOURCES, Candidate, Key, Rejection, Resources, Stage, StatView, Threshold
from .segment import TwoFaceSegments


class FaceDistance(Stage):
    name: ClassVar[str] = "distance"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.001
    typical_keep: ClassVar[float] = 0.8
    actor_memory_mb: ClassVar[int] = 185
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    requires: ClassVar[tuple[Key | type, ...]] = (ClipFaces,)
    stats_schema: ClassVar[dict[str, str]] = {"ratio": "float64", "size_ratio": "float64", "face_px": "float64"}
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("face_px",), "face px", plot="face_size", title="Face size (mean box width, source px)",
                 unit="pixels", thresholds=(Threshold("min_face_px", "min_face_px", stage=TwoFaceSegments),)),
        StatView(("ratio",), "distance ratio", plot="distance_ratio",
                 title="Distance ratio (face size / centre distance)", unit="ratio",
                 thresholds=(Threshold("min_ratio", "min_ratio"),)),
    )

    size: Literal["width", "sqrt_area"] = Field(
        "width", description="face size: mean of the two box widths, or of sqrt(box area)")
    min_ratio: float = Field(0.15, ge=0, description="face size / distance between face centres, clip mean")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.1, candidates_per_call=32), description=RESOURCES)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        chars = cand.fact(ClipFaces).characters
        if len(chars) != 2:
            raise ValueError(f"distance needs exactly 2 characters, clip has {len(chars)}")
        b0, b1 = (np.asarray(c.boxes, np.float64) for c in chars)
        w0, w1 = b0[:, 2] - b0[:, 0], b1[:, 2] - b1[:, 0]
        a0, a1 = w0 * (b0[:, 3] - b0[:, 1]), w1 * (b1[:, 3] - b1[:, 1])
        size = (w0 + w1) / 2 if self.size == "width" else (np.sqrt(a0) + np.sqrt(a1)) / 2
        c0 = (b0[:, :2] + b0[:, 2:]) / 2
        c1 = (b1[:, :2] + b1[:, 2:]) / 2
        dist = np.linalg.norm(c0 - c1, axis=1)
        ratio = size / np.maximum(dist, 1e-6)
        size_ratio = np.minimum(a0, a1) / np.maximum(np.maximum(a0, a1), 1e-6)
        return {"ratio": float(ratio.mean()), "size_ratio": float(size_ratio.mean()), "face_px": float(size.mean())}

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if stats["ratio"] < self.min_ratio:
            return Rejection("too_distant", f"face size / centre distance {stats['ratio']:.3f} < min_ratio {self.min_ratio}")
        return None
