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
    flow = Flow(stages, executor or InProcessExecutor(stages), lambda s, c: shards.__setitem__(s, c))
    flow.add_shard(0, [Candidate(key=k, video_id=k, source=f"/x/{k}.mp4", shard=0) for k in keys], [])
    while flow.step():
        pass
    return {c.key: c for c in shards[0]}


def test_exception_rejects_only_its_candidate_with_stage_and_file():
    stages = [Halves(resources={"batch_size": 4}), Threshold(limit=0.5, resources={"batch_size": 4})]
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

    def __init__(self, stages):
        super().__init__(stages)
        self.attempts = 0

    def submit(self, ticket):
        if any("poison" in c.key for c in ticket.batch):
            self.attempts += 1
            self._done.append((ticket, WorkerLost("ActorDiedError: killed")))
        else:
            super().submit(ticket)


def test_worker_loss_is_retried_split_and_rejected_never_dropped():
    stages = [Halves(resources={"batch_size": 8}), Threshold(limit=5, resources={"batch_size": 8})]
    ex = DyingExecutor(stages)
    out = run(stages, ["a", "poison", "b"], ex)
    assert out["poison"].reason == "error" and "lost its worker" in out["poison"].message
    assert out["a_0000"].status == out["b_0001"].status == "kept"
    assert ex.attempts == 3 + 1  # the batch thrice (1 + 2 retries), then the poison alone once more
