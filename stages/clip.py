"""Clip: until the face stages exist, a clip is the whole probed video, capped to a maximum length."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from mtcc.facts import ProbeResult

from .base import RESOURCES, Candidate, Key, Resources, Stage


def clip_key(video_id: str, clip_idx: int) -> str:
    return f"{video_id}_{clip_idx:04d}"


def make_clip(parent: Candidate, stage: str, clip_idx: int, start: float, end: float) -> Candidate:
    """A clip candidate that inherits its video's facts (probe info, hash) but none of its members."""
    return Candidate(
        key=clip_key(parent.video_id, clip_idx),
        video_id=parent.video_id,
        source=parent.source,
        shard=parent.shard,
        level="clip",
        clip_idx=clip_idx,
        start=round(start, 6),
        end=round(end, 6),
        from_stage=stage,
        stats=dict(parent.stats),
        facts=parent.facts.copy(),
    )


class WholeVideoClip(Stage):
    name: ClassVar[str] = "clip"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.001
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 200
    max_actor_cpus: ClassVar[float] = 1.0
    requires: ClassVar[tuple[Key | type, ...]] = (ProbeResult,)  # the clip's length
    stats_schema: ClassVar[dict[str, str]] = {"n_clips": "int64"}
    expands: ClassVar[bool] = True

    max_seconds: float = Field(20.0, gt=0, description="clips longer than this are cut at this length")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.1, candidates_per_call=16), description=RESOURCES)

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        out: list[Candidate] = []
        for video in batch:
            duration = float(video.fact(ProbeResult).duration or 0.0)
            end = min(duration, self.max_seconds)
            stats: dict[str, Any] = {"n_clips": 1}
            self.record(video, stats)
            video.status = "expanded"
            out.append(video)
            out.append(make_clip(video, self.name, 0, 0.0, end))
        return out
