"""Facts about one clip: its characters' faces, the media the cut made, and what each model stage
learned. The ones with ``sample_meta`` travel in the sample's json under their key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .base import LOCAL, Fact


@dataclass(frozen=True)
class ClipCharacter:
    """One character of a clip: per output frame, its face box and 5 landmarks (source pixels) and the
    detector's score. ``index``: its place left to right on the first frame."""

    index: int
    track_id: int
    boxes: list[list[float]]
    landmarks: list[Any]
    scores: list[float]

    def box_array(self) -> np.ndarray:
        return np.asarray(self.boxes, np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class ClipFaces(Fact):
    """Made by ``segment`` (the clip's share of the video's tracks, one entry per output frame at ``fps``)."""

    key: ClassVar[str] = "clip_faces"
    made_by: ClassVar[str] = "segment"
    fps: float
    frames: int
    order: str
    characters: tuple[ClipCharacter, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipFaces:
        chars = tuple(ClipCharacter(**{k: c[k] for k in ("index", "track_id", "boxes", "landmarks", "scores")})
                      for c in data["characters"])
        return cls(data["fps"], int(data["frames"]), str(data.get("order", "left_to_right_at_first_frame")), chars)

    def boxes(self) -> np.ndarray:
        """``[C, T, 4]`` face boxes in source pixels."""
        return np.stack([c.box_array() for c in self.characters])


@dataclass(frozen=True)
class CutMedia(Fact):
    """Made by ``cut``: the clip media it left in the node's workspace (and as the ``mp4`` / ``mix.flac``
    members): their digest, length in seconds and frames, rate, mp4 size and mp4 pixels per source pixel."""

    key: ClassVar[str] = "media"
    made_by: ClassVar[str] = "cut"
    sha256: str
    seconds: float
    frames: int
    fps: float
    size: tuple[int, int]
    scale: tuple[float, float]

    @classmethod
    def of(cls, sha256: str, seconds: float, frames: int, fps: float, size: tuple[int, int],
           scale: tuple[float, float]) -> CutMedia:
        return cls(sha256, round(float(seconds), 6), int(frames), float(fps), (int(size[0]), int(size[1])),
                   (float(scale[0]), float(scale[1])))


@dataclass(frozen=True)
class SpeakingCurves(Fact):
    """Made by ``asd``: per character, Light-ASD's speaking logit on each output frame (rounded to 4
    places); ``write`` puts them beside the boxes in ``faces.json``."""

    key: ClassVar[str] = "speaking"
    made_by: ClassVar[str] = "asd"
    per_character: tuple[list[float], ...]


@dataclass(frozen=True)
class Speakers(Fact):
    """Made by ``asd``: who speaks when. ``silent``: per character, spoke on fewer frames than the stage's
    ``min_speaking_fraction`` (what ``sync`` trusts when the weights are real)."""

    key: ClassVar[str] = "asd"
    made_by: ClassVar[str] = "asd"
    sample_meta: ClassVar[bool] = True
    model: str
    random_weights: bool
    fps: int
    dtype: str
    speaking_fraction: list[float]
    intervals: list[list[list[float]]]
    both_speaking: float
    turns: int
    track_face: list[list[float]] | None
    speech: list[list[float]] | None
    axes: str
    silent: tuple[bool, bool] = field(default=(False, False), metadata=LOCAL)


@dataclass(frozen=True)
class Separation(Fact):
    """Made by ``separate``: the model, and per separated track the VAD's speech segments (seconds).
    ``silent``: per track, too little speech or too quiet by the stage's thresholds."""

    key: ClassVar[str] = "separate"
    made_by: ClassVar[str] = "separate"
    sample_meta: ClassVar[bool] = True
    model: str
    random_weights: bool
    rate: int
    speech: list[list[list[float]]]
    silent: tuple[bool, bool] = field(default=(False, False), metadata=LOCAL)


@dataclass(frozen=True)
class SyncResult(Fact):
    """Made by ``sync``: SyncNet's cross matrix (audio track x face) and the binding read from it;
    ``shifted_frames``: per track, the frames its audio was moved by (only when it was)."""

    key: ClassVar[str] = "sync"
    made_by: ClassVar[str] = "sync"
    sample_meta: ClassVar[bool] = True
    absent_if_none: ClassVar[frozenset[str]] = frozenset({"shifted_frames"})
    model: str
    random_weights: bool
    audio_source: str
    vshift: int
    windows: int
    cross: Any
    a_ac: Any
    binding_margin: Any
    swapped: Any
    axes: str
    shifted_frames: list[int] | None = None


@dataclass(frozen=True)
class MaskResult(Fact):
    """Made by ``masks``: how SAM2 was run on the clip (windows, prompts, reference frames, model)."""

    key: ClassVar[str] = "masks"
    made_by: ClassVar[str] = "masks"
    sample_meta: ClassVar[bool] = True
    windows: list[list[int]]
    geometry: dict[str, Any]
    size: list[int]
    prompt_frames: list[int]
    reprompts: int
    ref_frames: list[int]
    model: str
    config: str
    image_size: int
    random_weights: bool


@dataclass(frozen=True)
class MouthCurves(Fact):
    """Made by ``prescore``: per character, the lip-motion/speech correlation at each lag in ``lags``."""

    key: ClassVar[str] = "prescore"
    made_by: ClassVar[str] = "prescore"
    curves: list[list[float]]
    lags: list[int]
    audio_source: str


@dataclass(frozen=True)
class AudioEmbeddingMeta(Fact):
    """Made by ``audio_emb``: what the ``audio_emb.npy`` member holds and how it was made."""

    key: ClassVar[str] = "audio_emb"
    made_by: ClassVar[str] = "audio_emb"
    sample_meta: ClassVar[bool] = True
    model: str
    revision: str | None
    fps: int
    shape: list[int]
    dtype: str
    layers: str
    random_weights: bool
    alignment: str


@dataclass(frozen=True)
class CaptionMeta(Fact):
    """Made by ``caption``: the model and backend, and which frames (clip seconds) and grid it saw."""

    key: ClassVar[str] = "caption"
    made_by: ClassVar[str] = "caption"
    sample_meta: ClassVar[bool] = True
    model: str
    backend: str
    fps: float
    frames: list[float]
    grid: list[int]


@dataclass(frozen=True)
class ScreenTextLines(Fact):
    """Made by ``text``: the lines of text PP-OCRv4 read on the frames it looked at (clip seconds ``times``),
    per frame their boxes (x0, y0, x1, y1 in the clip mp4's pixels, of picture size ``size``) and readings,
    and ``static``: the boxes of the text that stays in place across the clip (logos, lower thirds,
    tickers, burnt-in subtitles), for a trainer that crops or masks them."""

    key: ClassVar[str] = "text"
    made_by: ClassVar[str] = "text"
    sample_meta: ClassVar[bool] = True
    model: str
    size: list[int]
    times: list[float]
    boxes: list[list[list[float]]]
    texts: list[list[str]]
    static: list[list[float]]


@dataclass(frozen=True)
class FaceIdentities(Fact):
    """Made by ``identity``: which model described each character's face, on which clip frames
    (``frames[k]``, one list per character, the rows of ``identity.npy``), and the distance under which two
    descriptors are one person (the model's operating point, what ``mtcc index`` clusters with)."""

    key: ClassVar[str] = "identity"
    made_by: ClassVar[str] = "identity"
    sample_meta: ClassVar[bool] = True
    model: str
    frames: list[list[int]]
    same_person: float


@dataclass(frozen=True)
class Fingerprints(Fact):
    """Made by ``fingerprint``: how the clip's near-duplicate fingerprints were taken (the hashes themselves
    are manifest columns, read by ``mtcc index`` without opening a tar)."""

    key: ClassVar[str] = "fingerprint"
    made_by: ClassVar[str] = "fingerprint"
    sample_meta: ClassVar[bool] = True
    frame_times: list[float]
    audio_hop_s: float
