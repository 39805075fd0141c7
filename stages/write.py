"""Write: cut each kept clip from its source and encode the sample's media members.

One ffmpeg process decodes the segment once and writes both outputs: the 25 fps H.264 clip with
16 kHz mono AAC, and the 16 kHz mono FLAC mixture. Bit-exact flags and a fixed thread count make
reruns byte-identical.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import Candidate, Resources, Stage
from .media import BITEXACT, ff_input, open_local, run_tool


class ClipWriter(Stage):
    name: ClassVar[str] = "write"
    stats_schema: ClassVar[dict[str, str]] = {"frames": "int64", "mp4_bytes": "int64", "flac_bytes": "int64"}

    fps: int = Field(25, ge=1, description="output frame rate (Bind-Your-Avatar trains at 25 fps)")
    audio_rate: int = Field(16000, ge=8000)
    crf: int = Field(18, ge=0, le=51)
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"
    threads: int = Field(2, ge=1, le=64, description="fixed so that encodes are byte-identical on every machine")
    audio_bitrate: str = Field("64k", pattern=r"^[0-9]+k$")
    ref_margin: float = Field(1.6, ge=1.0, description="reference crop side / face box side")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, batch_size=1))

    def compute(self, cand: Candidate) -> dict[str, Any]:
        start = float(cand.start or 0.0)
        dur = float(cand.end or 0.0) - start
        if dur <= 0:
            raise ValueError(f"clip {cand.key} has no length ({cand.start}..{cand.end})")
        has_audio = bool(cand.info.get("probe", {}).get("has_audio"))
        with tempfile.TemporaryDirectory(prefix="mtcc-write-") as tmp, open_local(cand.source) as src:
            mp4, flac = Path(tmp) / "clip.mp4", Path(tmp) / "mix.flac"
            args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{start:.6f}", "-t", f"{dur:.6f}",
                    "-i", ff_input(src),
                    "-map", "0:v:0", "-map", "0:a:0?",
                    "-vf", f"fps={self.fps},scale=trunc(iw/2)*2:trunc(ih/2)*2,setsar=1",
                    "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf), "-pix_fmt", "yuv420p",
                    "-threads", str(self.threads),
                    # exactly the frames faces.json and the sound count: fps= holds the last picture for its
                    # whole duration, which in a variable-rate source can reach past the clip's end
                    "-frames:v", str(int(round(dur * self.fps))),
                    "-c:a", "aac", "-b:a", self.audio_bitrate, "-ar", str(self.audio_rate), "-ac", "1",
                    *BITEXACT, "-movflags", "+faststart", "-f", "mp4", str(mp4)]
            if has_audio:
                # padded with silence to the exact clip length: sources whose audio ends early still give
                # tracks aligned sample for sample with the separated ones
                args += ["-map", "0:a:0", "-ac", "1", "-ar", str(self.audio_rate), "-af", f"apad=whole_dur={dur:.6f}",
                         "-c:a", "flac",
                         *BITEXACT, "-f", "flac", str(flac)]
            run_tool(args, what=f"{cand.source} [{start:.2f}s, +{dur:.2f}s]")
            cand.members["mp4"] = mp4.read_bytes()
            if has_audio:
                cand.members["mix.flac"] = flac.read_bytes()
            faces = cand.info.get("clip_faces")
            if faces is not None:
                cand.members["faces.json"] = json.dumps(faces, sort_keys=True, separators=(",", ":")).encode()
                if not all(f"ref{ch['index']}.jpg" in cand.members for ch in faces["characters"]):
                    # the masks stage makes background-free references; without it, plain face crops
                    cand.members.update(self._references(src, cand, faces))
        return {
            "frames": int(round(dur * self.fps)),
            "mp4_bytes": len(cand.members["mp4"]),
            "flac_bytes": len(cand.members.get("mix.flac", b"")),
        }

    def _references(self, src: str, cand: Candidate, faces: dict[str, Any]) -> dict[str, bytes]:
        """``ref{i}.jpg``: each character's face crop at its best frame (highest score x area), decoded
        at source resolution. Used when no earlier stage (masks) produced references."""
        import numpy as np
        from PIL import Image

        from .video import open_frames

        video = open_frames(src, cand.info["probe"], None)
        refs: dict[str, bytes] = {}
        for ch in faces["characters"]:
            boxes = np.asarray(ch["boxes"], np.float64)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            best = int(np.argmax(np.asarray(ch["scores"]) * area))
            t0 = float(cand.info["probe"].get("video_start") or 0.0)
            img = video.frame(video.index_at(float(cand.start or 0) - t0 + best / faces["fps"]))
            x0, y0, x1, y1 = boxes[best]
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * self.ref_margin / 2
            h, w = img.shape[:2]
            crop = img[max(0, int(cy - half)):min(h, int(cy + half)), max(0, int(cx - half)):min(w, int(cx + half))]
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="JPEG", quality=95)
            refs[f"ref{ch['index']}.jpg"] = buf.getvalue()
        return refs
