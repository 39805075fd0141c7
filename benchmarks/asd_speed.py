"""Light-ASD's speed on this machine, in character-seconds per second (one character's face track for
one second of clip = one character-second; a two-person 10 s clip is 20).

Two numbers: the ``asd`` stage as the profile runs it (faces and mixture read through ``crops``, VAD gate,
MFCC, the model; from the in-process stage run of ``mtcc bench``), and the model alone on ready-made crops
and MFCC (:func:`model_speed`), in float32 and bfloat16, so a slow stage shows whether decoding or the
network is the cost. The goal (issue 14) is 20x real time on a CPU with one chunking pass; the authors'
11-chunking reference runs about 1x here.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

GOAL = 20.0


def stage_speed(run: Any) -> dict[str, Any] | None:
    """Character-seconds per second of the asd stage's in-process run (a ``harness.StageRun``)."""
    if run is None or not run.wall_s or not run.clips_in:
        return None
    char_s = 2 * run.media_s_in  # two characters per clip
    return {"char_s": round(char_s, 2), "wall_s": round(run.wall_s, 3),
            "char_s_per_s": round(char_s / run.wall_s, 2)}


def model_speed(stage: Any, seconds: float = 8.0, characters: int = 4, repeats: int = 2) -> dict[str, Any]:
    """The model alone (``stage.score``) on random crops and MFCC of ``characters`` faces x ``seconds``, per
    dtype. ``stage`` has run ``setup()`` (random weights are as fast as real ones)."""
    from mtcc.stages.asd import FACE_SIZE, _Clip, mfcc_rows

    rng = np.random.default_rng(0)
    frames = int(round(seconds * 25))
    faces = rng.integers(0, 256, (2, frames, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    mfcc = mfcc_rows(rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), frames)
    clips = [_Clip(faces, [mfcc], False) for _ in range(max(1, characters // 2))]
    before = stage._bf16
    out: dict[str, Any] = {}
    try:
        for name, bf16 in (("float32", False), ("bfloat16", True)):
            stage._bf16 = bf16
            stage.score(clips[:1])  # warm-up
            best = min(_timed(lambda: stage.score(clips)) for _ in range(repeats))
            out[name] = round(2 * len(clips) * seconds / best, 2)
    finally:
        stage._bf16 = before
    out["stage_dtype"] = "bfloat16" if before else "float32"
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
