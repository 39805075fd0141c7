"""The ``mtcc bench --gpu`` command: measure the chosen stages and project, or reproject a saved run."""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .plan import BATCH_UNITS, MODEL_STAGES, SWEEPS_FULL, SWEEPS_TINY, BenchError, parse_batches, profile_settings
from .projection import KEEP_SOURCE, parse_keep, project
from .report import format_report
from .stages import (
    FPS,
    RATE,
    Bench,
    ClipShape,
    bench_asd,
    bench_audio_emb,
    bench_caption,
    bench_masks,
    bench_separate,
    bench_sync,
)
from .timing import best, free_memory, sweep


def reproject(path: str, keep_items: list[str], json_path: str | None) -> int:
    """A previous run's per-stage numbers projected again with other keep rates (no model is run)."""
    try:
        doc = json.loads(Path(path).read_text())
        order = list(doc["order"])
        measured = {s: st["best"]["gpu_s_per_clip_s"] for s, st in doc["stages"].items() if st.get("best")}
        keep = parse_keep(keep_items, order)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: --reproject {path}: {e}", file=sys.stderr)
        return 2
    doc["keep"] = keep
    doc["reprojected_from"] = str(path)
    if measured:
        doc["projection"] = {**project(measured, keep, order), "partial": set(measured) != set(MODEL_STAGES)}
    print(format_report(doc))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0 if measured else 1


def main(args: Any) -> int:
    import torch

    if getattr(args, "reproject", None):
        return reproject(args.reproject, list(getattr(args, "keep", None) or []), getattr(args, "json", None))
    threads = getattr(args, "threads", None)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _measure_all(args)
    finally:
        torch.set_num_threads(before)


def _measure_all(args: Any) -> int:
    import torch

    log = lambda m: print(m, file=sys.stderr, flush=True)
    scale = getattr(args, "scale", "full") or "full"
    try:
        device = torch.device(getattr(args, "device", None) or "cuda")
    except RuntimeError as e:
        print(f"error: --device: {e}", file=sys.stderr)
        return 2
    clip = ClipShape(float(getattr(args, "clip_seconds", 10.0) or 10.0))
    new_tokens = int(getattr(args, "new_tokens", 128) or 128)
    repeats = max(1, int(getattr(args, "repeats", 1) or 1))
    reprompts = int(getattr(args, "masks_reprompts", 0) or 0)
    min_seconds = getattr(args, "min_seconds", None)
    min_seconds = float(min_seconds) if min_seconds is not None else (1.0 if device.type == "cuda" else 0.0)
    try:
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchError(f"--device {device} but CUDA is not available here (use --device cpu --scale tiny for "
                             f"a plumbing run)")
        if scale not in ("full", "tiny"):
            raise BenchError(f"--scale {scale!r}: full or tiny")
        if clip.seconds <= 0:
            raise BenchError("--clip-seconds must be positive")
        order, settings, profile_path = profile_settings(getattr(args, "config", None) or "offline")
        keep = parse_keep(list(getattr(args, "keep", None) or []), order)
        batches = parse_batches(getattr(args, "batches", None), SWEEPS_TINY if scale == "tiny" else SWEEPS_FULL)
        wanted = [s.strip() for s in (getattr(args, "stages", None) or ",".join(MODEL_STAGES)).split(",") if s.strip()]
        unknown = [s for s in wanted if s not in MODEL_STAGES]
        if unknown:
            raise BenchError(f"--stages: unknown {unknown}; model stages are {', '.join(MODEL_STAGES)}")
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if device.type == "cuda":
        if device.index is None:
            # an explicit index: set_device and the NVML lookup need one
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    doc: dict[str, Any] = {
        "mode": "gpu-bench", "device": str(device), "device_name": device_name, "scale": scale,
        "profile": getattr(args, "config", None) or "offline", "profile_path": profile_path,
        "clip_seconds": clip.seconds, "fps": FPS, "audio_rate": RATE, "source_size": list(clip.source),
        "new_tokens": new_tokens, "repeats": repeats, "min_seconds": min_seconds,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "stages": {}, "order": order, "keep": keep, "keep_source": KEEP_SOURCE,
    }
    builders: dict[str, Callable[[], Bench]] = {
        "separate": lambda: bench_separate(device, scale == "tiny", clip, settings["separate"], rng),
        "asd": lambda: bench_asd(device, scale == "tiny", clip, settings["asd"], rng),
        "sync": lambda: bench_sync(device, scale == "tiny", clip, settings["sync"], rng),
        "masks": lambda: bench_masks(device, scale == "tiny", clip, settings["masks"], rng, reprompts),
        "audio_emb": lambda: bench_audio_emb(device, scale == "tiny", clip, settings["audio_emb"], rng),
        "caption": lambda: bench_caption(device, scale == "tiny", clip, settings["caption"], rng, new_tokens),
    }
    failed = False
    for name in [s for s in MODEL_STAGES if s in wanted]:
        st: dict[str, Any] = {"batch_unit": BATCH_UNITS[name], "batches": batches[name], "settings": settings[name]}
        doc["stages"][name] = st
        log(f"{name}: building the model ({scale}) on {device}")
        bench: Bench | None = None
        try:
            t0 = time.perf_counter()
            bench = builders[name]()
            st.update(bench.info)
            st["build_s"] = round(time.perf_counter() - t0, 2)
            if device.type == "cuda":
                st["weights_mem_bytes"] = int(torch.cuda.memory_allocated(device))
            st["sweep"] = sweep(bench.run, batches[name], device, repeats=repeats, min_seconds=min_seconds, log=log)
            st["best"] = best(st["sweep"])
            if st["best"] is None:
                failed = True
        # a one-command run of many minutes keeps the other stages' numbers when one stage cannot run (a
        # package missing, an OOM while building); the error is in the report and the exit status
        except Exception as e:  # noqa: BLE001
            failed = True
            st["error"] = f"{type(e).__name__}: {e}"
            st["traceback"] = traceback.format_exc(limit=8)
            log(f"{name}: FAILED: {st['error']}")
        finally:
            # the next stage needs the memory (the 7B alone takes 16 GiB)
            del bench
            free_memory(device)

    measured = {s: st["best"]["gpu_s_per_clip_s"] for s, st in doc["stages"].items() if st.get("best")}
    if measured:
        proj = project(measured, keep, order)
        proj["partial"] = set(measured) != set(MODEL_STAGES)
        doc["projection"] = proj
    else:
        doc["projection"] = None
    print(format_report(doc))
    json_path = getattr(args, "json", None)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        log(f"wrote {json_path}")
    return 1 if failed else 0
