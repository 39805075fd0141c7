"""Wall time of the visual filter stages (probe, shots, faces, segment, distance) on one long video,
against decoding the same file with `ffmpeg -i X -f null -`.

    .venv/bin/python benchmarks/face_stages.py --minutes 10 --json face_stages.json
    .venv/bin/python benchmarks/face_stages.py --video my.mp4 --set stages.faces.sample_fps=2

Stages run in-process, one after the other, with the offline profile's settings (``--set`` overrides).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mtcc.benchmarks.harness import FILTER_STAGES, ffmpeg_decode_s
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.stages.base import Candidate


def run_stages(path: str, config: str, overrides: list[str]) -> dict:
    cfg = load_config(resolve_config(config), overrides)
    stages = [s for s in cfg.active_stages if s.name in FILTER_STAGES]
    setup = {}
    for s in stages:
        t0 = time.monotonic()
        s.setup()
        setup[s.name] = round(time.monotonic() - t0, 3)
    batch = [Candidate(key="bench", video_id="bench", source=path, shard=0)]
    timing = {}
    for s in stages:
        todo = [c for c in batch if c.pending]
        t0 = time.monotonic()
        done = s.run_batch(todo)
        timing[s.name] = round(time.monotonic() - t0, 3)
        batch = [c for c in batch if not c.pending] + done
    video = next(c for c in batch if c.level == "video")
    clips = [c for c in batch if c.level == "clip"]
    faces_s = timing.get("faces", 0.0)
    detections = video.stats.get("faces.frames_sampled", 0) + video.stats.get("faces.frames_refined", 0)
    return {
        "stage_s": timing, "setup_s": setup, "stats": {k: v for k, v in video.stats.items()},
        "video_status": video.status, "video_message": video.message,
        "clips": len(clips), "clips_kept": sum(c.pending for c in clips),
        "detector_frames": detections, "detector_fps": round(detections / faces_s, 2) if faces_s else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--video", default=None)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--config", default="offline")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtcc-bench-") as tmp:
        path = args.video
        gen_s = None
        if path is None:
            from mtcc.sampledata import generate_long

            t0 = time.monotonic()
            path = str(generate_long(Path(tmp) / "long.mp4", minutes=args.minutes))
            gen_s = round(time.monotonic() - t0, 1)
        decode = ffmpeg_decode_s(path)
        res = run_stages(path, args.config, args.set)
    total = sum(res["stage_s"].values())
    report = {
        "video": args.video or f"generated {args.minutes:g} min", "generate_s": gen_s,
        "ffmpeg_decode_s": round(decode, 3), "filter_stages_s": round(total, 3),
        "ratio_vs_ffmpeg_decode": round(total / decode, 3), **res,
    }
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
