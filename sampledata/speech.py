"""Speech for the sample videos: espeak-ng voices, placement on a timeline, envelopes, segments."""

from __future__ import annotations

import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# 10 ms analysis hop for deciding where a voice is non-silent
_HOP_S = 0.010
# a 10 ms window counts as speech when its RMS is above this fraction of the voice's loudest window
_REL_THRESHOLD = 0.02
_MIN_GAP_S = 0.20  # pauses shorter than this stay inside one segment
_MIN_LEN_S = 0.05


@lru_cache(maxsize=128)
def _espeak(text: str, voice: str, speed: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="mtcc-espeak-") as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), "--", text],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        x, sr = sf.read(str(wav), dtype="float32", always_2d=False)
    if x.ndim > 1:
        x = x.mean(axis=1)
    x.setflags(write=False)
    return x, int(sr)


def window_rms(x: np.ndarray, rate: int, hop_s: float = _HOP_S) -> np.ndarray:
    hop = max(1, int(round(rate * hop_s)))
    n = len(x) // hop
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    w = x[: n * hop].astype(np.float64).reshape(n, hop)
    return np.sqrt((w * w).mean(axis=1)).astype(np.float32)


def say(text: str, voice: str, rate: int, *, speed: int = 165, peak: float = 0.5) -> np.ndarray:
    """Speak ``text`` with an espeak-ng ``voice``; mono float32 at ``rate``, leading/trailing silence
    trimmed, peak-normalised."""
    x, sr = _espeak(text, voice, speed)
    y = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32)
    rms = window_rms(y, rate)
    if rms.size == 0 or rms.max() <= 0:
        raise RuntimeError(f"espeak-ng produced silence for voice {voice!r}")
    on = np.flatnonzero(rms > _REL_THRESHOLD * rms.max())
    hop = int(round(rate * _HOP_S))
    y = y[on[0] * hop: (on[-1] + 1) * hop]
    # 5 ms fades so the trimmed edges do not click
    f = min(len(y) // 2, int(rate * 0.005))
    if f > 0:
        ramp = np.linspace(0.0, 1.0, f, dtype=np.float32)
        y[:f] *= ramp
        y[-f:] *= ramp[::-1]
    return (y * (peak / max(1e-9, float(np.abs(y).max())))).astype(np.float32)


def segments(track: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Non-silent intervals (seconds) of one voice track, from the samples themselves."""
    rms = window_rms(track, rate)
    if rms.size == 0 or rms.max() <= 0:
        return []
    active = rms > _REL_THRESHOLD * rms.max()
    segs: list[list[int]] = []
    for i in np.flatnonzero(active):
        if segs and (i - segs[-1][1]) * _HOP_S <= _MIN_GAP_S:
            segs[-1][1] = i + 1
        else:
            segs.append([i, i + 1])
    return [(round(a * _HOP_S, 3), round(b * _HOP_S, 3)) for a, b in segs if (b - a) * _HOP_S >= _MIN_LEN_S]


def frame_envelope(track: np.ndarray, rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Mouth opening per video frame in [0, 1] from a voice track's RMS around each frame time."""
    out = np.zeros(n_frames, dtype=np.float32)
    half = int(round(rate / fps))  # +-1 frame window
    for i in range(n_frames):
        c = int(round(i * rate / fps))
        w = track[max(0, c - half // 2): c + half]
        if w.size:
            out[i] = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    voiced = out[out > 0]
    if voiced.size == 0:
        return out
    ref = float(np.percentile(voiced, 90))
    env = np.sqrt(np.clip(out / max(ref, 1e-9), 0.0, 1.0))
    env[out < _REL_THRESHOLD * float(out.max())] = 0.0
    return env.astype(np.float32)
