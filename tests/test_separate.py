"""Separation (clearvoice AV-MossFormer2 class, reduced random model) and Silero VAD.

The model runs with random weights, so these tests check the plumbing that real weights rely on: inputs
cut and aligned right, windows stitched back exactly, batching without cross-talk, outputs of the right
form, and weights loaded strictly or refused with an actionable message. The VAD runs the real model.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import fresh, ready, run_pending, talk_clips, tiny_fixture, weights_error

from mtcc.facts import Separation
from mtcc.media.ffmpeg import ff_input, run_tool
from mtcc.media.windows import window_starts
from mtcc.nets import loading
from mtcc.nets.vad import speech_segments
from mtcc.stages import separate as sep
from mtcc.stages.base import Candidate
from mtcc.stages.separate import SpeechSeparation

RATE = 16000


# -- fixtures -------------------------------------------------------------------------------------------

tiny = tiny_fixture(SpeechSeparation)


@pytest.fixture(scope="module")
def clips(sample_dir) -> list[Candidate]:
    """two_talk.mp4 through the real probe -> faces -> segment -> cut; windows of at most 2.7 s give
    three 2.667 s clips (not a multiple of any window used below)."""
    return talk_clips(sample_dir, 2.7, 3)


@pytest.fixture(scope="module")
def stage(tiny) -> SpeechSeparation:
    return ready(SpeechSeparation(**tiny, window_seconds=1.0, forward_batch=16))


@pytest.fixture(scope="module")
def batched(stage, clips) -> list[Candidate]:
    """Two clips in one process() call: 2 clips x 2 characters x 4 one-second windows, one forward."""
    return run_pending(stage, clips[:2])


def decode(flac: bytes) -> tuple[np.ndarray, int, int]:
    y, sr = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    return y[:, 0], sr, y.shape[1]


# -- VAD --------------------------------------------------------------------------------------------------

def _mask(segs, n: int) -> np.ndarray:
    m = np.zeros(n, bool)
    for a, b in segs:
        m[int(round(a * 100)):int(round(b * 100))] = True
    return m


def _mixture(sample_dir: Path, name: str) -> tuple[np.ndarray, dict]:
    truth = json.loads((sample_dir / f"{name}.truth.json").read_text())
    raw = run_tool(["ffmpeg", "-nostdin", "-v", "error", "-i", ff_input(str(sample_dir / f"{name}.mp4")),
                    "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"], what=name)
    return np.frombuffer(raw, np.float32).copy(), truth


def test_vad_covers_the_true_speech_of_the_mixture(sample_dir):
    """10 ms frames. The truth marks where each espeak voice's RMS exceeds 2% of its peak, pauses under
    200 ms bridged; silero pads 30 ms a side, bridges pauses under 100 ms and decides per 32 ms chunk, so
    each of the ~8 boundaries may differ by tens of ms (measured: recall 0.98, precision 0.96, IoU 0.95).
    The thresholds leave that margin and still fail if a sentence is missed (>= 0.4 s of ~6.8 s) or a
    pause is swallowed."""
    x, truth = _mixture(sample_dir, "two_talk")
    res = speech_segments(x)
    n = int(round(truth["duration"] * 100))
    want = _mask([(s["start"], s["end"]) for s in truth["speech"]], n)
    got = _mask(res.segments, n)
    inter = (want & got).sum()
    assert inter / want.sum() >= 0.93 and inter / got.sum() >= 0.88 and inter / (want | got).sum() >= 0.85
    for s in truth["speech"]:  # every sentence found on its own
        seg = _mask([(s["start"], s["end"])], n)
        assert (seg & got).sum() / seg.sum() >= 0.8, s
    assert abs(res.speech_s - got.sum() / 100) < 0.02
    assert all(0 <= a < b <= truth["duration"] for a, b in res.segments)


def test_vad_silence_is_silence(sample_dir):
    x, truth = _mixture(sample_dir, "two_talk")
    first = min(s["start"] for s in truth["speech"])
    # the lead-in before the first word (the fixture's noise floor), with 100 ms for padding + one chunk
    lead = speech_segments(x[: int((first - 0.1) * RATE)])
    assert lead.segments == [] and lead.speech_s == 0.0
    # speech, 3 s of that noise floor, speech again: nothing marked inside the gap
    gap = np.resize(x[: int((first - 0.05) * RATE)], 3 * RATE)
    res = speech_segments(np.concatenate([x, gap, x]))
    end = truth["duration"]
    inside = [(a, b) for a, b in res.segments if b > end + 0.1 and a < end + 2.9]
    assert inside == []
    assert res.speech_s == pytest.approx(2 * speech_segments(x).speech_s, abs=0.15)
    assert speech_segments(np.zeros(2 * RATE, np.float32)).segments == []
    both = speech_segments(np.stack([x, np.zeros_like(x)]))  # batched tracks keep apart
    assert both[0].segments == speech_segments(x).segments and both[1].speech_s == 0.0


# -- windows and overlap-add (no model) ------------------------------------------------------------------

@pytest.mark.parametrize("n", [7000, 16000, 16001, 42667, 3 * RATE + 1234])
def test_windows_stitch_back_exactly(n):
    """An identity 'model': the stitched output is the mixture, whatever the clip length (shorter than a
    window, exactly one, or not a multiple of the hop), so no sample is lost, doubled or misweighted."""
    rng = np.random.default_rng(n)
    mix = (rng.standard_normal(n) * 0.2).astype(np.float32)
    lips = np.zeros((2, int(np.ceil(n / RATE * 25)), 112, 112), np.float32)
    out, calls = sep.separate_tracks(lambda a, v: a, [mix], [lips], [25.0], window=RATE, hop=9600, forward_batch=3)
    assert out[0].shape == (2, n)
    np.testing.assert_allclose(out[0][0], mix, atol=1e-6)
    np.testing.assert_allclose(out[0][1], mix, atol=1e-6)
    starts = window_starts(n, RATE, 9600)
    assert starts[0] == 0 and starts[-1] + min(n, RATE) == n
    assert calls == -(-2 * len(starts) // 3)


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_visual_windows_follow_audio_time(fps):
    """Each lip frame carries its own time; a fake model plays back, per sample, the time of the lip
    frame it was given. After windowing at any start and fps conversion, sample t must see a frame
    within one frame of t."""
    n = int(4.3 * RATE)
    frames = int(np.ceil(n / RATE * fps))
    lips = np.broadcast_to((np.arange(frames) / fps)[None, :, None, None], (2, frames, 112, 112)).astype(np.float32)

    def playback(audio, visual):
        idx = np.minimum(np.arange(audio.shape[1]) * 25 // RATE, visual.shape[1] - 1)
        return visual[:, idx, 0, 0]

    mix = np.full(n, 0.5, np.float32)  # peak 0.5: outputs are scaled by it
    out, _ = sep.separate_tracks(playback, [mix], [lips], [fps], window=3 * RATE, hop=int(1.8 * RATE), forward_batch=8)
    t = np.arange(n) / RATE
    err = np.abs(out[0][0] / 0.5 - t)
    assert err.max() <= 1.5 / 25 + 0.5 / fps + 1e-6, float(err.max())  # window start and fps rounding


def test_decoder_overlap_add_runs_on_cpu_and_matches_a_loop():
    import torch

    frames = torch.randn(3, 7, 16)
    got = sep.overlap_add_halves(frames, 8).numpy()
    want = np.zeros((3, 6 * 8 + 16), np.float32)
    for k in range(7):
        want[:, k * 8: k * 8 + 16] += frames[:, k].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


# -- the stage end to end with the reduced random model ---------------------------------------------------

def test_separation_writes_a_track_per_character_of_the_clip_length(batched):
    for cand in batched:
        n = int(round((cand.end - cand.start) * RATE))
        assert {"spk0.flac", "spk1.flac"} <= set(cand.members)
        for k in (0, 1):
            y, sr, channels = decode(cand.members[f"spk{k}.flac"])
            assert (sr, channels, len(y)) == (RATE, 1, n)
            assert np.isfinite(y).all() and np.abs(y).max() > 0
            assert cand.stats[f"separate.rms_{k}"] == pytest.approx(np.sqrt(np.mean(y.astype(np.float64) ** 2)),
                                                                     rel=0.02, abs=1e-4)
            assert isinstance(cand.stats[f"separate.silent_{k}"], bool)
            assert cand.stats[f"separate.speech_s_{k}"] >= 0
        assert cand.stats["separate.random_weights"] is True
        assert cand.stats["separate.n_windows"] == 4  # 2.667 s in 1 s windows, 0.6 s hop
        assert cand.stats["separate.residual_ratio"] >= 0
        assert set(SpeechSeparation.stats_schema) <= {k.split(".", 1)[1] for k in cand.stats if k.startswith("separate.")}
        assert cand.fact(Separation).random_weights is True and len(cand.fact(Separation).speech) == 2
        assert cand.pending  # silent tracks are recorded, not rejected, unless reject_silent


def test_batching_gives_the_same_tracks_as_one_clip_at_a_time(stage, clips, batched):
    stage.forward_batch = 1
    try:
        single = [stage.run_batch(fresh([c]))[0] for c in clips[:2]]
    finally:
        stage.forward_batch = 16
    for a, b in zip(batched, single):
        for k in (0, 1):
            ya, yb = decode(a.members[f"spk{k}.flac"])[0], decode(b.members[f"spk{k}.flac"])[0]
            scale = max(1e-4, float(np.abs(ya).max()))
            # float noise across batch shapes: measured 1 PCM16 step; the two characters differ by ~10x more
            assert np.abs(ya - yb).max() <= 1e-4 * scale + 2 / 32768, (a.key, k)
    # the two characters of a clip are different items of the batch, not one repeated
    y0, y1 = (decode(batched[0].members[f"spk{k}.flac"])[0] for k in (0, 1))
    assert np.abs(y0 - y1).max() > 0


def test_default_window_on_a_short_clip_is_one_window_and_deterministic(tiny, clips):
    """The model's own 3 s window is longer than the clip: one window, same bytes on a rerun."""
    s = SpeechSeparation(**tiny)
    s.setup()
    a = s.run_batch(fresh(clips[2:]))[0]
    b = s.run_batch(fresh(clips[2:]))[0]
    assert a.stats["separate.n_windows"] == 1
    assert a.members["spk0.flac"] == b.members["spk0.flac"] and a.members["spk1.flac"] == b.members["spk1.flac"]
    assert len(decode(a.members["spk1.flac"])[0]) == int(round((a.end - a.start) * RATE))


def test_silent_characters_are_rejected_only_when_asked(tiny):
    stats = {"rms_0": 0.05, "rms_1": 1e-5, "speech_s_0": 2.0, "speech_s_1": 0.0, "silent_0": False, "silent_1": True}
    assert SpeechSeparation(**tiny).decide(stats) is None
    r = SpeechSeparation(**tiny, reject_silent=True).decide(stats)
    assert r is not None and r.reason == "silent_speaker" and "character 1" in r.message and "character 0" not in r.message


# -- loading through the seam ----------------------------------------------------------------------------

def test_tiny_model_reads_its_reduced_settings_back(stage, tiny):
    net = stage._net
    assert net.sep_network.encoder.N == sep.TINY_AUDIO["encoder_out_nchannels"] != 512
    assert len(net.sep_network.separator.masknet.dual_mdl[0].intra_mdl.mdl.flashT.layers) == 1
    assert loading.random_marker(Path(tiny["model"])) is not None


def test_random_weights_are_refused_unless_allowed(tiny):
    msg = weights_error(SpeechSeparation(model=tiny["model"]))
    assert "RANDOM weights" in msg and "allow_random_weights" in msg


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path):
    missing = tmp_path / "nowhere"
    msg = weights_error(SpeechSeparation(model=str(missing)))
    assert str(missing) in msg and "hf download alibabasglab/AV_MossFormer2_TSE_16K" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = weights_error(SpeechSeparation(model=str(empty)))
    assert str(empty / "last_best_checkpoint") in msg and "hf download" in msg
    (empty / "last_best_checkpoint").write_text("gone.pt\n")
    with pytest.raises(loading.WeightsError, match="gone.pt"):
        SpeechSeparation(model=str(empty)).setup()


def _rewrite(src: Path, dst: Path, edit) -> Path:
    import torch

    dst.mkdir()
    for f in (sep.NETWORK_FILE, loading.RANDOM_MARKER, sep.BEST_FILE):
        shutil.copy2(src / f, dst / f)
    state = loading.load_state_dict(src / "last_best_checkpoint.pt")
    torch.save({"model": edit(dict(state))}, dst / "last_best_checkpoint.pt")
    return dst


def test_checkpoints_are_loaded_strictly(tiny, tmp_path):
    src = Path(tiny["model"])
    key = "sep_network.encoder.conv1d_U.weight"

    renamed = _rewrite(src, tmp_path / "renamed", lambda s: {("x." + k if k == key else k): v for k, v in s.items()})
    with pytest.raises(loading.WeightsError, match="strictly") as e:
        SpeechSeparation(model=str(renamed), allow_random_weights=True).setup()
    assert key in str(e.value) and "x." + key in str(e.value)

    dropped = _rewrite(src, tmp_path / "dropped", lambda s: {k: v for k, v in s.items() if "av_conv" not in k})
    with pytest.raises(loading.WeightsError, match="missing"):
        SpeechSeparation(model=str(dropped), allow_random_weights=True).setup()

    # the same weights behind DDP's "module." prefix load, and give the same network
    ddp = _rewrite(src, tmp_path / "ddp", lambda s: {"module." + k: v for k, v in s.items()})
    s = SpeechSeparation(model=str(ddp), allow_random_weights=True)
    s.setup()
    w = s._net.state_dict()[key]
    assert np.array_equal(w.numpy(), loading.load_state_dict(src / "last_best_checkpoint.pt")[key].numpy())

    # without the saved settings the packaged full-size YAML is used: the reduced weights do not fit it
    full = _rewrite(src, tmp_path / "full", lambda s: s)
    (full / sep.NETWORK_FILE).unlink()
    with pytest.raises(loading.WeightsError, match="packaged YAML"):
        SpeechSeparation(model=str(full), allow_random_weights=True).setup()
