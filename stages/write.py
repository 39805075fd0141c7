"""Write: the last stage packs a kept clip's sample; it encodes and decodes nothing.

The media members were made once by the ``cut`` stage (``mp4``, ``mix.flac``, plain ``ref{i}.jpg``) and the
model stages added theirs; what is left is ``faces.json``, written from the clip's face tracks
(``ClipFaces``) with asd's speaking logits beside them (``SpeakingCurves``) when asd ran. The shard tar itself is written at commit (pipeline/shard.py).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import Field

from mtcc.facts import ClipFaces, CutMedia, SpeakingCurves
from mtcc.media.members import FACES, MIX, MP4

from .base import RESOURCES, Candidate, Key, Member, Resources, Stage, optional


class ClipWriter(Stage):
    name: ClassVar[str] = "write"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.001
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 190
    max_actor_cpus: ClassVar[float] = 1.0
    requires: ClassVar[tuple[Key | type, ...]] = (Member(MP4), Member(MIX, optional=True), optional(CutMedia),
                                                  optional(ClipFaces), optional(SpeakingCurves))
    provides: ClassVar[tuple[Key, ...]] = (Member(FACES),)
    reads_clip_media: ClassVar[bool] = True  # packs the members the cut made
    stats_schema: ClassVar[dict[str, str]] = {"frames": "int64", "mp4_bytes": "int64", "flac_bytes": "int64"}

    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.1, candidates_per_call=8), description=RESOURCES)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        if MP4 not in cand.members:
            raise ValueError(f"{cand.key} has no clip media: list the `cut` stage before `write` in the profile")
        faces = cand.maybe(ClipFaces)
        if faces is not None:
            doc = faces.to_json()
            speaking = cand.maybe(SpeakingCurves)
            if speaking is not None:  # asd's logits beside each character's boxes
                for ch, curve in zip(doc["characters"], speaking.per_character):
                    ch["speaking"] = curve
            cand.members[FACES] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        media = cand.maybe(CutMedia)
        return {
            "frames": media.frames if media else 0,
            "mp4_bytes": cand.member_size(MP4),
            "flac_bytes": cand.member_size(MIX) if MIX in cand.members else 0,
        }
