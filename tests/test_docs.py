"""The architecture tour stays true: its worked example is a stage that runs, and every file it names is
in the repository."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "ARCHITECTURE.md").read_text()


def test_the_worked_example_stage_runs_and_decides():
    from mtcc.facts import ClipCharacter, ClipFaces
    from mtcc.stages.base import Candidate

    code = re.search(r"```python\n# stages/face_size.py\n(.*?)```", DOC, re.S).group(1)
    module = types.ModuleType("face_size_example")  # a module of its own, as stages/face_size.py would be
    sys.modules[module.__name__] = module
    try:
        exec(compile(code.replace("from .base import", "from mtcc.stages.base import"), "face_size.py", "exec"),
             module.__dict__)
    finally:
        del sys.modules[module.__name__]
    stage_cls = module.FaceSize

    def clip(width: float) -> Candidate:
        c = Candidate(key=f"w{width:g}", video_id="v", source="s", shard=0, level="clip")
        chars = tuple(ClipCharacter(i, i, [[x, 10.0, x + w, 10.0 + w] for w in (width, width + 20)],
                                    [[0.0] * 10] * 2, [0.9, 0.9]) for i, x in enumerate((0.0, 300.0)))
        c.put(ClipFaces(25, 2, "left_to_right_at_first_frame", chars))
        return c

    small, large = stage_cls(min_px=96).run_batch([clip(60.0), clip(120.0)])
    assert small.status == "rejected" and small.reason == "face_too_small" and small.stats["face_size.min_px"] == 60
    assert large.pending and large.stats["face_size.min_px"] == 120


def test_every_file_the_tour_names_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)+[a-z_0-9.]+\.(?:py|md|yaml|j2|parquet|json))`", DOC))
    named = {n for n in named if not n.startswith(("OUT/", "commits/"))}
    assert named, "the tour names no file"
    missing = sorted(n for n in named if not (REPO / n).exists() and n != "stages/face_size.py")
    assert not missing, missing
