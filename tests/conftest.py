from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The two pytest-xdist workers share this machine's 2 cores with each other and with the Ray actors of the
# builds: torch's default of a thread per core in a test's own process then spends its time in OpenMP
# barriers (a quarter of test_asd's CPU beside one other busy process). One thread, as the stages' actors
# and the in-process runner give most stages (Stage.thread_count); read when torch is first imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The stage actors' OpenMP threads sleep while they wait (pipeline/ray_actor.py); so do those of the in-process
# builds and model tests here, which share the cores with two other workers: spinning, a stage with two
# threads spent its partner's waits busy (make test here: 19:10 spinning, 17:34 asleep; 2026-12-07)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"
LIGHT_ASD = REPO.parent / "shared" / "models" / "light_asd"
S3_BUCKET = "bucket"  # the bucket the s3 fixture makes


# `make test` runs pytest-xdist workers (`-n auto`: pytest_xdist_auto_num_workers below, three on this 2-core
# machine) with --dist loadgroup: each module is a group of its own (its module fixtures are made once), handed
# out heaviest first (the order below; --no-loadscope-reorder keeps xdist from reordering groups by their
# number of tests) so that no worker is left alone with a long module at the end. test_cluster goes first
# and whole to one worker: its scenarios spend about half their time waiting (simulated nodes coming up,
# planted sleeps), which the other workers' builds fill; with two workers, two scenarios at once left the 2
# cores a third idle for the suite's first 4 minutes (measured 2026-12-06). The Ray builds of data_path and
# long_sources come before the modules that wait on a flaky store (remote_io, remote_out), for the same reason.
# Modules by the wall seconds they took here (2026-12), heaviest first; the rest follow in file order.
HEAVIEST_FIRST = ["test_cluster", "test_face_stages", "test_bad_inputs", "test_video", "test_data_path",
                  "test_long_sources", "test_remote_io", "test_remote_out", "test_export_bya", "test_report",
                  "test_bench", "test_pipeline", "test_training"]


# Memory one worker may hold at its peak: a build (one at a time per worker) with its embedded Ray's object
# store. With three workers on this 24 GB machine, the three heaviest modules (cluster, face_stages,
# bad_inputs) running at once held about 4 GB each; 6 GB leaves a margin.
WORKER_MEMORY = 6 << 30


def _usable_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        text = limit.read_text().strip() if limit.is_file() else "max"
        if text.isdigit():
            total = min(total, int(text))
    return total


def _usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, or its cgroup's CPU quota when that is lower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.is_file():
        limit, _, period = quota.read_text().partition(" ")
        if limit.isdigit() and period.strip().isdigit():
            cores = min(cores, max(1, int(limit) // int(period)))
    return cores


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per core and one more, as many as memory holds (WORKER_MEMORY each), two at least.
    The one more fills the time the others' tests wait (a simulated cluster's nodes starting and dying, a
    flaky store's retries, planted sleeps), which a worker per core leaves idle: on this 2-core machine three
    workers keep the cores 99 % busy where two left them 91 % busy, and four contend for them and take longer.
    PYTEST_XDIST_AUTO_NUM_WORKERS=N sets the number."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return max(2, min(_usable_cores() + 1, _usable_memory() // WORKER_MEMORY))


def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def pytest_itemcollected(item) -> None:
    item.add_marker(pytest.mark.xdist_group(_module(item)))


def pytest_collection_modifyitems(items) -> None:
    rank = {m: i for i, m in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda it: rank.get(_module(it), len(rank)))  # stable: a module's own order is kept


def once(done: Path, make: Callable[[], bytes]) -> bytes:
    """The bytes at ``done``, which ``make`` gives the first process to ask (both xdist workers may): made
    under a lock beside it, written whole or not at all, read by everyone after."""
    from filelock import FileLock

    with FileLock(f"{done}.lock"):
        if not done.is_file():
            tmp = done.with_name(f"{done.name}.tmp")
            tmp.write_bytes(make())
            tmp.replace(done)
    return done.read_bytes()


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> tuple[Path, str]:
    """``make(folder)`` run once per test session, not once per pytest-xdist worker: the first worker to
    ask makes it in the folder the workers share, the others wait and reuse it (a build the two workers
    would each make is minutes of this 2-core machine). What ``make`` returns is kept beside the folder
    when it is a string. Only for things that are the same whoever makes them, and that tests only read."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, under xdist
    folder = root / f"shared-{name}"

    def fill() -> bytes:
        shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way leaves no half folder
        folder.mkdir()
        made = make(folder)
        return (made if isinstance(made, str) else "").encode()

    return folder, once(root / f"shared-{name}.done", fill).decode()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The generated sample videos (with ground truth), made once per test session."""
    from mtcc.sampledata import generate

    return made_once(tmp_path_factory, "samples", lambda d: generate(d, seed=0))[0]


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real fixtures missing: {REAL} (the repo expects ../shared/fixtures/real beside it)")
    return REAL


@pytest.fixture(scope="session")
def tiny_overrides(tmp_path_factory) -> list[str]:
    """Random-initialised models of the real classes (``mtcc models make-tiny``) in the session's own
    folder, included the way the offline profile includes its "@tiny" cache: as the --set that points
    ``models:`` at their models.yaml (only the stages the profile lists get their settings)."""
    from mtcc.pipeline.weights.tiny import write_tiny

    return [f"models={made_once(tmp_path_factory, 'tiny', lambda d: str(write_tiny(d, out=lambda s: None)))[1]}"]


@contextmanager
def embedded_ray() -> Iterator[int]:
    """Our own embedded Ray, never a cluster found on the machine, for as long as the block runs (the one
    already up when there is one); yields the MiB of memory it offers actors."""
    import ray

    from mtcc.pipeline.config import load_config, resolve_config
    from mtcc.pipeline.executor import init_ray

    # started as the offline profile starts it (its object store size), with the memory Ray offers actors on
    # this machine when nothing else runs: by default Ray offers what is free at that moment, which the other
    # xdist workers' builds make vary, and the offline profile's first actors (~11 GiB declared) were refused
    # when it fell below that
    store = load_config(resolve_config("offline"), ["models=null"]).ray.object_store_mb
    memory_mb = (_usable_memory() >> 20) - store
    if ray.is_initialized():
        yield memory_mb
        return
    init_ray("local", num_cpus=2, object_store_mb=store, memory_mb=memory_mb)
    try:
        yield memory_mb
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[int]:
    """An embedded Ray for the module (init costs seconds); the MiB of memory it offers actors. Not one for
    the session: an idle embedded Ray (its raylet, control store, agents and idle workers) costs about 3.7
    CPU-s a minute here, and a worker's Ray modules come first (HEAVIEST_FIRST), so it idled through the
    rest of the session on every xdist worker."""
    with embedded_ray() as memory_mb:
        yield memory_mb


@pytest.fixture(scope="module", autouse=True)
def _no_ray_after_the_module() -> Iterator[None]:
    """Nor does a Ray that a test's own build started (``build(runner="ray")`` without ``ray_local``)
    outlive its module."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# the settings of pipeline_shards' build besides the tiny models (its clip is short: prescore's bound is
# about lip motion that a random-weight pipeline need not pass)
E2E_SETS = ["stages.prescore.reject=false"]


@pytest.fixture(scope="session")
def pipeline_shards(sample_dir, tiny_overrides, tmp_path_factory) -> Path:
    """A sample video through the whole offline pipeline (faces, separation, sync, masks, audio embeddings,
    captions on tiny random models) into a committed shard, built once per session (the trainer and the
    export tests read it, and only read it). The video is cut to its first 2.4 s (one 60-frame clip: the
    masks stage is the slow one on CPU)."""
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config

    def make(tmp: Path) -> str:
        videos = tmp / "videos"
        videos.mkdir()
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample_dir / "two_talk.mp4"), "-t", "2.4",
                        "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", str(videos / "two_talk_2s.mp4")],
                       check=True)
        cfg = load_config(resolve_config("offline"), [*tiny_overrides, *E2E_SETS])
        assert {"masks", "audio_emb", "caption"} <= {s.name for s in cfg.active_stages}
        with embedded_ray():
            res = build(cfg, [str(videos)], tmp / "out", runner="ray", progress=False)
        assert not res.shards_failed, res.shards_failed

    return made_once(tmp_path_factory, "train_e2e", make)[0] / "out"


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free port; s3fs (and any subprocess) reaches it through AWS_ENDPOINT_URL. One per
    session: moto keeps its buckets in process-wide state, so a second server would find the bucket made by
    the first (tests use their own prefixes in it)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(S3_BUCKET)
    yield fs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def copy_inputs(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst


class ClipMemo:
    """What :func:`clips_through_stages` returned for a video, kept on disk for the whole session (both
    xdist workers): a dozen modules run their stages on the same few videos. The clips carry their media as
    members (the cut's workspace is gone once it returns), so a pickled copy is all of it; every caller gets
    copies of its own. A video is known by its path, size and mtime, with the settings of the call."""

    folder: Path | None = None  # the session's (set by the ``clip_memo`` fixture)

    @classmethod
    def get(cls, video: Path, settings: tuple, make: Callable[[], list]) -> list:
        if cls.folder is None:
            return make()
        st = video.stat()
        key = hashlib.sha256(repr((str(video.resolve()), st.st_size, st.st_mtime_ns, settings)).encode()).hexdigest()
        return pickle.loads(once(cls.folder / f"{key[:24]}.pickle", lambda: pickle.dumps(make())))


@pytest.fixture(scope="session", autouse=True)
def clip_memo(tmp_path_factory):
    ClipMemo.folder = made_once(tmp_path_factory, "clips", lambda d: None)[0]
    yield
    ClipMemo.folder = None


def clips_through_stages(video: Path, max_seconds: float, cut: bool = True) -> list:
    """Clip candidates of ``video`` from the real probe -> faces -> segment stages, and (``cut``) with their
    media cut by the real cut stage, as every later stage reads them (once a session: :class:`ClipMemo`)."""
    return ClipMemo.get(video, (max_seconds, cut), lambda: _clips_through_stages(video, max_seconds, cut))


def _clips_through_stages(video: Path, max_seconds: float, cut: bool) -> list:
    from mtcc.stages.base import Candidate
    from mtcc.stages.cut import ClipCut
    from mtcc.stages.faces import FaceTrack
    from mtcc.stages.probe import Probe
    from mtcc.stages.segment import TwoFaceSegments

    batch = [Candidate(key=video.stem, video_id=video.stem, source=str(video), shard=0)]
    stages = [Probe(), FaceTrack(detector="centerface", sample_fps=5), TwoFaceSegments(max_seconds=max_seconds)]
    for stage in stages + ([ClipCut()] if cut else []):
        stage.setup()
        batch = stage.run_batch(batch)
    return [c for c in batch if c.level == "clip"]


def recut(clip, source: Path, out: Path, **options) -> object:
    """``clip`` cut again, by the real cut stage, from a copy of its ``source`` that ffmpeg writes to ``out``
    with ``options`` (a filter changing the picture or the sound, the codecs): the same faces, boxes and
    times over changed pixels or samples, i.e. planted truth."""
    from mtcc.facts import CutMedia
    from mtcc.media.ffmpeg import convert_command, run_tool
    from mtcc.stages.cut import ClipCut

    run_tool(convert_command(source, out, **options), what=str(out))
    c = fresh([clip])[0]
    c.source, c.members = str(out), {}
    c.facts.drop(CutMedia)
    (cut,) = ClipCut().run_batch([c])
    return cut


def tiny_fixture(stage_cls):
    """A module-scoped ``tiny`` fixture: ``stage_cls.make_tiny`` written once into a temporary folder, its
    settings (model path, allow_random_weights) returned."""

    @pytest.fixture(scope="module")
    def tiny(tmp_path_factory) -> dict:
        return stage_cls.make_tiny(tmp_path_factory.mktemp("models"))

    return tiny


def under_other_hash_seeds(code: str, *args: str) -> list:
    """What ``code`` (run as ``python -c code *args``) prints as JSON in two fresh interpreters with different
    seeds of Python's salted string hash: "the same on every run" checked where a salted hash would differ
    (within one process it never does)."""
    out = []
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        out.append(json.loads(run.stdout))
    return out


def ready(stage):
    """``stage`` after its one-time setup (models loaded)."""
    stage.setup()
    return stage


def run_pending(stage, cands: list) -> list:
    """``stage.run_batch`` on fresh copies of ``cands``, every candidate still pending after it."""
    out = stage.run_batch(fresh(cands))
    assert [c.status for c in out] == ["pending"] * len(cands), [c.message for c in out]
    return out


def talk_clips(sample_dir: Path, max_seconds: float, count: int) -> list:
    """two_talk.mp4 through the real probe -> faces -> segment -> cut in clips of at most ``max_seconds``:
    ``count`` of them, every one still pending."""
    out = clips_through_stages(sample_dir / "two_talk.mp4", max_seconds=max_seconds)
    assert len(out) == count and all(c.pending for c in out), [(c.key, c.status, c.message) for c in out]
    return out


def fresh(cands: list) -> list:
    """Copies of module-scoped candidates that a stage may annotate (stats, facts, members) without the
    next test seeing it (facts are frozen: a copy of the map is enough)."""
    from mtcc.stages.base import Candidate

    return [Candidate(**{**c.__dict__, "stats": dict(c.stats), "facts": c.facts.copy(),
                         "members": dict(c.members)}) for c in cands]


def weights_error(stage) -> str:
    """The message of the ``WeightsError`` that ``stage.setup()`` raises (the test fails if none is)."""
    from mtcc.nets.loading import WeightsError

    with pytest.raises(WeightsError) as e:
        stage.setup()
    return str(e.value)


@pytest.fixture(scope="session")
def light_asd_weights() -> Path:
    """The authors' real Light-ASD weights (fine-tuned on TalkSet), shared beside the repo."""
    path = LIGHT_ASD / "finetuning_TalkSet.model"
    if not path.is_file():
        pytest.fail(f"Light-ASD weights missing: {path} (the repo expects ../shared/models/light_asd beside it)")
    return path


@pytest.fixture(scope="session")
def panel_dir(tmp_path_factory) -> Path:
    """The split-screen sample videos (planted panel borders, with ground truth), made once per session."""
    from mtcc.sampledata import generate_panels

    return made_once(tmp_path_factory, "panels", lambda d: generate_panels(d, seed=0))[0]


class ClipCache:
    """Clip candidates of a video by file name (probe -> shots -> faces -> segment -> cut, once a session),
    a copy of its own for every test: stages write into candidates."""

    def __init__(self, dirs: list[Path], max_seconds: float = 10.0):
        self.dirs, self.max_seconds = dirs, max_seconds

    def __getitem__(self, name: str) -> list:
        path = next((d / name for d in self.dirs if (d / name).is_file()), None)
        if path is None:
            raise KeyError(f"{name} in none of {self.dirs}")
        return clips_through_stages(path, self.max_seconds)


@pytest.fixture(scope="session")
def pair_clips(sample_dir, panel_dir, real_dir) -> ClipCache:
    """Clips of the generated fixtures, the planted panels and the real footage, shared by the tests of the
    clip stages (each video's face stages run once per session)."""
    return ClipCache([sample_dir, panel_dir, real_dir])


