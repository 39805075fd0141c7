"""Streams candidates through the stages and hands each shard to its commit the moment the last of
its candidates is through. Knows stages only as a list; knows nothing of what they do."""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mtcc.facts import CutMedia, SourceFile
from mtcc.stages.base import Candidate, MemberLost, Stage, out_of_memory_message
from mtcc.storage.files import is_remote_source
from mtcc.storage.workspace import source_key

from .executor import Executor, Ticket, WorkerLost


class CapacityLost(RuntimeError):
    """The cluster can no longer hold the stages' actors (a node was lost and not replaced)."""


class ShardLost(RuntimeError):
    """Members of a shard's candidates were lost with a node: the shard is made again from its inputs."""

    def __init__(self, shards: set[int], why: str):
        super().__init__(why)
        self.shards = shards


@dataclass
class _Parts:
    """A candidate whose parts are out (``Stage.chunks``): each part's ``(kind, result)`` once it is in."""

    cand: Candidate
    results: list[tuple[str, Any] | None]


@dataclass
class StageTiming:
    batches: int = 0
    candidates: int = 0
    busy_s: float = 0.0  # from a batch's submission to its result (queueing in the actor included)
    actor_s: float = 0.0  # what the workers spent on the stage's batches
    cpu_s: float = 0.0  # the same, in actor-seconds at the stage's declared CPU share
    media_in: float = 0.0  # seconds of media that entered the stage
    parts: int = 0  # part tickets of long candidates (``Stage.chunks``) the stage ran
    rescans: int = 0  # long candidates whose parts did not join (``Stage.parts_join``): the merge did them whole


@dataclass
class StageLoad:
    """What the flow knows of one stage now: measured work (for the pool planner) and what waits."""

    media_in: float = 0.0
    actor_s: float = 0.0
    cpu_s: float = 0.0
    batches: int = 0
    queued: int = 0  # candidates waiting for the stage
    inflight: int = 0  # batches in its workers
    done: bool = False  # nothing can reach the stage any more


def media_seconds(c: Candidate) -> float:
    """Seconds of media a candidate stands for: a clip's length, a video's probed duration (0 before)."""
    if c.start is not None and c.end is not None:
        return max(0.0, float(c.end) - float(c.start))
    return float(c.stats.get("probe.duration") or 0.0)


@dataclass
class Flow:
    stages: list[Stage]
    executor: Executor
    on_shard_done: Callable[[int, list[Candidate]], None]
    max_batch_retries: int = 2
    flush_seconds: float = 2.0
    on_progress: Callable[[Candidate], None] | None = None  # each candidate through (kept, rejected, expanded)
    # a lost worker's batch waits before its retry: the actor restarts meanwhile, and a node that is gone
    # has time to be marked dead, so a lost node stops the build instead of turning its batches into errors
    retry_backoff_s: float = 2.0
    max_unavailable_waits: int = 30
    # clips whose media a cut stage has made (or is making) and that are not through yet: their files sit
    # in the node workspaces, so the cut waits while this many are held (node-local disk stays bounded
    # however far ahead of the model stages the cut could run)
    max_clips_in_flight: int = 32
    # the candidates of a shard made anew from its plan rows (a shard whose members were lost is redone)
    replan: Callable[[int], tuple[list[Candidate], list[Candidate]]] | None = None
    # more shards will be added (the build has some pending): stages cannot be done yet
    more_coming: bool = True
    on_redo: Callable[[int, str], None] | None = None

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
    _media_held: dict[str, int] = field(init=False, default_factory=dict)  # clip key -> its shard
    # a shard's generation: candidates of an older generation (in flight when the shard was redone) are dropped
    _gen: Counter = field(init=False, default_factory=Counter)
    _ticket_gen: dict[int, dict[int, int]] = field(init=False, default_factory=dict)
    redone: list[int] = field(init=False, default_factory=list)
    # long candidates split into parts: their part results so far, and the part and merge tickets to send
    _parts: dict[str, _Parts] = field(init=False, default_factory=dict)
    _parts_q: list[deque] = field(init=False)

    started: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.queues = [deque() for _ in self.stages]
        self._parts_q = [deque() for _ in self.stages]
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
                self._source_keys[c.video_id] = source_key(c.source, (c.maybe(SourceFile) or SourceFile()).fingerprint)
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
            while (q or self._parts_q[i]) and self.executor.free_slots(i) > 0:
                if self._parts_q[i]:  # parts of a long candidate, and merges of parts done: first come first
                    self._send(self._parts_q[i].popleft())
                    continue
                room = self.max_clips_in_flight - len(self._media_held) if stage.makes_clip_media else bs
                if room <= 0:
                    break
                waited = now - (self._oldest[i] or now)
                if len(q) < bs and not self._upstream_idle(i) and waited < self.flush_seconds:
                    break
                batch = [q.popleft() for _ in range(min(bs, room, len(q)))]
                if stage.makes_clip_media:
                    self._media_held.update((c.key, c.shard) for c in batch)
                self._oldest[i] = now if q else None
                batch = self._split_long(i, batch)
                if batch:
                    self._send(Ticket(next(self._ids), i, batch))

    def _split_long(self, i: int, batch: list[Candidate]) -> list[Candidate]:
        """Candidates the stage splits into parts (``Stage.chunks``: a long video's time chunks) go to several
        workers at once as part tickets; the rest of ``batch`` goes as it is."""
        stage = self.stages[i]
        whole = []
        for c in batch:
            specs = stage.chunks(c) if c.pending else []
            if len(specs) < 2:
                whole.append(c)
                continue
            self._parts[c.key] = _Parts(c, [None] * len(specs))
            for k, spec in enumerate(specs):
                self._parts_q[i].append(Ticket(next(self._ids), i, [c], chunk={"index": k, **spec}))
        return whole

    def _part_done(self, ticket: Ticket, result: Any) -> list[Candidate]:
        """A part ticket came back (its result, or what failed it): once every part of its candidate is in,
        the merge is queued, or the candidate, rejected when a part failed, goes on as the stage's result."""
        c = ticket.batch[0]
        job = self._parts.get(c.key)
        if job is None:
            return []
        if isinstance(result, BaseException):
            failed = self._failed(ticket, result)  # retried ([]) or given up: the part failed for good
            if not failed:
                return []
            result = ("error", c.message or "a part failed")
            c.status, c.stage, c.reason, c.message = "pending", "", None, None  # settled once all parts are in
        job.results[ticket.chunk["index"]] = result
        if any(r is None for r in job.results):
            return []
        del self._parts[c.key]
        errors = [p for kind, p in job.results if kind != "ok"]
        if errors:
            c.reject(self.stages[ticket.stage_idx].name, "error", errors[0])
            return [c]
        parts = [p for _, p in job.results]
        stage = self.stages[ticket.stage_idx]
        self.timing[stage.name].rescans += not stage.parts_join(parts)
        self._parts_q[ticket.stage_idx].appendleft(Ticket(next(self._ids), ticket.stage_idx, [c], parts=parts))
        return []

    def _send(self, ticket: Ticket) -> None:
        self.inflight[ticket.stage_idx] += 1
        self._ticket_gen[ticket.id] = {c.shard: self._gen[c.shard] for c in ticket.batch}
        self.executor.submit(ticket)

    def _close(self, shard: int) -> None:
        cands = self.finished.pop(shard)
        del self.outstanding[shard]
        try:
            self.on_shard_done(shard, cands)
        except ShardLost as e:  # its members could not be fetched for the commit: made again
            if self.replan is None:
                raise
            self._gen[shard] += 1
            self.redone.append(shard)
            self.add_shard(shard, *self.replan(shard))
            if self.on_redo:
                self.on_redo(shard, str(e))

    def _finish(self, c: Candidate) -> None:
        if c.pending:
            c.status = "kept"
        elif c.status == "rejected":
            c.members = {}  # nothing of it is written: its members can go from wherever they are held
        if CutMedia in c.facts:
            self._evict_clips.append(c.key)
        self._media_held.pop(c.key, None)
        self.finished[c.shard].append(c)
        self.outstanding[c.shard] -= 1
        if self.on_progress:
            self.on_progress(c)
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
        if isinstance(err, WorkerLost) and err.transient and self.executor.loading(ticket.stage_idx):
            # the stage's actors are gone and a new one is loading its models (a large model can take minutes,
            # up to the executor's start timeout): the batch waits for it without using up its waits
            self._retry(replace(ticket, id=next(self._ids), submitted=time.monotonic()))
            return []
        if isinstance(err, WorkerLost) and err.transient and ticket.waits < self.max_unavailable_waits:
            # unreachable, not dead: wait for Ray to either bring the actor back or mark its node dead
            self._retry(replace(ticket, id=next(self._ids), waits=ticket.waits + 1, submitted=time.monotonic()))
            return []
        if isinstance(err, WorkerLost) and ticket.attempt < self.max_batch_retries:
            self._retry(replace(ticket, id=next(self._ids), attempt=ticket.attempt + 1, submitted=time.monotonic()))
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
            waiting = any(self.queues) or any(self._parts_q)
            if waiting and hasattr(self.executor, "idle"):
                # work waits for a stage with no actor (lost, or one could not start): not a busy loop
                self.executor.idle(min(timeout, 0.2))
            return waiting
        if self._retries and len(self._retries) == sum(self.inflight.values()):
            time.sleep(min(timeout, 0.1))  # only retries are owed: wait for their time
            return True
        for ticket, result in self.executor.wait(timeout):
            i = ticket.stage_idx
            self.inflight[i] -= 1
            gens = self._ticket_gen.pop(ticket.id, {})
            stale = {s for s, g in gens.items() if g != self._gen[s]}
            if stale:  # its shard was redone meanwhile: what comes back of it is dropped
                ticket.batch = [c for c in ticket.batch if c.shard not in stale]
                if not isinstance(result, BaseException) and ticket.chunk is None:
                    result = [c for c in result if c.shard not in stale]
                if not ticket.batch:
                    continue
            if isinstance(result, BaseException) and _member_lost(result):
                self._redo({c.shard for c in ticket.batch}, str(result).strip().splitlines()[-1])
                continue
            if ticket.chunk is not None:
                t = self.timing[self.stages[i].name]
                t.actor_s += ticket.busy_s
                t.cpu_s += ticket.busy_s * ticket.cpu_scale
                t.parts += not isinstance(result, BaseException)
                result = self._part_done(ticket, result)
                if not result:
                    continue
            elif isinstance(result, BaseException):
                result = self._failed(ticket, result)  # resubmitted ([]) or rejected (the batch itself)
            else:
                t = self.timing[self.stages[i].name]
                t.batches += 1
                t.candidates += len(ticket.batch)
                t.busy_s += time.monotonic() - ticket.submitted
                t.actor_s += ticket.busy_s
                t.cpu_s += ticket.busy_s * ticket.cpu_scale
                keys = {c.key for c in ticket.batch}
                t.media_in += sum(media_seconds(c) for c in result if c.key in keys)
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

    # -- what the pool planner reads, and shards made again -------------------------------------------
    def loads(self) -> dict[str, StageLoad]:
        """Per stage: what it measured so far, what waits for it, and whether anything can still reach it."""
        out = {}
        upstream_busy = self.more_coming
        for i, stage in enumerate(self.stages):
            t = self.timing[stage.name]
            busy = (bool(self.queues[i]) or bool(self._parts_q[i]) or self.inflight[i] > 0
                    or any(t.stage_idx == i for _, t in self._retries))
            upstream_busy = upstream_busy or busy
            out[stage.name] = StageLoad(t.media_in, t.actor_s, t.cpu_s, t.batches, len(self.queues[i]),
                                        self.inflight[i], done=not upstream_busy)
        return out

    def redo_shard(self, shard: int, why: str) -> None:
        """Make ``shard`` again from its plan rows: its candidates anywhere in the stages are dropped (those in
        flight when their results come back) and it starts over at the first stage."""
        self._redo({shard}, why)

    def _redo(self, shards: set[int], why: str) -> None:
        if self.replan is None:
            raise ShardLost(shards, why)
        for shard in sorted(shards):
            if shard not in self.finished:
                continue  # committed already, or redone by an earlier failure of the same batch
            self._gen[shard] += 1
            for q in self.queues:
                kept = [c for c in q if c.shard != shard]
                q.clear()
                q.extend(kept)
            for q in self._parts_q:
                kept = [t for t in q if t.batch[0].shard != shard]
                q.clear()
                q.extend(kept)
            self._parts = {k: j for k, j in self._parts.items() if j.cand.shard != shard}
            self._retries = [(when, t) for when, t in self._retries if not self._drop_from(t, shard)]
            self._media_held = {k: s for k, s in self._media_held.items() if s != shard}
            del self.finished[shard]
            del self.outstanding[shard]
            self.redone.append(shard)
            self.add_shard(shard, *self.replan(shard))
            if self.on_redo:
                self.on_redo(shard, why)

    def _drop_from(self, ticket: Ticket, shard: int) -> bool:
        """Drop ``shard``'s candidates from a waiting retry; True when nothing of it is left to retry."""
        ticket.batch = [c for c in ticket.batch if c.shard != shard]
        if not ticket.batch:
            self.inflight[ticket.stage_idx] -= 1
            return True
        return False


def _member_lost(err: BaseException) -> bool:
    """A worker's batch failed because a member it read was lost with its node (see ``MemberLost``)."""
    if isinstance(err, MemberLost) or isinstance(getattr(err, "cause", None), MemberLost):
        return True
    return "MemberLost" in str(err)
