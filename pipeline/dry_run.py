"""`mtcc run … --dry-run`: what a run would do, before it does anything. The resolved config, the plan (the
videos found and the shards they make, or what an existing OUT has left to build) and the resources the
stages' pools ask for, with the pools planned for this machine (or ``--cluster``). Starts no Ray, writes
nothing: the inputs are listed and fingerprinted, as the real plan is, and OUT is only read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from mtcc.storage.remote_io import RemoteIO

from .config import PipelineConfig
from .errors import PlanError
from .executor import ray_address
from .pools import Node, cluster_nodes, plan_pools
from .ray_executor import expected_needs
from .remote import is_remote_out, local_root

GIB = 2**30


def local_node(cfg: PipelineConfig) -> tuple[Node, str]:
    """This machine as an embedded Ray would offer it to actors: its CPUs (or ``ray.num_cpus``), its NVIDIA
    GPUs, and ``ray.memory_mb`` or else about 70 % of the memory available now (Ray keeps the rest for its object
    store)."""
    cpus = float(cfg.ray.num_cpus or os.cpu_count() or 1)
    gpus_dir = Path("/proc/driver/nvidia/gpus")
    gpus = float(len(list(gpus_dir.iterdir()))) if gpus_dir.is_dir() else 0.0
    available = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        available = 0
    memory = cfg.ray.memory_mb << 20 if cfg.ray.memory_mb else int(available * 0.7)
    return Node("this machine", cpus, gpus, memory), (f"this machine as an embedded Ray sees it: {cpus:g} CPUs, "
                                                      f"{gpus:g} GPUs, {memory / GIB:.1f} GiB for actors")


def plan_lines(cfg: PipelineConfig, inputs: list[str], out: str) -> list[str]:
    """What OUT holds and what the inputs add: videos, shards, shards left to build."""
    from .build import new_sources
    from .inputs import make_plan

    rio = RemoteIO(cfg.run.remote)
    per = cfg.run.videos_per_shard
    if not is_remote_out(out):
        root = local_root(out)
        plan_file, commits = root / "plan.parquet", root / "commits"
        if plan_file.exists():
            import pyarrow.parquet as pq

            shards = sorted(set(pq.read_table(plan_file, columns=["shard"]).column("shard").to_pylist()))
            done = sum((commits / f"{s:06d}.json").exists() for s in shards)
            return [f"OUT {out} has a plan: {len(shards)} shards, {done} committed, {len(shards) - done} to build "
                    f"(a resume: the plan is frozen, --input must name the same videos)"]
    warnings: list[str] = []
    sources = new_sources(inputs, rio, out, warnings.append)
    plan = make_plan(sources, per, rio)
    shards = len(set(plan.column("shard").to_pylist()))
    dups = sum(d is not None for d in plan.column("duplicate_of").to_pylist())
    size = sum(plan.column("size").to_pylist())
    lines = [f"{len(sources)} videos ({size / 2**20:.1f} MiB) in {shards} shards of up to {per} videos"
             + (f"; {dups} are byte-identical copies of another (planned once)" if dups else "")]
    return lines + [f"warning: {w}" for w in warnings]


def resource_lines(cfg: PipelineConfig, address: str | None, cluster: str | None) -> list[str]:
    """Per stage what one actor asks for, what one actor of every stage asks for together, and the pools
    planned for ``cluster`` (a name such as 8xH100) or this machine."""
    stages = cfg.active_stages
    needs = expected_needs(stages)
    rows = [("stage", "CPUs", "GPUs", "memory", "pool")]
    for s, n in zip(stages, needs):
        pool = "auto" if n.pinned is None else f"{n.pinned} (pinned)"
        if n.pinned is None and (s.resources.min_actors > 1 or s.resources.max_actors):
            pool += f" {s.resources.min_actors}..{s.resources.max_actors or ''}"
        rows.append((s.name, f"{n.shape.cpus:g}", f"{n.shape.gpus:g}", f"{n.shape.memory / 2**20:.0f} MiB", pool))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    cpu = sum(n.shape.cpus * (n.pinned or n.min_actors) for n in needs)
    gpu = sum(n.shape.gpus * (n.pinned or n.min_actors) for n in needs)
    mem = sum(n.shape.memory * (n.pinned or n.min_actors) for n in needs)
    lines.append(f"  the least a run starts with (one actor of each auto stage): {cpu:g} CPUs, {gpu:g} GPUs, "
                 f"{mem / GIB:.1f} GiB")
    _, where = ray_address(address or cfg.ray.address)
    if cluster:
        nodes, label = cluster_nodes(cluster), f"a {cluster} cluster"
    elif where.startswith("embedded"):
        node, label = local_node(cfg)
        nodes = [node]
    else:
        lines.append(f"the run would join {where} (not contacted): its pools are sized from that cluster when the "
                     f"run starts; --cluster SPEC plans them for a cluster you name")
        return lines
    try:
        plan = plan_pools(needs, nodes)
    except PlanError as e:
        lines.append(f"on {label}: {e}")
        return lines
    held_cpu, held_gpu = plan.held()
    lines.append(f"pools on {label} (before anything is measured; the run resizes them as it measures):")
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in plan.actors.items()))
    lines.append(f"  holding {held_cpu:g} CPUs and {held_gpu:g} GPUs")
    return lines


def dry_run(cfg: PipelineConfig, inputs: list[str], out: str, address: str | None = None,
            cluster: str | None = None) -> str:
    """The dry run's report (see the module docstring); BuildError when the real run would be refused at its
    plan (no inputs, no videos)."""
    _, where = ray_address(address or cfg.ray.address)
    doc = json.loads(json.dumps(cfg.dump(), default=str))
    doc["stages"] = {s.name: doc["stages"][s.name] for s in cfg.active_stages}
    parts = [
        f"dry run: nothing started, nothing written. Config: profile {cfg.profile}, hash {cfg.config_hash()} "
        f"(every setting, its meaning and where its value came from: mtcc config show {cfg.profile})",
        "",
        yaml.safe_dump(doc, sort_keys=False, width=110).rstrip(),
        "",
        "plan:",
        *(f"  {line}" for line in plan_lines(cfg, inputs, out)),
        "",
        f"ray: {where}",
        "resources one actor of each stage asks for:",
        *resource_lines(cfg, address, cluster),
    ]
    return "\n".join(parts)
