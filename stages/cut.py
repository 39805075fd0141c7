"""Cut: each clip's final media, made once, right after the cheap clip filters, in one pass over the source.

One ffmpeg process decodes the clip's stretch of the source once and writes:
  * the ``mp4`` member: H.264 at 25 fps (a key frame every ``keyframe_seconds``, so a stage or a training
    loader reading a few frames decodes at most that much), 16 kHz mono AAC; bit-exact flags and a fixed
    thread count make reruns byte-identical;
  * the ``mix.flac`` member: the 16 kHz mono mixture, padded with silence to exactly the clip's length;
  * the same 25 fps pictures the encoder gets, raw, to this process, which cuts from them each character's
    shared face crops (media/crops.py) and a plain reference crop at its best frame (``ref{i}.jpg``; the
    masks stage replaces them with background-free ones).
Every later stage reads these from the node's workspace (or from the members), never the source: faces,
crops and masks line up with the delivered mp4 frame for frame by construction.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, CutMedia, ProbeResult, SourceFile
from mtcc.media.crops import SHARED_CROPS, clip_boxes, crop_characters
from mtcc.media.ffmpeg import BITEXACT_OPTIONS, MediaError, cut_command, open_tool
from mtcc.media.members import MIX, MP4, REFS

from .base import CLIP_MEDIA, CLIPS, RESOURCES, Candidate, Key, Member, Resources, Stage, optional
from .clip_media import ClipMedia


def even_size(width: int, height: int) -> tuple[int, int]:
    """A picture size rounded down to even dimensions (H.264 4:2:0)."""
    return max(2, int(width) // 2 * 2), max(2, int(height) // 2 * 2)


def clip_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int]:
    """The clip's picture size: the source's, scaled down (aspect kept) so that its shorter side is at most
    ``max_short_side`` when that is set, then rounded down to even dimensions."""
    w, h = int(width), int(height)
    short = min(w, h)
    if max_short_side is not None and short > max_short_side:
        w, h = round(w * max_short_side / short), round(h * max_short_side / short)
    return even_size(w, h)


def best_frames(faces: ClipFaces) -> list[int]:
    """Per character, the frame with the highest detection score x box area: its reference picture."""
    out = []
    for ch in faces.characters:
        boxes = ch.box_array()
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        out.append(int(np.argmax(np.asarray(ch.scores, np.float64) * area)))
    return out


def reference_jpeg(img: np.ndarray, box: np.ndarray, margin: float) -> bytes:
    from PIL import Image

    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin / 2
    h, w = img.shape[:2]
    crop = img[max(0, int(cy - half)):min(h, int(cy + half)), max(0, int(cx - half)):min(w, int(cx + half))]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class ClipCut(Stage):
    name: ClassVar[str] = "cut"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.25
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 280
    uses: ClassVar[tuple[str, ...]] = ("ffmpeg-python",)
    max_actor_cpus: ClassVar[float] = 2.0
    clip_fields: ClassVar[dict[str, str]] = {"fps": "fps", "audio_rate": "audio_rate"}
    requires: ClassVar[tuple[Key | type, ...]] = (CLIPS, ProbeResult, optional(ClipFaces), optional(SourceFile))
    # the references only for a clip with face tracks, mix.flac only for a video with sound
    provides: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, Member(MP4), Member(MIX),
                                           *(Member(r) for r in REFS))
    stats_schema: ClassVar[dict[str, str]] = {"frames": "int64", "frames_piped": "int64", "mp4_bytes": "int64",
                                              "flac_bytes": "int64"}
    reads_source: ClassVar[bool] = True
    makes_clip_media: ClassVar[bool] = True

    fps: int = Field(25, ge=1, description="output frame rate (Bind-Your-Avatar trains at 25 fps)")
    audio_rate: int = Field(16000, ge=8000, description="Hz of the mixture and the mp4's audio (the models take "
                                                        "16 kHz)")
    crf: int = Field(18, ge=0, le=51, description="libx264 quality of the mp4 (lower: better, larger)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                    "veryslow"] = Field("veryfast", description="libx264 speed preset (slower: smaller mp4 at the "
                                                                "same crf)")
    threads: int = Field(2, ge=1, le=64, description="fixed so that encodes are byte-identical on every machine")
    audio_bitrate: str = Field("64k", pattern=r"^[0-9]+k$", description="AAC bitrate of the mp4's audio")
    max_short_side: int | None = Field(None, ge=16, description="scale a clip down (aspect kept) so that its "
                                       "shorter side is at most this many pixels (1080: nothing larger than "
                                       "1080p, portrait or landscape); unset: the source's own size")
    keyframe_seconds: float = Field(1.0, gt=0, description="a key frame (and nothing but) every this many seconds: "
                                                           "1 fps frame samples land on key frames")
    ref_margin: float = Field(1.6, ge=1.0, description="reference crop side / face box side")
    timeout_s: float = Field(600.0, gt=0, description="one clip's ffmpeg run")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=1),
                                 description=RESOURCES)

    def _args(self, src: str, start: float, dur: float, n: int, has_audio: bool, pipe: bool,
              mp4: Path, flac: Path, size: tuple[Any, ...]) -> list[str]:
        gop = max(1, int(round(self.keyframe_seconds * self.fps)))
        mp4_options = {
            "c:v": "libx264", "preset": self.preset, "crf": self.crf, "pix_fmt": "yuv420p",
            "g": gop, "keyint_min": gop, "sc_threshold": 0, "threads": self.threads,
            # exactly the frames faces.json and the sound count: fps= holds the last picture for its
            # whole duration, which in a variable-rate source can reach past the clip's end
            "frames:v": n,
            "c:a": "aac", "b:a": self.audio_bitrate, "ar": self.audio_rate, "ac": 1,
            **BITEXACT_OPTIONS, "movflags": "+faststart", "format": "mp4"}
        # padded with silence to the exact clip length: sources whose audio ends early still give
        # tracks aligned sample for sample with the separated ones
        flac_options = {"ac": 1, "ar": self.audio_rate, "af": f"apad=whole_dur={dur:.6f}", "c:a": "flac",
                        **BITEXACT_OPTIONS, "format": "flac"}
        filters = [("fps", (self.fps,)), ("scale", size), ("setsar", (1,))]
        return cut_command(src, start, dur, filters=filters, mp4=mp4, mp4_options=mp4_options,
                           flac=flac if has_audio else None, flac_options=flac_options,
                           raw_frames=n if pipe else None)

    def _references(self, faces: ClipFaces, best: list[int], boxes: np.ndarray, img: np.ndarray,
                    frame: int) -> dict[str, bytes]:
        return {REFS[ch.index]: reference_jpeg(img, boxes[k, frame], self.ref_margin)
                for k, (ch, b) in enumerate(zip(faces.characters, best)) if b == frame}

    def compute(self, cand: Candidate) -> dict[str, Any]:
        start = float(cand.start or 0.0)
        dur = float(cand.end or 0.0) - start
        if dur <= 0:
            raise ValueError(f"clip {cand.key} has no length ({cand.start}..{cand.end})")
        probe = cand.fact(ProbeResult)
        has_audio = bool(probe.has_audio)
        faces = cand.maybe(ClipFaces)
        n = int(round(dur * self.fps))
        w, h = clip_size(probe.width, probe.height, self.max_short_side)
        scale = (w / int(probe.width or 0), h / int(probe.height or 0))
        # the source's own size, rounded to even, as the decoder gives it; a smaller one by area averaging
        # (non-square pixels are scaled to the picture as shown; setsar=1 then makes the clip's pixels square)
        size = (("trunc(iw/2)*2", "trunc(ih/2)*2")
                if (w, h) == even_size(probe.width, probe.height) and not probe.sample_aspect
                else (w, h, "area"))  # scale=W:H:FLAGS
        what = f"{cand.source} [{start:.2f}s, +{dur:.2f}s]"
        with self.workspace.temp_dir("cut-") as tmp, self.source(cand) as src:
            mp4, flac = Path(tmp) / "clip.mp4", Path(tmp) / MIX
            args = self._args(src.path, start, dur, n, has_audio, faces is not None, mp4, flac, size)
            crops, refs, piped = self._run(args, what, faces, (w, h), scale, n, Path(tmp))
            cand.members[MP4] = mp4.read_bytes()
            if has_audio:
                cand.members[MIX] = flac.read_bytes()
            digest = hashlib.sha256(cand.members[MP4]).hexdigest()
            media = CutMedia.of(digest, dur, n, self.fps, (w, h), scale)
            cand.put(media)
            files: dict[str, Any] = {ClipMedia.MP4: cand.members[MP4]}
            if crops is not None:
                files[ClipMedia.CROPS] = crops
                cand.members.update(refs)
            ClipMedia.write(self.workspace, cand.key, media, files)
        return {"frames": n, "frames_piped": piped, "mp4_bytes": len(cand.members[MP4]),
                "flac_bytes": len(cand.members.get(MIX, b""))}

    def _run(self, args: list[str], what: str, faces: ClipFaces | None, size: tuple[int, int],
             scale: tuple[float, float], n: int, tmp: Path) -> tuple[np.ndarray | None, dict[str, bytes], int]:
        """Run the cut; with faces, read the raw pictures it pipes out and crop them as they come."""
        w, h = size
        with open(tmp / "stderr.txt", "w+b") as err:
            proc = open_tool(args, pipe_stdout=faces is not None, stderr=err)
            timer = threading.Timer(self.timeout_s, proc.kill)
            timer.start()
            crops, refs, got, last = None, {}, 0, None
            try:
                if faces is not None:
                    assert proc.stdout is not None
                    boxes = clip_boxes(faces.boxes(), scale)
                    best = best_frames(faces)
                    crops = np.zeros((len(boxes), n, SHARED_CROPS.size, SHARED_CROPS.size, 3), np.uint8)
                    while got < n and (data := _read_exactly(proc.stdout, w * h * 3)):
                        last = np.frombuffer(data, np.uint8).reshape(h, w, 3)
                        crops[:, got] = crop_characters(last, boxes[:, min(got, boxes.shape[1] - 1)])
                        refs.update(self._references(faces, best, boxes, last, got))
                        got += 1
                    proc.stdout.read()  # drain, so ffmpeg can finish its other outputs
                code = proc.wait()
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            text = err.read().decode("utf-8", "replace").strip().splitlines()
        if code != 0:
            tail = " | ".join(text[-3:]) if text else f"exit code {code}"
            raise MediaError(f"ffmpeg failed on {what}: {tail}")
        if crops is not None:
            if last is None:
                raise MediaError(f"ffmpeg gave no picture for {what}")
            crops[:, got:] = crops[:, got - 1:got]  # a source that ends early: hold the last picture
            # a best frame past a short encode's end: the last picture
            missing = [b if b < got else got - 1 for b in best]
            for k, b in enumerate(missing):
                name = REFS[faces.characters[k].index]
                if name not in refs:
                    refs[name] = reference_jpeg(last, boxes[k, min(b, boxes.shape[1] - 1)], self.ref_margin)
        return crops, refs, got


def _read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf)


