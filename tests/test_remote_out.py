"""OUT as an fsspec URL: real builds of the spine profile into s3://bucket/... on moto's S3 server (a real
HTTP S3 endpoint, spoken to by s3fs), against a local build of the same inputs and config: same bytes,
resume after lost commits, partial uploads and a killed driver, the remote lock, `mtcc verify`, `mtcc status`
and the training loader on the published layout."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtcc.manifests.shard_tar import read_samples
from mtcc.pipeline.build import build
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.pipeline.errors import BuildError, LockBusy, StageSetupError
from mtcc.pipeline.remote import claim_staging

pytestmark = pytest.mark.slow

OVERRIDES = ["run.videos_per_shard=3", "run.max_shards_in_flight=2"]
BUCKET = "bucket"  # made by the s3 fixture (conftest.py)


def cfg(*extra: str):
    return load_config(resolve_config("spine"), [*OVERRIDES, *extra])


def remote_digests(fs, root: str) -> dict[str, str]:
    fs.invalidate_cache()
    out = {}
    for d in ("shards", "manifests", "commits"):
        for p in fs.ls(f"{root}/{d}", detail=False):
            out[p.removeprefix(root + "/")] = hashlib.sha256(fs.cat_file(p)).hexdigest()
    out["plan.parquet"] = hashlib.sha256(fs.cat_file(f"{root}/plan.parquet")).hexdigest()
    return out


def local_digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*"), *out.glob("commits/*"), out / "plan.parquet"])
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def builds(s3, sample_dir, tmp_path_factory):
    """The same inputs and config built locally and into s3://bucket/ds."""
    base = tmp_path_factory.mktemp("remote")
    local = base / "local"
    build(cfg(), [str(sample_dir)], local, runner="inprocess", progress=False)
    staging = base / "staging"
    res = build(cfg(), [str(sample_dir)], f"s3://{BUCKET}/ds", runner="inprocess", progress=False, staging=staging)
    return local, staging, res


def copy_remote(fs, src: str, dst: str) -> str:
    fs.invalidate_cache()
    for p in fs.find(f"{BUCKET}/{src}"):
        fs.copy(p, f"{BUCKET}/{dst}/" + p.removeprefix(f"{BUCKET}/{src}/"))
    return f"s3://{BUCKET}/{dst}"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_remote_build_publishes_every_shard_byte_identical_to_a_local_build(s3, builds):
    local, staging, res = builds
    assert not res.shards_failed and res.out == f"s3://{BUCKET}/ds"
    assert sorted(res.shards_built) == list(range(res.shards_total))
    assert remote_digests(s3, f"{BUCKET}/ds") == local_digests(local)
    n = len(list((local / "commits").glob("*.json")))
    assert n == res.shards_total and n > 2
    assert json.loads(s3.cat_file(f"{BUCKET}/ds/config.json")) == json.loads((local / "config.json").read_text())
    # published shards are freed in staging; OUT's lock is released; the report is published, page last
    assert [p for p in staging.rglob("*") if p.is_file() and p.parent.name in ("shards", "manifests", "commits")] == []
    assert not s3.exists(f"{BUCKET}/ds/.lock")
    page = s3.cat_file(f"{BUCKET}/ds/report/index.html").decode()
    assert f"s3://{BUCKET}/ds" in page and "Gallery" in page
    for img in s3.find(f"{BUCKET}/ds/report/gallery"):
        assert img.rsplit("/", 1)[-1] in page
    assert s3.exists(f"{BUCKET}/ds/report/last_run.json")


def test_rerun_skips_every_published_shard_and_changes_nothing(s3, builds, sample_dir, tmp_path):
    local, _, res = builds
    url = copy_remote(s3, "ds", "rerun")
    # a fresh staging folder (another machine): the state comes from OUT alone
    again = build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=tmp_path / "st")
    assert again.shards_built == [] and len(again.shards_skipped) == res.shards_total
    assert remote_digests(s3, f"{BUCKET}/rerun") == local_digests(local)


def test_a_run_refused_when_its_stages_start_leaves_the_url_and_staging_as_they_were(s3, builds, sample_dir,
                                                                                     tmp_path):
    """The inputs were planned into staging, then a stage could not load its weights: OUT gets nothing (no lock
    left, no plan published) and staging keeps no plan or config, so the fixed rerun (here another profile, into
    the same staging) is a first run, not a changed config refused, and publishes what a local build gives.
    The same refusal with --force over that finished OUT leaves every object of it as it was."""
    local, _, _ = builds
    url, staging = f"s3://{BUCKET}/refused", tmp_path / "staging"
    bad = load_config(resolve_config("offline"), ["models=null", "stages.faces.detector=insightface"])
    with pytest.raises(StageSetupError, match="stage 'faces' failed to set up"):
        build(bad, [str(sample_dir)], url, runner="inprocess", progress=False, staging=staging)
    s3.invalidate_cache()
    assert s3.find(f"{BUCKET}/refused") == []
    assert not (staging / "plan.parquet").exists() and not (staging / "config.json").exists()
    again = build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=staging)
    assert not again.shards_failed and again.shards_built
    assert remote_digests(s3, f"{BUCKET}/refused") == local_digests(local)
    # with --force over a finished OUT (every shard's config differs): refused before a shard of it is removed
    config = s3.cat_file(f"{BUCKET}/refused/config.json")
    with pytest.raises(StageSetupError, match="stage 'faces' failed to set up"):
        build(bad, [str(sample_dir)], url, runner="inprocess", progress=False, staging=staging, force=True)
    assert remote_digests(s3, f"{BUCKET}/refused") == local_digests(local)
    assert s3.cat_file(f"{BUCKET}/refused/config.json") == config


def test_lost_commit_partial_upload_and_short_tar_redo_exactly_those_shards(s3, builds, sample_dir, tmp_path):
    local, _, _ = builds
    url = copy_remote(s3, "ds", "partial")
    root = f"{BUCKET}/partial"
    s3.rm_file(f"{root}/commits/000001.json")  # died between the tar/manifest upload and the commit
    s3.rm_file(f"{root}/commits/000002.json")  # died while uploading the tar: half a tar, no commit
    tar2 = s3.cat_file(f"{root}/shards/mtcc-000002.tar")
    s3.pipe_file(f"{root}/shards/mtcc-000002.tar", tar2[: len(tar2) // 2])
    tar0 = s3.cat_file(f"{root}/shards/mtcc-000000.tar")  # committed, but the tar lost its tail
    s3.pipe_file(f"{root}/shards/mtcc-000000.tar", tar0[:-512])
    st = cli("status", url)
    assert st.returncode == 0, st.stderr
    assert "shard 000001  partial" in st.stdout and "shard 000002  partial" in st.stdout
    # shard 1 is still committed in the staging folder of the run that died (the local build's files are the
    # same bytes): the rerun publishes it from there instead of building it again
    staging = tmp_path / "st"
    claim_staging(staging, url)
    for rel in ("shards/mtcc-000001.tar", "manifests/000001.parquet", "commits/000001.json"):
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local / rel, staging / rel)
    logs: list[str] = []
    res = build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=staging, log=logs.append)
    assert sorted(res.shards_built) == [0, 1, 2] and not res.shards_failed
    assert any(m.startswith("shard 000001: committed in staging by an earlier run") for m in logs), logs
    assert any(m.endswith("built from 6 inputs") for m in logs), logs  # only shards 0 and 2 ran the stages
    assert any(m.startswith("shard 000000 on") and "tar is" in m for m in logs), logs
    assert remote_digests(s3, root) == local_digests(local)
    # a staging folder serves one OUT only: the build deletes what it finds there
    with pytest.raises(BuildError, match=f"belongs to {url}"):
        build(cfg(), [str(sample_dir)], f"s3://{BUCKET}/other", runner="inprocess", progress=False, staging=staging)


def test_verify_names_a_corrupted_remote_tar_and_uncommit_lets_the_rerun_redo_it(s3, builds, sample_dir, tmp_path):
    local, _, _ = builds
    url = copy_remote(s3, "ds", "corrupt")
    root = f"{BUCKET}/corrupt"
    data = bytearray(s3.cat_file(f"{root}/shards/mtcc-000001.tar"))
    data[len(data) // 2] ^= 0x01  # same size: only a checksum finds it
    s3.pipe_file(f"{root}/shards/mtcc-000001.tar", bytes(data))
    verify = cli("verify", url)
    assert verify.returncode == 1, verify.stderr
    line = next(ln for ln in verify.stdout.splitlines() if ln.startswith("shard 000001"))
    assert "tar checksum mismatch" in line and f"{url}/shards/mtcc-000001.tar" in line
    assert "shard 000000" not in verify.stdout and "1 bad shard(s)" in verify.stdout
    fixed = cli("verify", url, "--uncommit")
    assert "commit removed" in fixed.stdout
    res = build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=tmp_path / "st")
    assert res.shards_built == [1]
    assert cli("verify", url).stdout.strip().endswith("all shards verified")
    assert remote_digests(s3, root) == local_digests(local)


def test_fresh_remote_lock_refuses_and_a_stale_one_is_taken_over(s3, builds, sample_dir, tmp_path):
    url = copy_remote(s3, "ds", "locked")
    lock = f"{BUCKET}/locked/.lock"
    s3.pipe_file(lock, json.dumps({"pid": 4242, "host": "node-7", "started": "then", "token": "x",
                                   "heartbeat": time.time()}).encode())
    with pytest.raises(LockBusy, match="being written by pid 4242 on node-7"):
        build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=tmp_path / "a")
    run = cli("run", "spine", "--input", str(sample_dir), "--output", url, "--staging", str(tmp_path / "b"),
              "--runner", "inprocess", "--no-progress", *[a for o in OVERRIDES for a in ("--set", o)])
    assert run.returncode == 2 and "node-7" in run.stderr and url in run.stderr, run.stderr
    s3.pipe_file(lock, json.dumps({"pid": 4242, "host": "node-7", "started": "then", "token": "x",
                                   "heartbeat": time.time() - 3600}).encode())
    logs: list[str] = []
    res = build(cfg(), [str(sample_dir)], url, runner="inprocess", progress=False, staging=tmp_path / "c",
                log=logs.append)
    assert any("taking over the stale lock" in m and "node-7" in m for m in logs), logs
    assert res.shards_built == [] and not res.shards_failed
    s3.invalidate_cache()
    assert not s3.exists(lock)


def test_killed_driver_resumes_to_identical_shards(s3, builds, sample_dir, tmp_path):
    """SIGKILL once OUT holds a commit: the rerun (same machine, default staging) takes over the dead run's
    lock at once, keeps the published shards and redoes the rest, to the local build's bytes."""
    local, _, _ = builds
    url = f"s3://{BUCKET}/killed"
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "run", "spine", "--input", str(sample_dir), "--output", url,
           "--runner", "inprocess", "--no-progress", *[a for o in OVERRIDES for a in ("--set", o)]]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        s3.invalidate_cache()
        if s3.exists(f"{BUCKET}/killed/commits") and s3.ls(f"{BUCKET}/killed/commits"):
            break
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    published = len(s3.ls(f"{BUCKET}/killed/commits"))
    assert published < len(list((local / "commits").glob("*.json")))
    assert s3.exists(f"{BUCKET}/killed/.lock")  # the dead run's lock, heartbeat still fresh
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "taking over the stale lock" in done.stderr
    assert remote_digests(s3, f"{BUCKET}/killed") == local_digests(local)
    staging = next((tmp_path / "cache" / "mtcc" / "staging").iterdir())
    assert [p for p in staging.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".tar"] == []


def test_training_loader_reads_committed_shards_from_the_url(s3, builds):
    from mtcc.training.shards import resolve_shards

    local, _, res = builds
    url = copy_remote(s3, "ds", "train")
    s3.rm_file(f"{BUCKET}/train/commits/000002.json")
    refs = resolve_shards([url])
    assert [r.shard_id for r in refs] == [s for s in range(res.shards_total) if s != 2]
    import fsspec

    for ref in refs:
        assert ref.url == f"{url}/shards/mtcc-{ref.shard_id:06d}.tar"
        commit = json.loads((local / "commits" / f"{ref.shard_id:06d}.json").read_text())
        with fsspec.open(ref.url, "rb") as f:
            keys = {key for key, _ in read_samples(f, select=lambda _: ())}
        assert len(keys) == commit["samples"]
        with fsspec.open(ref.manifest, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == commit["manifest"]["sha256"]


def test_cli_status_and_report_read_the_url_and_errors_name_out(s3, builds, tmp_path):
    _, _, res = builds
    url = f"s3://{BUCKET}/ds"
    st = cli("status", url)
    assert st.returncode == 0, st.stderr
    assert st.stdout.count("committed  samples=") == res.shards_total
    assert f"{res.shards_total}/{res.shards_total} shards committed" in st.stdout
    assert next(ln for ln in st.stdout.splitlines() if ln.startswith("probe"))
    rep = cli("report", url, "--samples", "2")
    assert rep.returncode == 0 and rep.stdout.strip() == f"{url}/report/index.html", rep.stderr
    missing = cli("status", f"s3://{BUCKET}/nothing-here")
    assert missing.returncode == 2 and f"s3://{BUCKET}/nothing-here has no plan.parquet" in missing.stderr
    # a protocol whose fsspec package is absent: the error names OUT and the install
    gone = cli("verify", "gcs://bucket/ds")
    assert gone.returncode == 2 and "gcs://bucket/ds" in gone.stderr and "pip install gcsfs" in gone.stderr


def test_index_and_select_on_a_url_out_publish_their_files(s3, builds):
    from mtcc.manifests.report_data import read_manifests
    from mtcc.manifests.selections import read_selection, selected_keys

    local, _, _ = builds
    url = copy_remote(s3, "ds", "sel")
    idx = cli("index", url)
    assert idx.returncode == 0 and "no `identity` stage" in idx.stdout, idx.stdout + idx.stderr
    s3.invalidate_cache()
    assert s3.exists(f"{BUCKET}/sel/index/state.json")
    rows = [r for r in read_manifests(local).to_pylist() if r["level"] == "clip" and r["status"] == "kept"]
    lengths = sorted({r["end"] - r["start"] for r in rows})
    bound = (lengths[0] + lengths[-1]) / 2  # splits the build: a test only if both sides have clips
    want = {r["key"] for r in rows if r["end"] - r["start"] < bound}
    assert 0 < len(want) < len(rows), lengths
    where = f"end - start < {bound}"
    sel = cli("select", url, "--name", "short", "--where", where)
    assert sel.returncode == 0 and "no `fingerprint` stage" in sel.stdout, sel.stdout + sel.stderr
    s3.invalidate_cache()
    with s3.open(f"{BUCKET}/sel/selections/short.parquet", "rb") as f:
        table, meta = read_selection(f)
    assert {k for keys in selected_keys(table).values() for k in keys} == want and meta["where"] == where
    rep = cli("report", url)
    assert rep.returncode == 0, rep.stderr
    with s3.open(f"{BUCKET}/sel/report/index.html", "r") as f:
        page = f.read()
    assert "Selections" in page and "short" in page
