"""A dataset build: lock OUT, freeze or load the plan, skip verified shards, stream the rest through
the stages, commit each shard as it completes. An OUT that is an fsspec URL is built in a local staging
folder and every shard published to it as it commits: where the output goes is an ``Out``
(pipeline/out_store.py), the same calls for a folder and a URL."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mtcc.facts import SourceFile
from mtcc.manifests.paths import OutPaths
from mtcc.manifests.report_data import PLAN_STAGE
from mtcc.media.ffmpeg import ffmpeg_version
from mtcc.stages.base import Candidate, MemberLost
from mtcc.stages.model_stage import ModelStage, WeightsStage
from mtcc.storage.files import fsync_dir, fsync_file
from mtcc.storage.remote_io import IOCounts, RemoteIO

from .config import PipelineConfig
from .errors import BuildError, RemoteError
from .executor import Executor, InProcessExecutor, WorkspaceSpec, init_ray, ray_address
from .flow import CapacityLost, Flow, ShardLost
from .inputs import discover, make_plan
from .lock import RunLock
from .out_store import Out, open_out
from .shard import commit_shard, remove_shard, remove_temporaries

PIPELINE_VERSION = "0.1.0"



@dataclass
class BuildResult:
    out: Path | str  # a local folder, or the URL of a remote OUT
    shards_total: int
    shards_skipped: list[int] = field(default_factory=list)
    shards_built: list[int] = field(default_factory=list)
    shards_failed: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0
    startup_s: float = 0.0
    stage_timing: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # bytes of candidates between the driver and the workers before commit (Ray runner; None in-process)
    driver_bytes: dict[str, int] | None = None
    # what the run's remote reads and writes went through (retries by kind, calls given up), all processes
    remote_io: dict[str, Any] = field(default_factory=dict)
    # the Ray pools over time (sizes, changes, the share of the cluster they held); empty in-process
    pools: dict[str, Any] = field(default_factory=dict)
    redone: list[int] = field(default_factory=list)  # shards made again after their members were lost


def versions() -> dict[str, str]:
    out = {"mtcc": PIPELINE_VERSION, "python": platform.python_version(), "ffmpeg": ffmpeg_version()}
    for pkg in ("ray", "pyarrow", "webdataset", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _check_config(layout: OutPaths, cfg: PipelineConfig, force: bool, name: str | None = None) -> None:
    if layout.run_config.exists():
        old = json.loads(layout.run_config.read_text())
        if old.get("config_hash") != cfg.config_hash() and not force:
            old_cfg = old["config"]
            new_cfg = cfg.dump()
            diff = [k for k in sorted(set(_flat(old_cfg)) | set(_flat(new_cfg)))
                    if _flat(old_cfg).get(k) != _flat(new_cfg).get(k) and not k.startswith("ray.")]
            raise BuildError(
                f"{name or layout.root} was built with another config (hash {old.get('config_hash')}, now {cfg.config_hash()}); "
                f"changed: {', '.join(diff[:8]) or '?'}. Rerun with the same config, use a new --output, or pass "
                f"--force to rebuild every shard with the new config")


def _save_config(layout: OutPaths, cfg: PipelineConfig) -> None:
    _write_json_atomic(layout.run_config, {"config_hash": cfg.config_hash(), "config": cfg.dump(),
                                           "stage_order": [s.name for s in cfg.stages]})


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def new_sources(inputs: list[str] | None, rio: RemoteIO, name: str, warn: Callable[[str], None]) -> list[str]:
    """The videos the inputs name, for an OUT with no plan yet (BuildError when there are none)."""
    if not inputs:
        raise BuildError(f"{name} has no plan yet: pass --input")
    disc = discover(inputs, rio)
    for w in disc.warnings:
        warn(w)
    if not disc.sources:
        raise BuildError(f"no videos found in {', '.join(inputs)} (extensions: .mp4 .mkv .avi .mov .webm ...)")
    return disc.sources


def load_or_make_plan(layout: OutPaths, inputs: list[str] | None, videos_per_shard: int,
                      warn: Callable[[str], None], name: str | None = None,
                      rio: RemoteIO | None = None) -> tuple[pa.Table, bool]:
    """(the plan, whether it replaces OUT's frozen plan once the run has started): OUT's plan, checked against
    ``inputs``; a new OUT's plan, written at once (a refused run removes it); or, with ``videos_per_shard``
    changed (--force), the sources regrouped, which ``replace_plan`` writes only when the run starts."""
    rio = rio or RemoteIO()
    name = name or str(layout.root)
    if layout.plan.exists():
        plan = pq.read_table(layout.plan)
        if inputs:
            disc = discover(inputs, rio)
            planned = set(plan.column("source").to_pylist())
            now = set(disc.sources)
            if planned != now:
                raise BuildError(
                    f"{name} has a plan frozen from other inputs ({len(now - planned)} new, "
                    f"{len(planned - now)} gone); resume with the same --input, or use a new --output")
        grouping = (plan.schema.metadata or {}).get(b"videos_per_shard", b"0")
        if int(grouping) == videos_per_shard:
            return plan, False
        # only reachable with --force (the grouping is part of the config hash): every shard changes, but
        # nothing is replaced until the run has started (``replace_plan``): a refused run changes nothing
        warn(f"run.videos_per_shard changed ({grouping.decode()} -> {videos_per_shard}): replanning all shards")
        return regrouped(plan.column("source").to_pylist(), videos_per_shard, rio), True
    plan = regrouped(new_sources(inputs, rio, name, warn), videos_per_shard, rio)
    write_plan(layout, plan)
    return plan, False


def regrouped(sources: list[str], videos_per_shard: int, rio: RemoteIO) -> pa.Table:
    plan = make_plan(sources, videos_per_shard, rio)
    return plan.replace_schema_metadata({"videos_per_shard": str(videos_per_shard)})


def replace_plan(layout: OutPaths, plan: pa.Table) -> None:
    """A regrouped plan takes the place of the old one, whose shards all go (commits first)."""
    for d in ("commits", "shards", "manifests"):
        for p in sorted((layout.root / d).glob("*")):
            p.unlink()
    write_plan(layout, plan)


def write_plan(layout: OutPaths, plan: pa.Table) -> None:
    tmp = layout.temp(layout.plan)
    pq.write_table(plan, tmp)
    fsync_file(tmp)
    os.replace(tmp, layout.plan)
    fsync_dir(layout.root)


HEALTH_EVERY_S = 5.0  # how often a Ray build checks that the cluster can still hold its actors


def workspace_spec(cfg: PipelineConfig, layout: OutPaths) -> WorkspaceSpec:
    """Each node's folder for this build's fetched sources and cut clips: one per OUT (a local OUT by its path,
    a URL OUT by its staging folder, which is per URL) under ``run.work_dir``, by default the user's cache. Per
    OUT even in a given work_dir: a run empties its folder at its start and end, and two builds sharing one
    profile's work_dir must not empty each other's."""
    if cfg.run.work_dir:
        base = Path(cfg.run.work_dir).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mtcc" / "work"
    root = base / hashlib.sha256(str(layout.root).encode()).hexdigest()[:16]
    return WorkspaceSpec(str(root.absolute()), int(cfg.run.source_cache_gb * 2**30), cfg.run.remote)


def random_weight_stages(cfg: PipelineConfig) -> list[str]:
    """Stages that are allowed random weights and are pointed at weights `models make-tiny` wrote (a stage
    given real weights over a tiny profile, `--set stages.asd.model=...`, is not named)."""
    from mtcc.nets.loading import random_marker

    def random(s: ModelStage) -> bool:
        if not s.model:
            return True  # whatever the stage falls back to, the config allowed random weights for it
        path = Path(s.model).expanduser()
        return path.exists() and random_marker(path) is not None

    return [s.name for s in cfg.active_stages if isinstance(s, ModelStage) and s.allow_random_weights and random(s)]


def model_ids(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Per model stage: the weights it was configured with (hub id or path) and the pinned revision
    (``org/name@rev``); every sample's meta carries this so a dataset says which models made it."""
    out: dict[str, dict[str, Any]] = {}
    for s in cfg.active_stages:
        if isinstance(s, WeightsStage) and s.model:
            repo, _, rev = s.model.partition("@")
            out[s.name] = {"model": repo, "revision": rev or None,
                           "allow_random_weights": isinstance(s, ModelStage) and s.allow_random_weights}
    return out


def plan_by_shard(plan: pa.Table) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in plan.to_pylist():
        out.setdefault(r["shard"], []).append(r)
    return out


def shard_candidates(rows: list[dict[str, Any]], sources: dict[str, str]) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates for the stages, candidates already decided by the plan) of one shard's plan rows."""
    todo, done = [], []
    for r in rows:
        c = Candidate(key=r["video_id"], video_id=r["video_id"], source=r["source"], shard=r["shard"])
        c.put(SourceFile(r["fingerprint"], r["size"]))
        if r["duplicate_of"]:
            c.reject(PLAN_STAGE, "duplicate",
                     f"same content as {sources.get(r['duplicate_of'])} ({r['duplicate_of']}); planned once")
            done.append(c)
        else:
            todo.append(c)
    return todo, done


def build(cfg: PipelineConfig, inputs: list[str] | None, out: str | Path, *, runner: str = "ray",
          address: str | None = None, force: bool = False, progress: bool = True,
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
          staging: str | Path | None = None) -> BuildResult:
    """Build (or resume) OUT: a local folder, or any fsspec URL (then built in ``staging``, by default a
    cache folder of this URL, and published shard by shard)."""
    t0 = time.monotonic()
    rio = RemoteIO(cfg.run.remote)  # the driver's: planning's reads and every write to a remote OUT
    try:
        store = open_out(out, rio, staging)
        root, lock_path = store.layout.root, store.layout.lock
        had_root, had_lock = root.exists(), lock_path.exists()
        store.prepare()
        with RunLock(lock_path) as lock, ExitStack() as stack:
            if lock.took_over:
                log(f"taking over a stale lock of pid {lock.took_over.get('pid')} on {lock.took_over.get('host')}")
            made_plan = False
            try:
                store.enter(stack, log)
                made_plan = not store.layout.plan.exists()
                result = _build_locked(cfg, inputs, store, runner=runner, address=address, force=force,
                                       progress=progress, log=log, rio=rio)
            except BaseException:
                # refused before the config was saved (planning, or the stages' start): OUT as it was found
                if not store.layout.run_config.exists() and (made_plan or not store.layout.plan.exists()):
                    _undo_refused(store.layout, lock_path, had_root, had_lock)
                raise
    except RemoteError as e:
        raise BuildError(str(e)) from e
    result.wall_s = time.monotonic() - t0
    return result


def _undo_refused(layout: OutPaths, lock_path: Path, had_root: bool, had_lock: bool) -> None:
    """A run refused before it saved its config (a bad input, stages that could not start) leaves OUT as it
    found it: the plan it made and its empty folders go, the lock file it made goes (while still held, so no
    other run is let in by it), and the folder too when this run made it and nothing else is in it."""
    layout.plan.unlink(missing_ok=True)
    for d in layout.dirs():
        try:
            d.rmdir()
        except OSError:
            pass  # not there, or not empty: not this refused run's to remove
    if not had_lock:
        lock_path.unlink(missing_ok=True)
    if not had_root:
        try:
            layout.root.rmdir()
        except OSError:
            pass  # something else is in it now (another run's files): not ours to remove


def _build_locked(cfg: PipelineConfig, inputs: list[str] | None, store: Out, *, runner: str, address: str | None,
                  force: bool, progress: bool, log: Callable[[str], None], rio: RemoteIO) -> BuildResult:
    t0 = time.monotonic()
    layout, name = store.layout, store.name
    _check_config(layout, cfg, force, name)
    plan, replan = load_or_make_plan(layout, inputs, cfg.run.videos_per_shard, log, name, rio)
    for p in remove_temporaries(layout):
        log(f"removed leftover {p.relative_to(layout.root)}")
    for d in layout.dirs():
        d.mkdir(exist_ok=True)
    shards = sorted(set(plan.column("shard").to_pylist()))
    result = BuildResult(store.location, len(shards))
    todo = store.todo(shards, cfg.config_hash(), result, log)
    executor = None
    if todo:
        t_start = time.monotonic()
        executor = _start_executor(cfg, runner, address, workspace_spec(cfg, layout), log)
        result.startup_s = time.monotonic() - t_start  # Ray init + actors set up: a fixed cost per run
    # only once the plan is settled and the stages started: a refused run changes nothing
    try:
        if replan:
            replace_plan(layout, plan)
        _save_config(layout, cfg)
        store.plan_ready(log)
        store.clear(result, log)
    except BaseException:
        if executor is not None:
            executor.shutdown()
        raise
    workers_io = []
    if executor is not None:
        workers_io = _run_shards(cfg, plan, layout, todo, result, executor, progress=progress, log=log,
                                 publish=store.publisher(result, log))
    result.wall_s = time.monotonic() - t0
    result.remote_io = IOCounts.merge([rio.counts.snapshot(), *workers_io])
    if result.remote_io["retries"] or result.remote_io["gave_up"]:
        log(f"remote I/O: {result.remote_io['retries']} retries, {result.remote_io['gave_up']} call(s) given up "
            f"({', '.join(f'{k} {v}' for k, v in result.remote_io['retries_by_kind'].items())})")
    rescans = {k: t["rescans"] for k, t in result.stage_timing.items() if t.get("rescans")}
    if rescans:  # the parallel scan of a long source fell back to one worker: a straggler the user should know of
        log(f"long sources done whole because their parts did not join: "
            f"{', '.join(f'{k} {n}' for k, n in rescans.items())}")
    last_run = layout.root / "report" / "last_run.json"
    _write_json_atomic(last_run, {
        "runner": runner, "wall_s": round(result.wall_s, 3), "startup_s": round(result.startup_s, 3),
        "built": result.shards_built,
        "skipped": result.shards_skipped, "failed": result.shards_failed, "stage_timing": result.stage_timing,
        "remote_io": result.remote_io, "pools": result.pools, "redone": result.redone,
    })
    # the report refresh runs still under the run lock, so it sees this run's commits; a report is a view,
    # never a reason to fail a build that committed its shards
    try:
        store.report(last_run, log)
    except Exception as e:  # noqa: BLE001 - any report bug must stay a warning
        msg = f"report not updated: {type(e).__name__}: {e} (rerun `mtcc report {name}`)"
        result.warnings.append(msg)
        log(f"WARNING: {msg}")
    return result


def _run_shards(cfg: PipelineConfig, plan: pa.Table, layout: OutPaths, todo: list[int], result: BuildResult,
                executor: Executor, *, progress: bool, log: Callable[[str], None],
                publish: Callable[[int], bool] | None = None) -> list[dict[str, dict[str, int]]]:
    """Stream the shards ``todo`` through the stages of the started ``executor`` and commit (and publish)
    each; what the workers' remote reads went through, one snapshot per worker."""
    stages = cfg.active_stages
    run_info = {"config_hash": cfg.config_hash(), "pipeline_version": PIPELINE_VERSION, "versions": versions(),
                "profile": cfg.profile, "models": model_ids(cfg)}
    random = random_weight_stages(cfg)
    if random:
        log(f"WARNING: stages {', '.join(random)} may run on RANDOM weights (allow_random_weights: true); "
            f"their outputs are plumbing, not data. Every affected sample's meta says so.")

    from tqdm import tqdm

    rows = plan_by_shard(plan)
    sources = dict(zip(plan.column("video_id").to_pylist(), plan.column("source").to_pylist()))
    n_inputs = sum(len(rows[s]) for s in todo)
    bar = tqdm(total=len(todo), desc="shards", unit="shard", disable=not progress, file=sys.stderr)
    counts = {"inputs": n_inputs, "videos": 0, "clips": 0, "kept": 0, "samples": 0}

    def on_progress(c: Candidate) -> None:
        if c.level == "clip":
            counts["clips"] += 1
            counts["kept"] += c.status == "kept"
        else:
            counts["videos"] += 1
        # shown at once: a shard of many long videos moves its bar only when all are through
        bar.set_postfix_str(progress_text(counts, flow, executor), refresh=True)

    def on_done(shard: int, cands: list[Candidate]) -> None:
        try:
            try:
                executor.resolve([c for c in cands if c.status == "kept"])
            except MemberLost as e:
                raise ShardLost({shard}, str(e)) from e
            commit = commit_shard(layout, shard, cands, stages, run_info)
        except OSError as e:
            result.shards_failed[shard] = f"commit failed: {e}"
            remove_shard(layout, shard)
            log(f"shard {shard:06d}: commit failed ({e}); it will be redone by the next run")
            return
        if publish is not None and not publish(shard):
            return
        result.shards_built.append(shard)
        counts["samples"] += commit["samples"]
        bar.set_postfix_str(progress_text(counts, flow, executor), refresh=False)
        bar.update(1)

    def on_redo(shard: int, why: str) -> None:
        result.redone.append(shard)
        log(f"shard {shard:06d}: {why}; making it again from its inputs")

    flow = Flow(stages, executor, on_done, cfg.run.max_batch_retries, on_progress=on_progress,
                max_clips_in_flight=cfg.run.max_clips_in_flight,
                replan=lambda shard: shard_candidates(rows[shard], sources), on_redo=on_redo)
    try:
        _drive(cfg, flow, executor, list(todo), lambda s: shard_candidates(rows[s], sources), result, log,
               lambda: bar.set_postfix_str(progress_text(counts, flow, executor), refresh=True))
        workers_io = executor.io_counts()
        summary = getattr(executor, "pools_summary", None)
        result.pools = summary() if summary is not None else {}
    finally:
        executor.shutdown()
        bar.close()
    result.stage_timing = {k: vars(v) for k, v in flow.timing.items()}
    result.driver_bytes = executor.driver_bytes
    log(f"{len(result.shards_built)} shards built from {n_inputs} inputs")
    return workers_io


def _start_executor(cfg: PipelineConfig, runner: str, address: str | None, work: WorkspaceSpec,
                    log: Callable[[str], None]) -> Executor:
    """The executor of ``runner``, its stages set up (on Ray: the cluster joined, every pool started)."""
    stages = cfg.active_stages
    if runner == "ray":
        from .ray_executor import RayExecutor

        _, where = ray_address(address or cfg.ray.address)
        resources = init_ray(address or cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_mb, cfg.ray.log_level,
                             cfg.ray.memory_mb)
        log(f"ray: {where}: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
        executor: Executor = RayExecutor(stages, work, log=log)
        log(f"pools: {' '.join(f'{k}={v}' for k, v in executor.pool_sizes().items())}")
        return executor
    if runner == "inprocess":
        return InProcessExecutor(stages, work)
    raise BuildError(f"unknown runner {runner!r}; allowed: ray, inprocess")


def _drive(cfg: PipelineConfig, flow: Flow, executor: Executor, pending: list[int],
           candidates: Callable[[int], tuple[list[Candidate], list[Candidate]]], result: BuildResult,
           log: Callable[[str], None], refresh: Callable[[], None]) -> None:
    """Feed the shards ``pending`` to ``flow`` (``run.max_shards_in_flight`` at a time) and step it until
    all are through, checking the cluster's health and rebalancing the pools on the way. A lost cluster or
    an OUT that stopped taking shards ends the run: every shard not committed is named failed."""
    next_health = time.monotonic() + HEALTH_EVERY_S
    rebalance = getattr(executor, "rebalance", None)
    next_rebalance = time.monotonic() + cfg.run.rebalance_s
    while True:
        while pending and flow.open_shards < cfg.run.max_shards_in_flight:
            s = pending.pop(0)
            flow.add_shard(s, *candidates(s))
        flow.more_coming = bool(pending)
        lost = None
        try:
            if not flow.step(timeout=0.5) and not pending and flow.open_shards == 0:
                return
        except CapacityLost as e:
            lost = f"{e}; rerun when the cluster is back"
        except RemoteError as e:  # a publish failed for good (see OutURL.publisher): OUT takes nothing more
            lost = f"OUT stopped taking shards ({e}); rerun the same command to resume"
        if not lost and time.monotonic() >= next_health:
            next_health = time.monotonic() + HEALTH_EVERY_S
            lost = executor.capacity_lost()
            lost = lost and f"{lost}; rerun when the cluster is back"
            refresh()
        if not lost and rebalance is not None and time.monotonic() >= next_rebalance:
            next_rebalance = time.monotonic() + cfg.run.rebalance_s
            rebalance(flow.loads())
        if lost:
            # nothing of an unfinished shard was committed: name them all, the rerun redoes them
            for s in [*flow.outstanding, *pending]:
                result.shards_failed[s] = lost
            log(f"stopping: {lost}; {len(result.shards_failed)} shard(s) not built")
            return


def progress_text(counts: dict[str, int], flow: Flow, executor: Executor) -> str:
    """The progress line's tail, moving with every candidate: videos through (split into clips or rejected) of
    the run's, clips through and kept, samples committed, then per stage with work: its pool's actors (Ray),
    what waits for it (queued candidates and batches in its actors) and its rate, seconds of media taken in
    per second of the run (``faces 3a q5 2.4x``)."""
    sizes = getattr(executor, "pool_sizes", lambda: {})()
    elapsed = max(time.monotonic() - flow.started, 1e-6)
    parts = [f"videos {counts['videos']}/{counts['inputs']}", f"clips {counts['clips']} ({counts['kept']} kept)",
             f"{counts['samples']} samples"]
    for load_name, load in flow.loads().items():
        if load.done and not load.queued and not load.inflight:
            continue
        pool = f"{sizes[load_name]}a " if load_name in sizes else ""
        parts.append(f"{load_name} {pool}q{load.queued + load.inflight} {load.media_in / elapsed:.1f}x")
    return " | ".join(parts)
