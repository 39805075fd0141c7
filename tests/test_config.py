from __future__ import annotations

import pytest

from mtcc.pipeline.config import build_config, load_config, resolve_config
from mtcc.pipeline.errors import ConfigError

# these tests are about structure: the weights a profile includes (`models:`) are tested in test_models_cli.py
NO_MODELS = ["models=null"]


def offline(*sets: str):
    return load_config(resolve_config("offline"), [*NO_MODELS, *sets])


def test_bundled_profiles_validate():
    for name in ("offline", "mtcc"):
        cfg = load_config(resolve_config(name), NO_MODELS)
        names = [s.name for s in cfg.stages]
        assert names[0] == "probe" and names[-1] == "write"
        assert names.index("faces") < names.index("segment") < names.index("distance") < names.index("cut")
        # everything after the cut reads the clip's own media, never the source
        assert all(not s.reads_source for s in cfg.stages[names.index("cut") + 1:])
        assert cfg.profile == name


def test_spine_profile_validates():
    assert [s.name for s in load_config(resolve_config("spine")).stages] == ["probe", "clip", "cut", "write"]


def test_unknown_key_names_key_and_allowed_values():
    with pytest.raises(ConfigError) as e:
        offline("stages.probe.min_fpz=3")
    msg = str(e.value)
    assert "stages.probe.min_fpz" in msg and "unknown key" in msg
    assert "min_fps" in msg and "max_duration" in msg


def test_unknown_nested_key_lists_nested_fields():
    with pytest.raises(ConfigError) as e:
        offline("stages.write.resources.gpus=1")
    assert "stages.write.resources.gpus" in str(e.value)
    assert "num_gpus" in str(e.value)


def test_old_batch_size_is_refused_naming_what_replaced_it():
    # batch_size meant candidates per call in `resources` and items per model forward in a stage's own
    # settings: a config still using it is refused at load, naming the new key of that place
    with pytest.raises(ConfigError) as e:
        offline("stages.probe.resources.batch_size=8", "stages.separate.batch_size=4", "stages.caption.batch_size=2",
                "stages.audio_emb.batch_size=8")
    msg = str(e.value)
    assert "stages.probe.resources" in msg and "'batch_size' was renamed to 'candidates_per_call'" in msg
    assert "candidates per process() call" in msg
    for stage in ("separate", "caption", "audio_emb"):
        assert f"stages.{stage}: " in msg
    assert msg.count("'batch_size' was renamed to 'forward_batch'") == 3 and "per model forward" in msg
    cfg = offline("stages.probe.resources.candidates_per_call=8", "stages.separate.forward_batch=3")
    stages = {s.name: s for s in cfg.stages}
    assert stages["probe"].resources.candidates_per_call == 8 and stages["separate"].forward_batch == 3


def test_bad_value_and_literal_choices():
    with pytest.raises(ConfigError) as e:
        offline("stages.probe.min_fps=-1", "stages.cut.preset=fastest")
    msg = str(e.value)
    assert "stages.probe.min_fps" in msg and "greater than 0" in msg
    assert "stages.cut.preset" in msg and "veryfast" in msg


def test_unknown_stage_lists_known():
    with pytest.raises(ConfigError) as e:
        build_config({"stages": {"probe": {}, "clipp": {}, "cut": {}, "write": {}}})
    # every known stage listed, after the unknown name (which itself contains "clip")
    assert "stages.clipp: unknown stage" in str(e.value)
    listed = str(e.value).split("known stages: ", 1)[1].split(", ")
    assert {"probe", "clip", "cut", "write", "asd", "caption"} <= set(listed), listed


def test_inconsistent_thresholds_refused():
    with pytest.raises(ConfigError, match="min_duration"):
        build_config({"stages": {"probe": {"min_duration": 10, "max_duration": 5}, "clip": {}}})


def test_set_override_types_and_hash():
    base = offline()
    cfg = offline("stages.probe.min_fps=24", "stages.probe.require_audio=false")
    probe = cfg.stages[0]
    assert probe.min_fps == 24.0 and probe.require_audio is False
    assert cfg.config_hash() != base.config_hash()
    # runtime knobs (cluster, resources, scheduling) do not make another dataset
    same = ["ray.address=auto", "stages.write.resources.concurrency=8", "run.max_shards_in_flight=9"]
    assert offline(*same).config_hash() == base.config_hash()
    assert offline("run.videos_per_shard=9").config_hash() != base.config_hash()
    assert offline("stages.cut.threads=3").config_hash() != base.config_hash()


def test_stage_order_is_part_of_the_hash():
    # layout and distance read the same facts and make none: either order is a valid profile
    a = build_config({"stages": {"probe": {}, "faces": {}, "segment": {}, "layout": {}, "distance": {}, "cut": {},
                                 "write": {}}})
    b = build_config({"stages": {"probe": {}, "faces": {}, "segment": {}, "distance": {}, "layout": {}, "cut": {},
                                 "write": {}}})
    assert a.config_hash() != b.config_hash()


def test_yaml_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"stages: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert not marker.exists()


def test_exactly_one_expanding_stage():
    with pytest.raises(ConfigError, match="split videos into clips"):
        build_config({"stages": {"probe": {}, "cut": {}, "write": {}}})


def test_retired_shots_stage_says_where_its_settings_went():
    with pytest.raises(ConfigError) as e:
        build_config({"stages": {"probe": {}, "shots": {"threshold": 20}, "faces": {}, "segment": {}, "cut": {},
                                 "write": {}}})
    assert "stages.shots" in str(e.value) and "stages.faces.shots" in str(e.value)


def test_clip_media_readers_need_the_cut_before_them():
    with pytest.raises(ConfigError) as e:  # sync before the cut: refused at load, naming both
        build_config({"stages": {"probe": {}, "faces": {}, "segment": {}, "sync": {}, "cut": {}, "write": {}}})
    assert "stages.sync" in str(e.value) and "'cut'" in str(e.value)
    with pytest.raises(ConfigError, match="stages.write"):  # no cut at all
        build_config({"stages": {"probe": {}, "clip": {}, "write": {}}})
    with pytest.raises(ConfigError, match="after 'clip'"):  # a cut before there are clips
        build_config({"stages": {"probe": {}, "cut": {}, "clip": {}, "write": {}}})


def test_config_show_names_every_settings_source_and_meaning(tiny_overrides):
    from mtcc.pipeline.config_show import show_config

    text = show_config(resolve_config("offline"), [*tiny_overrides, "stages.probe.min_fps=24"])
    lines = {ln.split(" = ")[0]: ln for ln in text.splitlines()[1:]}
    assert lines["stages.probe.min_fps"].startswith("stages.probe.min_fps = 24.0  [--set]")
    assert "[profile]" in lines["stages.probe.min_duration"]  # the offline profile sets it
    assert "[default]" in lines["stages.probe.max_duration"]
    assert "[models.yaml]" in lines["stages.separate.model"]  # the make-tiny models.yaml points it
    assert "[default]" in lines["run.remote.attempts"]
    undocumented = [k for k, ln in lines.items() if "  # " not in ln]
    assert undocumented == []  # every setting says what it is
    assert len(lines) > 250


def test_the_clip_section_is_stated_once_and_checked_against_every_stage():
    cfg = load_config(resolve_config("offline"), ["models=null"])
    by = {s.name: s for s in cfg.stages}
    assert (by["segment"].n_faces, by["segment"].out_fps, by["cut"].fps, by["cut"].audio_rate) == (2, 25, 25, 16000)
    # a stage setting that says otherwise than the clip section is refused, naming the key to set
    with pytest.raises(ConfigError, match=r"stages.cut.fps is 30 but clip.fps is 25: set clip.fps"):
        load_config(resolve_config("offline"), ["models=null", "stages.cut.fps=30"])
    # clips of three characters: every stage whose models take two says so
    with pytest.raises(ConfigError) as e:
        load_config(resolve_config("offline"), ["models=null", "clip.characters=3"])
    for stage in ("separate", "asd", "sync", "masks", "audio_emb"):
        assert f"stages.{stage} takes clips of characters 2, the clip section says 3" in str(e.value)
    # the spine profile (no model stage) takes any rate: the clip section sets its cut
    spine = load_config(resolve_config("spine"), ["clip.fps=30"])
    assert next(s for s in spine.stages if s.name == "cut").fps == 30
