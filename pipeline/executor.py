"""Where stage batches run: in this process (for debugging and the overhead baseline) or on Ray.

Ray Core actors, one pool per stage, rather than Ray Data: the shard is our unit of commit, so the
driver must know when every candidate of a shard is through; a worker death must turn into a retry or
a per-candidate ``error`` row (Ray Data fails the job on a UDF exception, or drops whole blocks with
``max_errored_blocks``); and output must be byte-identical across reruns (``write_webdataset`` names
files with uuids and stamps mtimes).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from mtcc.stages import STAGES, Stage
from mtcc.stages.base import Candidate, MemberRef, PendingMember
from mtcc.stages.remote_io import RemoteIO, RetryPolicy
from mtcc.stages.workspace import NodeWorkspace


class StageSetupError(RuntimeError):
    """A stage could not start (missing model, missing tool): nothing can pass it, so the run stops."""


class WorkerLost(RuntimeError):
    """The worker running a batch died (killed, out of memory, node lost). ``transient``: Ray says the actor
    is only unreachable for now (its node may be going away, or it is restarting)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class Ticket:
    id: int
    stage_idx: int
    batch: list[Candidate]
    attempt: int = 0
    waits: int = 0  # resubmissions after the actor was only unreachable (they do not count as attempts)
    actor: int = -1
    submitted: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class WorkspaceSpec:
    """Where each node keeps a build's fetched sources and cut clips (stages/workspace.py)."""

    root: str
    source_bytes: int
    remote: RetryPolicy = field(default_factory=RetryPolicy)  # how its fetches ride out a flaky store

    def open(self) -> NodeWorkspace:
        return NodeWorkspace(self.root, self.source_bytes, RemoteIO(self.remote))


class Executor(Protocol):
    """Where the flow sends stage batches. Each stage's ``setup`` has run (once per actor) when the executor
    is made; a stage that cannot set up raises ``StageSetupError`` there."""

    name: ClassVar[str]
    # what crossed between the driver and the workers (bytes, by kind); None where nothing crosses
    driver_bytes: dict[str, int] | None

    def free_slots(self, stage_idx: int) -> int:
        """How many more batches stage ``stage_idx`` takes now."""
        ...

    def submit(self, ticket: Ticket) -> None:
        ...

    def wait(self, timeout: float) -> list[tuple[Ticket, list[Candidate] | BaseException]]:
        """The batches done since the last call (at most ``timeout`` seconds spent waiting for one): each
        ticket with its candidates, or what failed it (``WorkerLost`` when its worker died)."""
        ...

    def capacity_lost(self) -> str | None:
        """Why the stages' workers can no longer all run (a lost node), or None."""
        ...

    def evict(self, sources: list[str], clips: list[str]) -> None:
        """These sources and clips are through: the workers may drop the files they keep of them."""
        ...

    def resolve(self, cands: list[Candidate]) -> None:
        """Turn the members of ``cands`` held elsewhere into bytes (the commit writes them)."""
        ...

    def io_counts(self) -> list[dict[str, dict[str, int]]]:
        """What the workers' remote reads went through (retries, calls given up), one snapshot per worker."""
        ...

    def shutdown(self) -> None:
        ...


class InProcessExecutor(Executor):
    """Runs each batch synchronously in the driver: the same stage code, no Ray."""

    name = "inprocess"

    def __init__(self, stages: list[Stage], workspace: WorkspaceSpec | None = None):
        self.stages = stages
        self.driver_bytes = None  # the driver is the worker
        self._done: deque[tuple[Ticket, list[Candidate] | BaseException]] = deque()
        self.workspace = workspace.open() if workspace is not None else None
        if self.workspace is not None:
            self.workspace.clear()  # a killed run's leftovers
        for s in stages:
            if self.workspace is not None:
                s.attach(self.workspace)
            try:
                s.setup()
            except Exception as e:
                raise StageSetupError(f"stage '{s.name}' failed to set up: {e}") from e

    def capacity_lost(self) -> str | None:
        return None  # one process: nothing to lose but the driver itself

    def free_slots(self, stage_idx: int) -> int:
        return 1

    def submit(self, ticket: Ticket) -> None:
        stage = self.stages[ticket.stage_idx]
        with stage_threads(stage):
            self._done.append((ticket, stage.run_batch(ticket.batch)))

    def wait(self, timeout: float) -> list[tuple[Ticket, list[Candidate] | BaseException]]:
        out = list(self._done)
        self._done.clear()
        return out

    def evict(self, sources: list[str], clips: list[str]) -> None:
        if self.workspace is not None:
            self.workspace.evict_sources(sources)
            self.workspace.evict_clips(clips)

    def resolve(self, cands: list[Candidate]) -> None:
        """Members are bytes already: nothing travels in one process."""

    def io_counts(self) -> list[dict[str, dict[str, int]]]:
        return [self.workspace.remote.counts.snapshot()] if self.workspace is not None else []

    def shutdown(self) -> None:
        if self.workspace is not None:
            self.workspace.clear()


def stage_thread_count(stage: Stage) -> int:
    """The torch intra-op threads a stage runs with: its declared ``threads``, else what Ray gives an actor
    of its CPU share (num_cpus rounded, at least 1)."""
    return stage.resources.threads or max(1, round(stage.resources.num_cpus))


@contextmanager
def stage_threads(stage: Stage) -> Iterator[None]:
    """Run a batch with the stage's thread count, as its Ray actor would. Without this the in-process
    runner let every model use all cores: small ops on an oversubscribed box then spend their time in
    OpenMP barriers (SAM2's tracker: 65x slower at 2 threads than at 1 beside one other busy process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(stage_thread_count(stage))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def init_ray(address: str | None, num_cpus: int | None = None, object_store_mb: int | None = None) -> dict[str, Any]:
    """Connect to a cluster (``address``) or start an embedded local one."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes a token under ~/.ray
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address and address != "local":
        ray.init(address=address, **kwargs)
    else:
        # "local": a fresh embedded Ray even when RAY_ADDRESS or a running cluster would be picked up
        kwargs["address"] = "local"
        ray.init(num_cpus=num_cpus or os.cpu_count(),
                 object_store_memory=(object_store_mb << 20) if object_store_mb else None, **kwargs)
    return ray.cluster_resources()


def split_members(batch: list[Candidate], out: list[Candidate]) -> tuple[list[Candidate], list[dict[str, bytes]]]:
    """The members a stage call made, taken out of its output: per input candidate (by position) a dict of
    its new members, each left behind as a ``PendingMember`` the driver turns into a reference. A rejected
    candidate's members are dropped: nothing of it is written."""
    slots = {c.key: i for i, c in enumerate(batch)}
    heavy: list[dict[str, bytes]] = [{} for _ in batch]
    for c in out:
        if c.status == "rejected":
            c.members = {}
            continue
        slot = slots.get(c.key)
        for name, value in list(c.members.items()):
            if isinstance(value, bytes) and slot is not None:
                heavy[slot][name] = value
                c.members[name] = PendingMember(slot, len(value))
    return out, heavy


def attach_members(out: list[Candidate], refs: list[Any]) -> None:
    """Driver side of :func:`split_members`: each pending member becomes a reference to the object that
    holds it (``refs[slot]``), which stays on the node that made it until a stage or the commit reads it."""
    for c in out:
        for name, value in c.members.items():
            if isinstance(value, PendingMember):
                c.members[name] = MemberRef(refs[value.slot], name, value.size)


def wire_bytes(cands: list[Candidate]) -> int:
    """What a list of candidates weighs on the wire between the driver and a worker (references count as
    their size on the wire, a few dozen bytes, not as the members they point to)."""
    import dataclasses
    import pickle

    light = [dataclasses.replace(c, members={n: v if isinstance(v, bytes) else ("ref", v.size)
                                             for n, v in c.members.items()}) for c in cands]
    return len(pickle.dumps(light, protocol=5))


class _StageActor:
    """Holds one configured stage; ``setup`` ran once when the actor started."""

    def __init__(self, stage_name: str, config: dict[str, Any], workspace: WorkspaceSpec):
        self.stage = STAGES[stage_name].model_validate(config)
        self.error: str | None = None
        self.workspace = workspace.open()
        if not _restarted():
            self.workspace.clear()  # the start of a run: a killed run's leftovers on this node go
        self.stage.attach(self.workspace)
        # the stage's thread count, as in-process runs use (stage_threads), rather than whatever Ray and the
        # OpenMP runtime picked; torch is only pinned once something imported it: stages without a model
        # never pay for importing torch (a dozen actors doing so is a third of a small run's start-up)
        self.threads = stage_thread_count(self.stage)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        try:
            self.stage.setup()
        except Exception as e:  # noqa: BLE001 - reported to the driver by ready(), which stops the run
            self.error = f"stage '{stage_name}' failed to set up: {type(e).__name__}: {e}"
        self._pin_threads()

    def _pin_threads(self) -> None:
        # an OpenMP runtime loaded before the variable was set (scipy's, say) ignores it: set torch's directly
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def ready(self) -> str | None:
        return self.error

    def process(self, batch: list[Candidate]) -> tuple[Any, ...]:
        """The batch's candidates, then (one return value each, owned by the driver) the members made for
        each: the driver fetches only the candidates."""
        self._pin_threads()
        out, heavy = split_members(batch, self.stage.run_batch(batch))
        return (out, *heavy)

    def evict(self, sources: list[str], clips: list[str]) -> None:
        self.workspace.evict_sources(sources)
        self.workspace.evict_clips(clips)

    def io_counts(self) -> dict[str, dict[str, int]]:
        return self.workspace.remote.counts.snapshot()

    def cleanup(self) -> None:
        self.workspace.clear()


def _restarted() -> bool:
    """Whether this actor is a restart after its worker died (then its node's workspace is in use)."""
    import warnings

    import ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own use of its actor_id property
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class RayExecutor(Executor):
    """One actor pool per stage, sized and placed by each stage's declared resources. Each actor has
    at most two batches queued, so it never waits on the driver between batches."""

    name = "ray"
    per_actor_inflight = 2

    def __init__(self, stages: list[Stage], workspace: WorkspaceSpec):
        import ray

        self.ray = ray
        self.stages = stages
        # what crosses between the driver and the workers: candidates both ways, member bytes among what the
        # driver receives (none, by design), and the members the commit fetches (each once)
        self.driver_bytes: dict[str, int] = {"sent": 0, "received": 0, "member_bytes_received": 0, "member_bytes_resolved": 0}
        remote_cls = ray.remote(_StageActor)
        self._check_fits()
        self.pools: list[list[Any]] = []
        self.load: list[list[int]] = []
        for s in stages:
            r = s.resources
            opts = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "max_restarts": -1, "max_task_retries": 0}
            config = s.model_dump()
            actors = [remote_cls.options(**opts).remote(s.name, config, workspace) for _ in range(r.concurrency)]
            self.pools.append(actors)
            self.load.append([0] * len(actors))
        for s, actors in zip(stages, self.pools):
            for err in ray.get([a.ready.remote() for a in actors]):
                if err:
                    raise StageSetupError(err)
        self._refs: dict[Any, tuple[Ticket, list[Any]]] = {}

    def _check_fits(self) -> None:
        total = self.ray.cluster_resources()
        need_cpu = sum(s.resources.num_cpus * s.resources.concurrency for s in self.stages)
        need_gpu = sum(s.resources.num_gpus * s.resources.concurrency for s in self.stages)
        if need_cpu > total.get("CPU", 0) + 1e-9 or need_gpu > total.get("GPU", 0) + 1e-9:
            raise StageSetupError(
                f"the stages' actors ask for {need_cpu:g} CPUs and {need_gpu:g} GPUs but the cluster has "
                f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs; lower stages.<name>.resources"
                f".concurrency or num_cpus/num_gpus")

    def capacity_lost(self) -> str | None:
        """Why the live cluster can no longer hold every stage's actors (a node was lost and nothing
        replaced it), or None. Ray restarts a dead actor elsewhere only where its resources fit; without
        this check a build would wait forever on an actor that cannot come back."""
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        cpu = sum(n.get("Resources", {}).get("CPU", 0.0) for n in alive)
        gpu = sum(n.get("Resources", {}).get("GPU", 0.0) for n in alive)
        need_cpu = sum(s.resources.num_cpus * s.resources.concurrency for s in self.stages)
        need_gpu = sum(s.resources.num_gpus * s.resources.concurrency for s in self.stages)
        if need_cpu > cpu + 1e-9 or need_gpu > gpu + 1e-9:
            return (f"the cluster lost capacity: {len(alive)} live node(s) with {cpu:g} CPUs / {gpu:g} GPUs, the "
                    f"stages need {need_cpu:g} / {need_gpu:g}")
        return None

    def free_slots(self, stage_idx: int) -> int:
        return sum(max(0, self.per_actor_inflight - n) for n in self.load[stage_idx])

    def submit(self, ticket: Ticket) -> None:
        loads = self.load[ticket.stage_idx]
        ticket.actor = min(range(len(loads)), key=loads.__getitem__)
        loads[ticket.actor] += 1
        self.driver_bytes["sent"] += wire_bytes(ticket.batch)
        refs = self.pools[ticket.stage_idx][ticket.actor].process.options(
            num_returns=1 + len(ticket.batch)).remote(ticket.batch)
        self._refs[refs[0]] = (ticket, refs[1:])

    def wait(self, timeout: float) -> list[tuple[Ticket, list[Candidate] | BaseException]]:
        if not self._refs:
            return []
        ready, _ = self.ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:  # collect whatever else is already done too
            more, _ = self.ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out: list[tuple[Ticket, list[Candidate] | BaseException]] = []
        for ref in ready:
            ticket, member_refs = self._refs.pop(ref)
            self.load[ticket.stage_idx][ticket.actor] -= 1
            try:
                cands = self.ray.get(ref)
                attach_members(cands, member_refs)
                self.driver_bytes["received"] += wire_bytes(cands)
                self.driver_bytes["member_bytes_received"] += sum(
                    len(v) for c in cands for v in c.members.values() if isinstance(v, bytes))
                out.append((ticket, cands))
            except self.ray.exceptions.ActorUnavailableError as e:
                out.append((ticket, WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                               transient=True)))
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.WorkerCrashedError,
                    self.ray.exceptions.ObjectLostError, self.ray.exceptions.OutOfMemoryError) as e:
                out.append((ticket, WorkerLost(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")))
            except self.ray.exceptions.RayTaskError as e:
                out.append((ticket, e))
        return out

    def evict(self, sources: list[str], clips: list[str]) -> None:
        """Tell every worker of the stages that keep files on their node that these are through (each
        worker removes what its node holds of them; a node without them has nothing to do)."""
        if not sources and not clips:
            return
        for stage, actors in zip(self.stages, self.pools):
            if stage.reads_source or stage.reads_clip_media or stage.makes_clip_media:
                for a in actors:
                    a.evict.remote(sources, clips)

    def resolve(self, cands: list[Candidate]) -> None:
        """Fetch the members of ``cands`` that are still references (the commit writes them): each object
        crosses once, from the node that made it to the driver."""
        refs = {v.ref.hex(): v.ref for c in cands for v in c.members.values() if isinstance(v, MemberRef)}
        if not refs:
            return
        got = dict(zip(refs, self.ray.get(list(refs.values()))))
        for c in cands:
            for name, v in list(c.members.items()):
                if isinstance(v, MemberRef):
                    c.members[name] = got[v.ref.hex()][name]
                    self.driver_bytes["member_bytes_resolved"] += len(c.members[name])

    def io_counts(self) -> list[dict[str, dict[str, int]]]:
        """Asked of the actors of the stages that read sources (the others make no remote calls); an actor
        that does not answer in time is left out."""
        refs = [a.io_counts.remote() for stage, actors in zip(self.stages, self.pools) if stage.reads_source
                for a in actors]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=10)
        out = []
        for ref in ready:
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayError:
                continue  # a dead actor's counts are lost with it; the build's are not worth failing for
        return out

    def shutdown(self) -> None:
        # each node's workspace goes with the run (an actor that is gone leaves its node's to the next run)
        cleanups = [a.cleanup.remote() for actors in self.pools for a in actors]
        self.ray.wait(cleanups, num_returns=len(cleanups), timeout=30)
        for actors in self.pools:
            for a in actors:
                self.ray.kill(a)
        self.pools = []
