"""``mtcc bench --plan --cluster 8xH100``: the pools a profile would get on a cluster that is not here, and what
they would process.

Each stage's cost (actor-seconds per second of raw video) comes from the GPU bench of its model
(``--measured`` a ``mtcc bench --gpu --json`` file: GPU-seconds per clip-second at its best batch, divided by
the GPU share one actor holds, since co-located actors split a device's time) or, for stages without a
measurement, from its class's expected figure (measured on the offline profile's CPU box: a stated
placeholder). The planner (pipeline/pools.py) sizes the pools as a build would at start; the slowest pool
then sets the pace: seconds of raw video per second, hours of raw video per GPU-hour, and the hours to get
through a corpus (the paper's 200 hours by default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtcc.pipeline.config import load_config, resolve_config
from mtcc.pipeline.pools import StageNeed, cluster_nodes, plan_pools
from mtcc.pipeline.ray_executor import expected_needs

from .gpu.projection import parse_keep, reach


def measured_gpu_costs(path: str | None) -> dict[str, float]:
    """Stage -> GPU-seconds per clip-second at its best batch, from a ``mtcc bench --gpu --json`` file."""
    if not path:
        return {}
    doc = json.loads(Path(path).read_text())
    return {s: float(st["best"]["gpu_s_per_clip_s"]) for s, st in (doc.get("stages") or {}).items() if st.get("best")}


def plan_cluster(config: str, cluster: str, measured: str | None = None, keep_items: list[str] | None = None,
                 corpus_hours: float = 200.0, sets: list[str] | None = None) -> dict[str, Any]:
    cfg = load_config(resolve_config(config), ["models=null", *(sets or [])])
    stages = cfg.active_stages
    order = [s.name for s in stages]
    keep = parse_keep(keep_items or [], order)
    share = reach(order, keep)
    gpu = measured_gpu_costs(measured)
    needs, source = [], {}
    for need, stage in zip(expected_needs(stages), stages):
        if stage.name in gpu and stage.resources.num_gpus > 0:
            # an actor holding a share g of a device gets about that share of its time
            cost = gpu[stage.name] / stage.resources.num_gpus * share[stage.name]
            need = StageNeed(need.name, need.shape, cost, need.min_actors, need.max_actors, need.pinned, need.max_cpus)
            source[stage.name] = "measured (GPU bench)"
        else:
            need = StageNeed(need.name, need.shape, type(stage).expected_cost * share[stage.name], need.min_actors,
                             need.max_actors, need.pinned, need.max_cpus)
            source[stage.name] = "expected (offline CPU figure)"
        needs.append(need)
    nodes = cluster_nodes(cluster)
    plan = plan_pools(needs, nodes)
    rate = plan.throughput(needs)  # seconds of raw video per second
    cpu, gpus = plan.held()
    n_gpu = sum(n.gpus for n in nodes)
    return {
        "config": config, "cluster": cluster, "nodes": len(nodes), "cluster_cpus": sum(n.cpus for n in nodes),
        "cluster_gpus": n_gpu, "keep": keep,
        "stages": {n.name: {"actors": plan.actors[n.name], "cpus": plan.shapes[n.name].cpus,
                            "gpus": plan.shapes[n.name].gpus, "memory_gib": round(plan.shapes[n.name].memory / 2**30, 2),
                            "cost": n.cost, "cost_source": source[n.name]} for n in needs},
        "held": {"cpus": round(cpu, 2), "gpus": round(gpus, 3)}, "pace": plan.pace,
        "raw_s_per_s": rate, "raw_hours_per_gpu_hour": rate / n_gpu if n_gpu else None,
        "corpus_hours": corpus_hours, "corpus_wall_hours": corpus_hours / rate if rate else None,
    }


def format_plan(doc: dict[str, Any]) -> str:
    lines = [f"pools of profile '{doc['config']}' on {doc['cluster']} ({doc['nodes']} node(s), "
             f"{doc['cluster_cpus']:g} CPUs, {doc['cluster_gpus']:g} GPUs)",
             f"{'stage':<11}{'actors':>7}{'CPUs':>7}{'GPUs':>7}{'GiB':>6}{'cost':>10}  cost from"]
    for name, st in doc["stages"].items():
        lines.append(f"{name:<11}{st['actors']:>7}{st['cpus']:>7.2f}{st['gpus']:>7.2f}{st['memory_gib']:>6.1f}"
                     f"{st['cost']:>10.4f}  {st['cost_source']}")
    lines.append(f"held: {doc['held']['cpus']:g} / {doc['cluster_cpus']:g} CPUs, {doc['held']['gpus']:g} / "
                 f"{doc['cluster_gpus']:g} GPUs; pace set by '{doc['pace']}'")
    if doc["raw_s_per_s"]:
        per = doc["raw_hours_per_gpu_hour"]
        lines.append(f"projected: {doc['raw_s_per_s']:.2f} s of raw video per s"
                     + (f", {per:.2f} h of raw video per GPU-hour" if per else "")
                     + f"; {doc['corpus_hours']:g} h in {doc['corpus_wall_hours']:.2f} h")
    lines.append("cost: actor-seconds per second of raw video (cost per second of the stage's input x the share "
                 "of the raw seconds that reaches it; keep rates from --keep or each stage's typical_keep)")
    return "\n".join(lines)
