"""The asd stage with the authors' real Light-ASD weights: who speaks when, against the truth the sample
generator planted, on the shared real footage, and the decisions and records the rest of the pipeline reads."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess

import numpy as np
import pytest
import soundfile as sf

from mtcc.facts import ClipFaces, Separation, Speakers, SpeakingCurves
from mtcc.media.audio_io import flac_bytes
from mtcc.sampledata import load_truth
from mtcc.stages.asd import FPS, ActiveSpeakers, frame_gate, turns
from mtcc.stages.base import Candidate
from mtcc.stages.layout import PanelLayout
from mtcc.stages.sync import speaking_flags

# What the stage gave on the generated two-person fixtures, recorded 2026-12-05 at bfloat16 (pinned below):
# per character, F1 of per-frame speaking against the planted speech (None: the character never speaks,
# so any speaking it is given is wrong), and per clip the error of the both-speaking fraction against the
# truth. Floors are the recorded F1 less MARGIN, per character: one good character cannot hide a poor one.
# The turn count must equal the truth's. two_talk_30fps's character 1 is the known gap of the laughing
# listener (see the xfail test below).
MARGIN = 0.05
RECORDED = {  # name: ((F1 character 0, character 1), largest |both_speaking - truth| over its clips)
    "two_talk": ((0.882, 0.931), 0.17),
    "two_talk_30fps": ((0.902, 0.658), 0.40),
    "two_cross": ((0.897, 1.0), 0.07),
    "two_far": ((0.818, 0.935), 0.128),
    "scene_events": ((None, 0.934), 0.0),
    "panels_side_by_side": ((0.865, 0.931), 0.26),
    "panels_stacked": ((0.925, 0.932), 0.067),
}


@pytest.fixture(scope="module")
def asd(light_asd_weights):
    stage = ActiveSpeakers(model=str(light_asd_weights), dtype="bfloat16")
    stage.setup()
    return stage


def scored_against_truth(asd, clips, truth) -> dict:
    """Per character the (truth, said) frame pairs over the clips, the gate-only pairs, and per clip the
    stage's both-speaking fraction and turns next to the truth's."""
    done = asd.run_batch(clips)
    per = {0: [], 1: []}
    gate = []
    rows = []
    for c in done:
        assert c.pending, (c.key, c.reason, c.message)  # everyone of these clips has a speaker
        n = c.fact(ClipFaces).frames
        assert [len(curve) for curve in c.fact(SpeakingCurves).per_character] == [n, n]
        meta = c.fact(Speakers)
        voiced = frame_gate(meta.speech, n)
        actual = [truth_frames(c, person_of(c, k, truth), truth) for k in range(2)]
        for k in range(2):
            said = predicted_frames(meta.intervals[k], n)
            assert meta.speaking_fraction[k] == pytest.approx(said.mean(), abs=0.01)
            per[k].append((actual[k], said))
            gate.append((actual[k], voiced))  # "everyone speaks whenever someone does": no ASD at all
        rows.append({"key": c.key, "both": meta.both_speaking, "true_both": float((actual[0] & actual[1]).mean()),
                     "turns": meta.turns, "true_turns": turns(actual)})
    return {"per": per, "gate": gate, "rows": rows}


def person_of(cand: Candidate, k: int, truth: dict) -> int:
    """The truth person whose planted box is nearest character k's box at the clip's first frame."""
    box = np.asarray(cand.fact(ClipFaces).characters[k].boxes[0])
    first = int(round(cand.start * truth["fps"]))

    def dist(p):
        b = next((np.asarray(b[1:]) for b in p["boxes"] if b[0] == first), None)
        return np.inf if b is None else float(np.abs((b[:2] + b[2:]) / 2 - (box[:2] + box[2:]) / 2).sum())

    return min(truth["persons"], key=dist)["id"]


def truth_frames(cand: Candidate, person: int, truth: dict) -> np.ndarray:
    n = cand.fact(ClipFaces).frames
    t = cand.start + np.arange(n) / FPS
    on = np.zeros(n, bool)
    for s in truth["speech"]:
        if s["person"] == person:
            on |= (t >= s["start"]) & (t < s["end"])
    return on


def predicted_frames(intervals: list[list[float]], n: int) -> np.ndarray:
    on = np.zeros(n, bool)
    for a, b in intervals:
        on[int(round(a * FPS)):int(round(b * FPS))] = True
    return on


def f1(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    tp = sum(int((t & p).sum()) for t, p in pairs)
    fp = sum(int((~t & p).sum()) for t, p in pairs)
    fn = sum(int((t & ~p).sum()) for t, p in pairs)
    return 2 * tp / max(1, 2 * tp + fp + fn)


@pytest.mark.parametrize("name", list(RECORDED))
def test_who_speaks_when_matches_the_planted_speech(asd, pair_clips, sample_dir, panel_dir, name):
    clips = pair_clips[f"{name}.mp4"]
    assert clips, name
    truth = load_truth((panel_dir if name.startswith("panels") else sample_dir) / f"{name}.mp4")
    r = scored_against_truth(asd, clips, truth)
    floors, both_error = RECORDED[name]
    for k, floor in enumerate(floors):
        if floor is None:  # never speaks: nobody may say it does
            assert not any(said.any() for _, said in r["per"][k]), (name, k)
        else:
            assert f1(r["per"][k]) >= floor - MARGIN, (name, k, round(f1(r["per"][k]), 3), floor)
    pooled = [p for k in (0, 1) for p in r["per"][k]]
    assert f1(pooled) >= f1(r["gate"]) + 0.1, (name, round(f1(pooled), 3), round(f1(r["gate"]), 3))
    for row in r["rows"]:
        assert abs(row["both"] - row["true_both"]) <= both_error + MARGIN, (name, row)
        if name != "two_talk_30fps":  # the laughing listener (see the xfail below)
            assert row["turns"] == row["true_turns"], (name, row)


@pytest.fixture(scope="module")
def two_talk_30fps_at_25(tmp_path_factory) -> list:
    """The clips of two_talk_30fps's scene drawn at 25 fps instead: the same faces, places, voices and
    planted speech (the scene's seed fixes them), each frame drawn at its own 25 fps time."""
    from conftest import ClipCache

    from mtcc.sampledata.fixtures import good_scenes
    from mtcc.sampledata.scene import render

    scene = next(s for s in good_scenes() if s.name == "two_talk_30fps")
    d = tmp_path_factory.mktemp("at25")
    render(dataclasses.replace(scene, fps=25), d, seed=0)
    return ClipCache([d])["two_talk_30fps.mp4"]


def test_a_30fps_source_is_scored_as_its_25fps_render(asd, pair_clips, two_talk_30fps_at_25):
    """The cut brings a 30 fps source to the clips' 25 fps; who speaks when must then come out as it does for
    the same scene drawn at 25 fps. Measured: speaking curves correlate 0.998 / 0.987, speaking frames agree
    on 100 % / 90 %, both speaking 0.46 against 0.49. Frames taken at the wrong times (the 30 fps frames played
    at 25 fps for the clip's 6 s, planted by hand) gave 0.61 / 0.57, 83 % / 80 % and 0.35."""
    (got,) = asd.run_batch(pair_clips["two_talk_30fps.mp4"])
    (want,) = asd.run_batch(two_talk_30fps_at_25)
    n = want.fact(ClipFaces).frames
    assert got.fact(ClipFaces).frames == n == 150
    g, w = (np.asarray(c.fact(SpeakingCurves).per_character) for c in (got, want))
    for k in range(2):
        assert np.corrcoef(g[k], w[k])[0, 1] >= 0.95, k
        same = predicted_frames(got.fact(Speakers).intervals[k], n) == predicted_frames(
            want.fact(Speakers).intervals[k], n)
        assert same.mean() >= 0.85, (k, same.mean())
    assert got.fact(Speakers).both_speaking == pytest.approx(want.fact(Speakers).both_speaking, abs=0.1)


@pytest.mark.xfail(strict=True, reason="known gap: Light-ASD calls the laughing listener of two_talk_30fps (the "
                                       "'chandler' photo: wide open smile, teeth showing) speaking while the other "
                                       "talks (F1 0.66, both speaking 0.46 where the truth is 0.06, 1 turn for 3), "
                                       "at 25 fps as at 30 fps; with the 'ross' photo in his place the same scene "
                                       "gives 0.82 and 3 turns. Fixing it makes this test pass, and strict xfail "
                                       "then fails the suite: update it")
def test_a_laughing_listener_is_not_called_speaking(asd, pair_clips, sample_dir):
    truth = load_truth(sample_dir / "two_talk_30fps.mp4")
    r = scored_against_truth(asd, pair_clips["two_talk_30fps.mp4"], truth)
    assert min(f1(r["per"][k]) for k in range(2)) >= 0.8
    assert all(row["turns"] == row["true_turns"] and abs(row["both"] - row["true_both"]) <= 0.1 for row in r["rows"])


def test_same_scene_pair_keeps_the_speaker_of_each_turn(asd, pair_clips):
    """The shared real same-scene pair: the left woman talks while the right one listens, then the reverse
    (the authors' code says 100 % / 8 %, then 0 % / 100 % of frames)."""
    clips = asd.run_batch(pair_clips["same_scene_pair_16fps.mp4"])
    assert len(clips) == 2 and all(c.pending for c in clips), [(c.key, c.reason) for c in clips]
    first, second = (c.stats for c in sorted(clips, key=lambda c: c.start))
    assert first["asd.speaking_0"] > 0.6 and first["asd.speaking_1"] < 0.1, first
    assert second["asd.speaking_0"] < 0.05 and second["asd.speaking_1"] > 0.5, second
    assert (first["asd.silent_0"], first["asd.silent_1"], second["asd.silent_0"], second["asd.silent_1"]) == (
        False, True, True, False)
    assert first["asd.random_weights"] is False and first["asd.n_speaking"] == 1


def test_split_screen_debate_kept_on_request_has_both_speaking(asd, pair_clips):
    clips = PanelLayout(split_screen="keep").run_batch(pair_clips["debate_split_screen.avi"])
    assert clips and all(c.pending and c.stats["layout.split_screen"] for c in clips)
    for c in asd.run_batch(clips):
        assert c.pending, (c.reason, c.message)
        assert c.stats["asd.speaking_0"] > 0.9 and c.stats["asd.speaking_1"] > 0.85, c.stats
        assert c.stats["asd.both_speaking"] > 0.85


def muted_copy(src, dst):
    """The same video stream with its sound at zero volume (mouths still move)."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0:v", "-map", "0:a",
                    "-c:v", "copy", "-af", "volume=0", "-c:a", "aac", str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def muted_clips(sample_dir, tmp_path_factory):
    """Clips of two_talk with its sound at zero volume, through the real stages up to the cut."""
    from conftest import ClipCache

    d = tmp_path_factory.mktemp("muted")
    muted_copy(sample_dir / "two_talk.mp4", d / "two_talk.mp4")
    return ClipCache([d])["two_talk.mp4"]


def test_nobody_speaking_is_rejected_as_no_speaker(asd, muted_clips):
    done = asd.run_batch(copy.deepcopy(muted_clips))
    assert all(c.status == "rejected" and c.reason == "no_speaker" and c.stage == "asd" for c in done)
    assert "nobody speaks" in done[0].message and "min_speaking_fraction" in done[0].message
    assert done[0].fact(Speakers).speech == []
    # the mouths move while nothing is heard: Light-ASD alone would call it speaking, hence the gate
    assert max(done[0].stats["asd.logit_mean_0"], done[0].stats["asd.logit_mean_1"]) > 0
    # the same muted clips with no_speaker=keep: recorded as silent, kept
    kept = ActiveSpeakers(model=asd.model, no_speaker="keep").run_batch(copy.deepcopy(muted_clips))
    assert kept and all(c.pending and c.stats["asd.n_speaking"] == 0 for c in kept)


def test_random_weights_record_but_never_decide(muted_clips, tmp_path):
    made = ActiveSpeakers.make_tiny(tmp_path / "tiny")
    done = ActiveSpeakers(**made).run_batch(copy.deepcopy(muted_clips))
    assert all(c.pending and c.stats["asd.random_weights"] is True for c in done)
    assert done[0].fact(Speakers).random_weights is True


def test_batched_over_clips_gives_each_clip_its_own_scores(asd, pair_clips):
    a, b = pair_clips["two_talk.mp4"][0], pair_clips["two_cross.mp4"][0]
    together = asd.run_batch([a, b])
    alone = asd.run_batch(pair_clips["two_cross.mp4"][:1])
    got = np.asarray(together[1].fact(SpeakingCurves).per_character)
    want = np.asarray(alone[0].fact(SpeakingCurves).per_character)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_separated_voices_score_highest_on_their_own_faces(asd, pair_clips, sample_dir):
    """With spk0/spk1 present (the separate stage ran), the 2x2 track x face matrix; here the tracks are the
    planted clean voices, so each must score higher on its own face."""
    for name in ("two_talk", "two_cross"):
        c = pair_clips[f"{name}.mp4"][0]
        truth = load_truth(sample_dir / f"{name}.mp4")
        a, b = int(round(c.start * 16000)), int(round(c.end * 16000))
        for k in range(2):
            voice, _ = sf.read(sample_dir / f"{name}.voice{person_of(c, k, truth)}.wav", dtype="float32")
            c.members[f"spk{k}.flac"] = flac_bytes(voice[a:b])
        (c,) = asd.run_batch([c])
        m = np.asarray(c.fact(Speakers).track_face)
        assert m.shape == (2, 2) and m[0, 0] > m[1, 0] and m[1, 1] > m[0, 1], (name, m)
        assert c.stats["asd.track_face_margin"] > 0.3
    plain = asd.run_batch(pair_clips["two_talk.mp4"][:1])[0]
    assert plain.fact(Speakers).track_face is None and plain.stats["asd.track_face_margin"] is None


def test_outputs_follow_the_export_contract(asd, pair_clips):
    (c,) = asd.run_batch(pair_clips["two_cross.mp4"][:1])
    meta = c.fact(Speakers).to_json()
    assert {"model", "random_weights", "fps", "speaking_fraction", "intervals", "both_speaking", "turns",
            "track_face"} <= set(meta)
    assert meta["fps"] == 25 and meta["turns"] == c.stats["asd.turns"] >= 1
    for k in range(2):
        spans = meta["intervals"][k]
        assert all(0 <= s < e <= c.end - c.start + 1e-6 for s, e in spans)
        assert all(round(x, 4) == x for x in c.fact(SpeakingCurves).per_character[k])
    for col in ("speaking_0", "speaking_1", "both_speaking", "turns", "random_weights"):
        assert f"asd.{col}" in c.stats
    json.dumps(meta)
    from mtcc.pipeline.sample_tar import sample_meta

    assert sample_meta(c, {}, [ActiveSpeakers])["asd"] == meta


def test_sync_takes_single_speaker_from_asd():
    def speakers(random: bool) -> Speakers:
        return Speakers(model="m", random_weights=random, fps=25, dtype="float32", speaking_fraction=[0.5, 0.0],
                        intervals=[[], []], both_speaking=0.0, turns=1, track_face=None, speech=None, axes="",
                        silent=(False, True))

    cand = Candidate(key="k", video_id="v", source="s", shard=0)
    cand.put(speakers(False))
    cand.put(Separation(model="m", random_weights=False, rate=16000, speech=[[], []], silent=(False, False)))
    assert speaking_flags(cand, "separated") == ([False, True], "asd")
    cand.put(speakers(True))  # random ASD decides nothing: the separated tracks' VAD does
    assert speaking_flags(cand, "separated") == ([False, False], "separate")
    assert speaking_flags(cand, "mixture") == ([None, None], "none")


def test_a_run_names_only_the_stages_left_on_random_weights(tiny_overrides, light_asd_weights):
    from mtcc.pipeline.build import random_weight_stages
    from mtcc.pipeline.config import load_config, resolve_config

    tiny = random_weight_stages(load_config(resolve_config("offline"), tiny_overrides))
    assert {"asd", "separate", "sync"} <= set(tiny)
    real = random_weight_stages(load_config(resolve_config("offline"),
                                            [*tiny_overrides, f"stages.asd.model={light_asd_weights}"]))
    assert set(real) == set(tiny) - {"asd"}
