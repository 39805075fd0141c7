"""The stage contract around loading: ``setup`` runs a stage's ``load`` once per actor, whether an executor
or a stage used on its own drives it; every model stage can make its tiny random model."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import pytest

from mtcc.pipeline.errors import StageSetupError
from mtcc.pipeline.executor import Executor, InProcessExecutor, Ticket
from mtcc.pipeline.ray_executor import RayExecutor
from mtcc.stages import STAGES
from mtcc.stages.base import Candidate, Stage
from mtcc.stages.model_stage import ModelStage, WeightsStage


class Loads(Stage):
    """Counts its loads; the first ``fail`` of them raise."""

    name: ClassVar[str] = "loads"
    stats_schema: ClassVar[dict[str, str]] = {"loads": "int64"}
    fail: int = 0
    _tries: int = 0
    _loads: int = 0

    def load(self) -> None:
        self._tries += 1
        if self._tries <= self.fail:
            raise RuntimeError(f"load {self._tries} failed")
        self._loads += 1

    def compute(self, cand: Candidate) -> dict[str, Any]:
        return {"loads": self._loads}


def cands(n: int, first: int = 0) -> list[Candidate]:
    return [Candidate(key=f"k{i}", video_id=f"v{i}", source=f"/nowhere/{i}.mp4", shard=0) for i in range(first, first + n)]


def test_an_executor_loads_each_stage_once_however_many_batches_follow():
    stage = Loads()
    ex = InProcessExecutor([stage])
    for i in range(3):
        ex.submit(Ticket(i, 0, cands(2, 2 * i)))
    done = ex.wait(0)
    assert [c.stats["loads.loads"] for _, out in done for c in out] == [1] * 6
    assert (stage._tries, stage._loads) == (1, 1)


def test_a_stage_on_its_own_loads_at_its_first_batch_only():
    stage = Loads()
    assert stage._loads == 0  # making a stage loads nothing
    for i in range(2):
        out = stage.run_batch(cands(2, 2 * i))
        assert [c.status for c in out] == ["pending"] * 2
        assert [c.stats["loads.loads"] for c in out] == [1, 1]  # loaded by the first batch, not again
    assert (stage._tries, stage._loads) == (1, 1)
    stage.setup()  # an explicit setup after that loads nothing either
    assert (stage._tries, stage._loads) == (1, 1)


def test_a_failed_load_rejects_the_candidates_and_the_next_batch_tries_again():
    stage = Loads(fail=3)  # the batch's try, then each of its two candidates' alone
    first = stage.run_batch(cands(2))
    assert [c.status for c in first] == ["rejected"] * 2
    assert [c.reason for c in first] == ["error"] * 2
    assert "load 2 failed" in first[0].message and "load 3 failed" in first[1].message
    second = stage.run_batch(cands(1, 5))
    assert second[0].status == "pending" and second[0].stats["loads.loads"] == 1
    assert (stage._tries, stage._loads) == (4, 1)


def test_an_executor_refuses_a_stage_that_cannot_load():
    with pytest.raises(StageSetupError, match="stage 'loads' failed to set up: load 1 failed"):
        InProcessExecutor([Loads(fail=1)])


def test_a_model_stage_without_a_tiny_maker_cannot_exist():
    class NoTiny(ModelStage):
        name: ClassVar[str] = "no_tiny"

    with pytest.raises(TypeError, match="make_tiny"):
        NoTiny()


def test_the_model_stages_are_the_ones_with_random_weights_and_a_tiny_maker():
    model = {n for n, c in STAGES.items() if issubclass(c, ModelStage)}
    # what a model stage promises: its rows say whether its weights were random (the stat the sample's json
    # lists them by); no other stage records one
    records = {n for n, c in STAGES.items() if "random_weights" in c.stats_schema}
    assert model and records == model
    assert not any(inspect.isabstract(STAGES[n]) for n in model)
    # faces runs weights (its detector's) but has no random stand-in: its meta names them all the same
    weights = {n for n, c in STAGES.items() if issubclass(c, WeightsStage)}
    assert weights == model | {"faces"}
    assert all("allow_random_weights" not in STAGES[n].model_fields for n in weights - model)


def test_both_executors_implement_the_protocol():
    assert Executor in RayExecutor.__mro__ and Executor in InProcessExecutor.__mro__  # declared, not duck-typed
    ex = InProcessExecutor([Loads()])
    assert ex.driver_bytes is None and ex.capacity_lost() is None
