"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a worker node is killed in the
middle of a build; the build stops naming the shards it could not finish, nothing partial is left, and
the rerun on a cluster that has a worker again completes them to the same bytes as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import made_once

pytestmark = pytest.mark.slow

# one video per shard, one shard at a time: the worker dies with most of the build still to do
OVERRIDES = ["run.videos_per_shard=1", "run.max_shards_in_flight=1"]

# The head node has no CPUs, so every stage actor lives on the worker node: losing it leaves nowhere to
# restart them (the case a build must not hang on). The script runs in its own process because the
# test session already holds an embedded Ray.
SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import resolve_config
    from mtcc.pipeline.config import load_config

    inputs, out, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    cfg = load_config(resolve_config("spine"), overrides)

    def kill_worker_after_first_commit():
        while not list((out / "commits").glob("*.json")):
            time.sleep(0.05)
        cluster.remove_node(worker, allow_graceful=False)

    threading.Thread(target=kill_worker_after_first_commit, daemon=True).start()
    t0 = time.monotonic()
    first = build(cfg, [inputs], out, runner="ray", address=cluster.address, progress=False)
    first_s = time.monotonic() - t0
    leftovers = sorted(str(p) for p in out.rglob("*") if p.name.endswith(".tmp"))
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    second = build(cfg, [inputs], out, runner="ray", address=cluster.address, progress=False)
    print("RESULT " + json.dumps({
        "first_built": first.shards_built, "first_failed": {str(k): v for k, v in first.shards_failed.items()},
        "first_s": first_s, "leftovers": leftovers,
        "second_built": second.shards_built, "second_skipped": second.shards_skipped,
        "second_failed": {str(k): v for k, v in second.shards_failed.items()},
    }))
    ray.shutdown()
    cluster.shutdown()
""")


def digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*"), *out.glob("commits/*"), out / "plan.parquet"])
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_worker_node_lost_mid_run_names_failed_shards_and_the_rerun_completes_them(sample_dir, spine_ref, tmp_path):
    script = tmp_path / "cluster_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env_cmd = [sys.executable, str(script), str(sample_dir), str(out), json.dumps(OVERRIDES)]
    run = subprocess.run(env_cmd, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert run.returncode == 0 and line, run.stderr[-3000:]
    r = json.loads(line[len("RESULT "):])

    # the first run stopped on its own (no hang) and named every shard it did not build
    assert r["first_failed"], r
    assert all("lost capacity" in why and "rerun" in why for why in r["first_failed"].values())
    assert r["first_s"] < 300
    assert r["leftovers"] == []
    assert set(r["first_built"]).isdisjoint(int(s) for s in r["first_failed"])
    # the rerun did exactly the failed shards and skipped the committed ones
    assert sorted(r["second_built"]) == sorted(int(s) for s in r["first_failed"])
    assert sorted(r["second_skipped"]) == sorted(r["first_built"])
    assert r["second_failed"] == {}

    # same bytes as an uninterrupted run
    assert digests(out) == digests(spine_ref)


# -- pools that grow with the cluster (pipeline/pools.py, pipeline/ray_executor.py) ---------------------------

# One script, one scenario: a Ray cluster of simulated nodes on this machine (logical CPUs, GPUs and memory,
# as a real cluster schedules them), a build on it, what Ray reported the actors held at peak (sampled), the
# pools' log lines, and the build's own summary. Nodes are added or removed after the Nth committed shard.
# No dashboard on these heads (nor in SCRIPT's): nothing here reads it, and starting one cost about 3.5 CPU-s
# of a 3-node cluster's 10-14 (2026-12-07).
SCENARIO = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import resolve_config
    from mtcc.pipeline.config import load_config

    spec = json.loads(sys.argv[1])
    out = Path(spec["out"])
    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **spec["head"]})
    workers = [cluster.add_node(**n) for n in spec.get("workers", [])]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    if spec.get("slow"):
        # a planted slow stage: sleeps per clip, so its pool is what holds the build up (defined here, in
        # __main__, it travels to the actors by value)
        import os
        from typing import ClassVar
        from mtcc.stages import STAGES
        from mtcc.stages.base import Stage

        class Sleepy(Stage):
            name: ClassVar[str] = "sleepy"
            stats_schema: ClassVar[dict] = {"slept": "float64"}
            seconds: float = 1.0
            dies_on: str = ""  # a node resource: there its actor's process dies as it starts

            def attach(self, workspace):
                if self.dies_on and ray.is_initialized():
                    me = ray.get_runtime_context().get_node_id()
                    if any(n["NodeID"] == me and n["Resources"].get(self.dies_on) for n in ray.nodes()):
                        os._exit(3)  # what a native library that crashes on that node's driver does
                super().attach(workspace)

            def compute(self, cand):
                time.sleep(self.seconds)
                return {"slept": self.seconds}

        STAGES["sleepy"] = Sleepy
    cfg = load_config(resolve_config(spec["profile"]), spec["sets"])
    if spec.get("slow"):
        from mtcc.pipeline.config import build_config
        raw = {**cfg.dump(), "stages": {s.name: s.model_dump() for s in cfg.stages}}
        order = list(raw["stages"])
        at = order.index("cut")
        stages = {n: raw["stages"][n] for n in order[:at]}
        stages["sleepy"] = {"seconds": spec["slow"], "dies_on": spec.get("dies_on", ""),
                            "resources": {"num_cpus": 0.25, **spec.get("sleepy_resources", {})}}
        stages.update({n: raw["stages"][n] for n in order[at:]})
        raw["stages"] = stages
        raw.pop("models", None)
        cfg = build_config(raw)
    peak = {"CPU": 0.0, "GPU": 0.0}
    events, logs, done = [], [], {}

    def holds_stage_actors(node_id):
        # a node is removed while stage actors live on it (the pools may have moved everything off it
        # by then: losing it would then test nothing)
        from ray._private.state import actors
        return any(a["State"] == "ALIVE" and a["Address"]["NodeID"] == node_id
                   and a["ActorClassName"].endswith("StageActor") for a in actors().values())

    def run():
        from mtcc.pipeline.errors import StageSetupError
        try:
            done["res"] = build(cfg, [spec["inputs"]], out, runner="ray", address=cluster.address, progress=False,
                                log=logs.append)
        except StageSetupError as e:
            done["refused"] = str(e)

    # the build runs in a thread; this one watches what the actors hold and changes the cluster (Ray's node
    # processes can only be started and stopped from the main thread)
    worker = threading.Thread(target=run)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
        total, avail = ray.cluster_resources(), ray.available_resources()
        for k in peak:
            if total.get(k):
                peak[k] = max(peak[k], (total[k] - avail.get(k, 0.0)) / total[k])
        commits = len(list((out / "commits").glob("*.json"))) if (out / "commits").is_dir() else 0
        if spec.get("add_after") is not None and commits >= spec["add_after"] and "added" not in events:
            cluster.add_node(**spec["add"])
            events.append("added")
        if spec.get("remove_after") is not None and commits >= spec["remove_after"] and "removed" not in events \
                and holds_stage_actors(workers[-1].node_id):
            cluster.remove_node(workers[-1], allow_graceful=False)
            events.append("removed")
    if "refused" in done:
        print("RESULT " + json.dumps({"refused": done["refused"], "out_made": out.exists(),
                                      "logs": [m for m in logs if m.startswith("pools:")]}))
        sys.exit(0)
    res = done["res"]
    top = {}
    timeline = res.pools.get("timeline", [])
    for point in timeline:
        for k, v in point["actors"].items():
            top[k] = max(top.get(k, 0), v)
    # the pools when the slow stage's was largest (a planted slow stage's scenario)
    at_peak = max(timeline, key=lambda p: p["actors"].get("sleepy", 0))["actors"] if timeline else {}
    print("RESULT " + json.dumps({"built": res.shards_built, "failed": {str(k): v for k, v in res.shards_failed.items()},
          "peak": peak, "events": events, "logs": [m for m in logs if m.startswith(("pools:", "shard"))],
          "most_actors": top, "at_sleepy_peak": at_peak, "redone": res.redone, "held": res.pools.get("held_fraction")}))
    ray.shutdown()
    cluster.shutdown()
""")

GIB = 1 << 30
# one video per shard (the shards of OVERRIDES, so the same bytes), several in flight: work waits for the pools
BUSY = ["run.videos_per_shard=1", "run.max_shards_in_flight=6"]
GPU_SHARES = ["stages.separate.resources.num_gpus=0.25", "stages.asd.resources.num_gpus=0.1",
              "stages.sync.resources.num_gpus=0.1", "stages.masks.resources.num_gpus=0.5",
              "stages.audio_emb.resources.num_gpus=0.1", "stages.caption.resources.num_gpus=0.25"]


def scenario(tmp_path: Path, spec: dict, timeout: float = 900) -> dict:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    run = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert run.returncode == 0 and line, run.stderr[-4000:]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def short_clip(sample_dir, tmp_path_factory) -> Path:
    """One 2.4 s two-person clip: enough for every stage of the offline profile to run, quickly."""
    d = tmp_path_factory.mktemp("short")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample_dir / "two_talk.mp4"), "-t", "2.4",
                    "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(d / "two_talk_2s.mp4")], check=True)
    return d


@pytest.mark.parametrize("nodes", [
    # `ray start --head --num-cpus 8 --num-gpus 2` on this machine (Ray offers actors about 15 GiB of its memory)
    {"head": {"num_cpus": 8, "num_gpus": 2, "memory": 15 * GIB}},
    {"head": {"num_cpus": 4, "num_gpus": 1, "memory": 7 * GIB},  # three nodes sharing this machine's memory
     "workers": [{"num_cpus": 2, "num_gpus": 1, "memory": 5 * GIB}, {"num_cpus": 2, "memory": 4 * GIB}]},
], ids=["one_node", "three_nodes"])
def test_auto_pools_hold_90_percent_of_the_cluster_with_the_offline_profile(nodes, short_clip, tiny_overrides,
                                                                              tmp_path):
    r = scenario(tmp_path, {**nodes, "profile": "offline", "sets": [*tiny_overrides, *GPU_SHARES],
                            "inputs": str(short_clip), "out": str(tmp_path / "out")})
    assert r["built"] == [0] and not r["failed"], r
    assert r["peak"]["CPU"] >= 0.9 and r["peak"]["GPU"] >= 0.9, r  # as Ray reports it while the build runs


@pytest.fixture(scope="module")
def spine_ref(sample_dir, tmp_path_factory) -> Path:
    """The sample set through the spine profile in one process: the bytes every schedule must give (made
    once a session: the node-lost and node-added scenarios compare with it)."""
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config

    def make(d: Path) -> None:
        res = build(load_config(resolve_config("spine"), OVERRIDES), [str(sample_dir)], d / "out",
                    runner="inprocess", progress=False)
        assert not res.shards_failed

    return made_once(tmp_path_factory, "spine_ref", make)[0] / "out"


def test_a_node_added_mid_build_is_used_and_the_shards_do_not_change(sample_dir, spine_ref, tmp_path):
    r = scenario(tmp_path, {"head": {"num_cpus": 0}, "workers": [{"num_cpus": 2}], "profile": "spine",
                            "sets": [*BUSY, "run.rebalance_s=1"], "inputs": str(sample_dir),
                            "out": str(tmp_path / "out"), "add_after": 1, "add": {"num_cpus": 4}})
    assert r["events"] == ["added"] and not r["failed"], r
    grew = [m for m in r["logs"] if re.match(r"pools: .*\w \+\d", m)]
    assert grew, r["logs"]  # the new node's CPUs went to the pools within the build
    assert digests(tmp_path / "out") == digests(spine_ref)


def test_a_node_lost_mid_build_shrinks_the_pools_and_the_shards_do_not_change(sample_dir, spine_ref, tmp_path):
    """The worker is removed while stage actors live on it; the build places their stages again on the head
    (making room there: actors grown past their share give it back) and ends with the same bytes. One actor
    per stage: a pool of several retires its idle surplus, and a dead node's actors retired before Ray calls
    the node dead would leave nothing lost to see. Ray calls a node dead after missing its health checks
    (about 15 s by default); here within about 2 s, so the build still runs when it does (what is tested is
    how the pools answer, not Ray's timing; a live node starved of CPU still has 1 s for each check)."""
    fast_death = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 4}
    one_each = [f"stages.{s}.resources.max_actors=1" for s in ("probe", "clip", "cut", "write")]
    r = scenario(tmp_path, {"head": {"num_cpus": 2, "_system_config": fast_death}, "workers": [{"num_cpus": 2}],
                            "profile": "spine", "sets": [*BUSY, "run.rebalance_s=1", *one_each],
                            "inputs": str(sample_dir), "out": str(tmp_path / "out"), "remove_after": 2})
    assert r["events"] == ["removed"] and not r["failed"], r
    lost = [m for m in r["logs"] if "lost with their node" in m]
    assert lost and all(re.search(r"pools: [1-4] actor\(s\) lost", m) for m in lost), r["logs"]
    assert digests(tmp_path / "out") == digests(spine_ref)


def test_a_planted_slow_stage_gets_the_most_actors(sample_dir, tmp_path):
    r = scenario(tmp_path, {"head": {"num_cpus": 6}, "profile": "spine", "slow": 8.0,
                            "sets": ["run.videos_per_shard=4", "run.max_shards_in_flight=4", "run.rebalance_s=1"],
                            "inputs": str(sample_dir), "out": str(tmp_path / "out")})
    assert not r["failed"], r
    # the plan the build started with: its first sizes line (lines about actors still loading may come before)
    start = next(m for m in r["logs"] if re.fullmatch(r"pools:( \w+=\d+)+", m))
    peak = r["at_sleepy_peak"]
    assert "sleepy=1" in start  # the plan the build started with expected it cheap: one actor
    assert peak["sleepy"] >= 3 and peak["sleepy"] > max(v for k, v in peak.items() if k != "sleepy"), (start, peak)


def test_a_node_where_a_stage_cannot_start_gets_none_of_its_actors_and_the_build_completes(sample_dir, spine_ref,
                                                                                           tmp_path):
    """One node of a cluster is bad for one stage: that stage's actor process dies as it starts there (a native
    library that crashes on that node's driver, a model folder missing there), while every other stage runs
    there. The plan puts the stage's three first actors on it (the node with the most room). They leave, the
    node gets no more of the stage's actors (not at the start, not when the pools grow), the stage runs on the
    other node, and the build keeps what a build without the planted stage keeps. Before, the run was refused;
    three actors failing on one node are one node tried, not three."""
    r = scenario(tmp_path, {"head": {"num_cpus": 0}, "workers": [{"num_cpus": 6, "resources": {"bad_node": 1}},
                                                                  {"num_cpus": 2}],
                            "profile": "spine", "slow": 0.5, "dies_on": "bad_node",
                            "sleepy_resources": {"min_actors": 3},
                            "sets": [*BUSY, "run.rebalance_s=1"], "inputs": str(sample_dir),
                            "out": str(tmp_path / "out")})
    assert r["built"] and not r["failed"], r
    at_start = [m for m in r["logs"] if m.startswith("pools: a 'sleepy' actor could not start on node ")]
    later = [m for m in r["logs"] if re.match(r"pools: a new 'sleepy' actor could not start", m)]
    avoided = [m for m in r["logs"] if re.fullmatch(r"pools: node .* gets no more 'sleepy' actors in this build while "
                                                    r"another node can hold them: one could not start there", m)]
    assert len(at_start) == 3 and "process died as it started" in at_start[0], r["logs"]
    assert not later and len(avoided) == 1, r["logs"]
    assert r["most_actors"]["sleepy"] >= 1, r
    from mtcc.manifests.report_data import read_manifests

    kept = {row["key"]: row["status"] for row in read_manifests(tmp_path / "out").to_pylist()}
    assert kept == {row["key"]: row["status"] for row in read_manifests(spine_ref).to_pylist()}


def test_a_stage_that_can_start_on_no_node_is_refused_after_trying_three(sample_dir, tmp_path):
    """The planted stage's process dies on every node (what a setup error that is no node's doing does
    everywhere): its actor is tried on three nodes, one after the other, and the run is refused before
    anything is written, naming the stage, what went wrong and the nodes tried."""
    workers = [{"num_cpus": 2, "resources": {"bad_node": 1}} for _ in range(4)]
    r = scenario(tmp_path, {"head": {"num_cpus": 0}, "workers": workers, "profile": "spine", "slow": 0.5,
                            "dies_on": "bad_node", "sets": [*BUSY], "inputs": str(sample_dir),
                            "out": str(tmp_path / "out")})
    assert re.match(r"stage 'sleepy' failed to set up: its actor's process died as it started or loaded its "
                    r"models .* \(it could not start on 3 nodes: [^,]+, [^,]+, [^,]+\)$", r.get("refused", "")), r
    assert not r["out_made"], r
    tried = [m for m in r["logs"] if m.startswith("pools: a 'sleepy' actor could not start on node ")]
    assert len(tried) == 2 and all("the stage starts one on node" in m for m in tried), r["logs"]


# -- `ray job submit` against a `ray start` head (RAY_ADDRESS honoured) ----------------------------------------

def _free_ports(n: int) -> list[int]:
    """``n`` ports that bind now, drawn between Ray's worker ports (10002-19999) and the kernel's ephemeral
    range: the suite's other Rays bind their defaults, their workers' ports and ephemeral ones, so none takes
    these in the seconds before the head binds them (a port the kernel hands out could be)."""
    import random
    import socket

    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    out: list[int] = []
    for port in random.sample(range(20000, ephemeral), k=min(200, ephemeral - 20000)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise AssertionError(f"no {n} free ports between 20000 and {ephemeral}")


def test_ray_job_submit_builds_on_the_cluster_it_is_submitted_to(sample_dir, tmp_path):
    """The way Ray users launch work: `ray start --head` (4 logical CPUs, where this machine has 2), then
    `ray job submit --working-dir WD -- mtcc run PROFILE …`. The job's driver gets RAY_ADDRESS from the job
    server; the build joins that cluster (not a private embedded Ray): its log names it with the head's 4
    CPUs, and the cluster's own actor list holds the build's stage actors."""
    import os
    import shutil
    import signal
    import time
    import urllib.request

    ray_bin = Path(sys.executable).with_name("ray")
    temp = Path(f"/tmp/mtcc-rj-{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{ray_bin.parent}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = None
    try:
        for _ in range(3):
            # every port of the head its own: other Ray nodes on this machine (the suite's embedded ones) hold
            # the defaults, and a dashboard agent that cannot bind its port leaves the job server with no agent
            flags = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port", "node-manager-port",
                     "object-manager-port")
            ports = dict(zip(flags, _free_ports(len(flags))))
            port, dash = ports.pop("port"), ports.pop("dashboard-port")
            head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=4",
                                     "--num-gpus=0", "--include-dashboard=true", f"--dashboard-port={dash}",
                                     "--dashboard-host=127.0.0.1", f"--temp-dir={temp}",
                                     *(f"--{flag}={p}" for flag, p in ports.items())],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            url = f"http://127.0.0.1:{dash}"
            deadline = time.monotonic() + 120
            while head.poll() is None and time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                    break
                except OSError:
                    time.sleep(1)
            if head.poll() is None:
                break
            # the ports were free when chosen and are bound seconds later: another Ray of the suite may have
            # taken one meanwhile, and the head exits; it starts again on new ones, once what it started is gone
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
        wd = tmp_path / "wd"
        wd.mkdir()
        # the profile travels in the working dir, as a user's own config would
        shutil.copy(Path(__file__).resolve().parents[1] / "configs" / "spine.yaml", wd / "my_profile.yaml")
        inputs = tmp_path / "in"
        inputs.mkdir()
        (inputs / "two_talk.mp4").symlink_to(sample_dir / "two_talk.mp4")
        out = tmp_path / "out"
        submit = [str(ray_bin), "job", "submit", "--address", url, "--working-dir", str(wd), "--", sys.executable,
                  "-m", "mtcc.pipeline.cli", "run", "my_profile.yaml", "--input", str(inputs), "--output", str(out),
                  "--no-progress"]
        while True:
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            logs = job.stdout + job.stderr
            # the head answers before its job agent is up (seconds later on a busy machine); the job server
            # refuses the job then, without making it: asking again is what its message says to do
            if job.returncode == 0 or "No available agent" not in logs or time.monotonic() > deadline + 180:
                break
            time.sleep(3)
        assert job.returncode == 0, logs[-4000:]
        assert "succeeded" in logs, logs[-3000:]
        # the driver joined the head through RAY_ADDRESS: 4 CPUs is the head's, this machine has 2
        assert "ray: Ray at RAY_ADDRESS=" in logs and ": 4 CPUs" in logs, logs[-3000:]
        assert len(list((out / "commits").glob("*.json"))) == 1
        from ray.util.state import list_actors

        actors = list_actors(address=url, filters=[("class_name", "=", "StageActor")], limit=1000,
                             raise_on_missing_output=False)
        assert len(actors) >= 4, actors  # probe, clip, cut and write ran as actors of that cluster
        # and `mtcc env --all-nodes` checks every node of that cluster, from a task on each
        res = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "env", "spine", "--all-nodes", "--json"],
                             env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        (node,) = json.loads(res.stdout)["nodes"]
        assert node["ok"] and "RAY_ADDRESS" in node["node"], node
    finally:
        if head is not None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
