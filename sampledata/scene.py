"""Timeline renderer: backgrounds + face cutouts + mouths driven by each person's own voice,
mixed speech, encoded by ffmpeg (raw RGB on stdin, wav as second input), plus the truth dict."""

from __future__ import annotations

import contextlib
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mtcc.media.ffmpeg import BITEXACT_OPTIONS, encode_frames_command, open_tool

from . import speech
from .backgrounds import background
from .faces import cutout

# the default probe config of the pipeline, as the truth files assume it
PROBE_MIN_DURATION = 2.0
PROBE_MIN_WIDTH = 128
PROBE_MIN_HEIGHT = 128
PROBE_FPS_RANGE = (10.0, 120.0)
NOISE_FLOOR = 10 ** (-66 / 20)


@dataclass
class Place:
    """From time ``t`` on, the person's face box is centred at (cx, cy) and is ``face_w`` wide.

    ``glide=True``: instead of jumping there at ``t``, the person moves in a straight line at constant
    speed from the previous place (leaving it at that place's ``t``) and arrives here at ``t``.
    """

    t: float
    cx: float
    cy: float
    face_w: float
    glide: bool = False


@dataclass
class Person:
    photo: str
    voice: str | None
    places: list[Place]
    says: list[tuple[float, str]] = field(default_factory=list)  # (intended start s, sentence)
    appear: float = 0.0
    disappear: float | None = None  # None: until the end


@dataclass
class Scene:
    name: str
    width: int
    height: int
    fps: int
    duration: float
    persons: list[Person]
    shots: list[tuple[float, str]]  # (start s, background name); each start after 0 is a hard cut
    audio_rate: int | None = 44100  # None: no audio stream
    channels: int = 2
    kind: str = "good"


def expected_probe(width, height, fps, duration, has_video: bool, has_audio: bool) -> str:
    if not has_video:
        return "no_video"
    if not has_audio:
        return "no_audio"
    if duration < PROBE_MIN_DURATION:
        return "too_short"
    if width < PROBE_MIN_WIDTH or height < PROBE_MIN_HEIGHT:
        return "too_small"
    if not (PROBE_FPS_RANGE[0] <= fps <= PROBE_FPS_RANGE[1]):
        return "bad_fps"
    return "kept"


def fixture_rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _frame_index(t: float, fps: int) -> int:
    return int(round(t * fps))


def _mix(scene: Scene, rng: np.random.Generator, n_samples: int):
    """Per-person voice tracks (mono) and the stereo/mono mix."""
    rate = scene.audio_rate
    tracks = []
    for p in scene.persons:
        tr = np.zeros(n_samples, dtype=np.float32)
        for start, text in p.says:
            y = speech.say(text, p.voice, rate)
            s0 = max(0, int(round((start + rng.uniform(-0.06, 0.06)) * rate)))
            if s0 + len(y) > n_samples - int(0.04 * rate):
                raise ValueError(f"{scene.name}: {text!r} at {start}s does not fit in {scene.duration}s")
            tr[s0:s0 + len(y)] += y
        tracks.append(tr)
    if scene.channels == 1:
        mix = np.sum(tracks, axis=0)[:, None] if tracks else np.zeros((n_samples, 1), np.float32)
    else:
        mix = np.zeros((n_samples, 2), dtype=np.float32)
        for p, tr in zip(scene.persons, tracks):
            # left of frame -> left channel; follows the person where it moves
            pan = np.clip(_cx_per_sample(p, n_samples, rate) / scene.width, 0.0, 1.0)
            g = np.stack([np.cos(pan * np.pi / 2), np.sin(pan * np.pi / 2)], axis=1) * np.sqrt(2)
            mix += tr[:, None] * (0.55 + 0.45 * g).astype(np.float32)
    mix = mix * 0.8 + rng.normal(0.0, NOISE_FLOOR, mix.shape).astype(np.float32)
    return tracks, np.clip(mix, -1.0, 1.0)


def place_at(p: Person, t: float) -> Place:
    """Where ``p`` is at time ``t``: the last place reached, or a point on the way to a gliding one."""
    cur = p.places[0]
    for k, pl in enumerate(p.places):
        if pl.t <= t + 1e-9:
            cur = pl
        elif pl.glide and k > 0 and p.places[k - 1].t <= t + 1e-9:
            a = p.places[k - 1]
            f = (t - a.t) / (pl.t - a.t)
            return Place(t, a.cx + f * (pl.cx - a.cx), a.cy + f * (pl.cy - a.cy),
                         a.face_w + f * (pl.face_w - a.face_w))
        else:
            break
    return cur


def _cx_per_sample(p: Person, n_samples: int, rate: int) -> np.ndarray:
    if not any(pl.glide for pl in p.places) and len({pl.cx for pl in p.places}) == 1:
        return np.full(n_samples, p.places[0].cx, dtype=np.float64)
    hop = 0.01  # pan position every 10 ms, linearly interpolated in between
    ts = np.arange(0.0, n_samples / rate + hop, hop)
    cx = np.array([place_at(p, t).cx for t in ts])
    return np.interp(np.arange(n_samples) / rate, ts, cx)


def _blend(frame: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, ox: int, oy: int) -> None:
    h, w = alpha.shape
    H, W = frame.shape[:2]
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(W, ox + w), min(H, oy + h)
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
    src = rgb[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    dst = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.clip(np.rint(dst * (1.0 - a) + src * a), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def ffmpeg_stdin(cmd: list[str], name: str) -> Iterator[Callable[[bytes], object]]:
    """An ffmpeg process fed raw frames through the yielded write function. If ffmpeg stops early the
    pipe breaks; its own error message is raised instead of the BrokenPipeError."""
    proc = open_tool(cmd, pipe_stdin=True, pipe_stdout=False)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        yield proc.stdin.write
        proc.stdin.close()
    except BrokenPipeError:
        # ffmpeg stopped reading early: its exit status and stderr, checked next, say why
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed for {name}: {err.strip()}")

def ffmpeg_video_cmd(out: Path, width: int, height: int, fps: int, duration: float,
                     wav: Path | None, rate: int | None, channels: int, *, pix_fmt_in: str = "rgb24",
                     preset: str = "veryfast", crf: int = 18) -> list[str]:
    """ffmpeg reading raw frames (``pix_fmt_in``) on stdin and, if given, a wav; H.264 + AAC out."""
    video = {"c:v": "libx264", "preset": preset, "crf": crf, "pix_fmt": "yuv420p", "threads": 2, "g": 2 * fps,
             "t": f"{duration:.6f}", **BITEXACT_OPTIONS}
    sound = {"an": None} if wav is None else {"c:a": "aac", "b:a": "128k", "ar": rate, "ac": channels}
    return encode_frames_command(out, width=width, height=height, fps=fps, pix_fmt_in=pix_fmt_in,
                                 video_options=video, sound=None if wav is None else ("file", wav),
                                 sound_options=sound)


def render(scene: Scene, out_dir: Path, seed: int, *, file_name: str | None = None) -> dict:
    """Render ``scene`` to ``out_dir/<name>.mp4`` and return its truth dict."""
    out = Path(out_dir) / (file_name or f"{scene.name}.mp4")
    rng = fixture_rng(scene.name, seed)
    fps, W, H = scene.fps, scene.width, scene.height
    n_frames = _frame_index(scene.duration, fps)

    # seeded jitter of where the faces sit, once per fixture
    jit = [(int(rng.integers(-4, 5)), int(rng.integers(-3, 4))) for _ in scene.persons]
    bgs = [(t, background(name, W, H, rng)) for t, name in scene.shots]
    cuts = [float(t) for t, _ in scene.shots if t > 0]

    tracks: list[np.ndarray] = []
    speech_truth: list[dict] = []
    openings = [np.zeros(n_frames, np.float32) for _ in scene.persons]
    with tempfile.TemporaryDirectory(prefix="mtcc-sample-") as tmp:
        wav = None
        if scene.audio_rate is not None:
            n_samples = int(round(scene.duration * scene.audio_rate))
            tracks, mix = _mix(scene, rng, n_samples)
            wav = Path(tmp) / "mix.wav"
            sf.write(str(wav), mix, scene.audio_rate, subtype="PCM_16")
            if scene.kind == "good":
                write_voices(out, tracks, scene.audio_rate, scene.duration)
            for pid, tr in enumerate(tracks):
                if scene.persons[pid].says:
                    openings[pid] = speech.frame_envelope(tr, scene.audio_rate, fps, n_frames)
                    for a, b in speech.segments(tr, scene.audio_rate):
                        speech_truth.append({"person": pid, "start": float(a), "end": float(b)})
        speech_truth.sort(key=lambda s: (s["start"], s["person"]))

        boxes: list[list[list[int]]] = [[] for _ in scene.persons]
        face_count: list[int] = []
        cmd = ffmpeg_video_cmd(out, W, H, fps, scene.duration, wav, scene.audio_rate, scene.channels)
        with ffmpeg_stdin(cmd, out.name) as write:
            for i in range(n_frames):
                t = i / fps
                bg = bgs[0][1]
                for t0, img in bgs:
                    if _frame_index(t0, fps) <= i:
                        bg = img
                frame = bg.copy()
                count = 0
                for pid, p in enumerate(scene.persons):
                    end = scene.duration if p.disappear is None else p.disappear
                    if not (_frame_index(p.appear, fps) <= i < _frame_index(end, fps)):
                        continue
                    pl = place_at(p, t)
                    # gliding sizes: half-pixel steps keep the cutout cache useful
                    c = cutout(p.photo, round(float(pl.face_w) * 2) / 2)
                    fx0, fy0, fx1, fy1 = c.face
                    ox = int(round(pl.cx + jit[pid][0] - (fx0 + fx1) / 2))
                    oy = int(round(pl.cy + jit[pid][1] - (fy0 + fy1) / 2))
                    rgb, alpha = c.render(float(openings[pid][i]))
                    _blend(frame, rgb, alpha, ox, oy)
                    box = [int(round(fx0 + ox)), int(round(fy0 + oy)), int(round(fx1 + ox)), int(round(fy1 + oy))]
                    box = [min(max(box[0], 0), W - 1), min(max(box[1], 0), H - 1),
                           min(max(box[2], 1), W), min(max(box[3], 1), H)]
                    boxes[pid].append([i, *box])
                    count += 1
                face_count.append(count)
                write(frame.tobytes())

    persons = []
    for pid, p in enumerate(scene.persons):
        end = scene.duration if p.disappear is None else p.disappear
        persons.append({"id": pid, "photo": p.photo, "voice": p.voice if p.says else None,
                        "appear": float(p.appear), "disappear": float(end), "boxes": boxes[pid]})
    has_audio = scene.audio_rate is not None
    tf_frames = two_face_frames(face_count, cuts, fps)
    return {
        "name": scene.name,
        "file": out.name,
        "kind": scene.kind,
        "expect_probe": expected_probe(W, H, fps, scene.duration, True, has_audio),
        "width": W,
        "height": H,
        "fps": float(fps),
        "duration": float(scene.duration),
        "n_frames": n_frames,
        "audio": {"rate": scene.audio_rate, "channels": scene.channels} if has_audio else None,
        "cuts": cuts,
        "persons": persons,
        "speech": speech_truth,
        "face_count": face_count,
        "boxes_every": 1,
        "two_face_intervals": [[round(a / fps, 6), round(b / fps, 6)] for a, b in tf_frames],
        "two_face_frames": tf_frames,
    }


VOICE_RATE = 16000


def voice_path(video: Path, person: int) -> Path:
    """Where :func:`render` writes person ``person``'s clean voice beside ``video``."""
    return video.with_name(f"{video.stem}.voice{person}.wav")


def write_voices(video: Path, tracks: list[np.ndarray], rate: int, duration: float) -> None:
    """Each person's clean voice (before mixing and panning) as ``<stem>.voice<i>.wav``: 16 kHz mono
    float, time-aligned to the video and exactly as long as it, so tests can score audio-visual sync
    against the true voice of each face."""
    n = int(round(duration * VOICE_RATE))
    for pid, tr in enumerate(tracks):
        y = soxr.resample(tr, rate, VOICE_RATE, quality="HQ").astype(np.float32)
        y = np.pad(y, (0, max(0, n - len(y))))[:n]
        sf.write(str(voice_path(video, pid)), y, VOICE_RATE, subtype="FLOAT")


def two_face_frames(face_count: list[int], cuts: list[float], fps: int) -> list[list[int]]:
    """Maximal runs of frames with exactly two faces, split at cuts, as frame indices [first, end)."""
    cut_frames = {_frame_index(c, fps) for c in cuts}
    out: list[list[int]] = []
    start = None
    for i, n in enumerate(list(face_count) + [-1]):
        if start is not None and (n != 2 or i in cut_frames):
            out.append([start, i])
            start = None
        if n == 2 and start is None:
            start = i
    return out


def two_face_intervals(face_count: list[int], cuts: list[float], fps: int) -> list[list[float]]:
    """The same runs as :func:`two_face_frames`, in seconds [start, end)."""
    return [[round(a / fps, 6), round(b / fps, 6)] for a, b in two_face_frames(face_count, cuts, fps)]
