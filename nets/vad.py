"""Voice activity detection: Silero VAD, run from the ONNX model that ships inside the ``silero-vad``
wheel with onnxruntime on the CPU. No torch, no torchaudio, no download.

The model is stateful and reads 32 ms chunks (512 samples at 16 kHz, 256 at 8 kHz), each preceded by
the last 64 (32) samples of the previous chunk. Several tracks of the same length run as one batch
(the state has a batch axis). Probabilities become segments with hysteresis: speech starts at
``threshold``, ends after ``min_silence_s`` below ``threshold - 0.15``; segments shorter than
``min_speech_s`` are dropped, the rest padded by ``pad_s`` and merged where they touch.

    segs = speech_segments(track_16k)            # VadResult(segments=[(start_s, end_s), ...], speech_s=...)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtcc.nets.loading import packaged_file

RATES = {16000: (512, 64), 8000: (256, 32)}  # rate -> (chunk, context) samples
STATE_DIM = 128


@dataclass(frozen=True)
class VadResult:
    """Speech in one track: merged segments in seconds, their total, and the per-chunk probabilities."""

    segments: list[tuple[float, float]]
    speech_s: float
    chunk_s: float
    probs: np.ndarray = field(repr=False)


def model_path() -> Path:
    """``silero_vad/data/silero_vad.onnx`` inside the installed wheel (found without importing the
    package, whose ``__init__`` imports torch)."""
    return packaged_file("silero_vad", "data", "silero_vad.onnx", install="pip install --no-deps silero-vad==6.2.3")


class SileroVad:
    """One onnxruntime session of the Silero VAD model. Not thread-safe (use one per thread)."""

    def __init__(self, path: str | Path | None = None, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path or model_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def probs(self, tracks: np.ndarray, rate: int = 16000) -> np.ndarray:
        """Speech probability per chunk, ``[B, ceil(n / chunk)]``, for float tracks ``[B, n]`` (or ``[n]``)
        at 8 or 16 kHz. The last chunk is zero-padded."""
        x = np.atleast_2d(np.asarray(tracks, np.float32))
        if rate not in RATES:
            raise ValueError(f"silero VAD runs at 8000 or 16000 Hz, got {rate} (resample first)")
        chunk, ctx = RATES[rate]
        b, n = x.shape
        n_chunks = -(-n // chunk)
        if n_chunks == 0:
            return np.zeros((b, 0), np.float32)
        x = np.pad(x, ((0, 0), (ctx, n_chunks * chunk - n)))
        state = np.zeros((2, b, STATE_DIM), np.float32)
        sr = np.array(rate, np.int64)
        out = np.empty((b, n_chunks), np.float32)
        for i in range(n_chunks):
            # chunk i with the ``ctx`` samples before it (zeros before the first chunk)
            frame = np.ascontiguousarray(x[:, i * chunk: i * chunk + ctx + chunk])
            p, state = self.session.run(None, {"input": frame, "state": state, "sr": sr})
            out[:, i] = p[:, 0]
        return out


_local = threading.local()


def _session() -> SileroVad:
    vad = getattr(_local, "vad", None)
    if vad is None:
        vad = _local.vad = SileroVad()
    return vad


def segments_from_probs(probs: np.ndarray, chunk_s: float, duration_s: float, *, threshold: float = 0.5,
                        neg_threshold: float | None = None, min_speech_s: float = 0.25,
                        min_silence_s: float = 0.10, pad_s: float = 0.03) -> list[tuple[float, float]]:
    """Speech segments (seconds) from per-chunk probabilities, with hysteresis, minimum lengths and padding."""
    off = max(0.01, threshold - 0.15) if neg_threshold is None else neg_threshold
    min_sil = max(1, int(round(min_silence_s / chunk_s)))
    raw: list[list[int]] = []  # [first chunk, end chunk)
    start: int | None = None
    quiet = 0  # consecutive chunks below ``off`` while in speech
    for i, p in enumerate(np.asarray(probs, np.float64).tolist()):
        if start is None:
            if p >= threshold:
                start, quiet = i, 0
            continue
        if p < off:
            quiet += 1
            if quiet >= min_sil:
                raw.append([start, i - quiet + 1])
                start = None
        else:
            quiet = 0
    if start is not None:
        raw.append([start, len(probs) - quiet])
    out: list[list[float]] = []
    for a, b in raw:
        if (b - a) * chunk_s < min_speech_s:
            continue
        s, e = max(0.0, a * chunk_s - pad_s), min(duration_s, b * chunk_s + pad_s)
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(round(s, 4), round(e, 4)) for s, e in out if e > s]


def speech_segments(tracks: np.ndarray, rate: int = 16000, *, threshold: float = 0.5, min_speech_s: float = 0.25,
                    min_silence_s: float = 0.10, pad_s: float = 0.03) -> VadResult | list[VadResult]:
    """Silero VAD on a mono float track ``[n]`` (returns one :class:`VadResult`) or on equal-length tracks
    ``[B, n]`` run as one batch (returns a list). Rates other than 8/16 kHz are resampled to 16 kHz."""
    x = np.asarray(tracks, np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if x.ndim != 2:
        raise ValueError(f"expected a track [n] or tracks [B, n], got shape {x.shape}")
    duration = x.shape[1] / rate
    if rate not in RATES:
        import soxr

        x = np.stack([soxr.resample(t, rate, 16000, quality="HQ") for t in x]).astype(np.float32)
        rate = 16000
    chunk_s = RATES[rate][0] / rate
    probs = _session().probs(x, rate)
    results = []
    for p in probs:
        segs = segments_from_probs(p, chunk_s, duration, threshold=threshold, min_speech_s=min_speech_s,
                                   min_silence_s=min_silence_s, pad_s=pad_s)
        results.append(VadResult(segs, round(float(sum(e - s for s, e in segs)), 4), chunk_s, p))
    return results[0] if single else results

