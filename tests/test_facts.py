"""The typed facts stages hand each other: one maker per fact, frozen, declared, and only the declared ones
reach the sample's json."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, ClassVar

import pytest

from mtcc.facts import ALL, ClipFaces, MissingFact, Separation, Speakers, SyncResult
from mtcc.stages import STAGES
from mtcc.stages.base import FROM_INPUT, Candidate, FactKey, Stage


def speakers(**kw: Any) -> Speakers:
    base = dict(model="m", random_weights=False, fps=25, dtype="float32", speaking_fraction=[0.5, 0.1],
                intervals=[[[0.0, 1.0]], []], both_speaking=0.0, turns=1, track_face=None, speech=None, axes="",
                silent=(False, True))
    return Speakers(**{**base, **kw})


def test_every_fact_has_one_maker_and_it_is_the_stage_it_names():
    given = {k.name for k in FROM_INPUT if isinstance(k, FactKey)}
    for fact in ALL:
        makers = [name for name, cls in STAGES.items()
                  if any(isinstance(k, FactKey) and k.fact is fact for k in cls.provides)]
        if fact.key in given:
            assert makers == [] and fact.made_by == "the build", fact
        else:
            assert makers == [fact.made_by], (fact.__name__, makers, fact.made_by)
    assert len({f.key for f in ALL}) == len(ALL)  # one key per fact: the sample json has no collisions


def test_every_fact_a_stage_reads_is_a_declared_fact_class():
    for cls in STAGES.values():
        for k in (*cls.requires, *cls.provides):
            if isinstance(k, FactKey):
                assert k.fact in ALL and k.name == k.fact.key, (cls.name, k)


def test_facts_are_frozen_and_travel_with_the_candidate():
    c = Candidate(key="k", video_id="v", source="s", shard=0)
    s = speakers()
    c.put(s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.turns = 5  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(c))  # how Ray ships a candidate between actors
    assert back.fact(Speakers) == s and back.maybe(ClipFaces) is None
    with pytest.raises(MissingFact, match="ClipFaces.*'segment' stage makes it"):
        back.fact(ClipFaces)


def test_the_sample_json_form_leaves_out_local_and_absent_fields():
    meta = speakers().to_json()
    assert "silent" not in meta and meta["intervals"] == [[[0.0, 1.0]], []] and meta["speech"] is None
    sync = SyncResult(model="m", random_weights=False, audio_source="mixture", vshift=15, windows=3, cross=None,
                      a_ac=[[1, 0], [0, 1]], binding_margin=0.0, swapped=False, axes="")
    assert "shifted_frames" not in sync.to_json()
    assert dataclasses.replace(sync, shifted_frames=[2, 0]).to_json()["shifted_frames"] == [2, 0]
    assert Speakers.from_json(meta).to_json() == meta
    with pytest.raises(ValueError, match="no field"):
        Separation.from_json({"model": "m", "random_weights": False, "rate": 16000, "speech": [], "bogus": 1})


class _Meddler(Stage):
    """A stage that leaves a fact it does not declare (asd's), as a buggy stage would."""

    name: ClassVar[str] = "meddler"
    provides: ClassVar[tuple] = (ClipFaces,)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        cand.put(speakers())
        return {}


def test_a_stage_that_leaves_an_undeclared_fact_fails_on_that_candidate_only():
    bad = Candidate(key="bad", video_id="v", source="s", shard=0)
    (out,) = _Meddler().run_batch([bad])
    assert out.status == "rejected" and out.reason == "error"
    assert "left fact(s) ['asd']" in out.message and "provides" in out.message
    # a fact the candidate already carried (made upstream) is no concern of this stage
    ok = Candidate(key="ok", video_id="v", source="s", shard=0)
    ok.put(speakers())

    class Reader(Stage):
        name: ClassVar[str] = "reader"

        def compute(self, cand: Candidate) -> dict[str, Any]:
            cand.fact(Speakers)
            return {}

    (out,) = Reader().run_batch([ok])
    assert out.pending
