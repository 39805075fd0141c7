"""Prescore: a cheap, model-free lip/speech check that runs before separation, so that clips where no
face moves its mouth with the speech never reach the expensive audio models.

Per character, two signals at the clip's 25 fps:
  * mouth motion: mean absolute grey-level difference between consecutive frames inside the mouth
    region of small face crops (derived from the clip's shared crops, media/crops.py, at ``crop_size``). The region follows the five
    landmarks frame by frame: across, the two mouth corners widened by ``0.9`` x the mouth width each
    side; down, from 40 % of the way nose -> mouth to 1.6 x that distance below the mouth (lips and
    jaw, which drops when the mouth opens). Crops are centred on the face box, so head motion is
    mostly taken out. Degenerate landmarks fall back to the lower middle of the box.
  * speech activity: the RMS of each 40 ms frame (640 samples at 16 kHz) of the audio, compressed
    (square root), then the absolute frame-to-frame change: the mouth moves when loudness changes
    (syllable onsets and ends), not while a vowel is held. Audio = the clip mixture, or the character's
    own separated track (``spk<i>.flac``) when present.
Both are high-passed (minus a ``highpass_frames`` moving average) and standardised; their normalised
cross-correlation over lags ``-max_offset..+max_offset`` (sum over the overlap / clip length, so short
overlaps at large lags cannot win on few samples) gives the best correlation and its offset.

Offsets follow SyncNet's sign: ``offset = k`` means video frame ``t`` matches audio frame ``t - k``;
audio that arrives ``d`` frames late gives ``offset = -d``.

Why ``min_corr`` is 0.38, and why real footage needs its own: docs/calibration.md.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, FrameTimes, MouthCurves, ProbeResult
from mtcc.media.audio_io import read_track
from mtcc.media.clip import AUDIO_RATE, CHARACTERS, FPS
from mtcc.media.crops import CropGeometry
from mtcc.media.members import TRACKS

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, Stage, optional
from .clip_media import clip_media

HOP = AUDIO_RATE // FPS  # samples per video frame


# -- signals ----------------------------------------------------------------------------------------------

def mouth_regions(boxes: np.ndarray, landmarks: np.ndarray, *, size: int, scale: float) -> np.ndarray:
    """``[T, 4]`` integer mouth regions (x0, y0, x1, y1) in the coordinates of ``square_crop`` crops
    (side ``scale`` x the box's longer side, centred on the box, resized to ``size``)."""
    b = np.asarray(boxes, np.float64)
    lm = np.asarray(landmarks, np.float64).reshape(len(b), 5, 2)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 2.0) * scale / 2
    s = size / (2 * half)
    p = (lm - (centre - half[:, None])[:, None, :]) * s[:, None, None]  # landmarks in crop pixels
    nose, left, right = p[:, 2], p[:, 3], p[:, 4]
    mouth = (left + right) / 2
    width = np.linalg.norm(right - left, axis=1)
    drop = mouth[:, 1] - nose[:, 1]
    reg = np.stack([mouth[:, 0] - 0.9 * width, nose[:, 1] + 0.4 * drop,
                    mouth[:, 0] + 0.9 * width, mouth[:, 1] + 1.6 * drop], axis=1)
    # fallback: lower middle of the face box (landmarks missing or not a face's geometry)
    bw, bh = (b[:, 2] - b[:, 0]) * s, (b[:, 3] - b[:, 1]) * s
    bx0, by0 = (b[:, 0] - (centre[:, 0] - half)) * s, (b[:, 1] - (centre[:, 1] - half)) * s
    box_reg = np.stack([bx0 + 0.25 * bw, by0 + 0.6 * bh, bx0 + 0.75 * bw, by0 + 1.0 * bh], axis=1)
    bad = ~np.isfinite(reg).all(axis=1) | (width < 1.0) | (drop <= 0.5)
    reg[bad] = box_reg[bad]
    reg = np.round(reg)
    reg[:, [0, 1]] = np.clip(reg[:, [0, 1]], 0, size - 1)
    reg[:, [2, 3]] = np.clip(reg[:, [2, 3]], reg[:, [0, 1]] + 1, size)
    return reg.astype(int)


def mouth_motion(gray: np.ndarray, regions: np.ndarray, repeated: np.ndarray | None = None) -> np.ndarray:
    """``[T]`` mean |frame t - frame t-1| inside frame t's mouth region (frame 0 repeats frame 1).

    ``repeated[t]`` marks output frames that show the same source frame as frame t-1 (a source below
    25 fps): their difference is no measurement, so it is interpolated from the neighbours instead of
    being a zero that would stamp the frame-rate pattern onto the signal."""
    g = np.asarray(gray, np.float32)
    n = len(g)
    out = np.full(n, np.nan)
    for t in range(1, n):
        if repeated is not None and repeated[t]:
            continue
        x0, y0, x1, y1 = regions[t]
        out[t] = float(np.abs(g[t, y0:y1, x0:x1] - g[t - 1, y0:y1, x0:x1]).mean())
    ok = np.flatnonzero(~np.isnan(out))
    if len(ok) == 0:
        return np.zeros(n)
    return np.interp(np.arange(n), ok, out[ok])


def repeated_frames(cand: Candidate, n_frames: int, out_fps: float) -> np.ndarray | None:
    """Output frames that repeat the previous one's source frame: from the decoded frame times where the
    source has a variable rate (its gaps repeat frames too), else from the probed source rate."""
    from mtcc.media.crops import clip_source_frames
    from mtcc.media.video import FrameClock

    probe = cand.maybe(ProbeResult)
    known = cand.maybe(FrameTimes)
    if known is not None and known.times:
        clock = known.clock()
    else:
        fps = float(probe.fps or 0.0) if probe else 0.0
        if fps <= 0:
            return None
        clock = FrameClock(fps, 1 << 40)  # no frame count needed: nothing is clipped at the end
    src = clip_source_frames(clock, float(cand.start or 0.0), probe.start if probe else 0.0, n_frames, out_fps)
    return np.concatenate([[False], src[1:] == src[:-1]])


def speech_activity(audio: np.ndarray, n_frames: int, hop: int = HOP) -> np.ndarray:
    """``[n_frames]`` |change| of the compressed (square-root) RMS per video frame (``hop`` samples)."""
    x = np.asarray(audio, np.float64)
    x = np.pad(x, (0, max(0, n_frames * hop - len(x))))[: n_frames * hop]
    rms = np.sqrt((x.reshape(n_frames, hop) ** 2).mean(axis=1))
    env = np.sqrt(rms)
    return np.abs(np.diff(env, prepend=env[:1]))


def highpass(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` minus its centred moving average over ``frames`` (odd; edges padded with the edge value)."""
    x = np.asarray(x, np.float64)
    w = max(1, int(frames) | 1)
    if w == 1 or len(x) == 0:
        return x - x.mean() if len(x) else x
    padded = np.pad(x, (w // 2, w // 2), mode="edge")
    return x - np.convolve(padded, np.ones(w) / w, mode="valid")


def xcorr(video: np.ndarray, audio: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised cross-correlation ``r[k + max_lag] = sum_t v[t] a[t + k] / N`` of the standardised
    signals (biased estimate: lags with short overlaps are shrunk), ``k`` in ``-max_lag..max_lag``."""
    v = np.asarray(video, np.float64)
    a = np.asarray(audio, np.float64)
    n = min(len(v), len(a))
    v, a = v[:n], a[:n]
    out = np.zeros(2 * max_lag + 1)
    sv, sa = v.std(), a.std()
    if n < 2 or sv < 1e-12 or sa < 1e-12:
        return out
    v, a = (v - v.mean()) / sv, (a - a.mean()) / sa
    for i, k in enumerate(range(-max_lag, max_lag + 1)):
        if abs(k) >= n:
            continue
        out[i] = float(np.dot(v[max(0, -k): n - max(0, k)], a[max(0, k): n - max(0, -k)])) / n
    return out


def lip_sync(motion: np.ndarray, activity: np.ndarray, *, max_lag: int = 15,
             highpass_frames: int = 25) -> tuple[float, int, np.ndarray]:
    """(best correlation, its offset in SyncNet's sign, the whole curve) of one mouth and one track."""
    r = xcorr(highpass(motion, highpass_frames), highpass(activity, highpass_frames), max_lag)
    k = int(np.argmax(r)) - max_lag
    return float(r.max()), -k, r


# -- the stage ----------------------------------------------------------------------------------------------

class MouthPrescore(Stage):
    name: ClassVar[str] = "prescore"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.05
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 280
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "audio_rate": AUDIO_RATE}
    # a gate before the separation on purpose: the separated tracks only when a stage listed earlier made them
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces, optional(ProbeResult), optional(FrameTimes),
                                           *(Member(t, if_earlier=True) for t in TRACKS))
    provides: ClassVar[tuple[Key | type, ...]] = (MouthCurves,)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "corr_0": "float64", "corr_1": "float64", "offset_0": "int64", "offset_1": "int64",
        "corr_max": "float64", "motion_0": "float64", "motion_1": "float64", "audio_source": "string",
    }

    crop_size: int = Field(96, ge=32, description="face crops are decoded at this size (pixels)")
    crop_scale: float = Field(1.2, gt=0, description="crop side = this x the face box's longer side")
    max_offset: int = Field(15, ge=0, description="lags searched, frames at 25 fps (SyncNet's vshift)")
    highpass_frames: int = Field(25, ge=1, description="moving-average window removed from both signals")
    min_corr: float = Field(0.38, description="reject when every character's best correlation is below this. "
                                              "Set from the generated fixtures: the better-scoring face against its "
                                              "clip's own mixture >= 0.43, against another clip's mixture or voices "
                                              "<= 0.34; not yet calibrated on real footage (see the module doc)")
    reject: bool = Field(True, description="false: record the stats, never reject")
    use_separated: bool = Field(True, description="score each character against its own spk<i>.flac when present")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4), description=RESOURCES)

    def signals(self, cand: Candidate) -> tuple[list[np.ndarray], list[np.ndarray], str]:
        """Per character: mouth motion and speech activity of the audio scored against it."""
        faces = cand.fact(ClipFaces)
        chars = faces.characters
        media = clip_media(cand, self)
        crops = media.crops(CropGeometry(self.crop_size, self.crop_scale))
        n = crops.shape[1]
        fps = float(faces.fps or FPS)
        gray = crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # [C, T, S, S]
        repeated = repeated_frames(cand, n, fps)
        motion = []
        for k, ch in enumerate(chars):
            reg = mouth_regions(np.asarray(ch.boxes), np.asarray(ch.landmarks), size=self.crop_size,
                                scale=self.crop_scale)
            motion.append(mouth_motion(gray[k], reg, repeated))
        names = [TRACKS[k] for k in range(len(chars))]
        if self.use_separated and all(m in cand.members for m in names):
            tracks, source = [read_track(cand.member(m)) for m in names], "separated"
        else:
            mix = media.mixture()
            tracks, source = [mix] * len(chars), "mixture"
        activity = [speech_activity(t, n, int(round(AUDIO_RATE / fps))) for t in tracks]
        return motion, activity, source

    def compute(self, cand: Candidate) -> dict[str, Any]:
        motion, activity, source = self.signals(cand)
        if len(motion) != 2:
            raise ValueError(f"prescore needs exactly 2 characters, clip has {len(motion)}")
        stats: dict[str, Any] = {}
        curves = []
        for k in range(2):
            corr, off, r = lip_sync(motion[k], activity[k], max_lag=self.max_offset,
                                    highpass_frames=self.highpass_frames)
            stats[f"corr_{k}"], stats[f"offset_{k}"] = round(corr, 6), off
            stats[f"motion_{k}"] = round(float(np.mean(motion[k])), 6)
            curves.append(np.round(r, 6).tolist())
        stats["corr_max"] = max(stats["corr_0"], stats["corr_1"])
        stats["audio_source"] = source
        cand.put(MouthCurves(curves, [-self.max_offset, self.max_offset], source))
        return stats

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if self.reject and stats["corr_max"] < self.min_corr:
            return Rejection("no_lip_motion_match",
                             f"no mouth moves with the {stats['audio_source']} audio: best lip/speech correlation "
                             f"{stats['corr_0']:.3f} (character 0), {stats['corr_1']:.3f} (character 1) "
                             f"< min_corr {self.min_corr}")
        return None
