"""Facts about a whole input video: where it comes from, what ffprobe says, when its frames are shown,
its shots, split-screen evidence and face tracks. Each names the stage that makes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mtcc.media.video import FrameClock

from .base import Fact


@dataclass(frozen=True)
class SourceFile(Fact):
    """Made by the build from the input listing: the source's fingerprint and size at planning, which a
    node checks its fetched copy against."""

    key: ClassVar[str] = "source_file"
    made_by: ClassVar[str] = "the build"
    fingerprint: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class SourceHash(Fact):
    """Made by ``probe`` (with ``hash_content``): the sha256 of the source's bytes."""

    key: ClassVar[str] = "sha256"
    made_by: ClassVar[str] = "probe"
    sha256: str


@dataclass(frozen=True)
class ProbeResult(Fact):
    """Made by ``probe``: the stream facts every later stage sizes its work by. ``width``/``height`` are the
    displayed size (a rotation tag already applied, non-square pixels widened by ``sample_aspect``, which is
    None for square ones); ``video_start``: where frame 0 sits on the file's timeline. Fields of a stream the
    file lacks are None (and absent from the sample's json)."""

    key: ClassVar[str] = "probe"
    made_by: ClassVar[str] = "probe"
    absent_if_none: ClassVar[frozenset[str]] = frozenset(
        {"width", "height", "rotation", "fps", "fps_real", "vcodec", "video_start", "acodec", "audio_rate",
         "audio_channels", "size_bytes", "sample_aspect"})

    duration: float
    has_video: bool
    has_audio: bool
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    fps: float | None = None
    fps_real: float | None = None
    vcodec: str | None = None
    video_start: float | None = None
    acodec: str | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    sample_aspect: float | None = None

    @property
    def start(self) -> float:
        """File time of the video stream's first frame."""
        return float(self.video_start or 0.0)

    @property
    def rate(self) -> float:
        """The stream's frame rate as declared (average, else the base rate), 0 when unknown."""
        return float(self.fps or self.fps_real or 0.0)


@dataclass(frozen=True)
class FrameTimes(Fact):
    """Made by ``faces``: when each source frame is shown (``times`` only for a variable-rate stream)."""

    key: ClassVar[str] = "frame_clock"
    made_by: ClassVar[str] = "faces"
    fps: float
    n_frames: int
    times: tuple[float, ...] | None = None
    end: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrameTimes:
        times = data.get("times")
        return cls(float(data["fps"]), int(data["n_frames"]), None if times is None else tuple(times),
                   data.get("end"))

    def clock(self) -> FrameClock:
        return FrameClock(self.fps, self.n_frames, self.times, self.end)


@dataclass(frozen=True)
class Shots(Fact):
    """Made by ``faces``: the video's shots as ``[first, end)`` source frame spans, in order."""

    key: ClassVar[str] = "shots"
    made_by: ClassVar[str] = "faces"
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SeamEvidence(Fact):
    """Made by ``faces``, read by ``layout``: the analysis picture size and, per shot, the column and row
    edge profiles a split-screen seam shows up in."""

    key: ClassVar[str] = "seams"
    made_by: ClassVar[str] = "faces"
    size: tuple[int, int] | list[int] | None
    shots: tuple[Any, ...]


@dataclass(frozen=True)
class VideoTracks(Fact):
    """Made by ``faces``: every face track of the video (source frame indices; ``shot``: its shot's span),
    at the detector's sampling step; ``segment`` turns them into clips."""

    key: ClassVar[str] = "faces"
    made_by: ClassVar[str] = "faces"
    fps: float
    n_frames: int
    sample_step: int
    detector: str
    tracks: tuple[dict[str, Any], ...] = ()
