"""Timing one stage: the median call per batch size, peak memory and utilisation, a sweep that stops at
the first out-of-memory."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .utilisation import UtilSampler


@dataclass
class Work:
    """What one call of a stage's path processed."""

    clips: int
    clip_seconds: float
    forwards: int
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    # cuDNN / cuBLAS report a failed workspace allocation as a plain RuntimeError
    return isinstance(e, RuntimeError) and any(m in str(e) for m in ("out of memory", "ALLOC_FAILED"))


def free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(call: Callable[[], Work], device: Any, *, repeats: int, min_seconds: float) -> dict[str, Any]:
    """Run ``call`` at least ``repeats`` times and for at least ``min_seconds``; the median call counts.
    Peak memory and utilisation cover all timed calls."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    work: Work | None = None
    _sync(device)
    with UtilSampler(device) as util:
        start = time.perf_counter()
        while len(times) < max(1, repeats) or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            work = call()
            _sync(device)
            times.append(time.perf_counter() - t0)
    assert work is not None
    sec = statistics.median(times)
    row: dict[str, Any] = {
        "clips": work.clips, "clip_seconds": work.clip_seconds, "forwards": work.forwards, "calls": len(times),
        "seconds": sec, "seconds_per_forward": sec / max(1, work.forwards),
        "clip_s_per_s": work.clip_seconds / sec if sec > 0 else math.inf,
        "gpu_s_per_clip_s": sec / work.clip_seconds,
        "peak_mem_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
        **util.summary(), **work.extra,
    }
    return row


def sweep(run: Callable[[int], Work], batches: list[int], device: Any, *, repeats: int, min_seconds: float,
          log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per batch size; a warm-up call at the first size first; stops at the first OOM."""
    rows: list[dict[str, Any]] = []
    try:
        run(batches[0])  # warm-up: kernels picked, caches allocated, lazy imports done
        _sync(device)
    # an out-of-memory (torch's own type, or cuDNN/cuBLAS's plain RuntimeError) ends the sweep; other
    # errors are the stage's, left to propagate
    except RuntimeError as e:
        if not _is_oom(e):
            raise
        free_memory(device)
        return [{"batch": batches[0], "oom": True, "error": str(e).splitlines()[0], "warmup": True}]
    for b in batches:
        try:
            row = {"batch": b, "oom": False, **measure(lambda b=b: run(b), device, repeats=repeats,
                                                       min_seconds=min_seconds)}
        except RuntimeError as e:  # as above
            if not _is_oom(e):
                raise
            rows.append({"batch": b, "oom": True, "error": str(e).splitlines()[0]})
            free_memory(device)
            log(f"  batch {b}: out of memory; sweep stopped")
            break
        rows.append(row)
        mem = f", peak {row['peak_mem_bytes'] / 2**30:.1f} GiB" if row["peak_mem_bytes"] is not None else ""
        util = f", util {row['gpu_util_mean']:.0f}%" if row["gpu_util_mean"] is not None else ""
        log(f"  batch {b}: {row['seconds']:.3f} s/call, {row['clip_s_per_s']:.2f} clip-s/s{mem}{util}")
    return rows


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if not r.get("oom")]
    if not ok:
        return None
    r = max(ok, key=lambda r: r["clip_s_per_s"])
    return {"batch": r["batch"], "clip_s_per_s": r["clip_s_per_s"], "gpu_s_per_clip_s": r["gpu_s_per_clip_s"]}
