"""The command line as a user meets it, run in a subprocess as they would: a dry run that starts and writes
nothing, --version, JSON from status and verify, one exit-code convention, a refused run that leaves OUT as
it was, a report that refuses a folder that is not a build, `mtcc env` and `mtcc setup-node`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtcc.pipeline.node import LIBRARIES, NO_DEPS, Library, check_library
from mtcc.stages import STAGES

# a Ray address nothing listens on: a command that tried to join a cluster would fail or hang on it
DEAD_RAY = "127.0.0.1:1"


def mtcc(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})})


@pytest.fixture(scope="module")
def videos(sample_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    for name in ("two_talk.mp4", "one_person.mp4"):
        (d / name).symlink_to(sample_dir / name)
    return d


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory) -> Path:
    """A spine build of the two videos, in this process's own run (no Ray: --runner inprocess)."""
    out = tmp_path_factory.mktemp("built") / "out"
    res = mtcc("run", "spine", "--input", str(videos), "--output", str(out), "--runner", "inprocess",
               "--no-progress", "--set", "run.videos_per_shard=1")
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_dry_run_prints_config_plan_and_resources_and_starts_and_writes_nothing(videos, tmp_path):
    out = tmp_path / "out"
    res = mtcc("run", "spine", "--input", str(videos), "--output", str(out), "--dry-run", "--set",
               "run.videos_per_shard=1", env={"RAY_ADDRESS": DEAD_RAY})
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout
    assert "nothing started, nothing written" in text
    assert "videos_per_shard: 1" in text  # the resolved config, --set applied
    assert "2 videos" in text and "in 2 shards" in text
    # RAY_ADDRESS is where the run would go: named, not contacted (nothing listens there)
    assert f"RAY_ADDRESS={DEAD_RAY}" in text and "not contacted" in text
    for stage in ("probe", "clip", "cut", "write"):
        assert f"\n  {stage} " in text
    assert not out.exists()
    # the pools for a named cluster
    res = mtcc("run", "spine", "--input", str(videos), "--output", str(out), "--dry-run", "--cluster", "2x16cpu")
    assert res.returncode == 0 and "pools on a 2x16cpu cluster" in res.stdout, res.stdout + res.stderr
    assert not out.exists()


def test_dry_run_of_an_existing_build_says_what_is_left(built):
    before = sorted(p.name for p in built.rglob("*"))
    res = mtcc("run", "spine", "--output", str(built), "--dry-run", "--set", "run.videos_per_shard=1")
    assert res.returncode == 0, res.stderr
    assert "2 shards, 2 committed, 0 to build" in res.stdout
    assert sorted(p.name for p in built.rglob("*")) == before


def test_a_refused_run_leaves_the_output_folder_as_it_was(videos, tmp_path):
    new = tmp_path / "new"
    res = mtcc("run", "spine", "--input", str(tmp_path / "nothing"), "--output", str(new), "--no-progress")
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = mtcc("run", "spine", "--output", str(empty), "--no-progress")  # no plan, no --input
    assert res.returncode == 2 and "pass --input" in res.stderr
    assert list(empty.iterdir()) == []


def test_a_run_refused_when_its_stages_start_leaves_the_output_folder_as_it_was(videos, tmp_path):
    """The inputs were planned, then a stage could not load its weights: the plan, config and folders that run
    made go with it, so the fixed rerun (here another profile) is a first run, not a changed config refused."""
    out = tmp_path / "out"
    res = mtcc("run", "offline", "--input", str(videos), "--output", str(out), "--runner", "inprocess",
               "--no-progress", "--set", "models=null", "--set", "stages.faces.detector=insightface")
    assert res.returncode == 2 and "stage 'faces' failed to set up" in res.stderr, res.stderr
    assert not out.exists()
    res = mtcc("run", "spine", "--input", str(videos), "--output", str(out), "--runner", "inprocess", "--no-progress")
    assert res.returncode == 0, res.stderr


def test_a_forced_run_refused_when_its_stages_start_leaves_the_finished_output_as_it_was(videos, built, tmp_path):
    """--force with a config whose stages cannot start (and, the second time, another grouping of the videos):
    the refusal comes after the plan and the shards to redo were settled, and must not have removed a shard,
    the plan or the config; the old config then resumes with nothing to do."""
    out = tmp_path / "out"
    shutil.copytree(built, out)

    def files() -> dict[str, bytes]:
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    before = files()
    assert sum(name.startswith("commits/") for name in before) == 2
    for extra in ([], ["--set", "run.videos_per_shard=2"]):
        res = mtcc("run", "offline", "--input", str(videos), "--output", str(out), "--runner", "inprocess",
                   "--no-progress", "--force", "--set", "models=null", "--set", "stages.faces.detector=insightface",
                   *extra)
        assert res.returncode == 2 and "stage 'faces' failed to set up" in res.stderr, res.stderr
        assert files() == before, extra
    res = mtcc("status", str(out), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["committed"] == 2, res.stdout + res.stderr


def test_status_and_verify_speak_json(built):
    res = mtcc("status", str(built), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["committed"] == doc["total"] == 2
    assert {s["state"] for s in doc["shards"]} == {"committed"}
    assert sum(s["samples"] for s in doc["shards"]) == 2  # spine keeps whole videos
    assert next(f for f in doc["funnel"] if f["stage"] == "probe")["in"] == 2
    res = mtcc("verify", str(built), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc == {"shards": [{"shard": 0, "ok": True, "problem": None}, {"shard": 1, "ok": True, "problem": None}],
                   "bad": 0, "total": 2}


def test_verify_json_names_a_damaged_shard_and_exits_1(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    tar = next((copy / "shards").glob("*.tar"))
    tar.write_bytes(tar.read_bytes()[:-100])
    res = mtcc("verify", str(copy), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["bad"] == 1 and [s["ok"] for s in doc["shards"]].count(False) == 1


def test_commands_refuse_a_folder_that_is_not_a_build_with_exit_2_and_write_nothing(videos, tmp_path):
    missing = tmp_path / "missing"
    for cmd in ("status", "verify", "report"):
        res = mtcc(cmd, str(missing))
        assert res.returncode == 2 and "does not exist" in res.stderr, (cmd, res.stderr)
        res = mtcc(cmd, str(videos))
        assert res.returncode == 2 and "not an MTCC build" in res.stderr, (cmd, res.stderr)
    assert not (videos / "report").exists()
    assert not missing.exists()
    # an export of something that is not a build writes no DEST
    res = mtcc("export", "bya", str(videos), str(tmp_path / "dest"))
    assert res.returncode == 2 and "no shards found" in res.stderr, res.stderr
    assert not (tmp_path / "dest").exists()


def test_version_names_mtcc_and_its_main_libraries():
    res = mtcc("--version")
    assert res.returncode == 0
    assert res.stdout.startswith("mtcc ") and "ray 2." in res.stdout and "\n" == res.stdout[-1]
    assert res.stdout.count("\n") == 1


def test_every_subcommand_documents_its_arguments():
    from mtcc.pipeline.cli import parser

    def walk(p, path):
        for action in p._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))
            elif action.dest not in ("help",):
                yield path, action

    undocumented = [f"{' '.join(path)} {a.dest}" for path, a in walk(parser(), ("mtcc",)) if not a.help]
    # the training module keeps its own parser (mtcc.training.cli) and is out of this check
    assert [u for u in undocumented if not u.startswith("mtcc train")] == []
    outs = {a.metavar for path, a in walk(parser(), ("mtcc",)) if a.dest == "output"}
    assert outs == {"OUT"}  # one name for the output folder everywhere


def test_env_passes_this_node_for_the_offline_profile_and_names_what_is_missing():
    res = mtcc("env", "offline", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (node,) = json.loads(res.stdout)["nodes"]
    assert node["ok"], [c for c in node["checks"] if not c["ok"]]
    checked = {c["what"] for c in node["checks"]}
    assert {"ffmpeg", "ffprobe", "rapidocr-onnxruntime", "speechmos", "sam2", "torch"} <= checked
    # a library a node lacks is MISSING, with the command that brings it
    check = check_library(Library("no_such_module_mtcc", "no-such-dist", "==1.0", True), ("text",))
    assert not check.ok and check.fix == "mtcc setup-node" and "MISSING" in check.line()


def test_every_library_a_stage_declares_is_known_and_setup_node_installs_the_no_deps_set():
    for name, cls in STAGES.items():
        for dist in cls.uses:
            assert dist in LIBRARIES, (name, dist)
    res = mtcc("setup-node", "--dry-run")
    assert res.returncode == 0
    for lib in NO_DEPS:
        assert lib.spec in res.stdout
    assert "--no-deps" in res.stdout and "SAM2_BUILD_CUDA=0" in res.stdout and "onnxruntime-gpu" not in res.stdout
    assert "onnxruntime-gpu" in mtcc("setup-node", "--dry-run", "--gpu").stdout


def test_progress_moves_with_every_video_and_clip(videos, tmp_path):
    res = mtcc("run", "spine", "--input", str(videos), "--output", str(tmp_path / "out"), "--runner", "inprocess",
               "--set", "run.videos_per_shard=2")
    assert res.returncode == 0, res.stderr[-2000:]
    # one shard of two videos: the bar's shard count alone would sit at 0/1 until the end
    assert "videos 1/2" in res.stderr and "videos 2/2" in res.stderr, res.stderr[-2000:]
    assert "clips 2 (2 kept)" in res.stderr
