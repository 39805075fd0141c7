"""Seconds per clip and per frame of the masks stage (decode, SAM2 tracking of both characters, RLE, route,
references) on real clip candidates: a sample video through probe -> shots -> faces -> segment, then the
stage. Default model: the reduced random SAM2 that ``make_tiny`` writes (what the offline demo runs).

    .venv/bin/python benchmarks/masks_speed.py                          # two_talk sample, 10 s clips
    .venv/bin/python benchmarks/masks_speed.py --threads 1 --max-reprompts 0
    .venv/bin/python benchmarks/masks_speed.py --model DIR --device cuda --video some.mp4

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=None, help="input video (default: the generated two_talk sample)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="segment's longest clip")
    p.add_argument("--model", default=None, help="SAM2 model (default: a tiny random one made here)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--max-reprompts", type=int, default=2)
    args = p.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import clips_through_stages

    from mtcc.facts import ClipFaces
    from mtcc.stages.masks import CharacterMasks

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mtcc-masks-bench-") as tmp:
        video = Path(args.video) if args.video else None
        if video is None:
            from mtcc.sampledata import generate

            generate(Path(tmp) / "samples", seed=0)
            video = Path(tmp) / "samples" / "two_talk.mp4"
        clips = clips_through_stages(video, max_seconds=args.max_seconds)
        over = ({"model": args.model} if args.model else CharacterMasks.make_tiny(Path(tmp) / "models"))
        stage = CharacterMasks(**over, device=args.device, max_reprompts=args.max_reprompts, reject=False)
        t0 = time.perf_counter()
        stage.setup()
        setup_s = time.perf_counter() - t0
        calls = [0]
        stage._model.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        per_clip = []
        for c in clips:
            t = time.perf_counter()
            out = stage.run_batch([c])[0]
            dt = time.perf_counter() - t
            n = c.fact(ClipFaces).frames
            per_clip.append({"key": c.key, "frames": n, "seconds": round(dt, 3), "per_frame": round(dt / n, 4),
                             "reprompts": out.stats.get("masks.reprompts"), "status": out.status})
    frames = sum(c["frames"] for c in per_clip)
    total = sum(c["seconds"] for c in per_clip)
    print(json.dumps({
        "video": str(video), "model": stage.model, "image_size": int(stage._model.image_size),
        "device": args.device, "threads": torch.get_num_threads(), "max_reprompts": args.max_reprompts,
        "setup_s": round(setup_s, 3), "clips": len(per_clip), "frames": frames, "seconds": round(total, 3),
        "per_frame": round(total / max(1, frames), 4), "encoder_calls": calls[0], "per_clip": per_clip,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
