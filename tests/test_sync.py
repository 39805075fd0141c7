"""Sync: the SyncNet scoring math on embeddings with planted offsets and pairings, and the SyncNet v2
stage end to end with a random-initialised model of the real class (plumbing: shapes, batching, track
pairing, weights refused or missing with an actionable message)."""

from __future__ import annotations

import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import talk_clips, tiny_fixture, weights_error

from mtcc.facts import SyncResult
from mtcc.nets import loading
from mtcc.nets.sync_math import VSHIFT, binding, cross_matrix, distance_curve, sync_score
from mtcc.stages import sync as sync_mod
from mtcc.stages.base import Candidate
from mtcc.stages.sync import SyncScores, shift_frames

RATE = 16000


# -- the math ---------------------------------------------------------------------------------------------

def planted(rng: np.random.Generator, n: int = 80, d: int = 64, lag: int = 0, noise: float = 0.3):
    """Video embeddings and audio embeddings that are the video's delayed by ``lag`` windows (audio
    window t carries video window t - lag), plus noise; windows with no video source are fresh noise."""
    v = rng.normal(size=(n, d))
    a = rng.normal(size=(n, d))
    src = np.arange(n) - lag
    ok = (src >= 0) & (src < n)
    a[ok] = v[src[ok]] + noise * rng.normal(size=(ok.sum(), d))
    return v, a


@pytest.mark.parametrize("lag", [0, 3, -5, 9, 15])
def test_planted_offset_is_recovered_exactly(lag):
    v, a = planted(np.random.default_rng(lag + 100), lag=lag)
    s = sync_score(v, a)
    # SyncNet's sign: audio delayed by `lag` windows -> offset -lag
    assert s.offset == -lag
    assert s.dists.shape == (2 * VSHIFT + 1,)
    assert s.dist == pytest.approx(s.dists.min())
    assert s.conf == pytest.approx(np.median(s.dists) - s.dists.min())


def test_sync_conf_high_in_sync_low_for_random_audio():
    rng = np.random.default_rng(1)
    v, a = planted(rng, lag=2)
    other = rng.normal(size=a.shape)
    good, bad = sync_score(v, a), sync_score(v, other)
    assert good.conf > 5.0 and bad.conf < 1.5 and good.conf > 6 * bad.conf
    assert good.dist < bad.dist


def test_padding_and_curve_follow_syncnet_python():
    """Zero padding outside the clip: the first window at offset index 0 sees audio -vshift, a zero."""
    rng = np.random.default_rng(2)
    v, a = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
    d = distance_curve(v, a)
    assert d.shape == (20, 2 * VSHIFT + 1)
    assert d[0, 0] == pytest.approx(np.linalg.norm(v[0] + 1e-6))
    assert d[5, VSHIFT + 3] == pytest.approx(np.linalg.norm(v[5] - a[8] + 1e-6))


def test_matches_syncnet_python_reference():
    """Same Sync-C / Sync-D / offset as syncnet_python's own calc_pdist + evaluate() arithmetic."""
    root = Path(next(iter(importlib.util.find_spec("syncnet_python").submodule_search_locations)))
    spec = importlib.util.spec_from_file_location("ref_syncnet_instance", root / "SyncNetInstance.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    rng = np.random.default_rng(3)
    for lag in (0, 4, -7):
        v, a = planted(rng, n=60, d=1024, lag=lag, noise=1.0)
        v, a = v.astype(np.float32), a.astype(np.float32)
        dists = ref.calc_pdist(torch.from_numpy(v), torch.from_numpy(a), vshift=VSHIFT)
        mdist = torch.mean(torch.stack(dists, 1), 1)
        minval, minidx = torch.min(mdist, 0)
        s = sync_score(v, a)
        assert s.offset == int(VSHIFT - minidx)
        assert s.dist == pytest.approx(float(minval), rel=1e-5)
        assert s.conf == pytest.approx(float(torch.median(mdist) - minval), rel=1e-4)


def test_cross_matrix_and_binding_flag_swapped_audio():
    rng = np.random.default_rng(4)
    v0, a0 = planted(rng, lag=1)
    v1, a1 = planted(rng, lag=-2)
    m = cross_matrix([v0, v1], [a0, a1])
    assert np.asarray(m["c"]).shape == (2, 2) and np.asarray(m["dists"]).shape == (2, 2, 2 * VSHIFT + 1)
    assert m["offset"][0][0] == -1 and m["offset"][1][1] == 2
    b = binding(m)
    assert b["a_ac"] == [[1, 0], [0, 1]] and not b["swapped"] and b["margin"] > 3
    assert b["diag_offset"] == [-1, 2]
    json.dumps({**m, **b})  # JSON-able as stored in the manifest

    m_sw = cross_matrix([v0, v1], [a1, a0])  # the separated tracks came out in the wrong order
    b_sw = binding(m_sw)
    assert b_sw["a_ac"] == [[0, 1], [1, 0]] and b_sw["swapped"]
    assert b_sw["margin"] == pytest.approx(-b["margin"])
    assert max(b_sw["diag_c"]) < min(b["diag_c"])


def test_mfcc_on_the_scale_syncnet_python_reads(tmp_path):
    """syncnet_python reads its audio.wav as int16 (scipy wavfile) before the MFCC; ours takes floats."""
    import python_speech_features
    from scipy.io import wavfile

    rng = np.random.default_rng(6)
    x = (0.2 * rng.normal(size=RATE) * np.sin(np.linspace(0, 30, RATE))).astype(np.float32)
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "audio.wav", RATE, pcm)
    sr, audio = wavfile.read(tmp_path / "audio.wav")
    ref = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(audio, sr))])
    ours = sync_mod.mfcc_features(pcm.astype(np.float32) / 32768.0)
    assert ours.shape == ref.shape == (13, 99)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


# -- the stage: fixtures ----------------------------------------------------------------------------------

tiny = tiny_fixture(SyncScores)


@pytest.fixture(scope="module")
def clips(sample_dir) -> list[Candidate]:
    """two_talk.mp4 through the real probe -> faces -> segment -> cut, in 2 s clips."""
    return talk_clips(sample_dir, 2.0, 4)


def flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def voices(sample_dir: Path, clip: Candidate) -> list[np.ndarray]:
    """The clean voice of each person over the clip's time range (person i = character i here)."""
    a, b = int(round(clip.start * RATE)), int(round(clip.end * RATE))
    return [sf.read(str(sample_dir / f"two_talk.voice{i}.wav"), dtype="float32")[0][a:b] for i in range(2)]


def with_tracks(clip: Candidate, tracks: list[np.ndarray] | None) -> Candidate:
    members = {**clip.members, **({} if tracks is None else {f"spk{i}.flac": flac(t) for i, t in enumerate(tracks)})}
    return Candidate(**{**clip.__dict__, "stats": dict(clip.stats), "facts": clip.facts.copy(), "members": members})


@pytest.fixture(scope="module")
def stage(tiny) -> SyncScores:
    """Thresholds opened up (a random model's scores mean nothing) so every clip is kept and its tracks
    shifted: one batch exercises scoring, pairing and the audio shift."""
    s = SyncScores(**tiny, forward_batch=16,  # 16 does not divide 45 windows: batches straddle tracks and clips
                   min_sync_c=-1e9, max_abs_offset=VSHIFT, require_binding=False, shift_audio_to_zero=True)
    s.setup()
    return s


@pytest.fixture(scope="module")
def batched(stage, clips, sample_dir) -> list[Candidate]:
    """One process() call: clip 0 and clip 1 with their true voices, and clip 1 again with track 1 silenced
    (both people speak in clip 1, 2-4 s; in clip 0 person 1 is silent already)."""
    v0, v1 = voices(sample_dir, clips[0]), voices(sample_dir, clips[1])
    assert min(np.abs(t).max() for t in v1) > 0.1
    return stage.run_batch([with_tracks(clips[0], v0), with_tracks(clips[1], v1),
                            with_tracks(clips[1], [v1[0], np.zeros_like(v1[1])])])


@pytest.fixture(scope="module")
def alone(stage, clips, sample_dir) -> tuple[Candidate, float]:
    """Clip 0 on its own (and how long that took)."""
    t0 = time.perf_counter()
    c = stage.run_batch([with_tracks(clips[0], voices(sample_dir, clips[0]))])[0]
    return c, time.perf_counter() - t0


# -- the stage: tests -------------------------------------------------------------------------------------

def test_make_tiny_writes_the_real_class_with_a_marker(tiny):
    path = Path(tiny["model"])
    assert path.name == "syncnet_v2_random.model" and path.parent.name == "sync" and tiny["allow_random_weights"]
    assert loading.random_marker(path)["weights"] == "random"
    state = loading.load_state_dict(path)
    ref = sync_mod.syncnet_class()().state_dict()
    assert set(state) == set(ref) and all(state[k].shape == ref[k].shape for k in ref)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) > 13_000_000


def test_stage_outputs_shapes_and_stats(batched, stage):
    assert next(stage._net.parameters()).device.type == "cpu"
    for c in batched:
        assert c.pending, c.message
        fact_json = c.fact(SyncResult).to_json()
        json.dumps(fact_json)
        assert fact_json["audio_source"] == "separated" and fact_json["random_weights"] is True
        # 2 s clip: 50 frames, 32000 samples -> min(50, 50) - 5 windows, as syncnet_python counts
        assert fact_json["windows"] == 45
        assert np.asarray(fact_json["cross"]["c"]).shape == (2, 2)
        assert np.asarray(fact_json["cross"]["dists"]).shape == (2, 2, 2 * VSHIFT + 1)
        assert fact_json["a_ac"] in ([[1, 0], [0, 1]], [[0, 1], [1, 0]])
        stats = {k.split(".", 1)[1]: v for k, v in c.stats.items() if k.startswith("sync.")}
        assert set(stats) == set(SyncScores.stats_schema)
        assert stats["sync_c_0"] == fact_json["cross"]["c"][0][0] and stats["cross_c_10"] == fact_json["cross"]["c"][1][0]
        assert all(abs(stats[f"offset_{k}"]) <= VSHIFT for k in range(2))
        assert stats["random_weights"] is True and stats["audio_source"] == "separated"


def test_batching_across_clips_gives_the_same_numbers(batched, alone):
    mb, ma = batched[0].fact(SyncResult).to_json()["cross"], alone[0].fact(SyncResult).to_json()["cross"]
    np.testing.assert_allclose(mb["dists"], ma["dists"], rtol=1e-4, atol=1e-4)
    assert mb["offset"] == ma["offset"]
    # and the clips of one batch do not leak into each other
    assert not np.allclose(batched[1].fact(SyncResult).to_json()["cross"]["dists"], mb["dists"])


def test_tracks_are_paired_with_their_rows(batched):
    """spk{i}.flac is row i of the cross matrix: silencing track 1 changes row 1 only."""
    ref, half = batched[1].fact(SyncResult).to_json()["cross"], batched[2].fact(SyncResult).to_json()["cross"]
    np.testing.assert_allclose(half["dists"][0], ref["dists"][0], rtol=1e-4, atol=1e-4)
    assert np.abs(np.subtract(half["dists"][1], ref["dists"][1])).max() > 1e-2


def test_shift_audio_to_zero_moves_kept_tracks(batched, clips, sample_dir):
    c = batched[1]
    v = voices(sample_dir, clips[1])
    offsets = [c.stats["sync.offset_0"], c.stats["sync.offset_1"]]
    assert c.fact(SyncResult).to_json()["shifted_frames"] == offsets
    for k in range(2):
        got, _ = sf.read(io.BytesIO(c.members[f"spk{k}.flac"]), dtype="float32")
        want, _ = sf.read(io.BytesIO(flac(v[k])), dtype="float32")
        np.testing.assert_allclose(got, shift_frames(want, offsets[k]), atol=1 / 32768)


def test_shift_frames_direction():
    x = np.arange(3200, dtype=np.float32)
    assert np.array_equal(shift_frames(x, 2)[1280:], x[:-1280]) and not shift_frames(x, 2)[:1280].any()
    assert np.array_equal(shift_frames(x, -1)[:-640], x[640:]) and not shift_frames(x, -1)[-640:].any()
    assert not shift_frames(x, 9).any()


def test_mixture_fallback_scores_both_faces_on_the_mixture(tiny, clips):
    s = SyncScores(**tiny, shift_audio_to_zero=True)  # default thresholds
    s.setup()
    c = s.run_batch([with_tracks(clips[1], None)])[0]
    fact_json = c.fact(SyncResult).to_json()
    assert fact_json["audio_source"] == "mixture" and c.stats["sync.audio_source"] == "mixture"
    cm = fact_json["cross"]["c"]
    assert cm[0] == cm[1]  # same audio in both rows
    assert fact_json["binding_margin"] == 0.0 and not fact_json["swapped"]
    assert c.stats["sync.silent_0"] is None and not any(n.startswith("spk") for n in c.members)  # nothing shifted
    # a random model's Sync-C is near 0: the LatentSync default keeps nothing
    assert c.status == "rejected" and c.reason == "low_sync" and "min_sync_c 3.0" in c.message


def test_random_weights_refused_unless_allowed(tiny):
    msg = weights_error(SyncScores(model=tiny["model"]))
    assert "RANDOM" in msg and "allow_random_weights" in msg


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path):
    missing = tmp_path / "nowhere" / "syncnet_v2.model"
    msg = weights_error(SyncScores(model=str(missing)))
    assert str(missing) in msg and "syncnet_v2.model" in msg and "syncnet_python" in msg
    assert "robots.ox.ac.uk" in msg
    with pytest.raises(loading.WeightsError, match="stages.sync.model"):
        SyncScores().setup()


def test_wrong_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "syncnet_v2.model"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(loading.WeightsError, match="not a SyncNet v2 state dict"):
        SyncScores(model=str(bad)).setup()


def stats_for(**kw) -> dict:
    base = {"sync_c_0": 6.0, "sync_c_1": 5.0, "sync_c_mean": 5.5, "offset_0": 1, "offset_1": -2,
            "cross_c_01": 1.0, "cross_c_10": 1.5, "sync_d_0": 7.0, "sync_d_1": 7.5, "binding_margin": 4.25,
            "swapped": False, "silent_0": False, "silent_1": False}
    base.update(kw)
    return base


def test_keep_rule():
    s = SyncScores(model="x")
    assert s.decide(stats_for()) is None
    assert s.decide(stats_for(sync_c_mean=2.9)).reason == "low_sync"
    assert s.decide(stats_for(offset_1=7)).reason == "offset"
    assert s.decide(stats_for(swapped=True, binding_margin=-1.0)).reason == "swapped"
    assert SyncScores(model="x", require_binding=False).decide(stats_for(swapped=True)) is None
    assert s.decide(stats_for(silent_1=True)).reason == "single_speaker"
    keep = SyncScores(model="x", single_speaker="keep")
    # the silent character's offset does not count
    assert keep.decide(stats_for(silent_1=True, offset_1=12)) is None
    assert keep.decide(stats_for(silent_0=True, silent_1=True)).reason == "single_speaker"
    # unknown silence (mixture audio): both characters count
    assert s.decide(stats_for(silent_0=None, silent_1=None, offset_0=-9)).reason == "offset"


def test_a_clip_scored_alone_is_the_full_model_over_every_track_and_face(alone, stage):
    """What the CPU real-time factor below is the time of: full-size SyncNet v2, both separated tracks
    against both faces, every window of the clip (the factor itself is `mtcc bench`'s sync row)."""
    c, dt = alone
    fact_json = c.fact(SyncResult).to_json()
    assert sum(p.numel() for p in stage._net.parameters()) > 13_000_000
    assert np.asarray(fact_json["cross"]["dists"]).shape == (2, 2, 2 * VSHIFT + 1)
    assert np.isfinite(np.asarray(fact_json["cross"]["dists"])).all()
    frames = int(round((c.end - c.start) * 25))
    assert fact_json["windows"] == frames - 5  # syncnet_python's count: every 5-frame window of the clip
    print(f"\nSyncNet v2 CPU ({torch.get_num_threads()} threads), 2 characters x 2 tracks: {dt:.2f} s for a "
          f"{c.end - c.start:.2f} s clip, RTF {dt / (c.end - c.start):.2f}")
