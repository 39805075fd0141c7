"""Prescore (model-free lip motion x speech activity) on the generated fixtures, whose clean per-person
voices (``<stem>.voice<i>.wav``) give the truth: the mouths were animated from exactly these tracks."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mtcc.facts import CutMedia, FrameTimes, MouthCurves, ProbeResult
from mtcc.stages.base import Candidate
from mtcc.stages.cut import ClipCut
from mtcc.stages.faces import FaceTrack
from mtcc.stages.prescore import HOP, MouthPrescore, highpass, mouth_regions, repeated_frames, speech_activity, xcorr
from mtcc.stages.probe import Probe
from mtcc.stages.segment import TwoFaceSegments

RATE = 16000
NAMES = ["two_talk", "two_talk_30fps"]


@pytest.fixture(scope="module")
def clips(sample_dir) -> dict[str, Candidate]:
    """Each fixture through the real probe -> faces -> segment -> cut: one clip, the whole video."""
    stages = [Probe(), FaceTrack(detector="centerface", sample_fps=5), TwoFaceSegments(), ClipCut()]
    for s in stages:
        s.setup()
    out = {}
    for name in NAMES:
        batch = [Candidate(key=name, video_id=name, source=str(sample_dir / f"{name}.mp4"), shard=0)]
        for s in stages:
            batch = s.run_batch(batch)
        got = [c for c in batch if c.level == "clip"]
        assert len(got) == 1 and got[0].pending, [(c.key, c.status, c.message) for c in batch]
        out[name] = got[0]
    return out


def voices(sample_dir, name: str, clip: Candidate) -> list[np.ndarray]:
    a, b = int(round(clip.start * RATE)), int(round(clip.end * RATE))
    return [sf.read(str(sample_dir / f"{name}.voice{i}.wav"), dtype="float32")[0][a:b] for i in range(2)]


def flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def delayed(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` played ``frames`` video frames later (negative: earlier), same length."""
    k = frames * HOP
    if k >= 0:
        return np.concatenate([np.zeros(k, x.dtype), x[:len(x) - k]])
    return np.concatenate([x[-k:], np.zeros(-k, x.dtype)])


def run(clip: Candidate, tracks: list[np.ndarray] | None = None, source: str | None = None,
        **cfg) -> Candidate:
    """Prescore on ``clip`` with ``tracks`` as its separated tracks; ``source``: the clip cut again from
    another file (its own clip media: stages after the cut read nothing else)."""
    c = Candidate(**{**clip.__dict__, "stats": dict(clip.stats), "facts": clip.facts.copy(),
                     "members": dict(clip.members)})
    if source is not None:
        c.source, c.members = source, {}
        c.facts.drop(CutMedia)
        c = ClipCut().run_batch([c])[0]
    c.members.update({} if tracks is None else {f"spk{i}.flac": flac(t) for i, t in enumerate(tracks)})
    return MouthPrescore(**cfg).run_batch([c])[0]


def stats(c: Candidate) -> dict:
    return {k.split(".", 1)[1]: v for k, v in c.stats.items() if k.startswith("prescore.")}


# -- signals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lag", [0, 6, -11])
def test_xcorr_finds_a_planted_lag(lag):
    rng = np.random.default_rng(5)
    v = rng.normal(size=300)
    a = np.roll(v, lag) + 0.5 * rng.normal(size=300)  # a[t] = v[t - lag]
    r = xcorr(v, a, 15)
    assert int(np.argmax(r)) - 15 == lag and r.max() > 0.7
    assert abs(np.delete(r, np.argmax(r))).max() < 0.3


def test_highpass_and_activity():
    assert np.allclose(highpass(np.full(40, 3.0), 25), 0)
    x = np.zeros(RATE)
    x[12 * HOP:13 * HOP] = 0.5  # one loud frame: activity rises into it and falls out of it
    act = speech_activity(x, 25)
    assert act.shape == (25,) and set(np.flatnonzero(act > 0.1)) == {12, 13}


def test_mouth_region_sits_on_the_mouth_in_crop_pixels():
    box = np.array([[100.0, 50.0, 200.0, 170.0]])
    lm = np.array([[[130, 95], [170, 95], [150, 120], [135, 145], [165, 145]]], np.float64)
    x0, y0, x1, y1 = mouth_regions(box, lm, size=96, scale=1.2)[0]
    # crop: side 144 px around (150, 110) -> 96 px, 2/3 px per source px; mouth centre (150, 145) -> (48, 71.3)
    assert x0 < 48 < x1 and y0 < 71 < y1
    assert y0 > (120 - 38) * 2 / 3  # below the nose
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    bad = mouth_regions(box, np.zeros((1, 5, 2)), size=96, scale=1.2)[0]  # no landmarks: lower face
    assert bad[1] > 48 and bad[0] < 48 < bad[2]


def test_repeated_source_frames_are_found():
    cand = Candidate(key="k", video_id="v", source="s", shard=0, start=0.0)
    cand.put(ProbeResult(duration=2.0, has_video=True, has_audio=True, fps=16.0, video_start=0.0))
    rep = repeated_frames(cand, 50, 25.0)
    assert rep.sum() == 50 - 32 and not rep[0]
    cand.put(ProbeResult(duration=2.0, has_video=True, has_audio=True, fps=30.0, video_start=0.0))
    assert not repeated_frames(cand, 50, 25.0).any()


def test_repeated_frames_of_a_variable_rate_source_are_its_gaps():
    """25 fps with frames 2 and 5 of every 7 dropped (Matroska still says 25/1): the clip repeats the
    frame before each gap, exactly at the dropped frames' slots."""
    kept = [n for n in range(70) if n % 7 not in (2, 5)]
    clock = {"fps": 25.0, "n_frames": len(kept), "times": [n / 25 for n in kept], "end": 70 / 25}
    cand = Candidate(key="k", video_id="v", source="s", shard=0, start=0.4)
    cand.put(ProbeResult(duration=2.8, has_video=True, has_audio=True, fps=25.0, video_start=0.0))
    cand.put(FrameTimes.from_json(clock))
    rep = repeated_frames(cand, 50, 25.0)
    assert np.flatnonzero(rep).tolist() == [j for j in range(50) if (10 + j) % 7 in (2, 5)]


# -- the stage on the fixtures ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_true_voice_gives_offset_zero(clips, sample_dir, name):
    c = run(clips[name], voices(sample_dir, name, clips[name]))
    s = stats(c)
    assert s["audio_source"] == "separated" and c.pending
    for k in range(2):
        assert abs(s[f"offset_{k}"]) <= 1, s
        assert s[f"corr_{k}"] > 0.45, s


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shift", [8, -8])
def test_shifted_voice_offset_is_recovered(clips, sample_dir, name, shift):
    """Voice played 8 frames (0.32 s) late -> offset -8 in SyncNet's sign; 8 frames early -> +8."""
    v = voices(sample_dir, name, clips[name])
    s = stats(run(clips[name], [delayed(t, shift) for t in v]))
    for k in range(2):
        assert abs(s[f"offset_{k}"] - (-shift)) <= 1, s


@pytest.mark.parametrize("name", NAMES)
def test_swapped_voices_correlate_less_than_the_true_pairing(clips, sample_dir, name):
    v = voices(sample_dir, name, clips[name])
    true = stats(run(clips[name], v))
    swapped = stats(run(clips[name], [v[1], v[0]]))
    for k in range(2):
        assert swapped[f"corr_{k}"] < true[f"corr_{k}"] - 0.2, (true, swapped)


@pytest.mark.parametrize("name", NAMES)
def test_in_sync_clip_is_kept_on_its_mixture(clips, name):
    c = run(clips[name])
    s = stats(c)
    assert c.pending and s["audio_source"] == "mixture", c.message
    assert s["corr_max"] >= MouthPrescore().min_corr
    best = int(np.argmax([s["corr_0"], s["corr_1"]]))
    assert abs(s[f"offset_{best}"]) <= 1
    assert len(c.fact(MouthCurves).curves) == 2 and len(c.fact(MouthCurves).curves[0]) == 31


def test_clip_with_another_fixtures_audio_is_rejected(clips, sample_dir, tmp_path):
    """two_talk's pictures with two_talk_30fps's sound track (remuxed), and with its voices as tracks."""
    dub = tmp_path / "two_talk_dubbed.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(sample_dir / "two_talk.mp4"),
                    "-i", str(sample_dir / "two_talk_30fps.mp4"), "-map", "0:v:0", "-map", "1:a:0",
                    "-c:v", "copy", "-c:a", "aac", str(dub)], check=True)
    c = run(clips["two_talk"], source=str(dub))
    assert c.status == "rejected" and c.reason == "no_lip_motion_match" and c.stage == "prescore", stats(c)
    assert "min_corr" in c.message
    other = voices(sample_dir, "two_talk_30fps", clips["two_talk_30fps"])
    n = int(round((clips["two_talk"].end - clips["two_talk"].start) * RATE))
    c2 = run(clips["two_talk"], [np.pad(t, (0, n - len(t))) for t in other])
    assert c2.status == "rejected" and c2.reason == "no_lip_motion_match", stats(c2)
    # reject: false records the same numbers and keeps the clip
    c3 = run(clips["two_talk"], source=str(dub), reject=False)
    assert c3.pending and stats(c3) == stats(c)
