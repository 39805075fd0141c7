"""Does the training loader keep up with the trainer?

Writes synthetic shards in the exact sample format (``mtcc.training.synthetic``: pipeline commit code, H.264
clips at ``--clip`` resolution, route.npy at the shard geometry), then measures

* loader items/s (one item = one route window: video [3,F,H,W], audio_emb, route, refs) for each
  ``--workers`` count, after the first batch (worker start-up excluded, reported apart);
* trainer steps/s of the router (forward + backward + AdamW) on random batches of the same geometry;
* the ratio loader items/s / (steps/s x batch): >= 5 means the loader is not what the trainer waits for.

    .venv/bin/python benchmarks/training_loader.py                       # paper geometry 49x480x720
    .venv/bin/python benchmarks/training_loader.py --geometry 9x128x192  # the CPU test geometry

Numbers go to stdout as JSON (``--json PATH`` also writes them).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def parse_geo(text: str) -> dict[str, int]:
    f, h, w = (int(x) for x in text.lower().split("x"))
    return {"frames": f, "height": h, "width": w}


def make_shards(root: Path, n_shards: int, per_shard: int, frames: int, clip: tuple[int, int],
                geo: dict[str, int]) -> float:
    from mtcc.media.geometry import LatentGeometry
    from mtcc.training.synthetic import write_shards

    t = time.perf_counter()
    write_shards(root, n_shards, per_shard, frames=frames, size=clip, geometry=LatentGeometry(**geo),
                 rejected_per_shard=0)
    return time.perf_counter() - t


def bench_loader(root: Path, geo: dict[str, int], workers: int, batch: int, epochs: int) -> dict[str, float]:
    from mtcc.training.data import loader

    ld = loader(str(root), geometry=geo, batch_size=batch, num_workers=workers, shuffle_buffer=8, ref_size=224)
    t0 = time.perf_counter()
    first = None
    items = 0
    for _ in range(epochs):
        for b in ld:
            if first is None:
                first = time.perf_counter() - t0
                t1 = time.perf_counter()
                continue
            items += len(b["key"])
    wall = time.perf_counter() - t1
    return {"workers": workers, "items": items, "first_batch_s": round(first or 0.0, 3),
            "items_per_s": round(items / wall, 3) if wall > 0 else None}


def bench_steps(geo: dict[str, int], batch: int, steps: int, device: str) -> dict[str, float]:
    from mtcc.media.geometry import LatentGeometry
    from mtcc.training.config import LossConfig, ModelConfig
    from mtcc.training.losses import router_loss
    from mtcc.training.model import EmbeddingRouter

    g = LatentGeometry(**geo)
    dev = torch.device(device)
    model = EmbeddingRouter(ModelConfig(), g).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video = torch.rand(batch, 3, g.frames, g.height, g.width, device=dev) * 2 - 1
    ref = torch.rand(batch, 2, 3, 224, 224, device=dev) * 2 - 1
    route = torch.randint(-1, 2, (batch, g.tokens), device=dev, dtype=torch.int8)
    bf16 = dev.type == "cuda"
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(video, ref)
        loss, _ = router_loss(out, route, g.grid, LossConfig())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms allocators and kernels
            times.append(time.perf_counter() - t)
    s = sum(times) / len(times)
    return {"batch": batch, "steps": steps, "s_per_step": round(s, 4), "steps_per_s": round(1 / s, 3),
            "params": sum(p.numel() for p in model.parameters()), "device": device, "bf16": bf16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--geometry", default="49x480x720", help="FxHxW of the batches (default: the paper's)")
    p.add_argument("--clip", default="1280x720", help="WxH of the synthetic clips (source resolution)")
    p.add_argument("--frames", type=int, default=100, help="frames per synthetic clip (100 = two 49-frame windows)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--per-shard", type=int, default=3)
    p.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to measure")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3, help="trainer steps to time (0 = skip)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the trainer timing (a loaded 2-core box: 1 beats 2 by far)")
    p.add_argument("--dir", default=None, help="keep the shards here (default: a temp dir)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    geo = parse_geo(a.geometry)
    clip = tuple(int(x) for x in a.clip.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir or tmp) / "out"
        if not (root / "commits").is_dir():
            make_s = make_shards(root, a.shards, a.per_shard, a.frames, clip, geo)
        else:
            make_s = 0.0
        res: dict = {"geometry": geo, "clip": list(clip), "frames_per_clip": a.frames, "cpu_cores": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "shard_write_s": round(make_s, 1), "loader": []}
        for w in (int(x) for x in a.workers.split(",")):
            res["loader"].append(bench_loader(root, geo, w, a.batch, a.epochs))
            print(json.dumps(res["loader"][-1]), flush=True)
        if a.train_steps:
            res["trainer"] = bench_steps(geo, a.batch, a.train_steps, a.device)
            best = max(r["items_per_s"] or 0 for r in res["loader"])
            res["loader_best_items_per_s"] = best
            res["ratio_loader_to_trainer"] = round(best / (res["trainer"]["steps_per_s"] * a.batch), 2)
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
