"""Audio embeddings (transformers Wav2Vec2, reduced random model with the real output geometry).

Random weights make the numbers meaningless, so these tests check what real weights rely on: one row per
clip frame whatever the length and rate, the model's own submodules called in its own order (checked
against its forward where the resampling is the identity), the resampling placed between the CNN and the
transformer, no cross-talk between tracks or batch items, weights loaded strictly through the seam.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import fresh, ready, run_pending, talk_clips, tiny_fixture

from mtcc.facts import AudioEmbeddingMeta, ClipFaces
from mtcc.media.audio_io import flac_bytes, read_track
from mtcc.nets import loading
from mtcc.stages import audio_emb as ae
from mtcc.stages.audio_emb import AudioEmbeddings
from mtcc.stages.base import Candidate

RATE = 16000
KEY = "wav2vec2.encoder.layers.3.attention.k_proj.weight"  # a learned encoder weight, as the CTC file names it


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The forwards here are tens of ms; on a shared 2-core box a second torch thread only spins
    (measured 40x slower under load), so this module runs on one and gives the setting back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


tiny = tiny_fixture(AudioEmbeddings)


@pytest.fixture(scope="module")
def stage(tiny) -> AudioEmbeddings:
    return ready(AudioEmbeddings(**tiny))


def _voices_by_character(sample_dir: Path, name: str) -> list[np.ndarray]:
    """The true clean voice of each person, ordered as the pipeline orders characters (left-most first)."""
    truth = json.loads((sample_dir / f"{name}.truth.json").read_text())
    persons = sorted(truth["persons"], key=lambda p: p["boxes"][0][1] + p["boxes"][0][3])
    return [sf.read(str(sample_dir / f"{name}.voice{p['id']}.wav"), dtype="float32")[0] for p in persons]


def with_tracks(cand: Candidate, voices: list[np.ndarray]) -> Candidate:
    # as the separate stage writes them: round(duration x rate) samples from the clip's start
    a, n = int(round(cand.start * RATE)), int(round((cand.end - cand.start) * RATE))
    members = {f"spk{k}.flac": flac_bytes(v[a:a + n]) for k, v in enumerate(voices)}
    return Candidate(**{**cand.__dict__, "stats": dict(cand.stats), "facts": cand.facts.copy(), "members": members})


@pytest.fixture(scope="module")
def clips(sample_dir) -> list[Candidate]:
    """two_talk.mp4 through the real probe -> faces -> segment -> cut (three 2.667 s clips of 67 frames at
    25 fps), each carrying the true voices of its characters as its separated tracks."""
    out = talk_clips(sample_dir, 2.7, 3)
    voices = _voices_by_character(sample_dir, "two_talk")
    return [with_tracks(c, voices) for c in out]


def synthetic(seconds: float, key: str = "syn", seed: int = 0, start: float = 0.0) -> Candidate:
    """A clip candidate without face tracks: its frame count comes from its times."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    t = np.arange(n) / RATE
    tracks = [0.3 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 + 0.01 * rng.standard_normal(n)
              for f in (180.0, 310.0)]
    return Candidate(key=key, video_id=key, source=f"{key}.mp4", shard=0, level="clip", start=start,
                     end=start + seconds, members={f"spk{k}.flac": flac_bytes(x) for k, x in enumerate(tracks)})


def load(cand: Candidate) -> np.ndarray:
    return np.load(io.BytesIO(cand.members["audio_emb.npy"]), allow_pickle=False)


@pytest.fixture(scope="module")
def batched(stage, clips) -> list[Candidate]:
    return run_pending(stage, clips[:2])


# -- one row per frame ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds,fps,rows", [(2.0, 25, 50), (2.666667, 25, 67), (1.5, 30, 45),
                                              (3.0, 29.97, 90), (0.9, 16, 14), (1.0, 50, 50), (0.5, 12.5, 6)])
def test_one_row_per_clip_frame_at_any_length_and_rate(stage, seconds, fps, rows):
    """The transformer itself runs at the frame rate: the projection receives exactly the frame count
    (the CNN's 50 rows/s are resampled before it), and each of the 12 layers gives one row per frame."""
    cand = synthetic(seconds)
    tracks = [read_track(cand.members[f"spk{k}.flac"]) for k in (0, 1)]
    n = ae.video_frame_count(cand, len(tracks[0]), RATE, fps)
    assert n == rows
    seen = []
    hook = stage._net.feature_projection.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    try:
        embs, cnn = stage.embed_tracks(tracks, [n, n])
    finally:
        hook.remove()
    assert [e.shape for e in embs] == [(rows, 12, 768)] * 2
    assert cnn == [(len(tracks[0]) - 400) // 320 + 1] * 2  # the CNN's own rate: 25 ms window, 20 ms hop
    assert seen == [(2, rows, 32)]  # [tracks, frames, CNN channels of the tiny model]


def test_49_frames_with_two_frames_of_margin_each_side_give_53_rows(stage):
    """Bind-Your-Avatar reads frames [start-2, end+2] for a 49-frame clip: audio covering 53 frames at
    25 fps must give its batches' (2, 53, 12, 768)."""
    cand = stage.run_batch([synthetic(53 / 25, start=10.0 - 2 / 25)])[0]
    assert cand.pending, cand.message
    arr = load(cand)
    assert arr.shape == (2, 53, 12, 768) and arr.dtype == np.float16
    assert cand.stats["audio_emb.frames"] == 53 and cand.stats["audio_emb.cnn_frames"] == 105


def test_resampling_is_linear_with_aligned_end_points():
    """A ramp through the resampler: row t must sit at CNN position t (L-1)/(T-1), the ends on the ends."""
    import torch

    L, T = 133, 67
    ramp = torch.arange(L, dtype=torch.float32).repeat(2, 3, 1)  # [B, C, L], value = CNN row index
    out = ae.frames_to_rows(ramp, T)
    want = np.arange(T) * (L - 1) / (T - 1)
    assert out.shape == (2, 3, T)
    np.testing.assert_allclose(out[1, 2].numpy(), want, atol=1e-4)
    assert ae.frames_to_rows(ramp, L) is ramp  # same count: untouched


def test_identity_alignment_equals_the_models_own_forward(tiny):
    """At 50 fps on 2.005 s (32080 samples) the CNN gives exactly 100 rows and the clip has 100 frames:
    the resampling is the identity, so the stage must return the model's own
    forward(output_hidden_states=True).hidden_states[1:] - the same submodules in the same order."""
    import torch

    s = AudioEmbeddings(**tiny, fps=50)
    s.setup()
    cand = s.run_batch([synthetic(32080 / RATE)])[0]
    assert cand.pending and cand.stats["audio_emb.frames"] == cand.stats["audio_emb.cnn_frames"] == 100
    x = torch.from_numpy(s._normalise([read_track(cand.members[f"spk{k}.flac"]) for k in (0, 1)]))
    with torch.inference_mode():
        out = s._net(x, output_hidden_states=True)
    assert len(out.hidden_states) == 13
    want = torch.stack(out.hidden_states[1:], dim=2).numpy()  # [2, 100, 12, 768]
    got = load(cand).astype(np.float32)
    np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
    # and not merely close to the pre-transformer embedding, which hidden_states[0] is
    assert np.abs(got[:, :, 0] - out.hidden_states[0].numpy()).max() > 0.1


# -- the stage end to end on real sample clips ---------------------------------------------------------------

def test_stage_embeds_each_characters_track(batched):
    for cand in batched:
        arr = load(cand)
        assert arr.shape == (2, 67, 12, 768) and arr.dtype == np.float16 and np.isfinite(arr).all()
        assert cand.stats["audio_emb.frames"] == cand.fact(ClipFaces).frames == 67
        assert cand.stats["audio_emb.cnn_frames"] == 133  # 42667 samples at 50 rows/s
        assert (cand.stats["audio_emb.layers"], cand.stats["audio_emb.hidden"]) == (12, 768)
        assert cand.stats["audio_emb.random_weights"] is True
        for k in (0, 1):
            rms = float(np.sqrt(np.mean(arr[k].astype(np.float64) ** 2)))
            assert cand.stats[f"audio_emb.rms_{k}"] == pytest.approx(rms, rel=1e-5)
        recorded = {k.split(".", 1)[1] for k in cand.stats if k.startswith("audio_emb.")}
        assert recorded == set(AudioEmbeddings.stats_schema)
        info = cand.fact(AudioEmbeddingMeta)
        assert info.shape == [2, 67, 12, 768] and info.fps == 25 and info.model.endswith("audio_emb")
        assert info.revision is None and info.random_weights is True  # a local directory: no hub commit
        assert np.abs(arr[0].astype(np.float32) - arr[1].astype(np.float32)).max() > 0.1  # two characters, two voices
    assert np.abs(load(batched[0]).astype(np.float32) - load(batched[1]).astype(np.float32)).max() > 0.1


def test_embeddings_follow_each_track(stage, batched, clips):
    """Character 1 is silent in the first clip (person 1 speaks from 2.7 s): away from the positional conv's
    edge effects its rows barely change, while character 0's speech moves them. Swapping the tracks swaps
    the embeddings exactly: nothing of one track leaks into the other."""
    arr = load(batched[0]).astype(np.float32)
    inner = arr[:, 10:-10]
    spread = [float(np.std(inner[k], axis=0).mean()) for k in (0, 1)]
    # measured: 0.76 for the speaking character, exactly 0 for the silent one (a zero track normalises to
    # zeros; the CNN has no padding, so only the positional conv's edges see anything else)
    assert spread[1] <= 1e-3 and spread[0] > 0.1, spread
    swapped = fresh(clips[:1])[0]
    tracks = clips[0].members
    swapped.members["spk0.flac"], swapped.members["spk1.flac"] = tracks["spk1.flac"], tracks["spk0.flac"]
    out = stage.run_batch([swapped])[0]
    np.testing.assert_array_equal(load(out), load(batched[0])[::-1])


def test_batching_gives_the_same_arrays_as_one_clip_at_a_time(stage, clips, batched, monkeypatch):
    """Equal-length tracks share a forward; a clip of another length gets its own (never padded)."""
    calls = []
    real = ae.embed

    def counting(model, x, n, **kw):
        calls.append((tuple(x.shape), n))
        return real(model, x, n, **kw)

    monkeypatch.setattr(ae, "embed", counting)
    short = synthetic(2.12, key="short")
    out = stage.run_batch(fresh(clips[:2]) + [short])
    assert [c.status for c in out] == ["pending"] * 3
    assert sorted(calls) == [((2, 33920), 53), ((4, 42667), 67)]
    monkeypatch.setattr(stage, "forward_batch", 1)
    calls.clear()
    single = [stage.run_batch(fresh([c]))[0] for c in clips[:2]] + [stage.run_batch([synthetic(2.12, key="short")])[0]]
    assert len(calls) == 6
    for a, b in zip(out, single):
        x, y = load(a).astype(np.float32), load(b).astype(np.float32)
        # float noise across batch shapes flips a few float16 roundings: measured at most one step (0.002
        # at |x| ~ 4, 0.1-0.3% of values); the two characters differ by far more
        np.testing.assert_allclose(x, y, rtol=2e-3, atol=2e-3)
    for a, b in zip(out[:2], batched):
        assert np.array_equal(load(a), load(b))  # same batch shapes: same bytes


def test_missing_tracks_are_rejected_naming_the_separate_stage(stage, clips):
    cand = fresh(clips[:1])[0]
    del cand.members["spk1.flac"]
    out = stage.run_batch([cand, fresh(clips[1:2])[0]])
    assert out[0].status == "rejected" and out[0].stage == "audio_emb" and out[0].reason == "missing_tracks"
    assert "spk1.flac" in out[0].message and "`separate`" in out[0].message
    assert "audio_emb.npy" not in out[0].members and out[1].pending and "audio_emb.npy" in out[1].members


def test_track_length_follows_the_clip_within_tolerance(stage, clips):
    """The clip's frame count wins over a track a few ms off; a track a second short is refused."""
    cand = fresh(clips[:1])[0]
    y = read_track(cand.members["spk0.flac"])
    cand.members["spk0.flac"] = flac_bytes(y[:-300])  # 19 ms short
    out = stage.run_batch([cand])[0]
    assert out.pending and load(out).shape == (2, 67, 12, 768)
    bad = fresh(clips[:1])[0]
    bad.members["spk1.flac"] = flac_bytes(y[:-RATE])
    out = stage.run_batch([bad])[0]
    assert out.status == "rejected" and out.reason == "track_length" and "spk1.flac" in out.message


# -- loading through the seam -----------------------------------------------------------------------------

def _rewrite(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for f in ("config.json", "preprocessor_config.json", loading.RANDOM_MARKER):
        shutil.copy2(src / f, dst / f)
    state = edit(load_file(str(src / "model.safetensors")))
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _embed_one(model: str, cand: Candidate) -> np.ndarray:
    s = AudioEmbeddings(model=model, allow_random_weights=True)
    s.setup()
    return load(s.run_batch([cand])[0])


def test_tiny_model_is_the_real_layout_and_reloads_identically(stage, tiny, tmp_path):
    """make-tiny writes what `save_pretrained` of the real CTC checkpoint holds; the base model saved again
    with save_pretrained, or in the released files' naming (weight_g/weight_v), gives the same arrays."""
    d = Path(tiny["model"])
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((d / "config.json").read_text())["architectures"] == ["Wav2Vec2ForCTC"]
    assert loading.random_marker(d) is not None
    ref = load(stage.run_batch([synthetic(1.0)])[0])

    bare = tmp_path / "bare"
    stage._net.save_pretrained(str(bare))
    stage._fe.save_pretrained(str(bare))
    shutil.copy2(d / loading.RANDOM_MARKER, bare / loading.RANDOM_MARKER)
    assert np.array_equal(_embed_one(str(bare), synthetic(1.0)), ref)

    def legacy_names(state):
        return {k.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}

    legacy = _rewrite(d, tmp_path / "legacy", legacy_names)
    assert AudioEmbeddings(model=str(legacy), allow_random_weights=True).check_model()
    assert np.array_equal(_embed_one(str(legacy), synthetic(1.0)), ref)


def test_random_weights_are_refused_unless_allowed(tiny):
    for call in (lambda s: s.setup(), lambda s: s.check_model()):
        with pytest.raises(loading.WeightsError, match="RANDOM weights") as e:
            call(AudioEmbeddings(model=tiny["model"]))
        assert "allow_random_weights" in str(e.value)


def test_checkpoints_missing_learned_keys_are_refused_naming_them(tiny, tmp_path):
    src = Path(tiny["model"])
    dropped = _rewrite(src, tmp_path / "dropped", lambda s: {k: v for k, v in s.items() if k != KEY})
    for call in (lambda s: s.setup(), lambda s: s.check_model()):
        with pytest.raises(loading.WeightsError, match="missing") as e:
            call(AudioEmbeddings(model=str(dropped), allow_random_weights=True))
        assert "encoder.layers.3.attention.k_proj.weight" in str(e.value)

    reshaped = _rewrite(src, tmp_path / "reshaped", lambda s: {**s, KEY: s[KEY][:, :700].contiguous()})
    with pytest.raises(loading.WeightsError, match="another shape"):
        AudioEmbeddings(model=str(reshaped), allow_random_weights=True).setup()

    # only the training-time masking vector may be absent
    no_mask = _rewrite(src, tmp_path / "no_mask",
                       lambda s: {k: v for k, v in s.items() if "masked_spec_embed" not in k})
    AudioEmbeddings(model=str(no_mask), allow_random_weights=True).setup()


def test_check_model_reads_headers_and_refuses_damaged_files(tiny, tmp_path):
    desc = AudioEmbeddings(**tiny).check_model()
    assert "12 layers x 768" in desc and "model.safetensors" in desc and "RANDOM" in desc

    src = Path(tiny["model"])
    trunc = tmp_path / "trunc"
    shutil.copytree(src, trunc)
    data = (src / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(loading.WeightsError, match="damaged or incomplete") as e:
        AudioEmbeddings(model=str(trunc), allow_random_weights=True).check_model()
    assert str(trunc / "model.safetensors") in str(e.value)

    (trunc / "model.safetensors").unlink()
    with pytest.raises(loading.WeightsError, match="no weights"):
        AudioEmbeddings(model=str(trunc), allow_random_weights=True).check_model()

    nowhere = tmp_path / "nowhere"
    with pytest.raises(loading.WeightsError) as e:
        AudioEmbeddings(model=str(nowhere)).check_model()
    assert str(nowhere) in str(e.value) and "hf download facebook/wav2vec2-base-960h" in str(e.value)


def test_config_validation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # relative paths are pinned where the config is read (two-part names that do not exist are hub ids)
    assert AudioEmbeddings(model="models/wav2vec2/base").model == str(tmp_path / "models" / "wav2vec2" / "base")
    assert AudioEmbeddings().model == "facebook/wav2vec2-base-960h"
    with pytest.raises(ValueError, match="CUDA"):
        AudioEmbeddings(dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        AudioEmbeddings(dtype="float64")
    AudioEmbeddings(device="cuda", dtype="float16")
