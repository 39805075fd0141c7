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

from mtcc.stages import Stage
from mtcc.stages.base import Candidate, MemberRef, PendingMember
from mtcc.storage.remote_io import RemoteIO, RetryPolicy
from mtcc.storage.workspace import NodeWorkspace

from .errors import StageSetupError


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
    busy_s: float = 0.0  # seconds the worker spent on the batch (set when it is done)
    # a part of one long candidate (``Stage.chunks``: its spec), or the merge of its parts' results
    chunk: dict[str, Any] | None = None
    parts: list[Any] | None = None
    cpu_scale: float = 1.0  # the worker's CPUs over the stage's declared share (a grown actor works faster)


@dataclass(frozen=True)
class WorkspaceSpec:
    """Where each node keeps a build's fetched sources and cut clips (storage/workspace.py)."""

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

    def loading(self, stage_idx: int) -> bool:
        """Whether an actor of the stage is still loading its models (one started in place of lost ones):
        its batches wait for it rather than use up their retries."""
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

    def loading(self, stage_idx: int) -> bool:
        return False  # set up once, before the first batch

    def free_slots(self, stage_idx: int) -> int:
        return 1

    def submit(self, ticket: Ticket) -> None:
        stage = self.stages[ticket.stage_idx]
        t0 = time.perf_counter()
        with stage_threads(stage):
            out = run_ticket(stage, ticket.batch, ticket.chunk, ticket.parts)
        ticket.busy_s = time.perf_counter() - t0
        self._done.append((ticket, out))

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
    return stage.thread_count


@contextmanager
def stage_threads(stage: Stage) -> Iterator[None]:
    """Run a batch with the stage's thread count, as its Ray actor would. Without this the in-process
    runner let every model use all cores: small ops on an oversubscribed box then spend their time in
    OpenMP barriers (SAM2's tracker: 65x slower at 2 threads than at 1 beside one other busy process)."""
    torch = sys.modules.get("torch")
    if torch is None:  # no stage of this run holds a model (those import torch in setup): nothing to pin, and
        yield  # importing torch only to pin it would be most of a model-free run's start-up
        return
    before = torch.get_num_threads()
    torch.set_num_threads(stage_thread_count(stage))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ray_address(address: str | None) -> tuple[str | None, str]:
    """The cluster a build joins and how it was chosen: ``address`` (``--address`` or the config's ``ray.address``)
    when given, else ``RAY_ADDRESS`` (what ``ray job submit`` and ``ray start`` leave for the processes they
    start), else none: an embedded local Ray. ``local`` forces the embedded one whatever ``RAY_ADDRESS`` says."""
    if address:
        return (None, "embedded local Ray (--address local)") if address == "local" else (address, f"Ray at {address}")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "local":
        return env, f"Ray at RAY_ADDRESS={env}"
    return None, "embedded local Ray"


def init_ray(address: str | None, num_cpus: int | None = None, object_store_mb: int | None = None,
             log_level: str = "WARNING", memory_mb: int | None = None) -> dict[str, Any]:
    """Connect to a cluster (``address``, or ``RAY_ADDRESS``: see :func:`ray_address`) or start an embedded
    local one (``num_cpus``, ``object_store_mb`` and ``memory_mb``, the memory it offers actors: Ray's defaults
    where None)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes a token under ~/.ray
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address, _ = ray_address(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": log_level, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a fresh embedded Ray even when RAY_ADDRESS or a running cluster would be picked up.
        # Without a dashboard nothing reads Ray's metrics: collecting them cost ~1.7 CPU-s a minute while idle.
        kwargs["address"] = "local"
        if memory_mb:
            kwargs["_memory"] = memory_mb << 20
        ray.init(num_cpus=num_cpus or os.cpu_count(),
                 object_store_memory=(object_store_mb << 20) if object_store_mb else None,
                 _system_config={"enable_metrics_collection": False}, **kwargs)
    return ray.cluster_resources()


def run_ticket(stage: Stage, batch: list[Candidate], chunk: dict[str, Any] | None = None,
               parts: list[Any] | None = None) -> Any:
    """What a worker does with a ticket: a batch (the candidates), one part of a long candidate (the part's
    ``(kind, result)``), or the merge of its parts (the candidate)."""
    if chunk is not None:
        return stage.run_chunk(batch[0], chunk)
    if parts is not None:
        return stage.run_merge(batch[0], parts)
    return stage.run_batch(batch)


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
