"""A throttled object store is a normal day: every remote read and write rides out 503 Slow Down, 429, cut
bodies and reset connections (storage/remote_io.py), nothing half-read is used, and a source that is really
gone or was replaced becomes one manifest row. Servers run on this machine: the range server of
benchmarks/http_source.py and moto's S3 server, each behind the fault-injecting proxy of
benchmarks/flaky_store.py, so a flaky build and a healthy one read the same URLs."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtcc.benchmarks.flaky_store import Faults, FlakyProxy
from mtcc.benchmarks.http_source import CountingServer
from mtcc.pipeline.build import build
from mtcc.pipeline.cli import main
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.storage.remote_io import RemoteIO, RetriesExhausted, RetryPolicy, ShortRead, describe, http_status, transient

# quick retries: the schedule of faults is fixed, the waits only slow the test
FAST = ["run.remote.backoff_s=0.01", "run.remote.max_backoff_s=0.05", "run.remote.range_mb=0.25"]
# what the issue tried: every 5th GET answered 503 Slow Down, every 7th cut off half-way through its body;
# and beside them 429s and connection resets
ROUGH = Faults(slow_down=5, cut=7, too_many=11, reset=13)
GOOD = ("two_talk.mp4", "scene_events.mp4", "same_scene_pair_16fps.mp4", "single_talking_head_2997fps.mp4")


# -- the policy --------------------------------------------------------------------------------------------

def _client_response_error(status: int, message: str):
    from aiohttp import ClientResponseError, RequestInfo
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    info = RequestInfo(URL("http://store/x"), "GET", CIMultiDictProxy(CIMultiDict()), URL("http://store/x"))
    return ClientResponseError(info, (), status=status, message=message)


def test_transient_failures_are_told_from_lasting_ones():
    from botocore.exceptions import ClientError

    slow = _client_response_error(503, "Slow Down")
    assert transient(slow) == "throttled" and describe(slow) == "503 Slow Down"
    assert transient(_client_response_error(429, "Too Many Requests")) == "throttled"
    assert transient(_client_response_error(502, "Bad Gateway")) == "server"
    assert transient(_client_response_error(404, "Not Found")) is None
    assert transient(_client_response_error(403, "Forbidden")) is None
    # fsspec's HTTP filesystem reports a HEAD answered 503 as FileNotFoundError raised from it: the cause wins
    try:
        raise FileNotFoundError("http://store/x") from slow
    except FileNotFoundError as e:
        assert transient(e) == "throttled"
    assert transient(FileNotFoundError("http://store/x")) is None
    s3_slow = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                           "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    assert transient(s3_slow) == "throttled" and http_status(s3_slow) == 503
    denied = ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert transient(denied) is None and describe(denied).startswith("403")
    assert transient(ConnectionResetError(104, "Connection reset by peer")) == "network"
    assert transient(TimeoutError()) == "timeout"
    assert transient(ShortRead("10 of 20 bytes")) == "short_read"
    assert transient(ValueError("bad argument")) is None


def test_retries_back_off_with_jitter_and_stop_at_attempts_or_budget():
    waits: list[float] = []
    rio = RemoteIO(RetryPolicy(attempts=5, backoff_s=1.0, max_backoff_s=4.0, budget_s=3600), sleep=waits.append)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise ConnectionResetError(104, "Connection reset by peer")
        return "ok"

    assert rio.call("fetch", "x", flaky) == "ok" and calls["n"] == 4
    # full jitter under an exponential cap: each wait in [0, min(max_backoff, backoff * 2^k)]
    assert len(waits) == 3 and all(0 <= w <= cap for w, cap in zip(waits, (1.0, 2.0, 4.0)))
    assert rio.counts.snapshot() == {"retries": {"fetch.network": 3}, "gave_up": {}}

    class Top(random.Random):  # the longest wait the jitter may draw: the cap itself
        def uniform(self, a: float, b: float) -> float:
            assert a == 0.0
            return b

    def failing_times(n: int) -> Callable[[], str]:
        left = {"n": n}

        def fn() -> str:
            left["n"] -= 1
            if left["n"] >= 0:
                raise ConnectionResetError(104, "Connection reset by peer")
            return "ok"
        return fn

    caps: list[float] = []
    policy = RetryPolicy(attempts=6, backoff_s=1.0, max_backoff_s=4.0, budget_s=3600)
    assert RemoteIO(policy, sleep=caps.append, rng=Top()).call("fetch", "x", failing_times(5)) == "ok"
    assert caps == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling from backoff_s, held at max_backoff_s
    drawn: list[float] = []
    assert RemoteIO(policy, sleep=drawn.append, rng=random.Random(7)).call("fetch", "x", failing_times(5)) == "ok"
    same = random.Random(7)
    assert drawn == [same.uniform(0.0, cap) for cap in caps]  # each wait drawn anew, anywhere under its cap

    def down() -> None:
        raise _client_response_error(503, "Slow Down")

    with pytest.raises(RetriesExhausted, match="still failing after 5 tries") as e:
        rio.call("out", "writing s3://b/x", down)
    assert describe(e.value) == "503 Slow Down, still failing after 5 tries"
    assert rio.counts.snapshot()["gave_up"] == {"out": 1}

    def gone() -> None:
        raise FileNotFoundError("s3://b/x")

    before = len(waits)
    with pytest.raises(FileNotFoundError):
        rio.call("fetch", "x", gone)
    assert len(waits) == before  # a lasting failure is not retried

    tight = RemoteIO(RetryPolicy(attempts=100, backoff_s=50.0, max_backoff_s=50.0, budget_s=0.001),
                     sleep=lambda s: None)
    with pytest.raises(RetriesExhausted):
        tight.call("fetch", "x", down)  # the first wait would overrun the budget: no retry at all


def test_ranged_reads_through_a_flaky_server_are_exact_and_reread_only_the_failed_range(sample_dir):
    import fsspec

    data = (sample_dir / "scene_events.mp4").read_bytes()
    rio = RemoteIO(RetryPolicy(backoff_s=0.0, range_mb=1 / 16))
    with CountingServer(sample_dir) as srv, FlakyProxy(srv.base, Faults(cut=3, reset=4, slow_down=5)) as px:
        fs, path = fsspec.core.url_to_fs(f"{px.base}/scene_events.mp4")
        with rio.open(fs, path) as f:
            assert f.read() == data
            f.seek(1000)
            assert f.read(5000) == data[1000:6000]
        assert px.injected["cut"] and px.injected["reset"] and px.injected["slow_down"]
        # a cut range is read again alone: half a 64 KiB range lost per cut or reset, nothing more
        wasted = px.total_sent() - len(data) - (6000 - 1000 + 65536)
        assert 0 < wasted <= (px.injected["cut"] + px.injected["reset"]) * 32768 + 65536
    snap = rio.counts.snapshot()["retries"]
    assert snap.get("read.network", 0) == px.injected["cut"] + px.injected["reset"]
    assert snap.get("read.throttled", 0) == px.injected["slow_down"]


# -- a build from URLs on a throttled HTTP store ------------------------------------------------------------

def _tail_changed(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # same size, other last bytes: only the fingerprint sees it
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def http_store(sample_dir, real_dir, tmp_path_factory):
    """The inputs served over HTTP behind the fault proxy: four good videos (two of them real footage), one
    that was never there (404), one replaced by another video between planning and fetch, one whose last
    bytes change at the same size."""
    root = tmp_path_factory.mktemp("store")
    served, other = root / "served", root / "other"
    served.mkdir()
    other.mkdir()
    for name in GOOD:
        shutil.copy2(sample_dir / name if (sample_dir / name).exists() else real_dir / name, served / name)
    shutil.copy2(sample_dir / "two_talk_30fps.mp4", served / "replaced.mp4")
    shutil.copy2(sample_dir / "one_person.mp4", other / "replaced.mp4")
    shutil.copy2(sample_dir / "two_far.mp4", served / "retouched.mp4")
    _tail_changed(sample_dir / "two_far.mp4", other / "retouched.mp4")
    swap = {"replaced.mp4": (1, other / "replaced.mp4"), "retouched.mp4": (1, other / "retouched.mp4")}
    with CountingServer(served, swap=swap) as srv, FlakyProxy(srv.base) as px:
        listing = root / "inputs.txt"
        names = [*GOOD, "replaced.mp4", "retouched.mp4", "gone.mp4"]
        listing.write_text("".join(f"{px.base}/{n}\n" for n in names))
        yield srv, px, listing, served


def _digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*"), *out.glob("commits/*"), out / "plan.parquet"])
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _rows(out: Path) -> dict[str, dict]:
    table = pq.ParquetDataset(out / "manifests").read()
    return {r["source"].rsplit("/", 1)[-1]: r for r in table.to_pylist() if r["level"] == "video"}


@pytest.fixture(scope="module")
def http_builds(http_store, tmp_path_factory, ray_local):
    """The same URLs built from the healthy store (in-process) and from the throttled one (on Ray, whose
    workers fetch): (healthy OUT, flaky OUT, flaky result, bytes the proxy sent during the flaky build)."""
    srv, px, listing, _ = http_store
    base = tmp_path_factory.mktemp("http_builds")
    cfg = load_config(resolve_config("spine"), ["run.videos_per_shard=3", *FAST])
    px.faults = Faults()
    healthy = build(cfg, [str(listing)], base / "healthy", runner="inprocess", progress=False)
    assert not healthy.shards_failed and healthy.remote_io["retries"] == 0
    srv.heads.clear()  # the replaced objects are the planned ones again until the next build's fetch
    px.reset_counts()
    px.faults = ROUGH
    flaky = build(cfg, [str(listing)], base / "flaky", runner="ray", progress=False)
    sent = dict(px.sent)
    px.faults = Faults()
    return base / "healthy", base / "flaky", flaky, sent, dict(px.injected)


def test_flaky_store_build_finishes_byte_identical_to_a_healthy_one(http_builds):
    healthy, flaky, res, _, injected = http_builds
    assert injected["slow_down"] and injected["cut"] and injected["too_many"] and injected["reset"], injected
    assert not res.shards_failed and sorted(res.shards_built) == list(range(res.shards_total))
    assert _digests(flaky) == _digests(healthy)


def test_every_source_has_its_row_gone_and_replaced_ones_named(http_builds):
    _, flaky, *_ = http_builds
    rows = _rows(flaky)
    assert sorted(rows) == sorted([*GOOD, "replaced.mp4", "retouched.mp4", "gone.mp4"])
    for name in GOOD:
        assert rows[name]["status"] == "expanded", (name, rows[name]["message"])
    gone = rows["gone.mp4"]
    assert (gone["status"], gone["stage"], gone["reason"]) == ("rejected", "probe", "unreachable")
    assert "404" in gone["message"] and "gone.mp4" in gone["message"]
    for name in ("replaced.mp4", "retouched.mp4"):
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", "source_changed"), (name, row["message"])
        assert "changed since the plan was made" in row["message"]
    assert "bytes now" in rows["replaced.mp4"]["message"]  # another size: refused before any byte is read
    assert "fingerprint" in rows["retouched.mp4"]["message"]  # same size: fetched, checked, fetched again


def test_retries_are_counted_in_the_run_status_and_report(http_builds, capsys):
    _, flaky, res, _, injected = http_builds
    rio = res.remote_io
    # the workers' fetches (Ray actors) and the driver's planning both report
    assert any(k.startswith("fetch.") for k in rio["retries_by_kind"]), rio
    assert any(k.startswith("plan.") for k in rio["retries_by_kind"]), rio
    # every fault the proxy injected cost exactly one retry: none was missed, none given up
    assert rio["retries"] == sum(injected.values()) and rio["gave_up"] == 0
    assert json.loads((flaky / "report" / "last_run.json").read_text())["remote_io"] == rio
    assert main(["status", str(flaky)]) == 0
    out = capsys.readouterr().out
    assert f"last run's remote I/O: {rio['retries']} retries" in out
    page = (flaky / "report" / "index.html").read_text()
    assert "remote I/O retries" in page and f"{rio['retries']} (" in page


def test_bytes_read_stay_within_1_2x_the_input(http_builds, http_store):
    *_, sent, _ = http_builds
    _, _, _, served = http_store
    size = sum((served / n).stat().st_size for n in GOOD)
    read = sum(sent.get(f"/{n}", 0) for n in GOOD)
    assert size <= read <= 1.2 * size, (read, size)


# -- sources and OUT on a throttled S3 store ----------------------------------------------------------------

@pytest.fixture(scope="module")
def flaky_s3(s3, sample_dir):
    """moto's S3 behind the fault proxy: every client of this process (s3fs, subprocesses through the
    environment) talks to the proxy; botocore's own retries are off, so the faults reach s3fs and us."""
    import s3fs

    for name in ("two_talk.mp4", "scene_events.mp4", "two_far.mp4"):
        s3.put_file(str(sample_dir / name), f"bucket/flaky-src/{name}")
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS")}
    with FlakyProxy(os.environ["AWS_ENDPOINT_URL"]) as px:
        os.environ.update({"AWS_ENDPOINT_URL": px.base, "AWS_MAX_ATTEMPTS": "1"})
        s3fs.S3FileSystem.clear_instance_cache()
        yield px
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()


def _s3_digests(fs, root: str) -> dict[str, str]:
    fs.invalidate_cache()
    out = {}
    for d in ("shards", "manifests", "commits"):
        for p in fs.ls(f"{root}/{d}", detail=False):
            out[p.removeprefix(root + "/")] = hashlib.sha256(fs.cat_file(p)).hexdigest()
    return out


S3_INPUT = "s3://bucket/flaky-src/"
S3_SETS = ["run.videos_per_shard=1", *FAST, "run.remote.attempts=4"]


@pytest.fixture(scope="module")
def s3_healthy(s3, flaky_s3, tmp_path_factory):
    flaky_s3.faults = Faults()
    cfg = load_config(resolve_config("spine"), S3_SETS)
    res = build(cfg, [S3_INPUT], "s3://bucket/healthy", runner="inprocess", progress=False,
                staging=tmp_path_factory.mktemp("staging"))
    assert not res.shards_failed and res.shards_total == 3
    return _s3_digests(s3, "bucket/healthy")


def test_s3_sources_and_out_on_a_throttled_store_give_the_healthy_bytes(s3, flaky_s3, s3_healthy, tmp_path):
    every = ("GET", "PUT", "HEAD", "POST", "DELETE")
    flaky_s3.faults = Faults(slow_down=5, cut=7, too_many=11, methods=every)
    cfg = load_config(resolve_config("spine"), S3_SETS)
    res = build(cfg, [S3_INPUT], "s3://bucket/flaky", runner="inprocess", progress=False, staging=tmp_path / "st")
    flaky_s3.faults = Faults()
    assert not res.shards_failed and sum(flaky_s3.injected.values()) > 10
    assert _s3_digests(s3, "bucket/flaky") == s3_healthy


def test_unreachable_out_stops_the_build_cleanly_and_the_rerun_resumes(s3, flaky_s3, s3_healthy, tmp_path):
    """OUT stops answering half-way through publishing the first shard: the run stops (exit 1, every
    unfinished shard named), OUT holds no commit of a shard whose objects are not all there, and the same
    command, once the store is back, resumes to the healthy bytes."""
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "run", "spine", "--input", S3_INPUT, "--output",
           "s3://bucket/down", "--runner", "inprocess", "--no-progress",
           *[a for o in [*S3_SETS, "run.remote.attempts=2"] for a in ("--set", o)]]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    flaky_s3.reset_counts()
    # the store stops answering at the first shard's manifest upload: its tar is there, its commit never
    flaky_s3.faults = Faults(down_from="/down/manifests/", methods=())
    down = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    flaky_s3.faults = Faults()
    assert down.returncode == 1, down.stderr[-3000:]
    assert "OUT stopped taking shards" in down.stderr and "FAILED shard 000000" in down.stderr, down.stderr[-3000:]
    s3.invalidate_cache()
    commits = s3.ls("bucket/down/commits", detail=False) if s3.exists("bucket/down/commits") else []
    for c in commits:  # whatever made it to OUT is whole
        shard = c.rsplit("/", 1)[-1].removesuffix(".json")
        assert s3.exists(f"bucket/down/shards/mtcc-{shard}.tar") and s3.exists(f"bucket/down/manifests/{shard}.parquet")
    assert len(commits) < 3
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _s3_digests(s3, "bucket/down") == s3_healthy


def test_training_loader_reads_shards_through_a_throttled_store(s3, flaky_s3, s3_healthy):
    """The loader's shard listing and its ranged tar reads (stages.remote_io.open_read) on a store that cuts
    and refuses: the same samples, member for member, as from the healthy store."""
    from mtcc.manifests.shard_tar import read_samples
    from mtcc.storage.remote_io import open_read
    from mtcc.training.shards import resolve_shards

    def samples() -> dict[str, str]:
        out = {}
        for ref in resolve_shards(["s3://bucket/healthy"]):
            with open_read(ref.url) as f:
                for key, members in read_samples(f, where=ref.url):
                    for name, data in members.items():
                        out[f"{key}.{name}"] = hashlib.sha256(data).hexdigest()
        return out

    flaky_s3.faults = Faults()
    want = samples()
    flaky_s3.reset_counts()
    flaky_s3.faults = Faults(slow_down=2, cut=3, methods=("GET", "HEAD"))
    try:
        got = samples()
    finally:
        flaky_s3.faults = Faults()
    assert flaky_s3.injected["slow_down"] and flaky_s3.injected["cut"], flaky_s3.injected
    assert got == want and len(want) > 3
