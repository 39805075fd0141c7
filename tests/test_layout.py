"""The layout stage: split-screen and stacked-panel composites named ``split_screen``, one-scene pairs kept."""

from __future__ import annotations

import numpy as np
import pytest

from mtcc.facts import SeamEvidence
from mtcc.sampledata import load_truth
from mtcc.stages.layout import PanelLayout, SeamCollector, peaks, seam_evidence, separating_fraction


def test_a_panel_border_covers_its_column_and_texture_does_not():
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(120, 6, (1, 90, 160, 3)), 0, 255).astype(np.uint8)  # grain, no edges
    frame[:, :, 80:] = np.clip(frame[:, :, 80:].astype(int) + 60, 0, 255).astype(np.uint8)  # right feed brighter
    frame[:, 20:50, 30:34] = 255  # a bright object: covers a third of its columns
    cols, rows = seam_evidence(frame)
    assert cols.shape == (1, 160) and rows.shape == (1, 90)
    assert cols[0, 79:81].min() == 1.0 and cols[0, 30] < 0.4 and cols[0, 100] == 0.0
    assert rows[0].max() < 0.1
    assert [p for p, s in peaks(cols[0]) if s > 0.9] == [pytest.approx(80 / 160, abs=0.01)]


def test_collector_summarises_each_shot_apart():
    frames = np.full((4, 40, 80, 3), 100, np.uint8)
    frames[2:, :, 40:] = 200  # only the second shot is split
    seams = SeamCollector()
    seams.add([0, 5], frames[:2])
    seams.add([10, 15], frames[2:])
    doc = seams.summary([[0, 10], [10, 20]])
    assert doc["size"] == [80, 40]
    assert doc["shots"][0] == [0, 10, []]
    (axis, pos, strength), = doc["shots"][1][2]
    assert axis == "v" and pos == pytest.approx(0.5, abs=0.02) and strength == 1.0


def test_a_border_counts_only_between_the_characters():
    left = np.array([[100, 50, 200, 150]] * 10, float)
    right = np.array([[400, 50, 500, 150]] * 10, float)
    assert separating_fraction("v", 300, left, right, 5) == 1.0
    assert separating_fraction("v", 300, right, left, 5) == 1.0  # either order
    assert separating_fraction("v", 60, left, right, 5) == 0.0  # a pillarbox edge: both on one side
    assert separating_fraction("h", 300, left, right, 5) == 0.0


@pytest.mark.parametrize("name, axis", [("panels_side_by_side.mp4", "v"), ("panels_stacked.mp4", "h")])
def test_planted_panels_are_rejected_as_split_screen(pair_clips, panel_dir, name, axis):
    assert load_truth(panel_dir / name)["layout"] in ("side_by_side", "stacked")
    clips = pair_clips[name]
    assert clips, "the planted panels must still give a two-face clip"
    for c in PanelLayout().run_batch(clips):
        assert c.status == "rejected" and c.reason == "split_screen" and c.stage == "layout", c.stats
        assert c.stats["layout.seam_axis"] == axis and c.stats["layout.seam_position"] == pytest.approx(0.5, abs=0.02)
        assert "split_screen=keep" in c.message
    kept = PanelLayout(split_screen="keep").run_batch(pair_clips[name])
    assert all(c.pending and c.stats["layout.split_screen"] for c in kept)


def test_shared_debate_is_a_split_screen(pair_clips):
    clips = PanelLayout().run_batch(pair_clips["debate_split_screen.avi"])
    assert clips and all(c.reason == "split_screen" for c in clips)
    assert all(c.stats["layout.seam_strength"] > 0.95 and c.stats["layout.seam_axis"] == "v" for c in clips)


@pytest.mark.parametrize("name", ["two_talk.mp4", "two_talk_30fps.mp4", "two_cross.mp4", "two_far.mp4",
                                  "scene_events.mp4", "same_scene_pair_16fps.mp4"])
def test_pairs_in_one_scene_are_kept(pair_clips, name):
    clips = pair_clips[name]
    assert clips
    limit = PanelLayout().min_strength
    for c in PanelLayout().run_batch(clips):
        assert c.pending and not c.stats["layout.split_screen"], (name, c.stats)
        assert c.stats["layout.seam_strength"] < limit - 0.05  # a margin below the threshold
        # the faces stage's evidence travels with the clip, one entry per shot of its video
        assert c.fact(SeamEvidence).shots and c.fact(SeamEvidence).size


def test_missing_evidence_is_an_error_that_names_the_fix(pair_clips):
    c = pair_clips["two_talk.mp4"][0]
    c.facts.drop(SeamEvidence)
    (c,) = PanelLayout().run_batch([c])
    assert c.reason == "error" and "SeamEvidence" in c.message and "list 'faces' before" in c.message


@pytest.fixture(scope="module")
def framed(real_dir, tmp_path_factory):
    """The real same-scene pair re-framed three ways a broadcast does it, one scene each: pillarboxed (black
    bars left and right), letterboxed (bars above and below), and beside a flat graphics panel (a strong
    full-height border, with both people on one side of it)."""
    import subprocess

    from conftest import ClipCache

    d = tmp_path_factory.mktemp("framed")
    src = real_dir / "same_scene_pair_16fps.mp4"
    pads = {"pillarbox.mp4": "pad=iw+384:ih:192:0:black", "letterbox.mp4": "pad=iw:ih+256:0:128:black",
            "graphics_panel.mp4": "pad=iw+576:ih:0:0:0x3060c0"}
    for name, vf in pads.items():
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-vf", vf, "-c:v", "libx264", "-preset",
                        "veryfast", "-crf", "18", "-c:a", "copy", str(d / name)], check=True)
    return ClipCache([d])


@pytest.mark.parametrize("name, axis, at", [("pillarbox.mp4", "v", 192 / 1536), ("letterbox.mp4", "h", 128 / 1024),
                                            ("graphics_panel.mp4", "v", 1152 / 1728)])
def test_one_scene_framed_by_bars_or_a_panel_is_kept(framed, name, axis, at):
    clips = framed[name]
    assert clips, f"{name}: the two people must still give a clip"
    for c in clips:
        # the frame's border is there, full strength, where it was planted ...
        seams = [s for shot in c.fact(SeamEvidence).shots for s in shot[2]]
        assert any(a == axis and p == pytest.approx(at, abs=0.02) and s > 0.9 for a, p, s in seams), (name, seams)
    # ... and it does not split the two people, so the clip is one scene and kept
    for c in PanelLayout().run_batch(clips):
        assert c.pending and not c.stats["layout.split_screen"], (name, c.stats)
