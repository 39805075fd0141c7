"""The sound stage on planted truth (the same speech with noise at known SNRs, muted, over a tone bed) and
on real footage. DNSMOS and Silero VAD are the real models from their wheels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import clips_through_stages, fresh, recut

from mtcc.nets.dnsmos import WINDOW, DnsMos, windows
from mtcc.stages.base import Candidate
from mtcc.stages.sound import SoundQuality

# the same clip with its sound changed (one audio filter; the picture copied)
PLANTED = {
    "muted": "volume=0",
    # white noise about as loud as the speech (random(0) is ffmpeg's seeded generator)
    "noisy": "aeval=val(0)+0.25*(2*random(0)-1):c=same",
    # a steady tone bed under the speech, as music under a talk show
    "tone": "aeval=val(0)+0.08*sin(2*PI*440*t):c=same",
}


def test_dnsmos_background_and_overall_fall_as_noise_rises(sample_dir):
    voice, rate = sf.read(str(sample_dir / "two_talk.voice0.wav"), dtype="float32")
    assert rate == 16000
    voice = voice / np.abs(voice).max() * 0.5
    rng = np.random.default_rng(0)
    power = float((voice ** 2).mean())
    snrs = [30, 20, 10, 0]
    noisy = [voice + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(voice)).astype(np.float32) for snr in snrs]
    scores = DnsMos().score([voice, *noisy])
    bak, ovrl = [s[1] for s in scores], [s[2] for s in scores]
    print(dict(zip(["clean", *snrs], scores)))
    assert all(a > b for a, b in zip(bak, bak[1:])), bak
    assert all(a > b for a, b in zip(ovrl, ovrl[1:])), ovrl
    assert bak[0] > 3.5 and bak[-1] < 2.0  # clean speech has a quiet background, 0 dB SNR a loud one


def test_windows_cover_the_track_side_by_side():
    assert windows(np.ones(WINDOW // 3)).shape == (1, WINDOW)  # short: repeated to one window
    w = windows(np.arange(WINDOW + 1000, dtype=np.float32))
    assert w.shape == (2, WINDOW) and w[0, 0] == 0 and w[1, -1] == WINDOW + 999


@pytest.fixture(scope="module")
def variants(sample_dir, tmp_path_factory) -> dict[str, Candidate]:
    (talk,) = clips_through_stages(sample_dir / "two_talk.mp4", max_seconds=10.0)
    d = tmp_path_factory.mktemp("sound")
    return {"original": talk, **{name: recut(talk, sample_dir / "two_talk.mp4", d / f"{name}.mp4", af=af,
                                              **{"c:v": "copy", "c:a": "aac"})
                                 for name, af in PLANTED.items()}}


@pytest.fixture(scope="module")
def sound() -> SoundQuality:
    stage = SoundQuality()
    stage.setup()
    return stage


def scored(stage: SoundQuality, cand: Candidate, **cfg) -> Candidate:
    s = stage if not cfg else SoundQuality(**cfg)
    (c,) = s.run_batch(fresh([cand]))
    return c


def stat(c: Candidate, name: str) -> float:
    return c.stats[f"sound.{name}"]


def test_the_talking_clip_is_mostly_speech_and_the_muted_one_is_rejected_where_asked(variants, sound):
    talk, muted = scored(sound, variants["original"]), scored(sound, variants["muted"])
    assert stat(talk, "speech_fraction") > 0.5
    assert stat(muted, "speech_fraction") < 0.05 and stat(muted, "nonspeech_sound") == 0.0
    assert talk.status == muted.status == "pending"  # record only by default
    rejected = scored(sound, variants["muted"], min_speech_fraction=0.2)
    assert (rejected.status, rejected.reason) == ("rejected", "little_speech")
    assert scored(sound, variants["original"], min_speech_fraction=0.2).status == "pending"


def test_noise_lowers_the_background_score_and_is_rejected_where_asked(variants, sound):
    clean, noisy = scored(sound, variants["original"]), scored(sound, variants["noisy"])
    assert stat(noisy, "bak_mix") < stat(clean, "bak_mix") - 0.5
    assert stat(noisy, "ovrl_mix") < stat(clean, "ovrl_mix")
    bound = (stat(noisy, "bak_mix") + stat(clean, "bak_mix")) / 2
    assert scored(sound, variants["noisy"], min_bak=bound).reason == "noisy_background"
    assert scored(sound, variants["original"], min_bak=bound).status == "pending"


def test_a_tone_bed_under_the_speech_counts_as_other_sound(variants, sound):
    clean, tone = scored(sound, variants["original"]), scored(sound, variants["tone"])
    assert stat(tone, "nonspeech_sound") > stat(clean, "nonspeech_sound") + 0.1
    assert scored(sound, variants["tone"], max_nonspeech_sound=stat(clean, "nonspeech_sound") + 0.05).reason \
        == "background_sound"


def test_separated_tracks_are_scored_when_present_and_nan_otherwise(variants, sound):
    c = fresh([variants["original"]])[0]
    alone = scored(sound, c)
    assert all(np.isnan(stat(alone, f"{m}_{k}")) for m in ("sig", "bak", "ovrl") for k in (0, 1))
    voice = sf.read(str(Path(c.source).with_suffix("")) + ".voice0.wav", dtype="float32")[0]
    voice = voice[int(round(c.start * 16000)):int(round(c.end * 16000))]
    noisy = voice + np.random.default_rng(1).normal(0, float(np.sqrt((voice ** 2).mean())), len(voice))

    def flac(x: np.ndarray) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, np.clip(x, -1, 1), 16000, format="FLAC")
        return buf.getvalue()

    # character 0's track clean, character 1's the same voice at 0 dB SNR: each track is scored as itself
    c.members.update({"spk0.flac": flac(voice), "spk1.flac": flac(noisy)})
    both = scored(sound, c)
    assert all(1.0 <= stat(both, f"{m}_{k}") <= 5.0 for m in ("sig", "bak", "ovrl") for k in (0, 1))
    assert stat(both, "bak_1") < stat(both, "bak_0") - 1.0
    assert stat(both, "ovrl_1") < stat(both, "ovrl_0")


def test_real_conversations_are_mostly_speech_and_the_crosstalk_debate_scores_below_the_pair(real_dir, sound):
    """The pair talk in turns over a quiet street; the debate's two speakers talk over each other (DNSMOS
    hears the second voice as background)."""
    ovrl = {}
    for name in ("same_scene_pair_16fps.mp4", "debate_split_screen.avi"):
        clips = clips_through_stages(Path(real_dir) / name, max_seconds=10.0)
        assert clips
        for c in sound.run_batch(clips):
            s = {k.split(".", 1)[1]: round(v, 3) for k, v in c.stats.items() if k.startswith("sound.")}
            print(name, c.key, s)
            assert c.status == "pending" and s["speech_fraction"] > 0.5
            assert all(1.0 <= s[f"{m}_mix"] <= 5.0 for m in ("sig", "bak", "ovrl"))
            ovrl.setdefault(name, []).append(s["ovrl_mix"])
    assert max(ovrl["debate_split_screen.avi"]) < min(ovrl["same_scene_pair_16fps.mp4"]) - 0.5
