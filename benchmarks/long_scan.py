"""``mtcc bench --long-scan MINUTES``: one generated talk show of that length through the faces scan, whole on
one actor and in parts on several (``stages.faces.part_seconds``), on embedded Ray: the scan's wall time
each way and whether the two builds' shards are the same bytes (they must be).

Only the stages up to ``cut`` and ``write`` run (the model stages read clips, not the source, and do not
change with the scan's parts).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_STAGES = ("separate", "asd", "sync", "masks", "audio_emb", "caption")


def _digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*")])
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def long_scan(minutes: float, part_seconds: float = 120.0, actors: int = 2, config: str = "offline",
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config
    from mtcc.sampledata import generate_long

    with tempfile.TemporaryDirectory(prefix="mtcc-long-scan-") as d:
        root = Path(d)
        log(f"generating a {minutes:g}-minute talk show ...")
        generate_long(root / "in" / f"long_{minutes:g}min.mp4", minutes=minutes, seed=1)
        off = [f"stages.{s}.enabled=false" for s in MODEL_STAGES] + ["stages.prescore.reject=false", "models=null"]
        runs: dict[str, Any] = {}
        for name, sets in (("whole", ["stages.faces.part_seconds=0", "stages.faces.resources.concurrency=1"]),
                           ("parts", [f"stages.faces.part_seconds={part_seconds}",
                                      f"stages.faces.resources.concurrency={actors}"])):
            cfg = load_config(resolve_config(config), [*off, *sets])
            t0 = time.monotonic()
            res = build(cfg, [str(root / "in")], root / name, runner="ray", progress=False, log=lambda m: None)
            faces = res.stage_timing.get("faces", {})
            runs[name] = {"wall_s": round(time.monotonic() - t0, 2), "startup_s": round(res.startup_s, 2),
                          "faces_actor_s": round(faces.get("actor_s", 0.0), 2), "faces_parts": faces.get("parts", 0),
                          "failed": res.shards_failed}
            log(f"{name}: {runs[name]}")
        same = _digests(root / "whole") == _digests(root / "parts")
    return {"minutes": minutes, "part_seconds": part_seconds, "actors": actors, "runs": runs,
            "identical_shards": same,
            "speedup": round((runs["whole"]["wall_s"] - runs["whole"]["startup_s"])
                             / max(runs["parts"]["wall_s"] - runs["parts"]["startup_s"], 1e-6), 2)}
