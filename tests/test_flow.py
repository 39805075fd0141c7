"""Failure isolation in the stage contract and the flow, with small real stages defined here."""

from __future__ import annotations

from typing import Any, ClassVar

from mtcc.pipeline.executor import InProcessExecutor, WorkerLost
from mtcc.pipeline.flow import Flow
from mtcc.stages.base import Candidate, Rejection, Stage
from mtcc.stages.clip import make_clip


class Halves(Stage):
    """Splits each video into two clips; raises on videos named 'boom'."""

    name: ClassVar[str] = "halves"
    expands: ClassVar[bool] = True

    def process(self, batch):
        out = []
        for v in batch:
            if "boom" in v.key:
                raise RuntimeError("cannot split")
            v.status = "expanded"
            out += [v, make_clip(v, self.name, 0, 0, 1), make_clip(v, self.name, 1, 1, 2)]
        return out


class Threshold(Stage):
    name: ClassVar[str] = "threshold"
    stats_schema: ClassVar[dict[str, str]] = {"value": "float64"}
    limit: float = 1.0

    def compute(self, cand: Candidate) -> dict[str, Any]:
        if cand.clip_idx == 1 and "bad" in cand.key:
            raise ValueError("bad clip")
        return {"value": float(cand.clip_idx)}

    def decide(self, stats):
        return Rejection("too_big", f"value {stats['value']} > {self.limit}") if stats["value"] > self.limit else None


def run(stages, keys, executor=None):
    shards: dict[int, list[Candidate]] = {}
    flow = Flow(stages, executor or InProcessExecutor(stages), lambda s, c: shards.__setitem__(s, c),
                retry_backoff_s=0.01)
    flow.add_shard(0, [Candidate(key=k, video_id=k, source=f"/x/{k}.mp4", shard=0) for k in keys], [])
    while flow.step():
        pass
    return {c.key: c for c in shards[0]}


def test_exception_rejects_only_its_candidate_with_stage_and_file():
    stages = [Halves(resources={"candidates_per_call": 4}), Threshold(limit=0.5, resources={"candidates_per_call": 4})]
    out = run(stages, ["a", "boom", "bad"])
    assert out["boom"].status == "rejected" and out["boom"].reason == "error"
    assert "halves" in out["boom"].message and "/x/boom.mp4" in out["boom"].message
    assert "cannot split" in out["boom"].message
    assert out["a"].status == "expanded" and out["a_0000"].status == "kept"
    assert out["a_0001"].reason == "too_big" and out["a_0001"].stats["threshold.value"] == 1.0
    assert out["bad_0000"].status == "kept"
    assert out["bad_0001"].reason == "error" and "bad clip" in out["bad_0001"].message
    assert len(out) == 3 + 4  # three videos, four clips: nothing lost


def test_disabled_threshold_keeps_stats_for_later_reapplication():
    out = run([Halves(), Threshold(limit=5.0)], ["a"])
    assert out["a_0001"].status == "kept" and out["a_0001"].stats["threshold.value"] == 1.0


class DyingExecutor(InProcessExecutor):
    """Real stages, but the worker 'dies' on every batch that holds a candidate named 'poison'."""

    error = "ActorDiedError: killed"

    def __init__(self, stages):
        super().__init__(stages)
        self.attempts = 0

    def submit(self, ticket):
        if any("poison" in c.key for c in ticket.batch):
            self.attempts += 1
            self._done.append((ticket, WorkerLost(self.error)))
        else:
            super().submit(ticket)


def test_worker_loss_is_retried_split_and_rejected_never_dropped():
    stages = [Halves(resources={"candidates_per_call": 8}), Threshold(limit=5, resources={"candidates_per_call": 8})]
    ex = DyingExecutor(stages)
    out = run(stages, ["a", "poison", "b"], ex)
    assert out["poison"].reason == "error" and "lost its worker" in out["poison"].message
    assert out["a_0000"].status == out["b_0001"].status == "kept"
    assert ex.attempts == 3 + 1  # the batch thrice (1 + 2 retries), then the poison alone once more


class ReloadingExecutor(InProcessExecutor):
    """Real stages, but the threshold stage's only actor was lost and its replacement loads its models for
    ``reload`` submits: until then every batch of it fails as Ray's executor fails it, 'no live actor'."""

    def __init__(self, stages, reload: int):
        super().__init__(stages)
        self.reload = reload
        self.refused = 0

    def loading(self, stage_idx):
        return stage_idx == 1 and self.refused < self.reload

    def submit(self, ticket):
        if self.loading(ticket.stage_idx):
            self.refused += 1
            self._done.append((ticket, WorkerLost("no live actor of the stage right now", transient=True)))
        else:
            super().submit(ticket)


def test_batches_wait_for_a_replacement_actor_loading_its_models_without_using_their_retries():
    """A replacement actor that takes longer to load than a batch's waits and retries add up to (a large
    model: minutes) must not turn the batches waiting for it into error rows."""
    stages = [Halves(resources={"candidates_per_call": 8}), Threshold(limit=5, resources={"candidates_per_call": 8})]
    ex = ReloadingExecutor(stages, reload=40)
    shards: dict[int, list[Candidate]] = {}
    flow = Flow(stages, ex, lambda s, c: shards.__setitem__(s, c), retry_backoff_s=0.001, max_unavailable_waits=3)
    flow.add_shard(0, [Candidate(key=k, video_id=k, source=f"/x/{k}.mp4", shard=0) for k in ("a", "b")], [])
    while flow.step():
        pass
    out = {c.key: c for c in shards[0]}
    assert ex.refused == 40  # waits and retries would have given up after 3 + 2 + 3 per candidate
    assert {k: c.status for k, c in out.items() if c.level == "clip"} == {
        "a_0000": "kept", "a_0001": "kept", "b_0000": "kept", "b_0001": "kept"}


class FrameBuffer(Stage):
    """Holds a clip's frames in memory, as decoding stages do: memory grows with the clip's length.
    ``backend`` picks who allocates (numpy raises MemoryError, torch's CPU allocator a RuntimeError)."""

    name: ClassVar[str] = "frames"
    stats_schema: ClassVar[dict[str, str]] = {"bytes": "int64"}
    bytes_per_second: int = 1 << 20
    backend: str = "numpy"

    def process(self, batch):
        import numpy as np
        import torch

        for c in batch:
            n = int((c.end - c.start) * self.bytes_per_second)
            buf = np.ones(n, np.uint8) if self.backend == "numpy" else torch.ones(n, dtype=torch.uint8)
            self.record(c, {"bytes": int(buf.shape[0])})
        return batch


def _clips(durations: dict[str, float]) -> list[Candidate]:
    return [Candidate(key=k, video_id=k, source=f"/x/{k}.mp4", shard=0, level="clip", clip_idx=0, start=0.0, end=d)
            for k, d in durations.items()]


def test_a_clip_that_exhausts_memory_is_rejected_as_out_of_memory_and_its_neighbours_go_on():
    for backend in ("numpy", "torch"):
        stage = FrameBuffer(backend=backend, resources={"candidates_per_call": 3})
        # 2**30 s of video at 1 MiB/s: a petabyte, which no machine can allocate
        out = {c.key: c for c in stage.run_batch(_clips({"a": 2.0, "huge": float(1 << 30), "b": 3.0}))}
        assert out["a"].status == out["b"].status == "pending", backend  # kept going
        assert out["b"].stats["frames.bytes"] == 3 << 20
        huge = out["huge"]
        assert huge.status == "rejected" and huge.reason == "error", backend
        assert huge.message.startswith("out of memory: stage 'frames' on /x/huge.mp4 (huge)"), huge.message
        assert "stages.frames.resources.candidates_per_call" in huge.message
    # a plain failure (a negative size) is an error, not called out of memory
    bad = FrameBuffer(bytes_per_second=-1).run_batch(_clips({"neg": 1.0}))[0]
    assert bad.reason == "error" and not bad.message.startswith("out of memory"), bad.message


def test_a_worker_killed_for_memory_names_out_of_memory():
    stages = [Halves(resources={"candidates_per_call": 8}), Threshold(limit=5, resources={"candidates_per_call": 8})]

    class OomExecutor(DyingExecutor):
        error = "OutOfMemoryError: Task was killed due to the node running low on memory"

    out = run(stages, ["a", "poison", "b"], OomExecutor(stages))
    assert out["poison"].reason == "error" and out["poison"].message.startswith("out of memory: stage")
    assert out["a_0000"].status == "kept"


HELD: list[int] = []  # clips whose "media" are made and not yet through, after each call of either stage


class Many(Stage):
    """Splits each video into ten clips."""

    name: ClassVar[str] = "many"
    expands: ClassVar[bool] = True

    def process(self, batch):
        out = []
        for v in batch:
            v.status = "expanded"
            out += [v, *(make_clip(v, self.name, k, k, k + 1) for k in range(10))]
        return out


class MakesMedia(Stage):
    name: ClassVar[str] = "maker"
    makes_clip_media: ClassVar[bool] = True

    def process(self, batch):
        HELD.append(HELD[-1] + len(batch))
        return batch


class UsesMedia(Stage):
    name: ClassVar[str] = "user"

    def process(self, batch):
        HELD.append(HELD[-1] - len(batch))
        return batch


def test_the_cut_waits_while_max_clips_in_flight_are_held():
    """The stage that makes clip media (files on a node's disk) runs ahead of the stages that consume them
    only by ``max_clips_in_flight`` clips; without the bound it would cut all twenty at once."""
    stages = [Many(), MakesMedia(resources={"candidates_per_call": 4}), UsesMedia(resources={"candidates_per_call": 1})]
    for limit, want in ((3, 3), (100, 20)):
        HELD[:] = [0]
        shards: dict[int, list[Candidate]] = {}
        flow = Flow(stages, InProcessExecutor(stages), lambda s, c: shards.__setitem__(s, c), max_clips_in_flight=limit)
        flow.add_shard(0, [Candidate(key=k, video_id=k, source=f"/x/{k}.mp4", shard=0) for k in ("a", "b")], [])
        while flow.step():
            pass
        assert max(HELD) == want and HELD[-1] == 0
        assert sum(c.status == "kept" for c in shards[0]) == 20  # nothing lost to the wait
