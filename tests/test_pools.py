"""The pool planner (pipeline/pools.py) on clusters described by numbers: auto pools fill a node's CPUs and
GPUs with the shipped profiles, never oversubscribe a node (CPUs, GPUs packed per device, host memory), keep
pinned pools as pinned, and give the most actors to the stage that holds everyone up."""

from __future__ import annotations

import pytest

from mtcc.pipeline.config import load_config, resolve_config
from mtcc.pipeline.errors import PlanError
from mtcc.pipeline.flow import StageLoad
from mtcc.pipeline.pools import EPS, Node, Shape, StageNeed, cluster_nodes, plan_pools
from mtcc.pipeline.ray_executor import expected_needs, measured_needs

GIB = 1 << 30
# the GPU shares a GPU node would give the offline profile's model stages
GPU_SHARES = ["stages.separate.resources.num_gpus=0.25", "stages.asd.resources.num_gpus=0.1",
              "stages.sync.resources.num_gpus=0.1", "stages.masks.resources.num_gpus=0.5",
              "stages.audio_emb.resources.num_gpus=0.1", "stages.caption.resources.num_gpus=0.25"]


def offline(*sets: str):
    return load_config(resolve_config("offline"), ["models=null", *sets]).active_stages


def assert_fits(plan, nodes: list[Node]) -> None:
    """No node is given more than it has: CPUs, host memory, and GPU shares that Ray can place on its
    devices when the executor creates the actors largest share first. Ray's raylet gives a fractional GPU
    demand the device it fits most tightly (least left after it; the first such device on a tie): written
    out here from that rule, not taken from the planner."""
    for node in nodes:
        here = [(s, plan.shapes[s]) for s, ids in plan.placement.items() for i in ids if i == node.id]
        assert sum(sh.cpus for _, sh in here) <= node.cpus + 1e-6, node.id
        assert sum(sh.memory for _, sh in here) <= node.memory + 1e-6, node.id
        devices = [1.0] * node.gpu_units
        for g in sorted((sh.gpus for _, sh in here if sh.gpus > 0), reverse=True):
            best = None
            for k, f in enumerate(devices):
                if f + EPS >= g and (best is None or f - g < devices[best] - g):
                    best = k
            assert best is not None, (node.id, g, devices)  # Ray would leave this actor pending for good
            devices[best] -= g


@pytest.mark.parametrize("nodes", [
    [Node("n0", 8, 2, 15 * GIB)],  # one node, as `ray start --num-cpus 8 --num-gpus 2` on this box
    [Node("n0", 4, 1, 7 * GIB), Node("n1", 2, 1, 5 * GIB), Node("n2", 2, 0, 4 * GIB)],  # three nodes
])
def test_the_offline_profile_holds_90_percent_of_cpus_and_gpus(nodes):
    needs = expected_needs(offline(*GPU_SHARES))
    assert all(n.pinned is None for n in needs)  # auto is the default in the profile as it ships
    plan = plan_pools(needs, nodes)
    cpu, gpu = plan.held()
    assert cpu >= 0.9 * sum(n.cpus for n in nodes), plan.actors
    assert gpu >= 0.9 * sum(n.gpus for n in nodes), plan.actors
    assert all(plan.actors[n.name] >= 1 for n in needs)
    assert_fits(plan, nodes)


def test_the_offline_profile_still_fits_a_laptop():
    nodes = [Node("laptop", 4, 0, 11 * GIB)]  # 16 GB of RAM: Ray offers actors about 11 GiB of it
    plan = plan_pools(expected_needs(offline()), nodes)
    assert all(v >= 1 for v in plan.actors.values())
    assert plan.held()[0] <= 4 + 1e-6
    assert_fits(plan, nodes)


def test_a_node_too_small_for_one_actor_of_every_stage_is_refused_naming_a_stage():
    with pytest.raises(PlanError, match=r"stage '\w+' cannot place actor 1 of 1") as short_of_memory:
        plan_pools(expected_needs(offline()), [Node("tiny", 2, 0, 2 * GIB)])
    # memory is what is short there: the message says how an embedded Ray's memory is set
    assert "ray.memory_mb" in str(short_of_memory.value)
    with pytest.raises(PlanError, match=r"stage '\w+' cannot place actor 1 of 1") as short_of_cpus:
        plan_pools(expected_needs(offline()), [Node("few_cpus", 1, 0, 64 * GIB)])
    assert "ray.memory_mb" not in str(short_of_cpus.value)


def test_pinned_pools_keep_their_size_and_shape_and_bounds_hold():
    needs = [StageNeed("a", Shape(1, 0, GIB), 1.0, pinned=2),
             StageNeed("b", Shape(1, 0, GIB), 5.0, max_actors=3, max_cpus=1),
             StageNeed("c", Shape(1, 0, GIB), 0.1, min_actors=2, max_cpus=1)]
    plan = plan_pools(needs, [Node("n", 16, 0, 64 * GIB)])
    assert plan.actors == {"a": 2, "b": 3, "c": 2}
    assert plan.shapes["a"] == Shape(1, 0, GIB)  # a pinned pool's actors are never grown


def test_the_stage_that_holds_everyone_up_gets_the_most_actors():
    needs = [StageNeed(f"s{i}", Shape(0.5, 0, GIB), cost, max_cpus=0.5) for i, cost in enumerate((0.1, 3.0, 0.5))]
    plan = plan_pools(needs, [Node("n", 8, 0, 64 * GIB)])
    assert max(plan.actors, key=plan.actors.get) == "s1"
    # throughput is balanced: actors in proportion to cost, within one actor
    assert plan.actors["s1"] >= 5 * plan.actors["s2"] - 5


def test_measured_cost_replaces_the_expected_and_a_finished_stage_gets_the_fewest():
    stages = offline()
    names = [s.name for s in stages]
    loads = {n: StageLoad(media_in=100.0, actor_s=1.0, cpu_s=1.0, batches=5) for n in names}
    loads["masks"] = StageLoad(media_in=100.0, actor_s=900.0, cpu_s=900.0, batches=5)  # a planted slow stage
    loads["faces"] = StageLoad(media_in=100.0, actor_s=1.0, cpu_s=1.0, batches=5, done=True)
    needs = {n.name: n for n in measured_needs(stages, loads)}
    assert needs["masks"].cost == pytest.approx(9.0) and needs["faces"].cost == 0.0
    plan = plan_pools(list(needs.values()), [Node("n", 16, 0, 40 * GIB)])
    assert max(plan.actors, key=plan.actors.get) == "masks" and plan.actors["faces"] == 1


def test_cluster_names_parse_into_nodes():
    nodes = cluster_nodes("8xH100")
    assert len(nodes) == 1 and nodes[0].gpus == 8 and nodes[0].gpu_units == 8 and nodes[0].cpus >= 64
    assert len(cluster_nodes("4x8xH100")) == 4
    assert cluster_nodes("2x16cpu")[1].cpus == 16
    with pytest.raises(ValueError, match="unknown GPU kind"):
        cluster_nodes("8xQ9000")
