"""One long benchmark video: shots of 10-40 s with hard cuts, 1-3 people per shot talking in turn.

Built for speed: every shot's still picture (background + closed-mouth faces) is composited once,
and so is each person's mouth region at each of ``LEVELS`` openings; a frame is then the shot's
I420 picture with the open mouths pasted in, piped to ffmpeg as raw yuv420p (no colour conversion
there) and encoded with x264 ``ultrafast``. Audio is mixed shot by shot into a wav first.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from . import speech
from .backgrounds import BACKGROUNDS, background
from .faces import Cutout, cutout
from .scene import NOISE_FLOOR, _blend, expected_probe, ffmpeg_stdin, ffmpeg_video_cmd, fixture_rng, two_face_frames

W, H, FPS = 640, 360, 25
RATE, CHANNELS = 44100, 2
BOXES_EVERY = 5  # the truth has a box for every frame whose index is a multiple of this
LEVELS = 16  # mouth openings are quantised to this many steps (0 = closed)
SHOT_S = (10, 40)  # shot length range, seconds
PEOPLE_P = {1: 0.25, 2: 0.45, 3: 0.30}

VOICES = {"astronaut": "en-us+f2", "ross": "en-us+m3", "chandler": "en-gb+m1", "phoebe": "en-gb+f3",
          "rachel": "en-us+f4"}
SENTENCES = (
    "Good morning, I have been waiting for you.",
    "Sorry, the traffic was terrible today.",
    "Did you bring the tickets?",
    "They are in my jacket pocket.",
    "Who wants coffee?",
    "Make mine black, please.",
    "Can you hear me over there?",
    "Yes, loud and clear.",
    "So, tell us about your trip.",
    "It rained every single day, but we loved it.",
    "I think we should start with the budget.",
    "That sounds like a good plan to me.",
    "Let me check my calendar first.",
    "We can meet again next week.",
    "Have you seen the new results?",
    "Not yet, I will read them tonight.",
)
# (face centre x, face centre y, face width) per slot, by number of people; slots never overlap
LAYOUTS = {
    1: ((320, 172, 112),),
    2: ((178, 170, 100), (462, 170, 100)),
    3: ((112, 175, 82), (320, 172, 80), (528, 175, 82)),
}
JITTER_X = {1: 40, 2: 25, 3: 10}


@dataclass
class _Slot:
    pid: int
    photo: str
    cx: int
    cy: int
    face_w: int
    track: np.ndarray | None = None  # mono voice track over the shot
    levels: np.ndarray | None = None  # per frame of the shot: quantised mouth opening


@dataclass
class _Shot:
    index: int
    f0: int
    f1: int
    bg: str
    flip: bool
    slots: list[_Slot]


def _shot_bounds(n_total: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    lo, hi = SHOT_S[0] * FPS, SHOT_S[1] * FPS
    out, f = [], 0
    while f < n_total:
        rem = n_total - f
        n = rem if rem < 2 * lo else int(rng.integers(lo, min(hi, rem - lo) + 1))
        out.append((f, f + n))
        f += n
    return out


def _plan(n_total: int, seed: int) -> list[_Shot]:
    rng = fixture_rng("long", seed)
    shots: list[_Shot] = []
    pid, prev_bg = 0, None
    for i, (f0, f1) in enumerate(_shot_bounds(n_total, rng)):
        n = int(rng.choice(list(PEOPLE_P), p=list(PEOPLE_P.values())))
        photos = rng.choice(list(VOICES), size=n, replace=False)
        slots = []
        for (cx, cy, fw), photo in zip(LAYOUTS[n], photos):
            slots.append(_Slot(pid, str(photo), cx + int(rng.integers(-JITTER_X[n], JITTER_X[n] + 1)),
                               cy + int(rng.integers(-8, 9)), int(round(fw * rng.uniform(0.9, 1.1)))))
            pid += 1
        bg = str(rng.choice([b for b in BACKGROUNDS if b != prev_bg]))
        shots.append(_Shot(i, f0, f1, bg, bool(rng.integers(2)), slots))
        prev_bg = bg
    return shots


def _speak(shot: _Shot, rng: np.random.Generator, k: int, n_samples: int) -> int:
    """Fill each slot's voice track with sentences said in turn; returns the next sentence index."""
    n = len(shot.slots)
    for s in shot.slots:
        s.track = np.zeros(n_samples, np.float32)
    dur = n_samples / RATE
    t, who = rng.uniform(0.2, 0.8), int(rng.integers(n))
    while True:
        y = speech.say(SENTENCES[k % len(SENTENCES)], VOICES[shot.slots[who].photo], RATE)
        if t + len(y) / RATE > dur - 0.3:
            return k
        s0 = int(round(t * RATE))
        shot.slots[who].track[s0:s0 + len(y)] += y
        k += 1
        t += len(y) / RATE + rng.uniform(0.3, 1.2)
        if n > 1:
            who = (who + int(rng.integers(1, n))) % n


def _offset(c: Cutout, s: _Slot) -> tuple[int, int]:
    fx0, fy0, fx1, fy1 = c.face
    return int(round(s.cx - (fx0 + fx1) / 2)), int(round(s.cy - (fy0 + fy1) / 2))


def _planes(yuv: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = yuv.reshape(-1)
    n = h * w
    return (flat[:n].reshape(h, w), flat[n:n + n // 4].reshape(h // 2, w // 2),
            flat[n + n // 4:].reshape(h // 2, w // 2))


def _mouth_rect(c: Cutout, ox: int, oy: int) -> tuple[int, int, int, int]:
    """Frame rectangle (even-aligned) holding every pixel that an opening mouth changes."""
    mx, my = c.mouth
    reach = 0.42 * (c.face[2] - c.face[0])  # the jaw-drop weight is 0 beyond this from the mouth
    x0, x1 = int(np.floor(mx - reach)) - 1 + ox, int(np.ceil(mx + reach)) + 2 + ox
    y0, y1 = int(np.floor(my)) - 3 + oy, c.size[1] + oy
    x0, y0 = max(0, x0 - (x0 & 1)), max(0, y0 - (y0 & 1))
    x1, y1 = min(W, x1 + (x1 & 1)), min(H, y1 + (y1 & 1))
    return x0, y0, x1, y1


def _render_shot(shot: _Shot, seed: int, write) -> list[list[int]]:
    """Write the shot's frames (raw I420) through ``write``; return each slot's face box."""
    rng = fixture_rng(f"long/shot{shot.index}", seed)
    bg = background(shot.bg, W, H, rng)
    if shot.flip and shot.bg != "gradient":
        bg = np.ascontiguousarray(bg[:, ::-1])
    cuts = [cutout(s.photo, float(s.face_w)) for s in shot.slots]
    offs = [_offset(c, s) for c, s in zip(cuts, shot.slots)]
    closed = [c.render(0.0) for c in cuts]

    def compose(canvas: np.ndarray, x0: int, y0: int, open_k: int = -1, opening: float = 0.0) -> None:
        for j, (c, (ox, oy)) in enumerate(zip(cuts, offs)):
            rgb, a = c.render(opening) if j == open_k else closed[j]
            _blend(canvas, rgb, a, ox - x0, oy - y0)

    base = bg.copy()
    compose(base, 0, 0)
    base_yuv = cv2.cvtColor(base, cv2.COLOR_RGB2YUV_I420).reshape(-1)

    rects, patches = [], []
    for k, (c, (ox, oy)) in enumerate(zip(cuts, offs)):
        x0, y0, x1, y1 = _mouth_rect(c, ox, oy)
        for r in rects:  # the layouts keep mouth regions apart; pasting relies on it
            assert x1 <= r[0] or r[2] <= x0 or y1 <= r[1] or r[3] <= y0, (shot, r, (x0, y0, x1, y1))
        rects.append((x0, y0, x1, y1))
        per_level = [None]
        for lvl in range(1, LEVELS):
            canvas = bg[y0:y1, x0:x1].copy()
            compose(canvas, x0, y0, k, lvl / (LEVELS - 1))
            yuv = cv2.cvtColor(canvas, cv2.COLOR_RGB2YUV_I420)
            per_level.append(_planes(yuv, y1 - y0, x1 - x0))
        patches.append(per_level)

    buf = np.empty(W * H * 3 // 2, np.uint8)
    fy, fu, fv = _planes(buf, H, W)
    levels = np.stack([s.levels for s in shot.slots], axis=1)
    prev = None
    for i in range(shot.f1 - shot.f0):
        cur = tuple(levels[i])
        if cur != prev:
            np.copyto(buf, base_yuv)
            for (x0, y0, x1, y1), per_level, lvl in zip(rects, patches, cur):
                if lvl:
                    py, pu, pv = per_level[lvl]
                    fy[y0:y1, x0:x1] = py
                    fu[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = pu
                    fv[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = pv
            prev = cur
        write(buf)

    boxes = []
    for c, (ox, oy) in zip(cuts, offs):
        fx0, fy0, fx1, fy1 = c.face
        b = [int(round(fx0 + ox)), int(round(fy0 + oy)), int(round(fx1 + ox)), int(round(fy1 + oy))]
        boxes.append([min(max(b[0], 0), W - 1), min(max(b[1], 0), H - 1), min(max(b[2], 1), W),
                      min(max(b[3], 1), H)])
    return boxes


def generate_long(path: str | Path, *, minutes: float = 10.0, seed: int = 0) -> Path:
    """Write one long 640x360 25 fps H.264/AAC video to ``path`` and ``<stem>.truth.json`` beside it.

    Shots of 10-40 s (hard cuts, a different background each), each with 1-3 of the sample people
    saying cycled espeak-ng sentences in turn, mouths following their own voices. The truth has the
    schema of the fixtures' truth, but person boxes only for every ``boxes_every``-th frame (frame
    index a multiple of 5); every (shot, person) is its own person entry. Deterministic per seed.
    """
    out = Path(path)
    if minutes <= 0:
        raise ValueError("minutes must be > 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    n_total = max(1, int(round(minutes * 60 * FPS)))
    duration = n_total / FPS
    shots = _plan(n_total, seed)
    rng = fixture_rng("long/audio", seed)
    spf = RATE // FPS
    assert spf * FPS == RATE

    speech_truth: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mtcc-long-") as tmp:
        wav = Path(tmp) / "mix.wav"
        k = 0
        with sf.SoundFile(str(wav), "w", RATE, CHANNELS, subtype="PCM_16") as wf:
            for shot in shots:
                nf = shot.f1 - shot.f0
                n_samples = nf * spf
                k = _speak(shot, rng, k, n_samples)
                mix = np.zeros((n_samples, CHANNELS), np.float32)
                for s in shot.slots:
                    t0 = shot.f0 / FPS
                    for a, b in speech.segments(s.track, RATE):
                        speech_truth.append({"person": s.pid, "start": round(t0 + a, 6), "end": round(t0 + b, 6)})
                    env = speech.frame_envelope(s.track, RATE, FPS, nf) if s.track.any() else np.zeros(nf)
                    s.levels = np.rint(np.clip(env, 0, 1) * (LEVELS - 1)).astype(np.int64)
                    pan = float(np.clip(s.cx / W, 0.0, 1.0))
                    g = np.array([np.cos(pan * np.pi / 2), np.sin(pan * np.pi / 2)], np.float32) * np.sqrt(2)
                    mix += s.track[:, None] * (0.55 + 0.45 * g)[None, :]
                mix = mix * 0.8 + rng.normal(0.0, NOISE_FLOOR, mix.shape).astype(np.float32)
                wf.write(np.clip(mix, -1.0, 1.0))
                for s in shot.slots:
                    s.track = None
        speech_truth.sort(key=lambda s: (s["start"], s["person"]))

        cmd = ffmpeg_video_cmd(out, W, H, FPS, duration, wav, RATE, CHANNELS, pix_fmt_in="yuv420p",
                               preset="ultrafast", crf=20)
        with ffmpeg_stdin(cmd, out.name) as write:
            all_boxes = [_render_shot(shot, seed, write) for shot in shots]

    persons, face_count = [], []
    speaks = {s["person"] for s in speech_truth}
    for shot, boxes in zip(shots, all_boxes):
        first = -(-shot.f0 // BOXES_EVERY) * BOXES_EVERY
        for s, box in zip(shot.slots, boxes):
            persons.append({"id": s.pid, "photo": s.photo, "voice": VOICES[s.photo] if s.pid in speaks else None,
                            "appear": round(shot.f0 / FPS, 6), "disappear": round(shot.f1 / FPS, 6),
                            "boxes": [[f, *box] for f in range(first, shot.f1, BOXES_EVERY)]})
        face_count += [len(shot.slots)] * (shot.f1 - shot.f0)
    cuts = [round(s.f0 / FPS, 6) for s in shots[1:]]
    tf = two_face_frames(face_count, cuts, FPS)
    truth = {
        "name": out.stem,
        "file": out.name,
        "kind": "good",
        "expect_probe": expected_probe(W, H, FPS, duration, True, True),
        "width": W,
        "height": H,
        "fps": float(FPS),
        "duration": float(duration),
        "n_frames": n_total,
        "audio": {"rate": RATE, "channels": CHANNELS},
        "cuts": cuts,
        "persons": persons,
        "speech": speech_truth,
        "face_count": face_count,
        "boxes_every": BOXES_EVERY,
        "two_face_intervals": [[round(a / FPS, 6), round(b / FPS, 6)] for a, b in tf],
        "two_face_frames": tf,
    }
    out.with_name(f"{out.stem}.truth.json").write_text(json.dumps(truth, separators=(",", ":")) + "\n",
                                                        encoding="utf-8")
    return out
