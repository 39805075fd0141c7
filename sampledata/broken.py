"""Files that are not usable videos: truncated, empty, text, audio-only."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mtcc.media.ffmpeg import convert_command, run_tool

from . import speech
from .scene import NOISE_FLOOR, fixture_rng


def _blank_truth(name: str, expect: str) -> dict:
    return {
        "name": name, "file": f"{name}.mp4", "kind": "broken", "expect_probe": expect,
        "width": None, "height": None, "fps": None, "duration": None, "n_frames": None,
        "audio": None, "cuts": [], "persons": [], "speech": [], "face_count": [], "boxes_every": 1,
        "two_face_intervals": [], "two_face_frames": [],
    }


def top_level_atoms(data: bytes) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the top-level ISO-BMFF boxes, as far as they can be read."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1 and pos + 16 <= len(data):
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            break
        out.append((kind.decode("latin-1"), pos, size))
        pos += size
    return out


def truncated(src: Path, out_dir: Path, fraction: float = 0.30) -> dict:
    data = Path(src).read_bytes()
    kinds = [k for k, _, _ in top_level_atoms(data)]
    if "moov" not in kinds or "mdat" not in kinds or kinds.index("moov") < kinds.index("mdat"):
        raise RuntimeError(f"{src.name}: expected the moov atom after mdat, got {kinds}")
    (Path(out_dir) / "broken_truncated.mp4").write_bytes(data[: int(len(data) * fraction)])
    return _blank_truth("broken_truncated", "unreadable")


def empty(out_dir: Path) -> dict:
    (Path(out_dir) / "broken_empty.mp4").write_bytes(b"")
    return _blank_truth("broken_empty", "unreadable")


def text(out_dir: Path) -> dict:
    (Path(out_dir) / "broken_text.mp4").write_text(
        "This is not a video.\nIt is a plain text file that only has an .mp4 name.\n", encoding="utf-8")
    return _blank_truth("broken_text", "unreadable")


def audio_only(out_dir: Path, seed: int, *, rate: int = 44100, duration: float = 3.0) -> dict:
    rng = fixture_rng("audio_only", seed)
    n = int(round(duration * rate))
    track = np.zeros(n, dtype=np.float32)
    y = speech.say("This clip has only sound.", "en-us+m3", rate)
    s0 = int(round((0.5 + rng.uniform(-0.06, 0.06)) * rate))
    track[s0:s0 + len(y)] = y
    mix = np.stack([track, track], axis=1) * 0.8 + rng.normal(0, NOISE_FLOOR, (n, 2))
    out = Path(out_dir) / "audio_only.mp4"
    with tempfile.TemporaryDirectory(prefix="mtcc-sample-") as tmp:
        wav = Path(tmp) / "a.wav"
        sf.write(str(wav), np.clip(mix, -1, 1).astype(np.float32), rate, subtype="PCM_16")
        run_tool(convert_command(wav, out, vn=None, ar=rate, ac=2, t=f"{duration:.6f}", fflags="+bitexact",
                                 map_metadata=-1, **{"c:a": "aac", "b:a": "128k", "flags:a": "+bitexact"}),
                 what=str(out))
    truth = _blank_truth("audio_only", "no_video")
    truth["duration"] = duration
    truth["audio"] = {"rate": rate, "channels": 2}
    return truth
