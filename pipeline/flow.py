"""Streams candidates through the stages and hands each shard to its commit the moment the last of
its candidates is through. Knows stages only as a list; knows nothing of what they do."""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mtcc.stages.base import Candidate, Stage, out_of_memory_message
from mtcc.stages.media import is_remote_source
from mtcc.stages.workspace import source_key

from .executor import Executor, Ticket, WorkerLost


class CapacityLost(RuntimeError):
    """The cluster can no longer hold the stages' actors (a node was lost and not replaced)."""


@dataclass
class StageTiming:
    batches: int = 0
    candidates: int = 0
    busy_s: float = 0.0


@dataclass
class Flow:
    stages: list[Stage]
    executor: Executor
    on_shard_done: Callable[[int, list[Candidate]], None]
    max_batch_retries: int = 2
    flush_seconds: float = 2.0
    on_progress: Callable[[int], None] | None = None
    # a lost worker's batch waits before its retry: the actor restarts meanwhile, and a node that is gone
    # has time to be marked dead, so a lost node stops the build instead of turning its batches into errors
    retry_backoff_s: float = 2.0
    max_unavailable_waits: int = 30
    # clips whose media a cut stage has made (or is making) and that are not through yet: their files sit
    # in the node workspaces, so the cut waits while this many are held (node-local disk stays bounded
    # however far ahead of the model stages the cut could run)
    max_clips_in_flight: int = 32

    queues: list[deque] = field(init=False)
    inflight: Counter = field(init=False, default_factory=Counter)
    outstanding: Counter = field(init=False, default_factory=Counter)
    finished: dict[int, list[Candidate]] = field(init=False, default_factory=dict)
    timing: dict[str, StageTiming] = field(init=False)
    _ids: itertools.count = field(init=False, default_factory=itertools.count)
    _oldest: list[float | None] = field(init=False)
    _retries: list[tuple[float, Ticket]] = field(init=False, default_factory=list)
    # node-local files the workers may drop: a video's fetched source once none of its candidates is
    # before or in the last stage that reads the source; a clip's media once the clip is through
    _last_source_stage: int = field(init=False, default=-1)
    _source_users: Counter = field(init=False, default_factory=Counter)
    _source_keys: dict[str, str] = field(init=False, default_factory=dict)
    _evict_sources: list[str] = field(init=False, default_factory=list)
    _evict_clips: list[str] = field(init=False, default_factory=list)
    _media_held: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.queues = [deque() for _ in self.stages]
        self._oldest = [None for _ in self.stages]
        self.timing = {s.name: StageTiming() for s in self.stages}
        self._last_source_stage = max((i for i, s in enumerate(self.stages) if s.reads_source), default=-1)

    @property
    def open_shards(self) -> int:
        return len(self.finished)

    def add_shard(self, shard: int, cands: list[Candidate], done: list[Candidate]) -> None:
        """``cands`` go through the stages; ``done`` (decided before any stage) only into the manifest."""
        self.finished[shard] = list(done)
        self.outstanding[shard] += len(cands)
        for c in cands:
            if is_remote_source(c.source):
                self._source_keys[c.video_id] = source_key(c.source, c.info.get("fingerprint"))
            self._enqueue(0, c)
        if not cands:
            self._close(shard)

    def _enqueue(self, i: int, c: Candidate) -> None:
        if i <= self._last_source_stage:
            self._source_users[c.video_id] += 1
        if not self.queues[i]:
            self._oldest[i] = time.monotonic()
        self.queues[i].append(c)

    def _upstream_idle(self, i: int) -> bool:
        return all(not self.queues[j] and not self.inflight[j] for j in range(i))

    def _submit_ready(self) -> None:
        now = time.monotonic()
        for i, stage in enumerate(self.stages):
            q, bs = self.queues[i], stage.resources.candidates_per_call
            while q and self.executor.free_slots(i) > 0:
                room = self.max_clips_in_flight - len(self._media_held) if stage.makes_clip_media else bs
                if room <= 0:
                    break
                waited = now - (self._oldest[i] or now)
                if len(q) < bs and not self._upstream_idle(i) and waited < self.flush_seconds:
                    break
                batch = [q.popleft() for _ in range(min(bs, room, len(q)))]
                if stage.makes_clip_media:
                    self._media_held.update(c.key for c in batch)
                self._oldest[i] = now if q else None
                self._send(Ticket(next(self._ids), i, batch))

    def _send(self, ticket: Ticket) -> None:
        self.inflight[ticket.stage_idx] += 1
        self.executor.submit(ticket)

    def _close(self, shard: int) -> None:
        cands = self.finished.pop(shard)
        del self.outstanding[shard]
        self.on_shard_done(shard, cands)

    def _finish(self, c: Candidate) -> None:
        if c.pending:
            c.status = "kept"
        elif c.status == "rejected":
            c.members = {}  # nothing of it is written: its members can go from wherever they are held
        if "media" in c.info:
            self._evict_clips.append(c.key)
        self._media_held.discard(c.key)
        self.finished[c.shard].append(c)
        self.outstanding[c.shard] -= 1
        if self.on_progress:
            self.on_progress(1)
        if self.outstanding[c.shard] == 0:
            self._close(c.shard)

    def _failed(self, ticket: Ticket, err: BaseException) -> list[Candidate]:
        """A batch whose worker died: retry it, then split it to find the candidate that kills workers,
        then reject what still fails. Never dropped."""
        stage = self.stages[ticket.stage_idx]
        if isinstance(err, WorkerLost):
            # a lost node is not the batch's fault: retrying on actors that cannot restart would end in
            # rejecting good candidates as errors; stop, and let the build name the unfinished shards
            lost = self.executor.capacity_lost()
            if lost:
                raise CapacityLost(lost)
        if isinstance(err, WorkerLost) and err.transient and ticket.waits < self.max_unavailable_waits:
            # unreachable, not dead: wait for Ray to either bring the actor back or mark its node dead
            self._retry(Ticket(next(self._ids), ticket.stage_idx, ticket.batch, ticket.attempt, ticket.waits + 1))
            return []
        if isinstance(err, WorkerLost) and ticket.attempt < self.max_batch_retries:
            self._retry(Ticket(next(self._ids), ticket.stage_idx, ticket.batch, ticket.attempt + 1))
            return []
        if isinstance(err, WorkerLost) and len(ticket.batch) > 1:
            for c in ticket.batch:
                self._retry(Ticket(next(self._ids), ticket.stage_idx, [c], self.max_batch_retries))
            return []
        for c in ticket.batch:
            if isinstance(err, WorkerLost) and "OutOfMemoryError" in str(err):
                msg = out_of_memory_message(stage.name, c.source, c.key,
                                            f"its worker was killed by Ray's memory monitor after "
                                            f"{ticket.attempt + 1} attempts")
            elif isinstance(err, WorkerLost):
                msg = (f"stage '{stage.name}' lost its worker on {c.source} ({c.key}) after {ticket.attempt + 1} "
                       f"attempts: {err}; if this input exhausts memory, lower stages.{stage.name}.resources."
                       f"candidates_per_call or give the stage more memory")
            else:
                msg = f"stage '{stage.name}' failed on {c.source} ({c.key}): {str(err).strip().splitlines()[-1]}"
            c.stage = stage.name
            c.reject(stage.name, "error", msg)
        return ticket.batch

    def _retry(self, ticket: Ticket) -> None:
        self.inflight[ticket.stage_idx] += 1  # still owed: keeps its shard open and the loop alive
        self._retries.append((time.monotonic() + self.retry_backoff_s * max(1, min(ticket.attempt + ticket.waits, 5)),
                              ticket))

    def _send_due_retries(self) -> None:
        now = time.monotonic()
        due = [t for when, t in self._retries if when <= now]
        if not due:
            return
        lost = self.executor.capacity_lost()
        if lost:
            raise CapacityLost(lost)
        self._retries = [(when, t) for when, t in self._retries if when > now]
        for t in due:
            self.inflight[t.stage_idx] -= 1
            self._send(t)

    def _left_stage(self, i: int, batch: list[Candidate]) -> None:
        """``batch`` is through stage ``i`` for good (not resubmitted): a video none of whose candidates is
        left in or before the last stage that reads its source can drop its fetched copy."""
        if i > self._last_source_stage:
            return
        for c in batch:
            self._source_users[c.video_id] -= 1
            if self._source_users[c.video_id] <= 0:
                del self._source_users[c.video_id]
                if c.video_id in self._source_keys:
                    self._evict_sources.append(self._source_keys.pop(c.video_id))

    def _flush_evictions(self) -> None:
        if self._evict_sources or self._evict_clips:
            self.executor.evict(self._evict_sources, self._evict_clips)
            self._evict_sources, self._evict_clips = [], []

    def step(self, timeout: float = 1.0) -> bool:
        """Submit what is ready, take what finished. False when nothing is left to do."""
        self._send_due_retries()
        self._submit_ready()
        if not any(self.inflight.values()):
            return any(self.queues)
        if self._retries and len(self._retries) == sum(self.inflight.values()):
            time.sleep(min(timeout, 0.1))  # only retries are owed: wait for their time
            return True
        for ticket, result in self.executor.wait(timeout):
            i = ticket.stage_idx
            self.inflight[i] -= 1
            if isinstance(result, BaseException):
                result = self._failed(ticket, result)  # resubmitted ([]) or rejected (the batch itself)
            else:
                t = self.timing[self.stages[i].name]
                t.batches += 1
                t.candidates += len(ticket.batch)
                t.busy_s += time.monotonic() - ticket.submitted
                born = Counter(c.shard for c in result)
                born.subtract(Counter(c.shard for c in ticket.batch))
                for shard, n in born.items():
                    self.outstanding[shard] += n
            for c in result:
                if c.pending and i + 1 < len(self.stages):
                    self._enqueue(i + 1, c)
                else:
                    self._finish(c)
            if result:  # through stage i for good (an empty result is a batch sent again)
                self._left_stage(i, ticket.batch)
        self._flush_evictions()
        return True
