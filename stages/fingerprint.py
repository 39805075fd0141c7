"""Fingerprint: what ``mtcc index`` needs to find the same clip shipped twice (a re-upload, re-encoded,
rescaled or trimmed), recorded in the manifest so the index never opens a tar (media/fingerprint.py):

  * ``frame_hashes``: a 64-bit perceptual hash (DCT of the 32x32 luma) of ``frame_fps`` frames a second of
    the clip's mp4, read small (the hash sees 32x32 anyway), at the clip times ``frame_times``;
  * ``audio_hashes``: 32-bit sub-fingerprints of the clip's 16 kHz mixture, one every 16 ms (quiet ones
    marked -1);
  * ``audio_share``: the share of the clip whose sound is loud enough to fingerprint (a silent clip can
    only be matched on its pictures, and the index then does not group it).

Nothing is decided here: a clip is a duplicate of another only across the build, which the index judges.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import Fingerprints
from mtcc.media.fingerprint import AUDIO_HOP_S, QUIET, audio_hashes, frame_hashes

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Resources, Stage
from .clip_media import clip_media

READ_WIDTH = 128  # pixels: the hash keeps 8x8 of a 32x32 picture; reading smaller costs less than the hash


class ClipFingerprint(Stage):
    name: ClassVar[str] = "fingerprint"
    expected_cost: ClassVar[float] = 0.02
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 270
    uses: ClassVar[tuple[str, ...]] = ("decord",)
    max_actor_cpus: ClassVar[float] = 1.0
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA,)
    provides: ClassVar[tuple[Key | type, ...]] = (Fingerprints,)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {"frame_hashes": "int64[]", "frame_times": "float32[]",
                                              "audio_hashes": "int64[]", "audio_share": "float64"}

    frame_fps: float = Field(2.0, gt=0, le=25, description="frames hashed per second of clip (a trimmed copy is "
                                                           "matched frame to nearest frame)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.25, candidates_per_call=8),
                                 description=RESOURCES)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        from mtcc.media.video import open_frames

        media = clip_media(cand, self)
        w, h = (int(v) for v in media.info.size)
        fps = float(media.info.fps)
        video = open_frames(media.mp4(), {"width": w, "height": h}, READ_WIDTH)
        # an encode that ended early holds fewer frames than the clip promises: its last one stands for the rest
        last = max(0, min(media.frames, video.n_frames) - 1)
        count = max(1, int(round(media.info.seconds * self.frame_fps)))
        idx = sorted({min(last, int(round(i / self.frame_fps * fps))) for i in range(count)})
        pics = np.concatenate([imgs for _, imgs in video.batches(idx, len(idx))])
        audio = audio_hashes(media.mixture())
        times = [round(i / fps, 3) for i in idx]
        cand.put(Fingerprints(frame_times=times, audio_hop_s=AUDIO_HOP_S))
        return {"frame_hashes": frame_hashes(pics).tolist(), "frame_times": times, "audio_hashes": audio.tolist(),
                "audio_share": float(np.mean(audio != QUIET)) if len(audio) else 0.0}
