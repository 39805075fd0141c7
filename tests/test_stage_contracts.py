"""What stages hand each other: each declares the candidate facts it reads (``requires``) and leaves
(``provides``); a profile that lists a reader before the stage that makes its input is refused at load."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from mtcc.facts import SourceFile
from mtcc.pipeline.config import build_config, load_config, resolve_config
from mtcc.pipeline.errors import ConfigError
from mtcc.stages import STAGES
from mtcc.stages.base import CLIP_MEDIA, FROM_INPUT, Candidate, FactKey, Member, Stat

PROFILES = ("offline", "mtcc", "spine")
FULL = ["probe", "faces", "segment", "layout", "distance", "cut", "prescore", "separate", "asd", "sync", "masks",
        "audio_emb", "caption", "write"]


def stages(*names: str) -> dict:
    return {"stages": {n: {} for n in names}}


def refusal(*names: str) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(stages(*names))
    return str(e.value)


@pytest.mark.parametrize("name", PROFILES)
def test_every_bundled_profile_loads(name):
    cfg = load_config(resolve_config(name), ["models=null"])
    assert cfg.profile == name and cfg.active_stages


def test_the_face_stages_off_still_load():
    cfg = load_config(resolve_config("offline"),
                      ["models=null", *(f"stages.{s}.enabled=false" for s in
                                        ("separate", "asd", "sync", "masks", "audio_emb", "caption"))])
    assert [s.name for s in cfg.active_stages] == ["probe", "faces", "segment", "layout", "distance", "cut",
                                                   "picture", "text", "prescore", "sound", "identity",
                                                   "fingerprint", "write"]


def test_sync_before_separate_is_refused_naming_both():
    order = FULL.copy()
    order.remove("separate")
    order.insert(order.index("sync") + 1, "separate")
    msg = refusal(*order)
    assert "stages.sync needs member 'spk0.flac', member 'spk1.flac'" in msg
    assert "fact Separation" in msg and "(made by separate): list it after 'separate'" in msg


def test_an_optional_input_may_be_absent_but_not_late():
    without = [n for n in FULL if n not in ("separate", "audio_emb")]
    assert [s.name for s in build_config(stages(*without)).stages] == without  # sync scores the mixture
    order = without.copy()
    order.remove("asd")
    order.insert(order.index("sync") + 1, "asd")  # sync takes asd's verdict on who is silent
    assert "stages.sync needs fact Speakers (made by asd): list it after 'asd'" in refusal(*order)


def test_a_required_input_no_stage_makes_is_refused():
    msg = refusal(*[n for n in FULL if n != "separate"])
    assert "stages.audio_emb needs member 'spk0.flac', member 'spk1.flac', made by no enabled stage: list " \
           "'separate' before it" in msg
    assert "stages.sync needs fact ClipFaces, made by no enabled stage: list 'segment' before it" in \
        refusal("probe", "clip", "cut", "sync", "write")


def test_every_problem_is_named_at_once():
    msg = refusal("probe", "clip", "layout", "write")
    assert msg.startswith("invalid stage order:")
    assert "stages.layout needs fact FrameTimes, fact SeamEvidence, made by no enabled stage: list 'faces' before " \
           "it" in msg
    assert "stages.layout needs fact ClipFaces, made by no enabled stage: list 'segment' before it" in msg
    assert "stages.write needs member 'mp4', made by no enabled stage: list 'cut' before it" in msg


def test_a_stage_that_gates_before_a_maker_is_not_refused():
    # prescore takes the separated tracks only when made before it; the profiles gate before separating
    for profile in ("offline", "mtcc"):
        names = [s.name for s in load_config(resolve_config(profile), ["models=null"]).stages]
        assert names.index("prescore") < names.index("separate"), profile
    assert FULL.index("prescore") < FULL.index("separate")
    build_config(stages(*FULL))


def test_declarations_name_what_some_stage_makes():
    made = {k.ident for cls in STAGES.values() for k in cls.made()} | {k.ident for k in FROM_INPUT}
    for cls in STAGES.values():
        for need in cls.requires:
            assert need.ident in made, f"{cls.name} requires {need}, which no stage makes"
        assert all(not isinstance(k, Stat) for k in cls.provides), "stats are provided by stats_schema"
        # the clip-media flags the scheduler reads say the same as the declarations
        assert cls.reads_clip_media == any(k.ident == CLIP_MEDIA.ident for k in cls.requires), cls.name
        assert cls.makes_clip_media == any(k.ident == CLIP_MEDIA.ident for k in cls.provides), cls.name


# -- the declarations against what the stages do -------------------------------------------------------

def new_facts(before: Candidate, after: Candidate) -> set[tuple[str, str]]:
    return ({("fact", k) for k in after.facts.keys() - before.facts.keys()}
            | {("member", k) for k in after.members.keys() - before.members.keys()}
            | {("stat", k) for k in after.stats.keys() - before.stats.keys()})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Each stage of a face profile run for real on one short rendered two-person video: stage name ->
    (the candidate it was given, what it returned), clip stages on the first clip."""
    from mtcc.sampledata import good_scenes, render

    d = tmp_path_factory.mktemp("contracts")
    scene = next(s for s in good_scenes() if s.name == "two_talk")
    # long enough for one 49+ frame clip; no stage here listens, so nobody speaks (the sound track stays)
    quiet = [dataclasses.replace(p, says=[]) for p in scene.persons]
    render(dataclasses.replace(scene, duration=3.0, persons=quiet), d, seed=0)
    video = d / "two_talk.mp4"
    cand = Candidate(key=video.stem, video_id=video.stem, source=str(video), shard=0)
    cand.put(SourceFile())
    runs = {}
    for name, kw in [("probe", {}), ("faces", {"detector": "centerface", "sample_fps": 5}), ("segment", {}),
                     ("layout", {}), ("distance", {}), ("cut", {}), ("write", {})]:
        stage = STAGES[name](**kw)
        stage.setup()
        out = stage.run_batch([copy.deepcopy(cand)])
        assert all(c.status != "rejected" for c in out), [(c.key, c.reason, c.message) for c in out]
        runs[name] = (cand, out)
        cand = next((c for c in out if c.level == "clip"), out[0])
    return runs


@pytest.mark.parametrize("name", ["probe", "faces", "segment", "layout", "distance", "cut", "write"])
def test_a_stage_leaves_what_it_declares(chain, name):
    given, out = chain[name]
    left = new_facts(given, out[-1])
    declared = {k.ident for k in STAGES[name].made() if k.kind != "clips"}
    assert left == declared, (sorted(left - declared), sorted(declared - left))
    if STAGES[name].expands:
        assert [c.level for c in out] == ["video", *["clip"] * (len(out) - 1)]


@pytest.mark.parametrize("name", ["segment", "layout", "distance", "write"])
def test_a_stage_fails_without_each_input_it_requires(chain, name):
    given, _ = chain[name]
    needs = [k for k in STAGES[name].requires if not k.optional and isinstance(k, (FactKey, Member))]
    assert needs
    for need in needs:
        cand = copy.deepcopy(given)
        if isinstance(need, FactKey):
            cand.facts.drop(need.fact)
        else:
            cand.members.pop(need.name)
        out = STAGES[name]().run_batch([cand])
        assert out[0].status == "rejected" and out[0].reason == "error", (need, out[0].status)


def test_a_report_threshold_names_a_real_setting_of_its_stage():
    """Thresholds the report draws are typed references: one naming a setting its stage does not have fails
    when the stage class is defined, not as a missing line in some report."""
    from typing import ClassVar

    from mtcc.stages.base import Stage, StatView, Threshold
    from mtcc.stages.distance import FaceDistance
    from mtcc.stages.segment import TwoFaceSegments

    face_px = next(v for v in FaceDistance.report_views if v.stats == ("face_px",))
    assert face_px.thresholds[0].stage is TwoFaceSegments and "min_face_px" in TwoFaceSegments.model_fields
    with pytest.raises(TypeError, match="names 'min_px', which is not a setting of stage 'segment'"):
        class Stale(Stage):
            name: ClassVar[str] = "stale"
            stats_schema: ClassVar[dict[str, str]] = {"px": "float64"}
            report_views: ClassVar[tuple] = (StatView(("px",), "px", plot="px",
                                                      thresholds=(Threshold("min", "min_px", stage=TwoFaceSegments),)),)
