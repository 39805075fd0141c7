"""``mtcc train CONFIG`` (and ``python -m mtcc.training CONFIG``, the per-process entry torchrun runs).

Only argparse is imported here: ``mtcc --help`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

LAUNCHERS = ("local", "torchrun", "ray")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training YAML, or a bundled one by name (train)")
    p.add_argument("--shards", action="append", default=[], metavar="SRC",
                   help="MTCC output folder, tar path/URL, brace pattern or glob; repeatable (replaces data.shards)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. run.steps=500 or data.geometry.frames=17")
    p.add_argument("--selection", default=None, metavar="NAME",
                   help="train on a selection `mtcc select` made (its name, or the path of its .parquet): sets "
                        "data.selection; data.selection_part picks its part (default train)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: this process (joins torchrun's group when started by torchrun); torchrun: N "
                        "processes on this node; ray: Ray Train TorchTrainer (launch.ray.*)")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="torchrun launcher: processes (default: launch.nproc_per_node, else GPUs, else 1)")


def resolve(name: str) -> Path:
    from mtcc.pipeline.config import resolve_config

    return resolve_config(name)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def run(args: argparse.Namespace) -> int:
    import json

    from .config import load_train_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    path = resolve(args.config)
    if args.selection:
        args.set = [*args.set, f"data.selection={args.selection}"]  # travels to torchrun's processes too
    cfg = load_train_config(path, args.set, args.shards or None)
    launcher = args.launcher
    if launcher == "torchrun" and _under_torchrun():
        launcher = "local"
    if launcher == "torchrun":
        import torch

        n = args.nproc_per_node or cfg.launch.nproc_per_node or max(1, torch.cuda.device_count())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "mtcc.training", str(path), *(a for s in args.shards for a in ("--shards", s)),
               *(a for s in args.set for a in ("--set", s))]
        return subprocess.run(cmd, check=False).returncode
    if launcher == "ray":
        from .trainer import launch_ray

        summary = launch_ray(cfg)
    else:
        from .trainer import train

        summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    from mtcc.pipeline.errors import ConfigError

    p = argparse.ArgumentParser(prog="python -m mtcc.training", description="Train the MTCC embedding router.")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
