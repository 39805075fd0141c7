"""Frame access: rotated sources are seen the way the viewer (and the clip encode) sees them."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from conftest import clips_through_stages

from mtcc.stages.base import Candidate
from mtcc.stages.probe import Probe
from mtcc.stages.tracking import iou_matrix
from mtcc.stages.video import open_frames


@pytest.fixture(scope="module")
def rotated(sample_dir, tmp_path_factory):
    """two_talk.mp4 remuxed with a 90-degree display rotation (phone footage)."""
    out = tmp_path_factory.mktemp("rot") / "two_talk_rot90.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample_dir / "two_talk.mp4"), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(out)], check=True)
    return out


def probe(path) -> dict:
    c = Candidate(key="v", video_id="v", source=str(path), shard=0)
    Probe().run_batch([c])
    return c.info["probe"]


def test_rotated_frames_come_in_display_orientation(rotated, sample_dir):
    p = probe(rotated)
    assert (p["width"], p["height"], p["rotation"]) == (360, 640, 90)
    rot = open_frames(str(rotated), p, 320)  # a reduced size: where decord alone gets rotation wrong
    plain = open_frames(str(sample_dir / "two_talk.mp4"), probe(sample_dir / "two_talk.mp4"), 640)
    f = next(rot.batches([10], 1))[1][0]
    g = next(plain.batches([10], 1))[1][0]
    assert f.shape[0] > f.shape[1]  # portrait, as displayed
    want = cv2.resize(np.rot90(g, 1), (f.shape[1], f.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(want.astype(int) - f.astype(int)).mean() < 5
    assert rot.n_frames == plain.n_frames


def test_face_boxes_on_rotated_footage_are_in_display_coordinates(rotated, sample_dir):
    truth = json.loads((sample_dir / "two_talk.truth.json").read_text())
    width = truth["width"]
    clips = clips_through_stages(rotated, max_seconds=10.0)
    assert len(clips) == 1
    faces = clips[0].info["clip_faces"]
    for ch in faces["characters"]:
        got = np.asarray(ch["boxes"])[::10]
        best = 0.0
        for person in truth["persons"]:
            b = np.asarray([box[1:] for box in person["boxes"]], np.float64)[::10][: len(got)]
            # a 90-degree counter-clockwise turn: (x, y) -> (y, width - x)
            turned = np.stack([b[:, 1], width - b[:, 2], b[:, 3], width - b[:, 0]], 1)
            best = max(best, float(np.diag(iou_matrix(got, turned)).min()))
        assert best > 0.5
