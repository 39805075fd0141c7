"""A multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``): a worker node is killed in the
middle of a build; the build stops naming the shards it could not finish, nothing partial is left, and
the rerun on a cluster that has a worker again completes them to the same bytes as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
    from mtcc.pipeline.cli import resolve_config
    from mtcc.pipeline.config import load_config

    inputs, out, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
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


def test_worker_node_lost_mid_run_names_failed_shards_and_the_rerun_completes_them(sample_dir, tmp_path):
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

    # same bytes as an uninterrupted run on the embedded local Ray
    ref = tmp_path / "ref"
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "run", "spine", "--input", str(sample_dir),
           "--output", str(ref), "--no-progress", *[a for o in OVERRIDES for a in ("--set", o)]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert digests(out) == digests(ref)
