"""PoolPlan: how many actors each stage gets on a given cluster, and how large each actor is.

A stage's pool is either pinned (``resources.concurrency: N``) or ``auto``. Auto pools are sized so the
stages keep pace with each other: each stage has a cost (actor-seconds per second of media, expected from
its class until the build measures it), and actors go, one at a time, to the stage that holds everyone up
(the highest cost per actor) wherever one more of its actors fits a node (CPUs, GPUs and host memory, per
node: no node is oversubscribed). A stage whose actor no longer fits anywhere sets the pace; adding to a
stage already faster than that buys nothing, so the filling stops there. What is left of each node is then
shared: GPU devices left part-empty take more actors of the GPU stages (slowest first), and the CPUs left
on a node go to the actors there whose stage can use more threads, in proportion to their stage's cost per
actor (``Stage.resources.threads`` defaults to the share), so a small cluster is held whole by a few large
actors rather than by many that its memory could not hold.

Pure arithmetic on numbers, no Ray: the executor plans at start and again while the build runs (with
measured costs, after nodes join or leave), and ``mtcc bench --plan`` projects a cluster that is not here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .errors import PlanError

EPS = 1e-9
# how much of a node's host memory actors may take: the rest is Ray's own processes and the object store
MEMORY_HEADROOM = 0.9



@dataclass(frozen=True)
class Shape:
    """What one actor asks the scheduler for."""

    cpus: float
    gpus: float = 0.0
    memory: int = 0  # bytes of host memory

    def fits(self, node: Node) -> bool:
        return (self.cpus <= node.cpus + EPS and self.gpus <= node.gpus + EPS
                and self.memory <= node.memory + EPS and (self.gpus <= 0 or node.gpu_units > 0))


@dataclass
class Node:
    """A node's free resources (``gpu_units``: whole devices, so a fractional share is packed on one)."""

    id: str
    cpus: float
    gpus: float = 0.0
    memory: int = 0
    gpu_free: list[float] = field(default_factory=list)  # free share of each device

    def __post_init__(self) -> None:
        if not self.gpu_free and self.gpus > 0:
            whole = int(math.floor(self.gpus + EPS))
            self.gpu_free = [1.0] * whole + ([self.gpus - whole] if self.gpus - whole > EPS else [])

    @property
    def gpu_units(self) -> int:
        return len(self.gpu_free)

    def take(self, shape: Shape) -> bool:
        """Reserve ``shape`` here (a fractional GPU share on the fullest device it fits: packing leaves
        whole devices free); False when it does not fit."""
        if not shape.fits(self):
            return False
        if shape.gpus > 0:
            need = shape.gpus
            if need <= 1.0 + EPS:
                fits = [i for i, f in enumerate(self.gpu_free) if f + EPS >= need]
                if not fits:
                    return False
                i = min(fits, key=lambda j: self.gpu_free[j])
                self.gpu_free[i] -= need
            else:  # several whole devices
                whole = [i for i, f in enumerate(self.gpu_free) if f > 1.0 - EPS]
                if len(whole) + EPS < need:
                    return False
                for i in whole[: int(math.ceil(need - EPS))]:
                    self.gpu_free[i] = 0.0
        self.cpus -= shape.cpus
        self.gpus -= shape.gpus
        self.memory -= shape.memory
        return True


@dataclass(frozen=True)
class StageNeed:
    """One stage as the planner sees it."""

    name: str
    shape: Shape  # the declared actor: the least one actor gets
    cost: float  # actor-seconds per second of media at that shape (expected, then measured)
    min_actors: int = 1
    max_actors: int | None = None
    pinned: int | None = None  # a number in the config: exactly that many actors, at the declared shape
    max_cpus: float | None = None  # the most CPUs one actor can use (its threads); None: no growth


@dataclass
class PoolPlan:
    actors: dict[str, int]
    shapes: dict[str, Shape]  # the shape of each stage's actors (the declared one, grown by leftovers)
    nodes: list[Node]  # what the plan leaves free on each node
    placement: dict[str, list[str]] = field(default_factory=dict)  # stage -> node id of each actor
    pace: str | None = None  # the stage that sets the pace (its actors fit nowhere more)

    def held(self) -> tuple[float, float]:
        """(CPUs, GPUs) the planned actors ask for."""
        cpu = sum(self.actors[s] * self.shapes[s].cpus for s in self.actors)
        gpu = sum(self.actors[s] * self.shapes[s].gpus for s in self.actors)
        return cpu, gpu

    def throughput(self, needs: Iterable[StageNeed]) -> float:
        """Seconds of media per second the planned pools process together: their slowest stage's rate."""
        rates = [self.actors[n.name] * (self.shapes[n.name].cpus / n.shape.cpus if n.shape.cpus > 0 else 1.0)
                 / n.cost for n in needs if n.cost > 0 and self.actors.get(n.name)]
        return min(rates) if rates else math.inf


def _load(need: StageNeed, count: int) -> float:
    return need.cost / count if count else math.inf


def plan_pools(needs: list[StageNeed], nodes: list[Node], grow: bool = True) -> PoolPlan:
    """Actors per stage for ``nodes`` (their free resources), see the module docstring. Raises PlanError
    naming the stage when not even the pinned pools and one actor of every other stage fit."""
    free = [replace(n, gpu_free=list(n.gpu_free)) for n in nodes]
    count = {n.name: 0 for n in needs}
    placement: dict[str, list[str]] = {n.name: [] for n in needs}

    def place(need: StageNeed, shape: Shape) -> bool:
        # the node with the most room after it (spreads load, keeps large holes for large actors less
        # often than best-fit would; a pool of one stage ends up spread over nodes)
        fits = [node for node in free if shape.fits(node)]
        for node in sorted(fits, key=lambda n: (-(n.cpus - shape.cpus), n.id)):
            if node.take(shape):
                count[need.name] += 1
                placement[need.name].append(node.id)
                return True
        return False

    # the pools that must exist: pinned ones whole, one (min) actor of every auto one; largest first
    first = sorted(needs, key=lambda n: (-n.shape.gpus, -n.shape.cpus, -n.shape.memory, n.name))
    for need in first:
        want = need.pinned if need.pinned is not None else max(1, need.min_actors)
        for _ in range(want):
            if not place(need, need.shape):
                total_cpu = sum(n.cpus for n in nodes)
                total_gpu = sum(n.gpus for n in nodes)
                # memory alone is short: an embedded Ray offers what was free when it started
                short = any(need.shape.cpus <= n.cpus + EPS and need.shape.gpus <= n.gpus + EPS for n in free)
                raise PlanError(
                    f"stage '{need.name}' cannot place actor {count[need.name] + 1} of {want} (each asks for "
                    f"{need.shape.cpus:g} CPUs, {need.shape.gpus:g} GPUs, {need.shape.memory / 2**30:.1f} GiB) "
                    f"beside the other stages' first actors: the cluster has {total_cpu:g} CPUs, {total_gpu:g} "
                    f"GPUs on {len(nodes)} node(s) ({sum(n.memory for n in nodes) / 2**30:.1f} GiB of memory "
                    f"for actors); lower stages.<name>.resources (num_cpus, num_gpus, memory_mb, concurrency), "
                    f"add nodes, or run in one process (--runner inprocess)"
                    + ("; an embedded Ray offers actors the memory free when it starts, less its object store: "
                       "ray.memory_mb sets it" if short else ""))

    # the filling: one actor at a time to the stage that holds everyone up. A stage that cannot grow (pinned,
    # at its max_actors, or whose actor fits nowhere more) sets the pace for the others: growing a stage
    # that is already faster than the pace buys nothing
    auto = [n for n in needs if n.pinned is None]
    blocked: set[str] = set()

    def fixed(n: StageNeed) -> bool:
        return n.pinned is not None or n.name in blocked or (n.max_actors is not None and count[n.name] >= n.max_actors)

    while True:
        open_ = [n for n in auto if not fixed(n) and n.cost > 0]
        if not open_:
            break
        top = max(open_, key=lambda n: (_load(n, count[n.name]), n.name))
        pace_load = max((_load(n, count[n.name]) for n in needs if fixed(n) and n.cost > 0), default=0.0)
        if _load(top, count[top.name]) <= pace_load + EPS:
            break  # every stage that could still grow is already faster than the one that sets the pace
        if not place(top, top.shape):
            blocked.add(top.name)
    slow = [n for n in needs if n.cost > 0 and count[n.name]]
    pace = max(slow, key=lambda n: _load(n, count[n.name])).name if slow else None
    shapes = {n.name: n.shape for n in needs}
    if grow:
        _fill_gpus(needs, count, lambda n, shape: place(n, shape))
        _grow_gpus(needs, count, placement, free, shapes)
        _grow(needs, count, placement, free, shapes)
    _in_ray_order(needs, count, placement, free, shapes)
    return PoolPlan(count, shapes, free, placement, pace)


def _in_ray_order(needs: list[StageNeed], count: dict[str, int], placement: dict[str, list[str]], free: list[Node],
                  shapes: dict[str, Shape]) -> None:
    """The plan placed shares in planning order; Ray places them in creation order (largest first, best
    fit). Where the two differ so that a share would find no device, an actor of the auto GPU stage with the
    most actors on that node goes (never below its min_actors): an actor Ray cannot place waits forever."""
    by_name = {n.name: n for n in needs}
    for node in free:
        while not _packs(node, placement, shapes):
            gone = [n for n in by_name.values() if n.pinned is None and shapes[n.name].gpus > 0
                    and node.id in placement[n.name] and count[n.name] > max(1, n.min_actors)]
            if not gone:
                break  # nothing of ours to drop: the pinned or first actors are what they are
            drop = max(gone, key=lambda n: (placement[n.name].count(node.id), n.name))
            placement[drop.name].remove(node.id)
            count[drop.name] -= 1
            shape = shapes[drop.name]
            node.cpus += shape.cpus
            node.gpus += shape.gpus
            node.memory += shape.memory
        devices = pack_like_ray(_shares_on(node, placement, shapes), node.gpu_units)
        if devices is not None:
            node.gpu_free = devices


def _fill_gpus(needs: list[StageNeed], count: dict[str, int], place) -> None:
    """GPU devices left partly empty by the pace filling take more actors of the GPU stages, slowest stage
    first, while one fits: a GPU share nobody holds is a GPU nobody uses."""
    gpu_auto = [n for n in needs if n.pinned is None and n.shape.gpus > 0 and n.cost > 0]
    full: set[str] = set()
    while True:
        open_ = [n for n in gpu_auto if n.name not in full and (n.max_actors is None or count[n.name] < n.max_actors)]
        if not open_:
            return
        top = max(open_, key=lambda n: (_load(n, count[n.name]), n.name))
        if not place(top, top.shape):
            full.add(top.name)


def _grow(needs: list[StageNeed], count: dict[str, int], placement: dict[str, list[str]], free: list[Node],
          shapes: dict[str, Shape]) -> None:
    """Share the CPUs the filling left on each node among the actors there whose stage can use more threads,
    in proportion to their stage's cost per actor. One shape per stage (every actor of a pool is as large as
    any other), so a stage grows by what its tightest node allows."""
    nodes = {n.id: n for n in free}
    users = [n for n in needs if n.pinned is None and count[n.name] > 0 and n.cost > 0
             and (n.max_cpus or n.shape.cpus) > n.shape.cpus + EPS]
    weight: dict[str, float] = {}
    for n in users:
        for node_id in set(placement[n.name]):
            weight[node_id] = weight.get(node_id, 0.0) + _load(n, count[n.name])
    extra: dict[str, float] = {}
    for n in users:
        share = min(nodes[i].cpus * _load(n, count[n.name]) / weight[i] / placement[n.name].count(i)
                    for i in set(placement[n.name]))
        extra[n.name] = _floor(min(share, (n.max_cpus or n.shape.cpus) - n.shape.cpus))
    for n in users:
        if extra[n.name] <= EPS:
            continue
        shapes[n.name] = replace(shapes[n.name], cpus=round(shapes[n.name].cpus + extra[n.name], 4))
        for node_id in placement[n.name]:
            nodes[node_id].cpus -= extra[n.name]


def _grow_gpus(needs: list[StageNeed], count: dict[str, int], placement: dict[str, list[str]], free: list[Node],
               shapes: dict[str, Shape]) -> None:
    """Share the GPU left on each node among its GPU actors, by their stage's cost per actor, each share at
    most a whole device and all of them still packed onto the node's devices (largest first): a device
    held by fewer actors runs each of them faster. One shape per stage, as for CPUs."""
    nodes = {n.id: n for n in free}
    users = [n for n in needs if n.pinned is None and count[n.name] > 0 and n.cost > 0 and 0 < n.shape.gpus < 1.0]
    if not users:
        return
    weight: dict[str, float] = {}
    for n in users:
        for node_id in set(placement[n.name]):
            weight[node_id] = weight.get(node_id, 0.0) + _load(n, count[n.name])
    extra = {n.name: min(min(nodes[i].gpus * _load(n, count[n.name]) / weight[i] / placement[n.name].count(i)
                             for i in set(placement[n.name])), 1.0 - n.shape.gpus) for n in users}
    for _ in range(20):  # shrink the growth until every node's GPU shares pack onto its devices again
        grown = dict(shapes) | {n.name: replace(shapes[n.name], gpus=round(shapes[n.name].gpus + _floor(extra[n.name]), 4))
                                for n in users}
        if all(_packs(node, placement, grown) for node in nodes.values()):
            for n in users:
                add = grown[n.name].gpus - shapes[n.name].gpus
                for node_id in placement[n.name]:
                    nodes[node_id].gpus -= add
                shapes[n.name] = grown[n.name]
            _repack(nodes, placement, shapes)
            return
        extra = {k: v * 0.8 for k, v in extra.items()}


def pack_like_ray(shares: list[float], units: int) -> list[float] | None:
    """Each device's free share after placing the fractional GPU ``shares`` as Ray does when the executor
    creates the actors largest share first: every share on the device it fits most tightly (Ray's raylet
    allocates a fractional GPU demand by best fit, the first such device on a tie). None when one does not
    fit: Ray would leave that actor pending however much GPU the node has in total."""
    devices = [1.0] * units
    for g in sorted(shares, reverse=True):
        fits = [k for k, f in enumerate(devices) if f + EPS >= g]
        if not fits:
            return None
        d = min(fits, key=lambda k: devices[k] - g)
        devices[d] -= g
    return devices


def _shares_on(node: Node, placement: dict[str, list[str]], shapes: dict[str, Shape]) -> list[float]:
    return [shapes[s].gpus for s, ids in placement.items() for i in ids if i == node.id and 0 < shapes[s].gpus]


def _packs(node: Node, placement: dict[str, list[str]], shapes: dict[str, Shape]) -> bool:
    """Whether the fractional GPU shares placed on ``node`` fit its devices as Ray will place them."""
    shares = _shares_on(node, placement, shapes)
    return not shares or pack_like_ray(shares, node.gpu_units) is not None


def _repack(nodes: dict[str, Node], placement: dict[str, list[str]], shapes: dict[str, Shape]) -> None:
    """Each node's free share per device after the shares grew, as Ray will place them."""
    for node in nodes.values():
        devices = pack_like_ray(_shares_on(node, placement, shapes), node.gpu_units)
        node.gpu_free = devices if devices is not None else [0.0] * node.gpu_units


def _floor(x: float, step: float = 0.01) -> float:
    """Round a share down to a hundredth (Ray's resource accounting keeps four decimals; shares that add up
    to slightly more than a node has would leave the last actor unplaced)."""
    return max(0.0, math.floor(x / step + EPS) * step)


def cluster_nodes(spec: str, memory_gib_per_node: float | None = None) -> list[Node]:
    """Nodes of a cluster named like ``8xH100`` (one node of 8 GPUs), ``4x8xH100`` (four of them) or
    ``2x16cpu``: for projections (``mtcc bench --plan --cluster``). An H100 node is taken as the usual cloud
    shape: 8 GPUs, 26 CPUs per GPU... held back to 24 for the system, 1.8 TiB of host memory."""
    parts = spec.lower().split("x")
    try:
        if parts[-1].endswith("cpu"):
            n_nodes = int(parts[0]) if len(parts) == 2 else 1
            cpus = float(parts[-1].removesuffix("cpu"))
            mem = (memory_gib_per_node or cpus * 4) * 2**30
            return [Node(f"node{i}", cpus, 0.0, int(mem)) for i in range(n_nodes)]
        kind = parts[-1]
        gpus = int(parts[-2])
        n_nodes = int(parts[-3]) if len(parts) == 3 else 1
    except (ValueError, IndexError) as e:
        raise ValueError(f"cluster {spec!r}: expected GPUSxKIND (8xH100), NODESxGPUSxKIND (4x8xH100) or "
                         f"NODESxCPUScpu (2x16cpu)") from e
    if kind not in GPU_NODES:
        raise ValueError(f"cluster {spec!r}: unknown GPU kind {kind!r}; known: {', '.join(sorted(GPU_NODES))}")
    cpus_per_gpu, mem_per_gpu = GPU_NODES[kind]
    mem = (memory_gib_per_node or mem_per_gpu * gpus) * 2**30
    return [Node(f"node{i}", float(cpus_per_gpu * gpus), float(gpus), int(mem)) for i in range(n_nodes)]


# per GPU of a typical cloud node of that kind: (CPUs, GiB of host memory)
GPU_NODES = {"h100": (24, 225), "h200": (24, 250), "a100": (12, 140), "l40s": (16, 128), "a10g": (8, 64)}
