"""`mtcc env --all-nodes`: the node check (pipeline/node.py) run once on every live node of a Ray cluster, as a
task pinned to that node, so a user learns which node lacks what before a build places actors there."""

from __future__ import annotations

from typing import Any


def cluster_reports(cfg: Any, address: str | None) -> list[dict[str, Any]]:
    """One :func:`mtcc.pipeline.node.node_report` per live node of the cluster at ``address`` (default:
    ``RAY_ADDRESS``); RuntimeError when there is no cluster to join."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .executor import init_ray, ray_address
    from .node import node_report

    target, where = ray_address(address)
    if target is None:
        raise RuntimeError("--all-nodes checks a running Ray cluster: pass --address or set RAY_ADDRESS (without "
                           "them, `mtcc env` checks this node)")
    import ray

    init_ray(target)
    task = ray.remote(num_cpus=0)(node_report)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(cfg)
            for n in nodes]
    reports = ray.get(refs, timeout=300)
    for rep, n in zip(reports, nodes):
        rep["node"] = f"{rep['node']} ({n.get('NodeManagerAddress', '?')}, {where})"
    return reports
