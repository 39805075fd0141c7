"""Small but real sample videos with ground truth, for tests and demos.

``generate(out_dir, seed=0)`` writes the fixtures (two people talking, two people crossing, scene
events, broken files) and a ``<stem>.truth.json`` beside each; ``load_truth(video)`` reads the truth
of one of them. ``generate_long(path, minutes=10)`` writes one long multi-shot benchmark video with
its truth beside it.

Truth keys: name, file, kind, expect_probe, width, height, fps, duration, n_frames, audio
({rate, channels} or null), cuts (s), persons ([{id, photo, voice, appear, disappear,
boxes: [[frame, x0, y0, x1, y1], ...]}]; boxes for every ``boxes_every``-th frame: 1 for the
fixtures, 5 for the long video), speech ([{person, start, end}] s), face_count (per frame),
boxes_every, two_face_intervals ([[start, end) s]) and two_face_frames (the same runs as frame
indices [first, end)).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import broken
from .fixtures import broken_scenes, good_scenes, panel_scenes
from .long import generate_long
from .scene import render

__all__ = ["generate", "generate_long", "generate_panels", "load_truth", "truth_path", "FIXTURES", "PANEL_FIXTURES"]

FIXTURES = (
    "two_talk", "two_talk_30fps", "two_cross", "one_person", "three_people", "two_far", "scene_events",
    "broken_truncated", "broken_empty", "broken_text", "no_audio", "audio_only", "too_short", "tiny_res",
)

# split-screen composites (``generate_panels``); their truth adds ``layout``: side_by_side | stacked
PANEL_FIXTURES = ("panels_side_by_side", "panels_stacked")


def truth_path(video_path: str | Path) -> Path:
    p = Path(video_path)
    return p.with_name(f"{p.stem}.truth.json")


def load_truth(video_path: str | Path) -> dict:
    """The ground truth written beside ``video_path`` by :func:`generate`."""
    with open(truth_path(video_path), encoding="utf-8") as f:
        return json.load(f)


def _write_truth(out_dir: Path, truth: dict) -> None:
    truth_path(out_dir / truth["file"]).write_text(json.dumps(truth, separators=(",", ":")) + "\n",
                                                   encoding="utf-8")


def generate(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """Write every fixture video and its truth JSON into ``out_dir``; return the video paths, sorted.

    Deterministic for a given ``seed`` (same truth, same decoded pixels and audio).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenes = good_scenes() + broken_scenes()
    # rendering (numpy/OpenCV) and x264 overlap well; two renders at a time keeps both cores busy
    with ThreadPoolExecutor(max_workers=2) as pool:
        truths = list(pool.map(lambda s: render(s, out, seed), scenes))
    truths.append(broken.truncated(out / "two_talk.mp4", out))
    truths.append(broken.empty(out))
    truths.append(broken.text(out))
    truths.append(broken.audio_only(out, seed))
    for t in truths:
        _write_truth(out, t)
    return sorted(out / t["file"] for t in truths)


def generate_panels(out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """Write the split-screen fixtures (two camera feeds in one frame, a person per panel, both talking) and
    their truth JSON into ``out_dir``; return the video paths, sorted. Kept apart from :func:`generate`,
    whose set the pipeline tests and benchmarks count on."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        truths = list(pool.map(lambda s: render(s, out, seed), panel_scenes()))
    for t, scene in zip(truths, panel_scenes()):
        t["layout"] = "side_by_side" if scene.shots[0][1].startswith("panels_lr") else "stacked"
        _write_truth(out, t)
    return sorted(out / t["file"] for t in truths)
