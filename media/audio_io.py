"""Sample audio members in memory: 16 kHz mono FLAC bytes <-> float32 tracks."""

from __future__ import annotations

import io

import numpy as np

from .clip import AUDIO_RATE


def read_track(data: bytes, rate: int = AUDIO_RATE) -> np.ndarray:
    """A FLAC/WAV member as mono float32 at ``rate`` (resampled with soxr if stored otherwise)."""
    import soundfile as sf

    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != rate:
        import soxr

        x = soxr.resample(x, sr, rate, quality="HQ").astype(np.float32)
    return x


def flac_bytes(track: np.ndarray, rate: int = AUDIO_RATE) -> bytes:
    """16-bit mono FLAC of a float track in [-1, 1] (clipped), deterministic for the same samples."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(track, np.float32), -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
