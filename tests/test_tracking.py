"""Tracking and segment logic on synthetic detections with known answers."""

from __future__ import annotations

import numpy as np

from mtcc.media.tracking import associate, fill_and_smooth, interpolate, iou_matrix
from mtcc.stages.segment import runs, windows


def det(*boxes):
    b = np.array(boxes, np.float64).reshape(-1, 4)
    kps = np.stack([np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)] * 5, 1)
    return b, kps, np.full(len(b), 0.9)


def test_iou():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0], rtol=1e-6)


def test_crossing_faces_keep_their_identity():
    """Two faces moving past each other at different heights: detections arrive in shuffled order,
    ids must follow the faces, not the left/right position."""
    rng = np.random.default_rng(0)
    samples = []
    for k in range(41):
        xa, xb = 50 + 10 * k, 450 - 10 * k
        boxes = [[xa, 50, xa + 80, 130], [xb, 110, xb + 80, 190]]
        order = rng.permutation(2)
        samples.append((k * 5, *det(*[boxes[i] for i in order])))
    tracks = associate(samples, iou_min=0.3)
    assert len(tracks) == 2
    by_y = sorted(tracks, key=lambda t: t.boxes[0][1])
    assert all(b[1] == 50 for b in by_y[0].boxes) and all(b[1] == 110 for b in by_y[1].boxes)
    assert by_y[0].boxes[0][0] < by_y[1].boxes[0][0] and by_y[0].boxes[-1][0] > by_y[1].boxes[-1][0]


def test_gap_is_bridged_and_filled_but_long_gap_splits():
    frames = list(range(0, 100, 5))
    samples = [(f, *det([100 + f, 50, 180 + f, 130])) if f not in (30, 35) else (f, *det()) for f in frames]
    tracks = associate(samples, max_gap=2)
    assert len(tracks) == 1
    filled = fill_and_smooth(tracks[0], frames, window=1)
    assert filled.frames == frames
    i = frames.index(30)
    assert filled.detected[i] is False
    np.testing.assert_allclose(filled.boxes[i], [130, 50, 210, 130])
    samples = [(f, *det([100, 50, 180, 130])) if not 30 <= f <= 50 else (f, *det()) for f in frames]
    assert len(associate(samples, max_gap=2)) == 2


def test_single_sample_noise_is_dropped_and_median_removes_jitter():
    frames = list(range(0, 50, 5))
    samples = []
    for f in frames:
        boxes = [[100, 50, 180, 130]]
        if f == 20:
            boxes = [[130, 50, 210, 130], [400, 300, 420, 320]]  # jitter + a one-off false positive
        samples.append((f, *det(*boxes)))
    tracks = associate(samples, min_len=2)
    assert len(tracks) == 1
    smooth = fill_and_smooth(tracks[0], frames, window=3)
    np.testing.assert_allclose(smooth.boxes[frames.index(20)], [100, 50, 180, 130])


def test_interpolate_to_output_frames():
    t = {"frames": [0, 10], "boxes": [[0, 0, 10, 10], [10, 0, 20, 10]],
         "landmarks": [[[0, 0]] * 5, [[10, 0]] * 5], "scores": [0.5, 1.0]}
    out = interpolate(t, np.array([0.0, 2.5, 10.0]))
    np.testing.assert_allclose(out["boxes"][1], [2.5, 0, 12.5, 10])
    np.testing.assert_allclose(out["scores"], [0.5, 0.625, 1.0])
    assert out["landmarks"].shape == (3, 5, 2)


def test_runs_need_exactly_n_and_a_stable_set():
    active = np.zeros((100, 3), bool)
    active[0:100, 0] = True      # A all along
    active[20:60, 1] = True      # B from 20 to 59
    active[40:80, 2] = True      # C from 40: three faces 40..59, then A+C 60..79
    assert runs(active, 2) == [(20, 40, (0, 1)), (60, 80, (0, 2))]
    assert runs(active, 3) == [(40, 60, (0, 1, 2))]


def test_windows():
    assert windows(0, 1.5, 1.96, 10) == []
    assert windows(0, 5, 1.96, 10) == [(0, 5)]
    w = windows(0, 25, 1.96, 10)
    assert len(w) == 3 and all(abs((b - a) - 25 / 3) < 1e-9 for a, b in w)
    w = windows(0, 3.0, 1.96, 1.0)  # windows never shorter than the minimum
    assert w == [(0, 3.0)]
