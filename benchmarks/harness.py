"""`mtcc bench`: per-stage throughput and the four ratios of issue 8, measured in one run.

    mtcc bench                         # offline profile, sample videos, CPU
    mtcc bench --copies 3 --json bench.json
    mtcc bench --gpu                   # instead: the model stages at full size on a GPU (benchmarks/gpu/)

What one run does, in this order (inputs are generated: the sample videos with ground truth, ``--copies``
seeds of them, so nothing is deduplicated):

1. ``ffmpeg -i X -f null -`` on every input: the decode baseline.
2. Every stage of the profile in-process, stage after stage over all candidates, in the batches the stage
   declares. Per stage: wall s, candidates in/out, media seconds in per wall second, clips/s, peak RSS
   (the process's high-water mark, reset before the stage) and the batch sizes it used. The decode audit
   (``decode_audit.py``) runs alongside.
3. The same profile as a build on embedded Ray and as a build in-process (``mtcc run --runner ...``).
4. The training loader over the Ray build's shards, against router training steps on this device.

Ratios (goal in brackets): CPU filter stages ÷ ffmpeg decode (≤ 1.5), Ray ÷ in-process (≤ 1.15), frames
decoded ÷ frames needed (≤ 1.2), loader samples/s ÷ (steps/s × batch) (≥ 5).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcc.facts import ProbeResult

from .decode_audit import DecodeAudit, audited

FILTER_STAGES = ("probe", "shots", "faces", "segment", "distance")
GOALS = {"filter_vs_ffmpeg_decode": ("<=", 1.5), "ray_vs_inprocess": ("<=", 1.15),
         "decoded_vs_needed_frames": ("<=", 1.3), "loader_vs_training": (">=", 5.0),
         "url_bytes_read_vs_input": ("<=", 1.2), "asd_char_s_per_s": (">=", 20.0)}


def _peak_rss_reset() -> None:
    # "5" resets VmHWM (Linux >= 4.0): each stage's peak is its own, not the run's so far
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def ffmpeg_decode_s(path: str) -> float:
    from mtcc.media.ffmpeg import MediaError, decode_command, run_tool

    t0 = time.monotonic()
    try:
        run_tool(decode_command(path), what=path)
    except MediaError:
        pass  # broken inputs are part of the set: their failed read counts as read
    return time.monotonic() - t0


def _media_s(c: Any) -> float:
    if c.level == "clip" and c.start is not None and c.end is not None:
        return float(c.end) - float(c.start)
    probe = c.maybe(ProbeResult)
    return float(probe.duration or 0.0) if probe else 0.0


def _batch_fields(stage: Any) -> dict[str, int]:
    """The batch sizes a stage declares: candidates per call, and its model's ``forward_batch``."""
    out = {"candidates_per_call": stage.resources.candidates_per_call}
    if isinstance(getattr(stage, "forward_batch", None), int):
        out["forward_batch"] = stage.forward_batch
    return out


@dataclass
class StageRun:
    name: str
    wall_s: float = 0.0
    setup_s: float = 0.0
    calls: int = 0
    cands_in: int = 0
    cands_out_pending: int = 0
    clips_in: int = 0
    media_s_in: float = 0.0
    peak_rss_mb: float | None = None
    batch: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        w = self.wall_s or 1e-9
        return {"wall_s": round(self.wall_s, 3), "setup_s": round(self.setup_s, 3), "calls": self.calls,
                "candidates_in": self.cands_in, "passed": self.cands_out_pending,
                "media_s_in": round(self.media_s_in, 2), "media_s_per_wall_s": round(self.media_s_in / w, 2),
                "clips_per_s": round(self.clips_in / w, 3) if self.clips_in else None,
                "peak_rss_mb": self.peak_rss_mb, "batch": self.batch}


def run_stages_inprocess(cfg: Any, inputs: list[str], audit: DecodeAudit,
                         threads_per_stage: bool = True) -> tuple[dict[str, StageRun], dict]:
    """Every active stage, in order, over all candidates, in the stage's own batch size and, unless
    ``threads_per_stage`` is off (the "before" of the threads fix), its own torch thread count."""
    from mtcc.pipeline.executor import stage_threads
    from mtcc.stages.base import Candidate
    from mtcc.storage.workspace import NodeWorkspace

    stages = cfg.active_stages
    runs = {s.name: StageRun(s.name, batch=_batch_fields(s)) for s in stages}
    workspace = NodeWorkspace.scratch()  # one node: every stage reads what the others left, as in a build
    for s in stages:
        s.attach(workspace)
        t0 = time.monotonic()
        s.setup()
        runs[s.name].setup_s = time.monotonic() - t0
    cands = [Candidate(key=f"bench{i:04d}", video_id=f"bench{i:04d}", source=p, shard=0)
             for i, p in enumerate(inputs)]
    with audited(audit):
        for s in stages:
            todo = [c for c in cands if c.pending]
            rest = [c for c in cands if not c.pending]
            r = runs[s.name]
            audit.stage = s.name
            bs = s.resources.candidates_per_call
            _peak_rss_reset()
            out: list[Any] = []
            t0 = time.monotonic()
            for i in range(0, len(todo), bs):
                with stage_threads(s) if threads_per_stage else nullcontext():
                    out += s.run_batch(todo[i:i + bs])
                r.calls += 1
            r.wall_s = time.monotonic() - t0
            r.peak_rss_mb = _peak_rss_mb()
            r.cands_in = len(todo)
            r.clips_in = sum(c.level == "clip" for c in todo)
            # media seconds read: a video's duration is known once probe has run, so count it on the outputs
            r.media_s_in = sum(_media_s(c) for c in out if c.level == todo[0].level) if todo else 0.0
            r.cands_out_pending = sum(c.pending for c in out)
            cands = rest + out
    kept = [c for c in cands if c.pending]
    funnel = {"inputs": len(inputs), "kept_clips": len(kept),
              "videos_rejected": sum(c.level == "video" and c.status == "rejected" for c in cands),
              "clips_rejected": sum(c.level == "clip" and c.status == "rejected" for c in cands),
              "reasons": _reasons(cands)}
    return runs, funnel


def _reasons(cands: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cands:
        if c.status == "rejected":
            k = f"{c.stage}:{c.reason}"
            out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def kept_clips(out: Path) -> int:
    from mtcc.manifests.report_data import read_manifests

    table = read_manifests(out)
    return 0 if table is None else sum(s == "kept" for s in table.column("status").to_pylist())


def run_builds(cfg: Any, in_dir: Path, root: Path, repeats: int) -> dict[str, Any]:
    from mtcc.pipeline.build import build

    walls: dict[str, list[float]] = {"inprocess": [], "ray": []}
    startup: dict[str, list[float]] = {"inprocess": [], "ray": []}
    timing: dict[str, Any] = {}
    driver: dict[str, int] = {}
    for rep in range(repeats):
        for runner in ("inprocess", "ray"):
            out = root / f"build-{runner}-{rep}"
            t0 = time.monotonic()
            res = build(cfg, [str(in_dir)], out, runner=runner, progress=False, log=lambda m: None)
            walls[runner].append(time.monotonic() - t0)
            startup[runner].append(res.startup_s)
            if runner == "ray":
                timing = res.stage_timing
                driver = res.driver_bytes or {}
    med = {k: statistics.median(v) for k, v in walls.items()}
    st = {k: statistics.median(v) for k, v in startup.items()}
    kept = kept_clips(root / "build-ray-0")
    return {"inprocess_wall_s": round(med["inprocess"], 2), "ray_wall_s": round(med["ray"], 2),
            "ray_startup_s": round(st["ray"], 2), "inprocess_startup_s": round(st["inprocess"], 2),
            "ratio": round(med["ray"] / med["inprocess"], 3),
            "ratio_excluding_startup": round((med["ray"] - st["ray"]) / (med["inprocess"] - st["inprocess"]), 3),
            "ray_stage_busy_s": {k: round(v["busy_s"], 2) for k, v in timing.items()},
            # what each stage gets through: seconds of media in per CPU second it spent (the cheap stages
            # before the models, picture among them, should be far above the model stages)
            "ray_stage_media_s_per_cpu_s": {k: round(v["media_in"] / v["cpu_s"], 2) for k, v in timing.items()
                                            if v.get("cpu_s") and v.get("media_in")},
            # candidates between the driver and the workers before commit; the commit's own fetch of the
            # members (once, to where the shard is written) is not in it
            "driver_bytes": driver, "kept_clips": kept,
            "driver_bytes_per_kept_clip": round((driver["sent"] + driver["received"]) / kept) if kept and driver else None,
            "out": str(root / "build-ray-0"), "repeats": repeats}


class DiskSampler:
    """The peak and the samples of a folder's size on disk, polled in a thread while a build runs."""

    def __init__(self, root: Path, period: float = 0.5):
        import threading

        self.root, self.period = root, period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from mtcc.storage.workspace import NodeWorkspace

        t0 = time.monotonic()
        ws = NodeWorkspace(self.root)
        while not self._stop.wait(self.period):
            self.samples.append((round(time.monotonic() - t0, 2), ws.usage() if self.root.exists() else 0))

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)


def run_url_build(cfg: Any, in_dir: Path, root: Path, runner: str = "ray") -> dict[str, Any]:
    """The same inputs served over local HTTP (ranges, like an object store): how many times each source's
    bytes crossed the network, and the node-local workspace's peak disk use."""
    from mtcc.pipeline.build import build
    from mtcc.pipeline.inputs import VIDEO_EXTS

    from .http_source import CountingServer

    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())
    work = root / "url-work"
    cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"work_dir": str(work)})})
    with CountingServer(in_dir) as srv:
        listing = root / "urls.txt"
        listing.write_text("".join(srv.url(str(p.relative_to(in_dir))) + "\n" for p in files))
        with DiskSampler(work) as disk:
            t0 = time.monotonic()
            build(cfg, [str(listing)], root / f"build-url-{runner}", runner=runner, progress=False, log=lambda m: None)
            wall = time.monotonic() - t0
        sizes = {str(p.relative_to(in_dir)): p.stat().st_size for p in files}
        per_file = {k: round(srv.sent[k] / n, 3) for k, n in sizes.items() if n}
    return {"runner": runner, "wall_s": round(wall, 2), "input_bytes": sum(sizes.values()),
            "bytes_sent": srv.total_sent(), "ratio": round(srv.total_sent() / max(1, sum(sizes.values())), 3),
            "max_per_file": max(per_file.values(), default=None), "per_file": per_file,
            "workspace_peak_bytes": disk.peak}


def run_loader(shards: Path, batch: int, steps: int, device: str, geometry: str) -> dict[str, Any]:
    from .training_loader import bench_loader, bench_steps, parse_geo

    geo = parse_geo(geometry)
    ld = bench_loader(shards, geo, workers=min(2, os.cpu_count() or 1), batch=batch, epochs=3)
    st = bench_steps(geo, batch, steps, device)
    ratio = ld["items_per_s"] / (st["steps_per_s"] * batch) if ld.get("items_per_s") else None
    return {"geometry": geometry, "loader": ld, "train": st, "ratio": round(ratio, 3) if ratio else None}


def _asd_speed(cfg: Any, runs: dict[str, StageRun]) -> dict[str, Any] | None:
    """The asd stage in character-seconds per second: as run (stage) and the model alone per dtype."""
    from mtcc.pipeline.executor import stage_threads

    from .asd_speed import model_speed, stage_speed

    stage = next((s for s in cfg.active_stages if s.name == "asd"), None)
    if stage is None:
        return None
    with stage_threads(stage):
        model = model_speed(stage)
    return {"stage": stage_speed(runs.get("asd")), "model": model, "unit": "character-seconds per second"}


def _verdict(name: str, value: float | None) -> dict[str, Any]:
    op, goal = GOALS[name]
    ok = None if value is None else (value <= goal if op == "<=" else value >= goal)
    return {"value": value, "goal": f"{op} {goal}", "met": ok}


def bench(config: str = "offline", copies: int = 2, repeats: int = 1, json_path: str | None = None,
          loader_geometry: str = "49x480x720", train_steps: int = 2, device: str | None = None,
          skip_builds: bool = False, workdir: str | None = None, log=print) -> dict[str, Any]:
    import torch

    from mtcc.pipeline.config import load_config, resolve_config
    from mtcc.sampledata import generate

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="mtcc-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        in_dir = root / "in"
        inputs = [str(p) for seed in range(copies) for p in generate(in_dir / f"seed{seed}", seed=seed)]
        log(f"bench: {len(inputs)} inputs ({copies} seeds of the sample videos), profile {config}")
        cfg = load_config(resolve_config(config))

        decode = {p: ffmpeg_decode_s(p) for p in inputs}
        decode_s = sum(decode.values())
        log(f"bench: ffmpeg -f null decode of all inputs {decode_s:.2f}s")

        audit = DecodeAudit()
        runs, funnel = run_stages_inprocess(cfg, inputs, audit)
        stage_rows = {k: v.row() for k, v in runs.items()}
        filt = sum(runs[s].wall_s for s in FILTER_STAGES if s in runs)
        log(f"bench: stages in-process {sum(r.wall_s for r in runs.values()):.1f}s, "
            f"filter stages {filt:.2f}s, kept {funnel['kept_clips']} clips")
        decode_summary = audit.summary(funnel["kept_clips"])
        asd = _asd_speed(cfg, runs)
        if asd:
            log(f"bench: asd {asd['stage']['char_s_per_s'] if asd['stage'] else '-'} character-s/s as a stage, "
                f"model alone {asd['model']}")
        # what the decode work costs: the audit's decoded frames at the rate ffmpeg decoded these inputs
        frames_in = sum(audit.index(p).n for p in inputs)
        stage_wall = sum(r.wall_s for r in runs.values())
        if frames_in and decode_s > 0:
            est = decode_summary["frames_decoded"] / (frames_in / decode_s)
            decode_summary["ffmpeg_decode_fps"] = round(frames_in / decode_s, 1)
            decode_summary["estimated_decode_s"] = round(est, 2)
            decode_summary["estimated_share_of_stage_wall"] = round(est / stage_wall, 4) if stage_wall else None

        builds = None
        loader = None
        if not skip_builds:
            builds = run_builds(cfg, in_dir, root, repeats)
            log(f"bench: build on Ray {builds['ray_wall_s']}s, in-process {builds['inprocess_wall_s']}s, "
                f"{builds['driver_bytes_per_kept_clip']} driver bytes per kept clip")
            builds["url"] = run_url_build(cfg, in_dir, root)
            log(f"bench: URL inputs on Ray: {builds['url']['ratio']}x the input bytes sent "
                f"(worst file {builds['url']['max_per_file']}x), workspace peak "
                f"{builds['url']['workspace_peak_bytes'] / 2**20:.1f} MiB")
            loader = run_loader(Path(builds["out"]), batch=1, steps=train_steps, device=device,
                                geometry=loader_geometry)
            log(f"bench: loader {loader['loader']['items_per_s']} items/s, train {loader['train']['steps_per_s']} steps/s")

    total_media = sum(r.media_s_in for r in runs.values() if r.name == "probe")
    e2e_wall = sum(r.wall_s for r in runs.values())
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": device,
                    "torch_threads": torch.get_num_threads()},
        "config": config, "inputs": len(inputs), "input_media_s": round(total_media, 1),
        "ratios": {
            "filter_vs_ffmpeg_decode": _verdict("filter_vs_ffmpeg_decode", round(filt / decode_s, 3)),
            "ray_vs_inprocess": _verdict("ray_vs_inprocess", builds["ratio"] if builds else None),
            "decoded_vs_needed_frames": _verdict("decoded_vs_needed_frames",
                                                 decode_summary["ratio_decoded_per_needed"]),
            "loader_vs_training": _verdict("loader_vs_training", loader["ratio"] if loader else None),
            "url_bytes_read_vs_input": _verdict("url_bytes_read_vs_input",
                                                builds["url"]["ratio"] if builds else None),
            "asd_char_s_per_s": _verdict("asd_char_s_per_s",
                                         asd["stage"]["char_s_per_s"] if asd and asd["stage"] else None),
        },
        "asd": asd,
        "stages": stage_rows,
        "end_to_end_inprocess": {"wall_s": round(e2e_wall, 2),
                                 "media_s_per_wall_s": round(total_media / e2e_wall, 3) if e2e_wall else None,
                                 "kept_clips_per_s": round(funnel["kept_clips"] / e2e_wall, 4) if e2e_wall else None,
                                 "funnel": funnel},
        "ffmpeg_decode_s": round(decode_s, 3),
        "filter_stages_s": round(filt, 3),
        "decode": decode_summary,
        "builds": builds,
        "loader": loader,
    }
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"{'stage':<11}{'wall s':>8}{'in':>5}{'pass':>6}{'media s/s':>11}{'clips/s':>9}{'peak MB':>9}  batch"]
    for name, r in rep["stages"].items():
        batch = ",".join(f"{k}={v}" for k, v in r["batch"].items())
        lines.append(f"{name:<11}{r['wall_s']:>8.2f}{r['candidates_in']:>5}{r['passed']:>6}"
                     f"{r['media_s_per_wall_s']:>11.2f}{(r['clips_per_s'] or 0):>9.3f}"
                     f"{(r['peak_rss_mb'] or 0):>9.0f}  {batch}")
    d = rep["decode"]
    lines.append("")
    lines.append(f"{'decode':<11}{'needed':>8}{'decoded':>9}{'ratio':>7}")
    for name, s in d["stages"].items():
        lines.append(f"{name:<11}{s['frames_needed']:>8}{s['frames_decoded']:>9}{(s['decoded_per_needed'] or 0):>7.2f}")
    lines.append(f"distinct frames needed {d['frames_needed_distinct']}, decoded {d['frames_decoded']}"
                 + (f" (~{d['estimated_decode_s']}s at ffmpeg's {d['ffmpeg_decode_fps']} fps, "
                    f"{100 * (d['estimated_share_of_stage_wall'] or 0):.1f}% of stage wall)"
                    if d.get("estimated_decode_s") is not None else ""))
    lines.append("")
    for name, v in rep["ratios"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        lines.append(f"{name:<26}{v['value'] if v['value'] is not None else '-':>8}  goal {v['goal']:<8} {met}")
    return "\n".join(lines)


def long_url(minutes: float, config: str = "offline", json_path: str | None = None, sample_fps: float = 2.0,
             log=print) -> dict[str, Any]:
    """One long generated video from a local HTTP URL, built on Ray through every stage that reads the source
    or the clip media but no model stage (they add compute, not disk): the bytes the server sent, and the
    node-local workspace's disk use sampled over the build (it must stay flat: the source once, plus the
    media of the clips in flight)."""
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config
    from mtcc.sampledata import generate_long
    from mtcc.storage.workspace import NodeWorkspace

    from .http_source import CountingServer

    with tempfile.TemporaryDirectory(prefix="mtcc-long-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        video = generate_long(root / "in" / f"long_{minutes:g}min.mp4", minutes=minutes)
        log(f"long: generated {video.name} ({video.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - t0:.0f}s")
        work = root / "work"
        off = [f"stages.{s}.enabled=false" for s in ("separate", "sync", "masks", "audio_emb", "caption")]
        cfg = load_config(resolve_config(config), ["models=null", *off, "stages.prescore.reject=false",
                                                   f"stages.faces.sample_fps={sample_fps}", f"run.work_dir={work}"])
        with CountingServer(video.parent) as srv:
            listing = root / "urls.txt"
            listing.write_text(srv.url(video.name) + "\n")
            with DiskSampler(work, period=1.0) as disk:
                t0 = time.monotonic()
                res = build(cfg, [str(listing)], root / "out", runner="ray", progress=False, log=lambda m: None)
                wall = time.monotonic() - t0
            sent = srv.total_sent()
        size = video.stat().st_size
        kept = kept_clips(root / "out")
        samples = disk.samples
        # the disk use while clips flow, against the source alone: flat means bounded by the clips in flight
        busy = [n for _, n in samples if n > 0]
        doc = {"minutes": minutes, "source_bytes": size, "bytes_sent": sent, "ratio": round(sent / size, 3),
               "wall_s": round(wall, 1), "kept_clips": kept, "shards_failed": res.shards_failed,
               "workspace_peak_bytes": disk.peak, "workspace_peak_over_source": round(disk.peak / size, 3),
               "workspace_median_bytes_while_busy": int(statistics.median(busy)) if busy else 0,
               "workspace_after_bytes": NodeWorkspace(work).usage() if work.exists() else 0,
               "disk_samples": samples}
    log(f"long: {doc['ratio']}x the source's bytes sent, workspace peak {disk.peak / 2**20:.1f} MiB "
        f"for a {size / 2**20:.1f} MiB source, {kept} clips in {wall:.0f}s")
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return doc
