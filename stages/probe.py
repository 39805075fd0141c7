"""Probe: what is this file, and is it worth decoding? ffprobe only, no frames decoded."""

from __future__ import annotations

import os
import struct
from typing import Any, ClassVar

from pydantic import Field, model_validator

from mtcc.facts import ProbeResult, SourceFile, SourceHash
from mtcc.media.ffmpeg import MediaError, ffprobe, parse_rate
from mtcc.storage.files import is_remote_source, local_source
from mtcc.storage.hashing import sha256_file
from mtcc.storage.workspace import SourceChanged, SourceUnreachable, WorkspaceError

from .base import RESOURCES, Candidate, Key, Rejection, Resources, Stage, StatView, Threshold, optional

# Prefix of a planned source whose file name is not valid UTF-8 (see mtcc.pipeline.inputs.plan_source):
# the rest is the name with \x escapes, which is no path to open.
NOT_UTF8_NAME = "not-utf8-name:"


def truncated_box(path: str) -> str | None:
    """Why an ISO-BMFF file (MP4, MOV, ...) is cut short, or None. Its top-level boxes must tile the file:
    a moov-first file cut mid-stream still has a complete header, ffprobe reports its full duration,
    and only a decoder later meets the missing bytes (and fails). Reads one header per box."""
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            box, kind = struct.unpack(">I", head[:4])[0], head[4:8].decode("latin-1")
            if box == 1:
                if len(head) < 16:
                    return f"the {kind!r} box at byte {pos} is cut inside its header"
                box = struct.unpack(">Q", head[8:16])[0]
            elif box == 0:  # the last box, to the end of the file
                return None
            if box < 8:
                return None  # not a box walk we can follow (trailing junk): ffprobe had the last word
            if pos + box > size:
                if kind not in ("mdat", "moov", "moof"):
                    return None  # junk after the media (some writers pad): not what decoding needs
                return f"the {kind!r} box at byte {pos} needs {box} bytes, the file ends after {size - pos}"
            pos += box
    return None


def _ebml_vint(data: bytes, pos: int) -> tuple[int | None, int]:
    """(value, position after it) of an EBML variable-size integer; value None for 'unknown size'."""
    first = data[pos]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or pos + length > len(data):
        raise ValueError("not an EBML size")
    value = first & (0xFF >> length)
    for b in data[pos + 1:pos + length]:
        value = (value << 8) | b
    return (None if value == (1 << (7 * length)) - 1 else value), pos + length


def truncated_segment(path: str) -> str | None:
    """Why a Matroska/WebM file is cut short, or None: the Segment's declared size must fit in the file
    (a seekable writer fills it in at the end; a live one writes 'unknown' and cannot be checked). A cut
    file keeps its full-length header, and its index (Cues) is gone with the tail, so a seek in it runs
    off the end: clips cut from it come out empty."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        if head[:4] != b"\x1a\x45\xdf\xa3":
            return None
        ebml_size, pos = _ebml_vint(head, 4)
        pos += ebml_size or 0
        if head[pos:pos + 4] != b"\x18\x53\x80\x67":
            return None
        seg_size, start = _ebml_vint(head, pos + 4)
    except (ValueError, IndexError):
        return None
    if seg_size is not None and start + seg_size > size:
        return f"the Segment at byte {pos} needs {seg_size} bytes, the file ends after {size - start}"
    return None


def truncated(path: str, format_name: str) -> str | None:
    """Why a file ffprobe could open is nevertheless cut short (ffprobe reads headers only), or None."""
    names = format_name.split(",")
    if "mp4" in names:
        return truncated_box(path)
    if "matroska" in names or "webm" in names:
        return truncated_segment(path)
    return None


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag not in (None, "") else 0


def _sample_aspect(stream: dict[str, Any]) -> float | None:
    """The stream's pixel aspect (a pixel's width over its height) where pixels are not square: SD broadcast
    (720x576 shown at 16:9: 64:45), HDV (1440x1080 at 4:3); None for square or unknown ("0:1") pixels."""
    num, _, den = str(stream.get("sample_aspect_ratio") or "").partition(":")
    try:
        sar = int(num) / int(den)
    except (ValueError, ZeroDivisionError):
        return None
    return None if sar <= 0 or abs(sar - 1.0) < 1e-3 else round(sar, 6)


class Probe(Stage):
    """Reads container facts and rejects files that cannot yield a usable clip."""

    name: ClassVar[str] = "probe"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.01
    typical_keep: ClassVar[float] = 0.95
    actor_memory_mb: ClassVar[int] = 185
    uses: ClassVar[tuple[str, ...]] = ("ffmpeg-python",)
    max_actor_cpus: ClassVar[float] = 1.0
    requires: ClassVar[tuple[Key | type, ...]] = (optional(SourceFile),)
    provides: ClassVar[tuple[Key | type, ...]] = (ProbeResult, SourceHash)
    reads_source: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "duration": "float64",
        "video_start": "float64",
        "fps": "float64",
        "fps_real": "float64",
        "width": "int64",
        "height": "int64",
        "rotation": "int64",
        "vcodec": "string",
        "acodec": "string",
        "audio_rate": "int64",
        "audio_channels": "int64",
        "size_bytes": "int64",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("duration",), "duration", plot="duration_video", title="Input video duration", unit="seconds",
                 level="video", card=False,
                 thresholds=(Threshold("min_duration", "min_duration"), Threshold("max_duration", "max_duration"))),
    )

    min_duration: float = Field(2.0, ge=0, description="seconds; 49 frames at 25 fps need 1.96 s")
    max_duration: float = Field(6 * 3600.0, gt=0, description="seconds; longer inputs are rejected as too_long")
    min_width: int = Field(128, ge=1, description="pixels of the picture as shown (rotation applied)")
    min_height: int = Field(128, ge=1, description="pixels of the picture as shown (rotation applied)")
    min_fps: float = Field(10.0, gt=0, description="frames per second (the stream's average rate)")
    max_fps: float = Field(120.0, gt=0, description="frames per second (the stream's average rate)")
    require_audio: bool = Field(True, description="reject a video without an audio stream as no_audio")
    min_audio_rate: int = Field(8000, ge=1, description="Hz; separation runs at 16 kHz")
    hash_content: bool = Field(True, description="sha256 of the whole source, recorded in every sample's meta")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.5, candidates_per_call=4), description=RESOURCES)

    @model_validator(mode="after")
    def _ranges(self) -> Probe:
        if self.min_duration >= self.max_duration:
            raise ValueError(f"min_duration ({self.min_duration}) must be below max_duration ({self.max_duration})")
        if self.min_fps >= self.max_fps:
            raise ValueError(f"min_fps ({self.min_fps}) must be below max_fps ({self.max_fps})")
        return self

    def compute(self, cand: Candidate) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if cand.source.startswith(NOT_UTF8_NAME):
            name = cand.source[len(NOT_UTF8_NAME):]
            return {"error": f"file name is not valid UTF-8: {name} (bytes shown as \\x escapes); rename it "
                             f"to UTF-8 (e.g. `convmv -f latin1 -t utf8`) to process it"}
        path = local_source(cand.source)
        if not is_remote_source(cand.source):
            if not os.path.exists(path):
                if os.path.islink(path):
                    return {"error": f"broken symlink (its target is missing, or it loops): {cand.source}"}
                return {"error": f"file not found: {cand.source}"}
            if os.path.isdir(path):
                return {"error": f"is a directory, not a video: {cand.source}"}
            if not os.path.isfile(path):
                # a FIFO would block ffprobe (and the sha256) until the probe timeout, a device never ends
                return {"error": f"not a regular file (a FIFO, socket or device): {cand.source}"}
            if not os.access(path, os.R_OK):
                return {"error": f"permission denied: {cand.source}"}
        try:
            # a remote source is fetched into the node's cache here, its sha256 computed on the way; the
            # later stages on this node read that copy
            with self.source(cand) as src:
                local = src.path
                stats["size_bytes"] = os.path.getsize(local)
                if stats["size_bytes"] == 0:
                    return {**stats, "error": f"empty file (0 bytes): {cand.source}"}
                info = ffprobe(local)
                cut = truncated(local, info.get("format", {}).get("format_name") or "")
                if cut:
                    return {**stats, "error": f"truncated: {cut}: {cand.source}"}
                if self.hash_content:
                    cand.put(SourceHash(src.sha256 or sha256_file(local)))
        except SourceUnreachable as e:
            return {**stats, "error": str(e), "error_reason": "unreachable"}
        except SourceChanged as e:
            return {**stats, "error": str(e), "error_reason": "source_changed"}
        except (MediaError, OSError, ValueError, WorkspaceError) as e:
            return {**stats, "error": str(e)}

        streams = info.get("streams", [])
        video = next((s for s in streams if s.get("codec_type") == "video"
                      and not (s.get("disposition") or {}).get("attached_pic")), None)
        audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
        fmt = info.get("format", {})
        duration = float(fmt.get("duration") or 0.0)
        sample_aspect = None
        if video is not None:
            rot = _rotation(video)
            w, h = int(video.get("width") or 0), int(video.get("height") or 0)
            sample_aspect = _sample_aspect(video)
            if sample_aspect is not None:
                w = max(2, int(round(w * sample_aspect)))  # non-square pixels: the picture as shown is wider
            if rot in (90, 270):
                w, h = h, w  # ffmpeg auto-rotates on decode: downstream sees the displayed size
            stats.update(
                width=w, height=h, rotation=rot,
                fps=parse_rate(video.get("avg_frame_rate")),
                fps_real=parse_rate(video.get("r_frame_rate")),
                vcodec=video.get("codec_name"),
            )
            duration = duration or float(video.get("duration") or 0.0)
            # where frame 0 sits on the file's timeline (clip times are file times; a video stream may
            # start after the audio, as in screen recordings and some broadcast cuts)
            stats["video_start"] = max(0.0, float(video.get("start_time") or 0.0) - float(fmt.get("start_time") or 0.0))
        if audio is not None:
            stats.update(
                acodec=audio.get("codec_name"),
                audio_rate=int(audio.get("sample_rate") or 0),
                audio_channels=int(audio.get("channels") or 0),
            )
        stats["duration"] = duration
        stats["has_video"] = video is not None
        stats["has_audio"] = audio is not None
        cand.put(ProbeResult(**stats, sample_aspect=sample_aspect))
        return stats

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if stats.get("error_reason") == "unreachable":
            return Rejection("unreachable", f"{stats['error']}; check the URL and the workers' credentials for "
                                            f"its store (the remote I/O retry policy is run.remote)")
        if stats.get("error_reason") == "source_changed":
            return Rejection("source_changed", stats["error"])
        if "error" in stats:
            return Rejection("unreadable", f"{stats['error']}; check the file is a complete video (re-download or remux it)")
        if not stats["has_video"]:
            return Rejection("no_video", "no video stream in the container")
        if self.require_audio and not stats["has_audio"]:
            return Rejection("no_audio", "no audio stream; set stages.probe.require_audio=false to keep silent videos")
        fps = stats.get("fps") or stats.get("fps_real") or 0.0
        dur = stats["duration"]
        if dur < self.min_duration:
            return Rejection("too_short", f"duration {dur:.2f}s < min_duration {self.min_duration}s")
        if dur > self.max_duration:
            return Rejection("too_long", f"duration {dur:.0f}s > max_duration {self.max_duration:.0f}s")
        w, h = stats.get("width", 0), stats.get("height", 0)
        if w < self.min_width or h < self.min_height:
            return Rejection("too_small", f"{w}x{h} below min {self.min_width}x{self.min_height}")
        if not (self.min_fps <= fps <= self.max_fps):
            return Rejection("fps_out_of_range", f"fps {fps:.3f} outside [{self.min_fps}, {self.max_fps}]")
        if stats["has_audio"] and stats.get("audio_rate", 0) < self.min_audio_rate:
            return Rejection("audio_rate_low", f"audio {stats.get('audio_rate')} Hz < min_audio_rate {self.min_audio_rate} Hz")
        return None

    def record(self, cand: Candidate, stats: dict[str, Any]) -> None:
        super().record(cand, {k: v for k, v in stats.items() if k in self.stats_schema})
