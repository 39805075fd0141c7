"""The spine end to end on real Ray, real ffmpeg and the generated sample videos: plan, commit, resume,
verify, lock. Uses the bundled `spine` profile (probe -> whole videos as clips -> write) so that every build
here takes seconds; the face stages are tested end to end in test_face_stages.py, which runs them in one
process on the ground of the one offline-profile test here (Ray and in-process give the same bytes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import E2E_SETS

from mtcc.manifests.paths import OutPaths
from mtcc.manifests.report_data import read_manifests
from mtcc.media.ffmpeg import ffprobe
from mtcc.pipeline.build import build
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.pipeline.errors import BuildError, LockBusy
from mtcc.pipeline.lock import RunLock
from mtcc.pipeline.shard import check_shard

pytestmark = pytest.mark.slow

OVERRIDES = ["run.videos_per_shard=3", "run.max_shards_in_flight=2"]


def cfg(*extra: str):
    return load_config(resolve_config("spine"), [*OVERRIDES, *extra])


def digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*"), *out.glob("commits/*"), out / "plan.parquet"])
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def built(sample_dir, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("built") / "out"
    res = build(cfg(), [str(sample_dir)], out, runner="ray", progress=False)
    return out, res


def test_the_embedded_ray_offers_actors_the_memory_it_is_given(ray_local):
    """ray.memory_mb (here the session's ray_local) is what the pools plan with, not what happened to be free."""
    import ray

    assert ray.cluster_resources()["memory"] == ray_local << 20


def truths(sample_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sample_dir.glob("*.truth.json"))]


def test_every_input_has_a_row_with_the_expected_outcome(built, sample_dir):
    out, res = built
    assert not res.shards_failed
    rows = read_manifests(out).to_pylist()
    videos = {Path(r["source"]).name: r for r in rows if r["level"] == "video"}
    for t in truths(sample_dir):
        row = videos[t["file"]]
        if t["expect_probe"] == "kept":
            assert row["status"] == "expanded", (t["file"], row["message"])
        else:
            assert (row["status"], row["reason"]) == ("rejected", t["expect_probe"]), (t["file"], row["message"])
            assert row["message"] and row["stage"] == "probe"
    assert len(videos) == len(truths(sample_dir))


def test_good_videos_are_written_with_the_sample_layout(built, sample_dir, tmp_path):
    import webdataset as wds

    out, _ = built
    good = {t["file"]: t for t in truths(sample_dir) if t["expect_probe"] == "kept"}
    rows = read_manifests(out).to_pylist()
    kept = {r["key"]: r for r in rows if r["status"] == "kept"}
    assert {Path(r["source"]).name for r in kept.values()} == set(good)
    seen = {}
    ds = wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)
    for sample in ds:
        seen[sample["__key__"]] = sample
    assert set(seen) == set(kept)
    for key, sample in seen.items():
        truth = good[Path(kept[key]["source"]).name]
        assert set(sample) >= {"mp4", "mix.flac", "json"}
        meta = json.loads(sample["json"])
        assert meta["source_sha256"] == hashlib.sha256(Path(meta["source"]).read_bytes()).hexdigest()
        clip = tmp_path / f"{key}.mp4"
        clip.write_bytes(sample["mp4"])
        info = ffprobe(str(clip))
        v = next(s for s in info["streams"] if s["codec_type"] == "video")
        a = next(s for s in info["streams"] if s["codec_type"] == "audio")
        assert v["codec_name"] == "h264" and v["avg_frame_rate"] == "25/1"
        assert (a["codec_name"], a["sample_rate"], a["channels"]) == ("aac", "16000", 1)
        assert abs(float(info["format"]["duration"]) - truth["duration"]) < 0.1
        assert meta["probe"]["fps"] == pytest.approx(truth["fps"], abs=0.01)
        flac = tmp_path / f"{key}.flac"
        flac.write_bytes(sample["mix.flac"])
        import soundfile as sf

        audio, rate = sf.read(flac)
        assert rate == 16000 and audio.ndim == 1
        assert abs(len(audio) / rate - truth["duration"]) < 0.1


def test_status_prints_shards_and_the_funnel(built, sample_dir):
    out, res = built
    st = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "status", str(out)],
                        capture_output=True, text=True, check=True).stdout
    assert st.count("committed  samples=") == res.shards_total
    n_bad = sum(t["expect_probe"] != "kept" for t in truths(sample_dir))
    probe_line = next(ln for ln in st.splitlines() if ln.startswith("probe"))
    assert probe_line.split()[1:3] == [str(len(truths(sample_dir))), str(len(truths(sample_dir)) - n_bad)]
    assert "unreadable=3" in probe_line


def test_ray_data_reads_the_shards(built):
    import ray

    out, _ = built
    ds = ray.data.read_webdataset(sorted(str(p) for p in (out / "shards").glob("*.tar")))
    n_kept = sum(r["status"] == "kept" for r in read_manifests(out).to_pylist())
    assert ds.count() == n_kept


def test_rerun_skips_committed_shards_and_changes_nothing(built, sample_dir):
    out, res = built
    before = digests(out)
    again = build(cfg(), [str(sample_dir)], out, runner="ray", progress=False)
    assert again.shards_built == [] and len(again.shards_skipped) == res.shards_total
    assert digests(out) == before


def test_inprocess_runner_gives_the_same_bytes(built, sample_dir, tmp_path):
    out, _ = built
    other = tmp_path / "inproc"
    build(cfg(), [str(sample_dir)], other, runner="inprocess", progress=False)
    assert digests(other) == digests(out)


def test_inprocess_runner_gives_the_same_bytes_on_the_offline_profile(pipeline_shards, tiny_overrides, tmp_path):
    """Every stage of the offline profile (tiny models of the real classes) writes the same shards, manifests
    and commit in one process as on Ray (conftest.pipeline_shards, built on the session's Ray): what lets the
    face stages' end-to-end tests run in one process."""
    other = tmp_path / "inproc"
    cfg = load_config(resolve_config("offline"), [*tiny_overrides, *E2E_SETS])
    res = build(cfg, [str(pipeline_shards.parent / "videos")], other, runner="inprocess", progress=False)
    assert res.shards_built == [0] and not res.shards_failed
    assert {"masks", "audio_emb", "caption"} <= {s.name for s in cfg.active_stages}
    assert digests(other) == digests(pipeline_shards)


def test_killed_run_resumes_to_identical_shards(built, sample_dir, tmp_path):
    out, _ = built
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "run", "spine", "--input", str(sample_dir),
           "--output", str(killed), "--no-progress", *[a for o in OVERRIDES for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((killed / "commits").glob("*.json")):
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    n_total = len(list((out / "commits").glob("*.json")))
    assert len(list((killed / "commits").glob("*.json"))) < n_total
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert digests(killed) == digests(out)
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_verify_finds_corruption_and_the_rerun_redoes_exactly_that_shard(built, sample_dir, tmp_path):
    import shutil

    src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    layout = OutPaths(out)
    tar = layout.tar(1)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    man = layout.manifest(2)
    data = bytearray(man.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of the Parquet file
    man.write_bytes(bytes(data))
    verify = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "verify", str(out)],
                            capture_output=True, text=True)
    assert verify.returncode == 1
    lines = verify.stdout.splitlines()
    assert any("shard 000001" in ln and "checksum mismatch" in ln for ln in lines), verify.stdout
    assert any("shard 000002" in ln and "manifest" in ln for ln in lines), verify.stdout
    assert "shard 000000" not in verify.stdout and "2 bad shard(s)" in verify.stdout
    res = build(cfg(), [str(sample_dir)], out, runner="ray", progress=False)
    assert sorted(res.shards_built) == [1, 2]
    assert check_shard(layout, 1, deep=True) is None and check_shard(layout, 2, deep=True) is None
    assert digests(out) == digests(src)


def _stage_actor_pids(session: int | None = None) -> list[int]:
    """Processes of MTCC's Ray stage actors (Ray titles them ``ray::StageActor...``); with ``session``, only
    those of that session (a run started in a session of its own: other builds on the machine are spared)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                if cmd.startswith(b"ray::StageActor") and (session is None or os.getsid(int(d.name)) == session):
                    pids.append(int(d.name))
            except OSError:
                continue  # exited meanwhile
    return pids


def test_killed_stage_actor_mid_run_loses_nothing(built, sample_dir, tmp_path):
    """A stage actor's process is SIGKILLed while the build runs: Ray restarts it, its batch is retried, and
    the output is the same bytes as an undisturbed run (nothing lost, nothing rejected)."""
    out, _ = built
    victim_out = tmp_path / "victim"
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "run", "spine", "--input", str(sample_dir),
           "--output", str(victim_out), "--no-progress", *[a for o in OVERRIDES for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    killed = []
    while not killed:
        assert proc.poll() is None, "run ended before an actor could be killed"
        assert time.monotonic() < deadline
        # actors of this run only: its own session's (another build may run beside this test)
        busy = [p for p in _stage_actor_pids(proc.pid)
                if b".process" in Path(f"/proc/{p}/cmdline").read_bytes()] if (victim_out / "plan.parquet").exists() else []
        for pid in busy[:1]:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    rows = read_manifests(victim_out).to_pylist()
    assert [r for r in rows if r["reason"] == "error"] == []
    assert digests(victim_out) == digests(out)


# a stage whose actor's process dies while it loads its models (as a node out of memory kills one), or as soon
# as it starts (as a native library that crashes on import does; Ray restarts such a process again and again):
# defined in the script's __main__, it travels to the actors by value
# (the scripts below put their planted stage right after probe in the spine profile)
SPINE_WITH = """
import json, os, sys, time
from typing import ClassVar
from mtcc.pipeline.build import build
from mtcc.pipeline.config import build_config, load_config, resolve_config
from mtcc.pipeline.errors import StageSetupError
from mtcc.stages import STAGES
from mtcc.stages.base import Stage

def spine_with(name, settings):
    cfg = load_config(resolve_config("spine"), [])
    stages = {s.name: s.model_dump() for s in cfg.stages}
    order = list(stages)
    at = order.index("probe") + 1
    raw = {**cfg.dump(), "stages": {**{n: stages[n] for n in order[:at]}, name: settings,
                                    **{n: stages[n] for n in order[at:]}}}
    raw.pop("models", None)
    return build_config(raw)
"""

DIES_AT_SETUP = SPINE_WITH + """

class DiesAtSetup(Stage):
    name: ClassVar[str] = "dies"
    when: ClassVar[str] = sys.argv[3]

    def attach(self, workspace):
        if self.when == "starting":
            os._exit(3)
        super().attach(workspace)

    def setup(self):
        time.sleep(3)  # loading its models
        os._exit(3)

STAGES["dies"] = DiesAtSetup
try:
    build(spine_with("dies", {"resources": {"num_cpus": 0.25}}), [sys.argv[1]], sys.argv[2], runner="ray",
          progress=False)
except StageSetupError as e:
    print("REFUSED " + str(e))
"""


# an actor the pools add while the build runs (a bigger plan, a lost node's stage placed again) whose process
# dies as it starts: the executor, made with one healthy actor, is asked for a second once later actors die
JOINS_AND_DIES = """
import json, os, sys, time
from pathlib import Path
from typing import ClassVar
import ray
from mtcc.pipeline.executor import WorkspaceSpec
from mtcc.pipeline.ray_executor import RayExecutor
from mtcc.stages.base import Stage

MARK = Path(sys.argv[1]) / "later-actors-die"

class DiesIfLate(Stage):
    name: ClassVar[str] = "dies_if_late"

    def attach(self, workspace):
        if MARK.exists():
            os._exit(3)
        super().attach(workspace)

ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
logs = []
stage = DiesIfLate(resources={"num_cpus": 0.25, "max_actors": 1})  # one actor first: the plan would fill the node
ex = RayExecutor([stage], WorkspaceSpec(sys.argv[1] + "/work", 1 << 30), log=logs.append)
MARK.touch()
first = ex.pools[0][0]
late = ex._start(0, first.shape, first.node, clear=False)
deadline = time.monotonic() + 60
while late in ex.pools[0] and time.monotonic() < deadline:
    ex.wait(0.5)
    time.sleep(0.5)
print("RESULT " + json.dumps({"pool": len(ex.pools[0]), "sizes": ex.pool_sizes(), "loading": ex.loading(0),
                              "logs": logs}))
ex.shutdown()
"""


def test_an_actor_added_mid_build_that_dies_as_it_starts_is_dropped_and_the_pool_goes_on(tmp_path):
    """Ray would restart it without end, and the stage would count as getting an actor for 900 s: it is
    dropped after a few restarts, saying why, and the pool keeps its healthy actor."""
    script = tmp_path / "joins.py"
    script.write_text(JOINS_AND_DIES)
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert run.returncode == 0 and line, run.stdout[-2000:] + run.stderr[-4000:]
    r = json.loads(line[len("RESULT "):])
    assert r["pool"] == 1 and r["sizes"] == {"dies_if_late": 1} and not r["loading"], r
    dropped = [m for m in r["logs"] if m.startswith("pools: a new 'dies_if_late' actor could not start")]
    assert len(dropped) == 1 and re.search(r"could not start \(its actor's process died as it started or loaded its "
                                           r"models \(.*worker-\*-\d+\.err .*; dropped$", dropped[0]), r["logs"]


# a stage whose actor's process dies in a batch: on one input every time ("poison": Ray restarts it, and the
# input is found by retries and rejected), or once, after which every restart and every new actor dies as it
# starts ("cannot_restart"). Defined in the script's __main__, it travels to the actors by value
KILLS_ITS_WORKER = SPINE_WITH + """
from pathlib import Path

MARK = Path(sys.argv[2] + ".killed-once")

class KillsItsWorker(Stage):
    name: ClassVar[str] = "kills"
    mode: ClassVar[str] = sys.argv[3]

    def attach(self, workspace):
        if self.mode == "cannot_restart" and MARK.exists():
            os._exit(3)
        super().attach(workspace)

    def compute(self, cand):
        if self.mode == "poison" and "poison" in cand.source:
            os._exit(9)
        if self.mode == "cannot_restart" and not MARK.exists():
            MARK.touch()
            os._exit(9)
        return {}

STAGES["kills"] = KillsItsWorker
logs = []
res = build(spine_with("kills", {"resources": {"num_cpus": 0.25, "max_actors": 1}}), [sys.argv[1]], sys.argv[2],
            runner="ray", progress=False, log=logs.append)
print("RESULT " + json.dumps({"built": res.shards_built, "failed": {str(k): v for k, v in res.shards_failed.items()},
                              "logs": [m for m in logs if m.startswith(("pools:", "stopping"))]}))
"""


@pytest.mark.parametrize("mode", ["poison", "cannot_restart"])
def test_a_worker_killed_by_its_batch_costs_that_input_or_stops_the_build_never_hangs(sample_dir, tmp_path, mode):
    """Ray reports a process that died under a batch as 'unavailable', as it does one that is restarting: the
    batch counts the death as an attempt only when the actor had come back since its last one. So an input
    that kills its worker every time is rejected after its retries (its neighbour is kept, the shard commits),
    and an actor whose every restart dies as it starts is dropped, its stage given up on after 3 actors in a
    row could not start: the shard is named failed with why. Before, both waited on Ray for minutes, or for
    good (the script's timeout)."""
    videos = tmp_path / "in"
    videos.mkdir()
    (videos / "two_talk.mp4").symlink_to(sample_dir / "two_talk.mp4")
    if mode == "poison":
        (videos / "poison.mp4").symlink_to(sample_dir / "two_cross.mp4")
    script = tmp_path / "kills.py"
    script.write_text(KILLS_ITS_WORKER)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(script), str(videos), str(out), mode], capture_output=True, text=True,
                         timeout=240, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert run.returncode == 0 and line, run.stdout[-2000:] + run.stderr[-4000:]
    r = json.loads(line[len("RESULT "):])
    if mode == "poison":
        assert r["built"] == [0] and not r["failed"], r
        import pyarrow.parquet as pq

        rows = pq.read_table(next((out / "manifests").glob("*.parquet"))).to_pylist()
        poison = [x for x in rows if x["key"].startswith("poison")]
        assert len(poison) == 1 and poison[0]["status"] == "rejected" and poison[0]["reason"] == "error", poison
        assert re.search(r"stage 'kills' lost its worker on \S+poison\.mp4 .* after 3 attempts", poison[0]["message"])
        assert [x["status"] for x in rows if x["key"].startswith("two-talk") and x["stage"] == "write"] == ["kept"]
    else:
        assert r["built"] == [] and list(r["failed"]) == ["0"], r
        assert re.match(r"stage 'kills' has no actor and cannot start one: 3 in a row could not \(its actor's "
                        r"process died as it started or loaded its models", r["failed"]["0"]), r["failed"]
        dropped = [m for m in r["logs"] if m.startswith("pools: a 'kills' actor cannot come back (its actor's "
                                                        "process died")]
        assert len(dropped) == 1 and dropped[0].endswith("; dropped"), r["logs"]
        assert not list((out / "commits").glob("*.json")) if (out / "commits").is_dir() else True


@pytest.mark.parametrize("when", ["loading", "starting"])
def test_an_actor_that_dies_as_it_starts_refuses_the_run_naming_its_stage(sample_dir, tmp_path, when):
    """The run stops as any stage that cannot start stops it: a StageSetupError naming the stage and what to
    look at (exit 2 from the CLI), its actors shut down and OUT as it was, not a Ray traceback. A process that
    dies before its ``ready`` can answer is restarted by Ray without end: the run gives up on it after a few
    restarts, in seconds (the script's timeout is far below the 900 s a loading actor is given)."""
    videos = tmp_path / "in"
    videos.mkdir()
    (videos / "two_talk.mp4").symlink_to(sample_dir / "two_talk.mp4")
    script = tmp_path / "dies.py"
    script.write_text(DIES_AT_SETUP)
    run = subprocess.run([sys.executable, str(script), str(videos), str(tmp_path / "out"), when],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    refused = [ln for ln in run.stdout.splitlines() if ln.startswith("REFUSED ")]
    assert run.returncode == 0 and refused, run.stdout[-2000:] + run.stderr[-4000:]
    assert refused[0].startswith("REFUSED stage 'dies' failed to set up: its actor's process died as it started or "
                                 "loaded its models ("), refused
    assert "stages.dies.resources.memory_mb" in refused[0]
    assert re.search(r"worker-\*-\d+\.err in the logs of Ray's session folder on node \S+ \(\w{8}\)$",
                     refused[0]), refused
    assert not (tmp_path / "out").exists()


def test_changed_config_is_refused_unless_forced(built, sample_dir, tmp_path):
    import shutil

    src, _ = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    with pytest.raises(BuildError, match="stages.probe.min_fps"):
        build(cfg("stages.probe.min_fps=26"), [str(sample_dir)], out, runner="inprocess", progress=False)
    res = build(cfg("stages.probe.min_fps=26"), [str(sample_dir)], out, runner="inprocess", progress=False,
                force=True)
    assert sorted(res.shards_built) == list(range(res.shards_total))
    videos = {Path(r["source"]).name: r for r in read_manifests(out).to_pylist() if r["level"] == "video"}
    assert videos["two_talk.mp4"]["reason"] == "fps_out_of_range"
    assert videos["two_talk_30fps.mp4"]["status"] == "expanded"
    # a new shard grouping is a new plan: forced, every shard is rebuilt under the new grouping
    res = build(cfg("stages.probe.min_fps=26", "run.videos_per_shard=5"), [str(sample_dir)], out,
                runner="inprocess", progress=False, force=True)
    assert res.shards_total == 3 and sorted(res.shards_built) == [0, 1, 2]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"mtcc-00000{i}.tar" for i in range(3)]


def test_second_run_on_same_out_is_refused_and_a_stale_lock_taken_over(tmp_path, sample_dir):
    out = tmp_path / "locked"
    with RunLock(OutPaths(out).lock):
        with pytest.raises(LockBusy, match="being written by pid"):
            build(cfg(), [str(sample_dir)], out, runner="inprocess", progress=False)
    # a run killed with SIGKILL leaves its lock file behind, with its pid in it
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; from pathlib import Path; from mtcc.pipeline.lock import RunLock\n"
                              "l = RunLock(Path(sys.argv[1])).__enter__(); print('locked', flush=True)\n"
                              "import time; time.sleep(60)", str(OutPaths(out).lock)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    child.kill()
    child.wait()
    assert OutPaths(out).lock.read_text()  # left behind
    lock = RunLock(OutPaths(out).lock)
    with lock:
        assert lock.took_over and lock.took_over["pid"] == child.pid


def test_a_lock_file_removed_between_open_and_lock_is_not_held(tmp_path, monkeypatch):
    """Run A, refused, removes the lock file it made while still holding it; run B had opened that file just
    before. B must not hold a lock on the removed file (run C would make and lock a new one, and two runs
    would write OUT): B takes the lock of the file the path names, and C is refused."""
    import mtcc.pipeline.lock as lock_module

    path = tmp_path / "out" / ".lock"
    a = RunLock(path).__enter__()
    real_open = os.open

    def open_then_a_undoes(p, *args):
        fd = real_open(p, *args)
        if a._fd is not None and Path(p) == path:  # A's undo and exit, between B's open and B's flock
            path.unlink()
            a.__exit__(None, None, None)
        return fd

    monkeypatch.setattr(lock_module.os, "open", open_then_a_undoes)
    with RunLock(path) as b:
        monkeypatch.setattr(lock_module.os, "open", real_open)
        assert os.fstat(b._fd).st_ino == path.stat().st_ino
        with pytest.raises(LockBusy, match="being written by pid"):
            RunLock(path).__enter__()


def test_two_outputs_sharing_a_work_dir_never_empty_each_others_folder(tmp_path):
    """One profile's run.work_dir, two outputs built at once: each run empties its node folder at its start and
    end, which must not take the other build's fetched sources and cut clips with it."""
    from mtcc.pipeline.build import workspace_spec

    c = cfg(f"run.work_dir={tmp_path / 'work'}")
    a, b = (workspace_spec(c, OutPaths(tmp_path / name)).open() for name in ("a", "b"))
    assert a.root.parent == b.root.parent == tmp_path / "work" and a.root != b.root
    b.root.mkdir(parents=True)
    (b.root / "clip.mp4").write_bytes(b"b's")
    a.clear()  # a's run starting or ending
    assert (b.root / "clip.mp4").read_bytes() == b"b's"
    assert workspace_spec(c, OutPaths(tmp_path / "a")).root == str(a.root)  # a's rerun: the same folder


def test_real_footage_probe(real_dir, tmp_path):
    from mtcc.stages.base import Candidate
    from mtcc.stages.probe import Probe

    probe = Probe()
    out = {}
    for p in sorted(real_dir.glob("*.[ma][pv][4i]")):
        c = Candidate(key=p.stem, video_id=p.stem, source=str(p), shard=0)
        probe.run_batch([c])
        out[p.name] = c
    assert all(c.status == "pending" for c in out.values()), {k: c.message for k, c in out.items()}
    debate = out["debate_split_screen.avi"].stats
    assert (debate["probe.vcodec"], debate["probe.acodec"], debate["probe.audio_rate"]) == ("mpeg4", "ac3", 44100)
    assert out["same_scene_pair_16fps.mp4"].stats["probe.fps"] == pytest.approx(16.0)
    assert out["single_talking_head_2997fps.mp4"].stats["probe.fps"] == pytest.approx(30000 / 1001, abs=1e-3)
    assert (debate["probe.width"], debate["probe.height"]) == (1280, 720)


def test_other_inputs_on_an_existing_output_are_refused_and_change_nothing(sample_dir, tmp_path):
    from conftest import copy_inputs

    a = copy_inputs(sample_dir, tmp_path / "a", ["two_talk.mp4"])
    b = copy_inputs(sample_dir, tmp_path / "b", ["two_talk.mp4", "one_person.mp4"])
    out = tmp_path / "out"
    build(cfg(), [str(a)], out, runner="inprocess", progress=False)
    before = digests(out) | {"config.json": (out / "config.json").read_text()}
    with pytest.raises(BuildError, match="frozen from other inputs"):
        build(cfg("stages.probe.min_fps=5"), [str(b)], out, runner="inprocess", progress=False, force=True)
    assert digests(out) | {"config.json": (out / "config.json").read_text()} == before
