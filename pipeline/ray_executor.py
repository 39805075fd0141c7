"""The Ray executor: one pool of actors per stage, sized by pipeline/pools.py and resized while the build runs.

Ray Core actors, one pool per stage, rather than Ray Data: the shard is our unit of commit, so the driver
must know when every candidate of a shard is through; a worker death must turn into a retry or a
per-candidate ``error`` row (Ray Data fails the job on a UDF exception, or drops whole blocks with
``max_errored_blocks``); and output must be byte-identical across reruns (``write_webdataset`` names files
with uuids and stamps mtimes).

Pools. At start every pool is planned on the cluster's free resources (``plan_pools``) and each actor is
placed on the node the plan chose (node affinity: a node that dies takes its actors with it, instead of Ray
trying forever to restart them where they no longer fit). While the build runs, ``rebalance`` plans again
with each stage's measured cost and the live nodes, and moves the pools towards that plan: actors of stages
that wait are retired (they finish what they hold, then go), actors of the stage that holds everyone up are
added where they fit. Nodes that join are planned in at the next rebalance; actors of a node that is gone
are dropped from their pools, their batches retried elsewhere, and the build stops only when some stage
has no actor left and none can be placed. A node where an actor of a stage could not start (its process died
as it started, its setup failed there, its restart kept dying) gets no more actors of that stage while another
node can hold them: one bad node of a large cluster (a broken GPU driver, a model folder missing there) costs
its actors, not the build. Pool sizes never change what a candidate becomes: output bytes
do not depend on the schedule.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mtcc.stages import Stage
from mtcc.stages.base import Candidate, MemberLost, MemberRef

from .errors import PlanError, StageSetupError
from .executor import (
    Executor,
    Ticket,
    WorkerLost,
    WorkspaceSpec,
    attach_members,
    wire_bytes,
)
from .flow import StageLoad
from .pools import Node, PoolPlan, Shape, StageNeed, pack_like_ray, plan_pools
from .ray_actor import StageActor

MB = 1 << 20
# how long a new actor may take to load its models before it is given up on (it is killed and the plan
# tries again at the next rebalance)
START_TIMEOUT_S = 900.0
# an actor whose process dies as it starts (a native library that crashes on import, a node out of memory) is
# restarted by Ray at once, again and again, and never answers: after this many restarts before its models
# loaded it is given up on, seconds after the start rather than at START_TIMEOUT_S
START_RESTARTS = 3
# how often the restarts of actors still starting, or of actors that lost a batch, are counted
START_POLL_S = 2.0
# a stage left with no actor stops the build once this many actors in a row could not start for it (each new
# one would die the same way: a pool refilled without end is a build that never ends)
START_TRIES = 3
# how long a stage with no actor may find no node with room for one, none being made, before the build stops
NO_ROOM_S = 60.0
# how long Ray may take to give a new GPU actor its share before it counts as unplaceable (a worker process
# starts in a second or two; a share that finds no device with room would wait forever)
PLACE_TIMEOUT_S = 120.0


@dataclass
class Slot:
    """One actor of a pool."""

    id: int
    handle: Any
    shape: Shape
    node: str
    ready_ref: Any
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False
    inflight: int = 0  # batches sent to it and not yet back
    sent: list[Any] = field(default_factory=list)  # their first refs, in the order it runs them
    # its process died under a batch, and it has not answered since: ``probe`` asks it whether its restart
    # loaded its models, and Ray's count of its restarts, read when its loss was first looked at, tells a
    # process that keeps dying as it restarts (dropped) from one killed by a batch (it answers the probe)
    lost_batch: bool = False
    restarts_at_loss: int | None = None
    probe: Any = None
    restarts_known: int = 0  # Ray's count of its restarts when a batch was last found to have died with it
    on_avoided: bool = False  # started on a node its stage already avoided (no other had room)

    def loading(self) -> bool:
        """Placed, still loading its models, and not yet given up on (START_TIMEOUT_S)."""
        return not self.ready and time.monotonic() - self.started <= START_TIMEOUT_S


def _said(e: BaseException) -> str:
    """A Ray error in one line: its kind and the first line of its message (the rest is a traceback)."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def stage_memory(stage: Stage) -> int:
    return int((stage.resources.memory_mb or type(stage).actor_memory_mb) * MB)


def stage_need(stage: Stage, cost: float) -> StageNeed:
    r = stage.resources
    max_cpus = r.max_cpus or max(r.num_cpus, type(stage).max_actor_cpus)
    if r.threads:  # a pinned thread count uses no more CPUs than that
        max_cpus = max(r.num_cpus, min(max_cpus, float(r.threads)))
    return StageNeed(stage.name, Shape(r.num_cpus, r.num_gpus, stage_memory(stage)), cost, r.min_actors,
                     r.max_actors, r.pinned, max_cpus)


def expected_needs(stages: list[Stage]) -> list[StageNeed]:
    """Each stage's need before anything was measured: its class's expected cost, weighted by the share of
    the raw video's seconds that typically reaches it."""
    reach = 1.0
    out = []
    for s in stages:
        out.append(stage_need(s, type(s).expected_cost * reach))
        reach *= type(s).typical_keep
    return out


def measured_needs(stages: list[Stage], loads: dict[str, StageLoad], min_batches: int = 2) -> list[StageNeed]:
    """Needs from what the build measured: actor-seconds per second of raw video for each stage that has run
    ``min_batches`` batches (its cost per second of its own input times the share of the raw seconds that
    reached it); the expected figure for the others; no cost (the fewest actors) for a stage nothing can
    reach any more."""
    expected = {n.name: n for n in expected_needs(stages)}
    first = next((loads[s.name].media_in for s in stages if loads.get(s.name) and loads[s.name].media_in > 0), 0.0)
    out = []
    for s in stages:
        load = loads.get(s.name)
        if load is not None and load.done and not load.queued and not load.inflight:
            out.append(stage_need(s, 0.0))
        elif load is not None and load.batches >= min_batches and load.media_in > 0 and first > 0:
            out.append(stage_need(s, load.cpu_s / first))
        else:
            out.append(expected[s.name])
    return out


class RayExecutor(Executor):
    """One actor pool per stage (see the module docstring). Each actor has at most two batches queued, so it
    never waits on the driver between batches."""

    name = "ray"
    per_actor_inflight = 2

    def __init__(self, stages: list[Stage], workspace: WorkspaceSpec, log: Callable[[str], None] = lambda m: None):
        import ray

        self.ray = ray
        self.stages = stages
        self.workspace = workspace
        self.log = log
        # what crosses between the driver and the workers: candidates both ways, member bytes among what the
        # driver receives (none, by design), and the members the commit fetches (each once)
        self.driver_bytes: dict[str, int] = {"sent": 0, "received": 0, "member_bytes_received": 0,
                                             "member_bytes_resolved": 0}
        self._remote_cls = ray.remote(StageActor)
        self._ids = itertools.count()
        self.pools: list[list[Slot]] = [[] for _ in stages]
        self._slots: dict[int, Slot] = {}
        self._refs: dict[Any, tuple[Ticket, list[Any]]] = {}
        self._t0 = time.monotonic()
        self.timeline: list[dict[str, Any]] = []
        self.changes: list[str] = []
        self._cluster: dict[str, float] = {}
        self._restarts_counted = self._losses_counted = 0.0
        # per stage: how many actors in a row could not start for it, and why the last one could not
        self._failed_starts: dict[int, tuple[int, str]] = {}
        # per stage: the nodes where one of its actors could not start or come back, and why (_start_failed)
        self._bad: dict[int, dict[str, str]] = {}
        self._no_room: dict[int, float] = {}  # per stage with no actor: since when no node had room for one
        try:
            plan = plan_pools(expected_needs(stages), self._nodes(free_only=True))
        except PlanError as e:
            raise StageSetupError(str(e)) from e
        # largest GPU share first, each placed before the next is asked for: Ray gives a fractional share the
        # device it fits most tightly, in the order the requests reach it, so this packs the devices as the plan
        # did (requests racing each other could leave a later share no device with room, pending for good)
        order = sorted(((i, node) for i, s in enumerate(stages) for node in plan.placement[s.name]),
                       key=lambda x: (-plan.shapes[stages[x[0]].name].gpus, x[0]))
        for i, node in order:
            slot = self._start(i, plan.shapes[stages[i].name], node, clear=True)
            if 0 < slot.shape.gpus < 1:
                self._wait_placed(i, slot)
        self._wait_started()
        self._record("start")

    def _wait_placed(self, i: int, slot: Slot) -> None:
        """Wait until Ray has placed ``slot``'s actor (not loaded: placed). One that cannot be placed within
        PLACE_TIMEOUT_S leaves its pool (a stage's last one stops the run, naming it and what it asks for)."""
        try:
            self.ray.get(slot.handle.placed.remote(), timeout=PLACE_TIMEOUT_S)
            return
        except self.ray.exceptions.GetTimeoutError:
            pass
        self._drop(i, slot)
        name = self.stages[i].name
        what = f"{slot.shape.cpus:g} CPUs, {slot.shape.gpus:g} GPU, {slot.shape.memory / 2**30:.1f} GiB"
        if not self.pools[i]:
            self.shutdown()
            raise StageSetupError(f"stage '{name}': Ray could not place its actor ({what}) on the planned node "
                                  f"in {PLACE_TIMEOUT_S:.0f}s; lower stages.{name}.resources or add nodes")
        self.log(f"pools: an actor of {name} ({what}) could not be placed in {PLACE_TIMEOUT_S:.0f}s; "
                 f"its pool goes on with {len(self.pools[i])}")

    def _wait_started(self) -> None:
        """Wait for every first actor to load its models. One that cannot (a setup error, a process that keeps
        dying as it starts) leaves its pool and its node is avoided for the stage (``_first_failed``); a stage
        left with no actor and nowhere else to start one stops the run, naming it. The stages still loading
        are logged every half minute, and given up on after START_TIMEOUT_S."""
        waiting = {slot.ready_ref: (i, slot) for i, pool in enumerate(self.pools) for slot in pool}
        said = time.monotonic()
        while waiting:
            done, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=START_POLL_S)
            table = self._restart_table([slot for _, slot in waiting.values()])
            failed = []
            for ref in done:
                i, slot = waiting.pop(ref)
                try:
                    err = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:  # its process died as it started or loaded its models
                    err = (f"stage '{self.stages[i].name}' failed to set up: "
                           f"{self._died(i, slot, _said(e), table.get(slot.id, (0, '?'))[1])}")
                if err:
                    failed.append((i, slot, err))
                    continue
                slot.ready = True
                slot.restarts_known = table.get(slot.id, (0, None))[0]
                self._failed_starts.pop(i, None)
            for ref, (i, slot) in list(waiting.items()):
                crashed = self._crash_looping(i, slot, table.get(slot.id))
                if crashed:
                    del waiting[ref]
                    failed.append((i, slot, f"stage '{self.stages[i].name}' failed to set up: {crashed}"))
            for i, slot, err in failed:
                again = self._first_failed(i, slot, err)
                if again is not None:
                    waiting[again.ready_ref] = (i, again)
            if waiting:
                names = sorted({self.stages[i].name for i, _ in waiting.values()})
                if any(not slot.loading() for _, slot in waiting.values()):  # each from its own start
                    self.shutdown()
                    raise StageSetupError(
                        f"actors of {', '.join(names)} did not start in {START_TIMEOUT_S:.0f}s: their models are "
                        f"still loading, or their process dies as it starts and Ray keeps restarting it (a crash "
                        f"in a native library, a node out of memory); the workers' logs in Ray's session folder "
                        f"say which")
                if time.monotonic() - said >= 30:
                    said = time.monotonic()
                    self.log(f"pools: {len(waiting)} actor(s) still loading: {', '.join(names)}")

    def _first_failed(self, i: int, slot: Slot, err: str) -> Slot | None:
        """A first actor of stage ``i`` could not start (``err``): it leaves its pool, and its node is avoided
        for the stage. The run goes on while the stage has other actors, or another node that can hold one: one
        is started there now (returned, to be waited for) where one has room, else by the health check, which
        makes room as for a lost node's stage. Otherwise, or after START_TRIES in a row, it stops with ``err``
        (a setup error that is no node's doing thus still refuses the run before anything is written)."""
        self._drop(i, slot)
        self._start_failed(i, slot, err)
        name, where = self.stages[i].name, self._host(slot.node)
        if self.pools[i]:
            self.log(f"pools: a '{name}' actor could not start on node {where} ({err}); the stage goes on with "
                     f"its {len(self.pools[i])} other(s)")
            return None
        bad = self._bad.get(i, {})
        elsewhere = self._usable_elsewhere(i)
        if len(bad) < START_TRIES and elsewhere:  # nodes, not actors: the plan may put several on one
            shape = stage_need(self.stages[i], 1.0).shape
            node = next((n for n in self._nodes(free_only=True) if n.id in elsewhere and n.take(shape)), None)
            self.log(f"pools: a '{name}' actor could not start on node {where} ({err}); the stage starts one on "
                     f"{f'node {self._host(node.id)}' if node else 'another node once room is made there'}")
            if node is None:
                return None
            # node.take found its share a device with room; it is waited for as the first actors are
            return self._start(i, shape, node.id, clear=False)
        self.shutdown()
        tried = f" (it could not start on {len(bad)} nodes: {', '.join(self._host(n) for n in bad)})" \
            if len(bad) > 1 else ""
        raise StageSetupError(err + tried)

    def _host(self, node: str) -> str:
        """A node as a user finds it: its address, and the start of its id (nodes of one machine share one)."""
        addr = next((n.get("NodeManagerAddress", "") for n in self.ray.nodes() if n["NodeID"] == node), "")
        return f"{addr} ({node[:8]})" if addr else node

    def _usable_elsewhere(self, i: int) -> list[str]:
        """The live nodes, besides those avoided for stage ``i``, whose whole capacity can hold one of its
        actors (room may have to be made there)."""
        shape = stage_need(self.stages[i], 1.0).shape
        bad = self._bad.get(i, {})
        return [n.id for n in self._whole_nodes() if n.id not in bad and shape.fits(n)]

    def _whole_nodes(self) -> list[Node]:
        """The live nodes at their whole capacity (what they could hold with nothing on them)."""
        return [Node(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0),
                     int(n["Resources"].get("memory", 0.0))) for n in self._alive()]

    def _without_actor(self) -> list[int]:
        """The stages that have no actor (retiring ones aside): lost with their nodes, or none could start."""
        return [i for i, pool in enumerate(self.pools) if not any(not x.retiring for x in pool)]

    def _restarts(self, slot: Slot) -> tuple[int, Any] | None:
        """How often Ray restarted ``slot``'s actor, and its last process's pid (None if Ray cannot say)."""
        return self._restart_table([slot]).get(slot.id)

    def _restart_table(self, slots: list[Slot]) -> dict[int, tuple[int, Any]]:
        """``_restarts`` for each of ``slots``: one call to Ray's control store for each, or for more than a
        few, one call for the whole job (a big cluster starts hundreds of actors at once)."""
        from ray._private import state

        if not slots:
            return {}
        try:
            if len(slots) <= 3:
                table = {x.handle._actor_id.hex(): state.actors(x.handle._actor_id.hex()) for x in slots}
            else:
                table = state.actors(job_id=self.ray.JobID.from_hex(self.ray.get_runtime_context().get_job_id()))
        except Exception:  # noqa: BLE001 - a private API: without it, START_TIMEOUT_S still gives up on the actor
            return {}
        out = {}
        for x in slots:
            info = table.get(x.handle._actor_id.hex())
            if info:
                out[x.id] = (int(info.get("NumRestarts") or 0), info.get("Pid") or "?")
        return out

    def _died(self, i: int, slot: Slot, detail: str, pid: Any) -> str:
        """Why an actor of stage ``i`` could not start or come back, and where to look. (Ray reports a process
        that died in the constructor, in ``setup`` or while it restarted in ways that race each other: one
        message for them all, with what Ray said as ``detail``.)"""
        return (f"its actor's process died as it started or loaded its models ({detail}); a crash in a native "
                f"library the stage imports, or a node out of memory, does this: give it more memory "
                f"(stages.{self.stages[i].name}.resources.memory_mb) or see its worker's log, worker-*-{pid}.err in "
                f"the logs of Ray's session folder on node {self._host(slot.node)}")

    def _crash_looping(self, i: int, slot: Slot, got: tuple[int, Any] | None) -> str | None:
        """Why ``slot``'s actor is given up on before its models loaded: Ray restarted its process
        START_RESTARTS times (``got``: its restarts; it dies as it starts, and its ``ready`` would never
        answer); None otherwise."""
        if got is None or got[0] < START_RESTARTS:
            return None
        return self._died(i, slot, f"{got[0]} times, Ray restarting it each time", got[1])

    def _start_failed(self, i: int, slot: Slot, why: str) -> None:
        """Count an actor of stage ``i`` that could not start (or come back), and avoid its node for the stage
        from now on; one whose node is gone is the node's doing, which the health check deals with."""
        if any(n["NodeID"] == slot.node for n in self._alive()):
            bad = self._bad.setdefault(i, {})
            new = slot.node not in bad
            bad.setdefault(slot.node, why)
            elsewhere = self._usable_elsewhere(i)
            # several actors the plan put on one bad node before it failed are one node tried; one started there
            # since (no other node had room, or none is left) is a try of its own
            if new or slot.on_avoided or not elsewhere:
                n, _ = self._failed_starts.get(i, (0, ""))
                self._failed_starts[i] = (n + 1, why)
            if new and elsewhere:  # else (one node, say) it is still where the stage runs
                self.log(f"pools: node {self._host(slot.node)} gets no more '{self.stages[i].name}' actors in "
                         f"this build while another node can hold them: one could not start there")

    def _died_under(self, slot: Slot | None) -> bool:
        """Whether ``slot``'s process died under the batch it was running, which failed with
        ActorUnavailableError: Ray counted a restart since the last such death, and the actor had come back
        from that one (a process that dies again as it restarts is not the batch's doing:
        _drop_crash_looping deals with it)."""
        if slot is None:
            return False
        if slot.lost_batch:
            answered, err = self._probe_answer(slot)
            if not answered or err is not None:
                return False
            self._came_back(slot)
        # Ray's control store may hear of the death a moment after the driver: then this one is waited for,
        # and counted with the batch's next death (the driver loop is not held up to be sure)
        got = self._restarts(slot)
        if got is not None and got[0] > slot.restarts_known:
            slot.restarts_known = got[0]
            return True
        return False

    def _probe_answer(self, slot: Slot) -> tuple[bool, str | None]:
        """Whether the actor that lost a batch has answered its probe since, and its setup's error if that
        failed. A probe that died with it (sent while it restarted, or it died again) is sent again."""
        done, _ = self.ray.wait([slot.probe], timeout=0)
        if not done:
            return False, None
        try:
            return True, self.ray.get(slot.probe)
        except self.ray.exceptions.RayError:
            slot.probe = slot.handle.ready.remote()
            return False, None

    def _lost_batch(self, slot: Slot | None, running: bool) -> None:
        """``slot`` lost a batch: its process died (or cannot be reached). Marked by the batch it was running,
        or by a queued one once that one was seen: the running batch's own failure may come in a later wait,
        and must find the actor not yet marked to count against it."""
        if slot is not None and not slot.lost_batch and (running or not slot.sent):
            slot.lost_batch, slot.restarts_at_loss, slot.probe = True, None, slot.handle.ready.remote()

    def _came_back(self, slot: Slot | None) -> None:
        if slot is not None:
            slot.lost_batch, slot.restarts_at_loss, slot.probe = False, None, None

    def _drop_crash_looping(self) -> None:
        """Drop the actors that lost a batch and cannot come back: their process died START_RESTARTS more
        times as it restarted, before it could answer the probe (Ray would restart it without end, and the
        batches sent to it would wait for good), or their restart's setup failed. An actor killed by one batch
        answers the probe once its restart has loaded its models, and stays."""
        if time.monotonic() - self._losses_counted < START_POLL_S:
            return
        self._losses_counted = time.monotonic()
        table = self._restart_table([x for pool in self.pools for x in pool if x.ready and x.lost_batch])
        for i, pool in enumerate(self.pools):
            for slot in [x for x in pool if x.ready and x.lost_batch]:
                answered, err = self._probe_answer(slot)
                if answered and err is None:
                    self._came_back(slot)
                    continue
                why = f"its setup failed as it restarted: {err}" if answered else None
                if why is None:
                    got = table.get(slot.id)
                    if got is None:
                        continue
                    if slot.restarts_at_loss is None:
                        slot.restarts_at_loss = got[0]
                        continue
                    if got[0] - slot.restarts_at_loss < START_RESTARTS:
                        continue
                    why = self._died(i, slot, f"{got[0] - slot.restarts_at_loss} more times as it restarted after "
                                              f"losing a batch", got[1])
                self.log(f"pools: a '{self.stages[i].name}' actor cannot come back ({why}); dropped")
                self._drop(i, slot)
                self._start_failed(i, slot, why)

    # -- the cluster and the pools -------------------------------------------------------------------------
    def _alive(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def _nodes(self, free_only: bool = False) -> list[Node]:
        """The live nodes as the planner sees them: their free resources, plus (unless ``free_only``) what
        this build's own actors hold there (a replan may give it to other stages)."""
        from ray._private import state

        try:
            avail = state.available_resources_per_node()
        except Exception:  # noqa: BLE001 - a private API: without it, plan on totals (a cluster of our own)
            avail = {}
        nodes = []
        cpu = gpu = 0.0
        for n in self._alive():
            nid = n["NodeID"]
            total = n.get("Resources", {})
            free = avail.get(nid, total)
            c, g, m = free.get("CPU", 0.0), free.get("GPU", 0.0), free.get("memory", 0.0) * 0.999
            cpu, gpu = cpu + total.get("CPU", 0.0), gpu + total.get("GPU", 0.0)
            if not free_only:
                held = [s.shape for pool in self.pools for s in pool if s.node == nid]
                c += sum(h.cpus for h in held)
                g += sum(h.gpus for h in held)
                m += sum(h.memory for h in held)
            node = Node(nid, c, g, int(m))
            if free_only and node.gpu_units:
                # per device, what this build's actors leave (placed as Ray places them: largest first, best
                # fit), so a new fractional actor is only started where one device has room for it
                units = int(round(total.get("GPU", 0.0)))
                devices = pack_like_ray([x.shape.gpus for pool in self.pools for x in pool
                                         if x.node == nid and x.shape.gpus > 0], units) if units else None
                node.gpu_free = [f for f in devices if f > 1e-9] if devices else node.gpu_free
            nodes.append(node)
        self._cluster = {"CPU": cpu, "GPU": gpu, "nodes": float(len(nodes))}
        return nodes

    def _start(self, i: int, shape: Shape, node: str, clear: bool) -> Slot:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        stage = self.stages[i]
        config = stage.model_dump()
        config["resources"] = {**config["resources"], "num_cpus": shape.cpus, "num_gpus": shape.gpus}
        opts: dict[str, Any] = {"num_cpus": shape.cpus, "num_gpus": shape.gpus, "max_restarts": -1,
                                "max_task_retries": 0,
                                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        if shape.memory:
            opts["memory"] = shape.memory
        handle = self._remote_cls.options(**opts).remote(type(stage), config, self.workspace, clear)
        slot = Slot(next(self._ids), handle, shape, node, handle.ready.remote(),
                    on_avoided=node in self._bad.get(i, {}))
        self._no_room.pop(i, None)
        self.pools[i].append(slot)
        self._slots[slot.id] = slot
        return slot

    def _drop(self, i: int, slot: Slot) -> None:
        self.pools[i].remove(slot)
        self._slots.pop(slot.id, None)
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone with its node
            return

    def _check_starting(self) -> None:
        """Actors started while the build runs join their pool once their models are loaded."""
        starting = [(i, s) for i, pool in enumerate(self.pools) for s in pool if not s.ready]
        if not starting:
            return
        done, _ = self.ray.wait([s.ready_ref for _, s in starting], num_returns=len(starting), timeout=0)
        done = set(done)
        # restarts are asked of Ray's control store, one call per actor: not at every one of the flow's waits
        table = None
        if time.monotonic() - self._restarts_counted >= START_POLL_S:
            self._restarts_counted = time.monotonic()
            table = self._restart_table([x for _, x in starting if x.ready_ref not in done])
        for i, slot in starting:
            if slot.ready_ref in done:
                try:
                    err = self.ray.get(slot.ready_ref)
                except self.ray.exceptions.RayError as e:
                    got = self._restarts(slot)
                    err = self._died(i, slot, _said(e), got[1] if got else "?")
                if err:
                    self.log(f"pools: a new '{self.stages[i].name}' actor could not start ({err}); dropped")
                    self._drop(i, slot)
                    self._start_failed(i, slot, err)
                else:
                    slot.ready = True
                    got = self._restarts(slot)
                    slot.restarts_known = got[0] if got else 0
                    self._failed_starts.pop(i, None)
            elif table is not None and (crashed := self._crash_looping(i, slot, table.get(slot.id))):
                self.log(f"pools: a new '{self.stages[i].name}' actor could not start ({crashed}); dropped")
                self._drop(i, slot)
                self._start_failed(i, slot, crashed)
            elif not slot.loading():
                self.log(f"pools: a new '{self.stages[i].name}' actor did not start in {START_TIMEOUT_S:.0f}s; dropped")
                self._drop(i, slot)
                self._start_failed(i, slot, f"it did not start in {START_TIMEOUT_S:.0f}s")

    def pool_sizes(self) -> dict[str, int]:
        """Ready actors per stage (retiring ones not counted)."""
        return {s.name: sum(1 for x in pool if x.ready and not x.retiring) for s, pool in zip(self.stages, self.pools)}

    def _held(self) -> tuple[float, float]:
        live = [x for pool in self.pools for x in pool]
        return sum(x.shape.cpus for x in live), sum(x.shape.gpus for x in live)

    def _record(self, why: str, media: dict[str, float] | None = None) -> None:
        """One point of the pools' timeline: actors per stage, what they hold of the cluster, and (at a
        rebalance) the seconds of media each stage has taken in so far (its rate is the slope)."""
        cpu, gpu = self._held()
        self.timeline.append({"t": round(time.monotonic() - self._t0, 2), "why": why, "actors": self.pool_sizes(),
                              "cpu": round(cpu, 3), "gpu": round(gpu, 3), "media": media or {},
                              "cluster_cpu": self._cluster.get("CPU", 0.0), "cluster_gpu": self._cluster.get("GPU", 0.0)})

    # -- the Executor protocol -----------------------------------------------------------------------------
    def free_slots(self, stage_idx: int) -> int:
        return sum(max(0, self.per_actor_inflight - s.inflight) for s in self.pools[stage_idx] if s.ready and not s.retiring)

    def submit(self, ticket: Ticket) -> None:
        live = [s for s in self.pools[ticket.stage_idx] if s.ready and not s.retiring]
        if not live:  # its actors were lost meanwhile: fail the ticket so the flow retries it later
            ref = self.ray.put(WorkerLost("no live actor of the stage right now", transient=True))
            self._refs[ref] = (ticket, [])
            ticket.actor = -1
            return
        # an actor that lost a batch may take minutes to load its models again: the others first
        slot = min(live, key=lambda s: (s.lost_batch, s.inflight, s.id))
        ticket.actor = slot.id
        slot.inflight += 1
        self.driver_bytes["sent"] += wire_bytes(ticket.batch)
        refs = slot.handle.process.options(num_returns=1 + len(ticket.batch)).remote(ticket.batch, ticket.chunk,
                                                                                       ticket.parts)
        self._refs[refs[0]] = (ticket, refs[1:])
        slot.sent.append(refs[0])

    def wait(self, timeout: float) -> list[tuple[Ticket, list[Candidate] | BaseException]]:
        self._check_starting()
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:  # collect whatever else is already done too, in the order they were sent (see _died_under)
            more, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            done = {*ready, *more}
            ready = [r for r in self._refs if r in done]
        out: list[tuple[Ticket, list[Candidate] | BaseException]] = []
        for ref in ready:
            ticket, member_refs = self._refs.pop(ref)
            slot = self._slots.get(ticket.actor)
            running = False  # the batch its actor was running (the others sent to it wait their turn)
            if slot is not None:
                slot.inflight -= 1
                running = bool(slot.sent) and slot.sent[0] == ref
                slot.sent.remove(ref)
            try:
                got = self.ray.get(ref)
                if isinstance(got, WorkerLost):
                    out.append((ticket, got))
                    continue
                cands, ticket.busy_s = got
                ticket.cpu_scale = slot.shape.cpus / max(self.stages[ticket.stage_idx].resources.num_cpus, 1e-6) \
                    if slot is not None else 1.0
                if ticket.chunk is None:  # a part's result has no candidates and no members
                    attach_members(cands, member_refs)
                    self.driver_bytes["received"] += wire_bytes(cands)
                    self.driver_bytes["member_bytes_received"] += sum(
                        len(v) for c in cands for v in c.members.values() if isinstance(v, bytes))
                out.append((ticket, cands))
                self._came_back(slot)
                self._failed_starts.pop(ticket.stage_idx, None)
            except self.ray.exceptions.RayTaskError as e:  # the stage's own code raised (not a lost worker)
                out.append((ticket, e))
            except self.ray.exceptions.ActorUnavailableError as e:
                # Ray says this both of a process that died under the batch and of one that is restarting or
                # unreachable: only the first counts against the batch (a candidate that kills its worker
                # is found by retries, then rejected); the others are waited for
                out.append((ticket, WorkerLost(_said(e), transient=not (running and self._died_under(slot)))))
                self._lost_batch(slot, running)
            except self.ray.exceptions.RayError as e:
                # the worker is gone: killed, out of memory, its node lost (an actor pinned to a node that is
                # gone cannot even be scheduled again); the batch is retried on the pool's other actors
                out.append((ticket, WorkerLost(_said(e))))
                self._lost_batch(slot, running)
                if slot is not None and (got := self._restarts(slot)):
                    slot.restarts_known = max(slot.restarts_known, got[0])
            if slot is not None and slot.retiring and slot.inflight == 0:
                self._drop(ticket.stage_idx, slot)
        return out

    def loading(self, stage_idx: int) -> bool:
        return any(s.loading() and not s.retiring for s in self.pools[stage_idx])

    def idle(self, timeout: float) -> None:
        """Nothing is in flight and work waits for a stage with no actor: an actor starting for it joins its
        pool as soon as it is ready (not at the next rebalance), and the driver does not spin meanwhile."""
        self._check_starting()
        time.sleep(timeout)

    def capacity_lost(self) -> str | None:
        """Drop the actors of nodes that are gone (their batches fail and are retried on the others); why the
        build cannot go on, or None: it goes on while every stage has an actor or can place one."""
        alive = self._drop_lost()
        self._drop_crash_looping()
        empty = self._without_actor()
        if not empty:
            return None
        for i in empty:
            tries, why = self._failed_starts.get(i, (0, ""))
            if tries >= START_TRIES:
                return (f"stage '{self.stages[i].name}' has no actor and cannot start one: {tries} in a row could "
                        f"not ({why})")
        nodes = self._nodes(free_only=True)
        blocked = []
        for i in empty:
            need = stage_need(self.stages[i], 1.0)
            bad = self._bad.get(i, {})
            # a node where the stage could not start only when no other could ever hold it (one node, say):
            # where the others are full, room is made there instead
            node = next((n for n in nodes if n.id not in bad and n.take(need.shape)), None)
            if node is None and not self._usable_elsewhere(i):
                node = next((n for n in nodes if n.take(need.shape)), None)
            if node is None:
                blocked.append(i)
                continue
            self._start(i, need.shape, node.id, clear=False)
            self.log(f"pools: stage '{self.stages[i].name}' has no actor left; starting one on node "
                     f"{self._host(node.id)}")
        if not blocked:
            return None
        try:  # can the live nodes hold one actor of every stage at all (their whole capacity)?
            plan_pools([stage_need(s, 1.0) for s in self.stages], self._whole_nodes(), grow=False)
        except PlanError:
            cpu, gpu = self._cluster.get("CPU", 0.0), self._cluster.get("GPU", 0.0)
            names = ", ".join(f"'{self.stages[i].name}'" for i in blocked)
            return (f"the cluster lost capacity: {len(alive)} live node(s) with {cpu:g} CPUs / {gpu:g} GPUs cannot "
                    f"hold an actor of every stage beside the others (none of {names} is left)")
        if self._make_room(blocked):
            for i in blocked:
                self._no_room.pop(i, None)
            return None
        # no room is coming where the blocked stages may go (the stages there hold one actor each at their
        # declared share): a node they could not start on is tried again, which the count of failed starts
        # bounds; with none free either (Ray may not have released a dropped actor's share yet) for NO_ROOM_S,
        # the build cannot go on (``nodes`` still holds what the loop above took)
        for i in blocked:
            need = stage_need(self.stages[i], 1.0)
            node = next((n for n in nodes if n.take(need.shape)), None)
            if node is None:
                since = self._no_room.setdefault(i, time.monotonic())
                if time.monotonic() - since < NO_ROOM_S:
                    continue
                bad = ", ".join(self._host(n) for n in self._bad.get(i, {}))
                return (f"stage '{self.stages[i].name}' has no actor and no node can take one: for "
                        f"{NO_ROOM_S:.0f}s the nodes with room for it were taken by one actor of each other stage"
                        + (f", and it could not start on {bad}" if bad else ""))
            self._start(i, need.shape, node.id, clear=False)
            self.log(f"pools: stage '{self.stages[i].name}' has no actor left and no room elsewhere; starting one on "
                     f"node {self._host(node.id)}, where one could not start before")
        return None

    def _drop_lost(self) -> set[str]:
        """Drop the actors of nodes Ray no longer lists alive, saying so; returns the live nodes' ids."""
        alive = {n["NodeID"] for n in self._alive()}
        lost = 0
        for i, pool in enumerate(self.pools):
            for slot in [s for s in pool if s.node not in alive]:
                self._drop(i, slot)
                lost += 1
        if lost:
            self.log(f"pools: {lost} actor(s) lost with their node; pools now {self._sizes_text()}")
            self._record("node lost")
        return alive

    def _make_room(self, blocked: list[int]) -> bool:
        """The stages in ``blocked`` have no actor and no room for one, though the live nodes could hold one
        of every stage: the others give up what they hold beyond that (surplus actors first, then single
        actors grown past their declared share, which come back at it), until the next health check can
        place the missing ones."""
        need = [stage_need(self.stages[i], 1.0).shape for i in blocked]
        want_cpu, want_gpu = sum(n.cpus for n in need), sum(n.gpus for n in need)
        # room on a node the blocked stages avoid would only be taken again
        usable = {n for i in blocked for n in (self._usable_elsewhere(i) or [x["NodeID"] for x in self._alive()])}
        candidates = sorted(((i, x) for i, pool in enumerate(self.pools) for x in pool
                             if not x.retiring and i not in blocked and x.node in usable),
                            key=lambda ix: (len(self.pools[ix[0]]) <= 1, ix[1].inflight, -ix[1].shape.cpus))
        freed_cpu = freed_gpu = 0.0
        for i, slot in candidates:
            if freed_cpu >= want_cpu - 1e-9 and freed_gpu >= want_gpu - 1e-9:
                break
            declared = stage_need(self.stages[i], 1.0).shape
            lone = len(self.pools[i]) <= 1
            if lone and slot.shape == declared:
                continue  # a lone actor at its declared share is what the stage needs at least
            slot.retiring = True
            freed_cpu += slot.shape.cpus
            freed_gpu += slot.shape.gpus
            if lone:  # it comes back at its declared share: room for that too
                want_cpu += declared.cpus
                want_gpu += declared.gpus
            if slot.inflight == 0:
                self._drop(i, slot)
        if freed_cpu or freed_gpu:  # a second health check while the first's retiring actors finish frees nothing
            self.log(f"pools: making room for {', '.join(self.stages[i].name for i in blocked)} "
                     f"(freeing {freed_cpu:g} CPUs, {freed_gpu:g} GPUs); pools now {self._sizes_text()}")
        # whether room is coming: freed now, or held by actors retiring there
        return bool(freed_cpu or freed_gpu) or any(x.retiring and x.node in usable for pool in self.pools
                                                   for x in pool)

    def rebalance(self, loads: dict[str, StageLoad]) -> PoolPlan | None:
        """Plan the pools again with what the build measured and the nodes alive now, and move towards the
        plan: retire actors a stage no longer needs (once their batches are done), start the ones the plan
        adds where they fit now. Returns the plan (None when it could not be made)."""
        self._check_starting()
        # a dead node's idle actors would otherwise be retired below as surplus, and the log would not say
        # they were lost (the health check may come seconds later)
        self._drop_lost()
        try:
            plan = plan_pools(measured_needs(self.stages, loads), self._nodes())
        except PlanError:
            return None  # not even the minimum fits: capacity_lost says so
        now = self.pool_sizes()
        moved = []
        for retiring in (True, False):  # first give up what waits for nothing, then place what the plan adds
            free = {n.id: n for n in self._nodes(free_only=True)}
            moved += self._move(plan, loads, retiring, free)
        if moved:
            self.changes.append(f"{time.monotonic() - self._t0:.0f}s: {', '.join(moved)} (plan: "
                                f"{', '.join(f'{k} {v}' for k, v in plan.actors.items() if now.get(k) != v)})")
            self.log(f"pools: {', '.join(moved)}; now {self._sizes_text()}")
        self._record("rebalance" if moved else "tick", {k: round(v.media_in, 2) for k, v in loads.items()})
        return plan

    def _move(self, plan: PoolPlan, loads: dict[str, StageLoad], retiring: bool, free: dict[str, Node]) -> list[str]:
        """One half of a rebalance: retire the surplus of the stages nothing waits for (``retiring``), or
        start the actors the plan adds where they fit in ``free``."""
        moved = []
        # while a stage has no actor, the room made for it is not given to the others' growth
        starving = set(self._without_actor())
        for i, s in enumerate(self.stages):
            if s.resources.pinned is not None or (not retiring and starving and i not in starving):
                continue
            pool = self.pools[i]
            live = [x for x in pool if not x.retiring]
            target = plan.actors[s.name]
            load = loads.get(s.name, StageLoad())
            # a stage is given an actor only while work waits for the ones it has (a new actor takes seconds
            # to load its models: near the end of a build it would arrive to nothing), and gives one up only
            # while nothing waits for it
            backlog = load.queued >= s.resources.candidates_per_call * max(1, len(live))
            if retiring and len(live) > target and load.queued == 0:
                # idle actors of a stage nothing waits for go at once (the newest first); a busy one only
                # finishes what it holds
                idle = sorted((x for x in live if x.ready and x.inflight == 0), key=lambda x: -x.id)
                for victim in idle[: len(live) - target]:
                    self._drop(i, victim)
                if idle[: len(live) - target]:
                    moved.append(f"{s.name} -{min(len(idle), len(live) - target)}")
            elif not retiring and len(live) < target and backlog and all(x.ready for x in live):
                shape = plan.shapes[s.name]
                bad = self._bad.get(i, {})
                if bad and not self._usable_elsewhere(i):
                    bad = {}  # no other node can hold it (one node, say): it grows where it is
                added = 0
                for _ in range(target - len(live)):
                    node = next((free[n] for n in plan.placement[s.name]
                                 if n in free and n not in bad and shape.fits(free[n])), None)
                    node = node or next((n for n in free.values() if n.id not in bad and shape.fits(n)), None)
                    if node is None or not node.take(shape):
                        break
                    self._start(i, shape, node.id, clear=False)
                    added += 1
                if added:
                    moved.append(f"{s.name} +{added}")
        return moved

    def _sizes_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.pool_sizes().items())

    def evict(self, sources: list[str], clips: list[str]) -> None:
        """Tell every worker of the stages that keep files on their node that these are through (each
        worker removes what its node holds of them; a node without them has nothing to do)."""
        if not sources and not clips:
            return
        for stage, pool in zip(self.stages, self.pools):
            if stage.reads_source or stage.reads_clip_media or stage.makes_clip_media:
                for slot in pool:
                    slot.handle.evict.remote(sources, clips)

    def resolve(self, cands: list[Candidate]) -> None:
        """Fetch the members of ``cands`` that are still references (the commit writes them): each object
        crosses once, from the node that made it to the driver."""
        refs = {v.ref.hex(): v.ref for c in cands for v in c.members.values() if isinstance(v, MemberRef)}
        if not refs:
            return
        try:
            got = dict(zip(refs, self.ray.get(list(refs.values()))))
        except (self.ray.exceptions.ObjectLostError, self.ray.exceptions.OwnerDiedError) as e:
            raise MemberLost(f"members lost with their node: {type(e).__name__}") from e
        for c in cands:
            for name, v in list(c.members.items()):
                if isinstance(v, MemberRef):
                    c.members[name] = got[v.ref.hex()][name]
                    self.driver_bytes["member_bytes_resolved"] += len(c.members[name])

    def io_counts(self) -> list[dict[str, dict[str, int]]]:
        """Asked of the actors of the stages that read sources (the others make no remote calls); an actor
        that does not answer in time is left out."""
        refs = [x.handle.io_counts.remote() for stage, pool in zip(self.stages, self.pools) if stage.reads_source
                for x in pool if x.ready]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=10)
        out = []
        for ref in ready:
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayError:
                continue  # a dead actor's counts are lost with it; the build's are not worth failing for
        return out

    def actor_memory(self) -> dict[str, float]:
        """Per stage, the most host memory one of its actors held (MiB): what ``memory_mb`` should say."""
        asked = [(s.name, x.handle.peak_memory_mb.remote()) for s, pool in zip(self.stages, self.pools)
                 for x in pool if x.ready]
        ready, _ = self.ray.wait([r for _, r in asked], num_returns=len(asked), timeout=10)
        done = set(ready)
        out: dict[str, float] = {}
        for name, ref in asked:
            if ref in done:
                try:
                    out[name] = max(out.get(name, 0.0), round(float(self.ray.get(ref)), 1))
                except self.ray.exceptions.RayError:
                    continue
        return out

    def pools_summary(self) -> dict[str, Any]:
        """Pool sizes over time, changes made, and the share of the cluster's CPU- and GPU-seconds the actors
        held (integrated over the timeline): what the report plots."""
        self._record("end")
        tl = self.timeline
        held = {"cpu": 0.0, "gpu": 0.0}
        total = {"cpu": 0.0, "gpu": 0.0}
        for a, b in zip(tl, tl[1:]):
            dt = b["t"] - a["t"]
            for k in ("cpu", "gpu"):
                held[k] += a[k] * dt
                total[k] += a[f"cluster_{k}"] * dt
        frac = {k: (round(held[k] / total[k], 4) if total[k] > 0 else None) for k in held}
        peak = {k: max((x[k] / x[f"cluster_{k}"] for x in tl if x[f"cluster_{k}"] > 0), default=None)
                for k in ("cpu", "gpu")}
        return {"timeline": tl, "changes": self.changes, "held_fraction": frac,
                "peak_fraction": {k: (round(v, 4) if v is not None else None) for k, v in peak.items()},
                "actor_memory_mb": self.actor_memory()}

    def shutdown(self) -> None:
        # each node's workspace goes with the run (an actor that is gone leaves its node's to the next run)
        cleanups = [x.handle.cleanup.remote() for pool in self.pools for x in pool if x.ready]
        if cleanups:
            self.ray.wait(cleanups, num_returns=len(cleanups), timeout=30)
        for pool in self.pools:
            for x in pool:
                self.ray.kill(x.handle)
        self.pools = [[] for _ in self.stages]
        self._slots = {}


