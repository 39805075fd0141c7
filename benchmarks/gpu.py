"""``mtcc bench --gpu``: the model stages at full size on one GPU, and what that means for a whole build.

Per model stage (separate, asd, sync, masks, audio_emb, caption) the real architecture is built with random
weights straight on the device (no weight files: the arithmetic of a forward does not depend on the
values), fed inputs shaped like a real clip (``--clip-seconds`` at 25 fps, 720p source, 16 kHz audio),
and run through the stage's own code path (its batching, windowing, normalisation and forward helpers)
for each batch size of a sweep. Per batch size: seconds per call and per model forward, clip-seconds of
media per second, peak GPU memory, and GPU utilisation sampled from NVML during the timed calls. A sweep
stops at the first out-of-memory.

What "batch" means is each stage's own GPU batching knob (what a profile sets):
  * separate: windows (clips x characters x 3 s windows) per forward (``stages.separate.forward_batch``);
  * asd: windows of the visual encoder (characters x ``encode_frames`` frames) per forward
    (``stages.asd.batch_windows``); its audio encoder and sequence model run per clip;
  * sync: 5-frame windows per forward, video and audio alike (``stages.sync.batch_windows``);
  * masks: clips per call, run one after another: SAM2's video predictor tracks one clip (both
    characters in one inference state) at a time, so there is no batch dimension to sweep;
  * audio_emb: tracks (2 per clip) per forward (``stages.audio_emb.forward_batch``);
  * caption: clips per ``generate`` call (``stages.caption.forward_batch``), ``--new-tokens`` new tokens
    forced per clip (min = max new tokens), greedy, the checkpoint's repetition penalty.
Each measurement processes enough clips to fill the batch at least twice (the last forward of a call may
be partial, as it is in the stage).

Projection: with ``g_s`` = GPU seconds per clip-second of stage s at its best batch size and ``r_s`` =
fraction of the raw video's seconds that reach s (the product of the keep rates of every stage before s,
in the profile's order), one GPU processes ``1 / sum_s r_s g_s`` hours of raw video per GPU-hour.
``KEEP`` holds the default keep rates; ``--keep STAGE=RATE`` overrides one (RATE: the fraction of the
clip seconds entering STAGE that it passes on). Stages share the GPU one after another in this sum: the
face detector (on the GPU in the ``mtcc`` profile, ONNX Runtime) and video decoding are not in it.

``--device cpu --scale tiny`` runs the same code on the reduced models ``mtcc models make-tiny`` writes
(plumbing and tests; the numbers mean nothing there).
"""

from __future__ import annotations

import gc
import json
import math
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtcc.stages.cut import even_size

MODEL_STAGES = ("separate", "asd", "sync", "masks", "audio_emb", "caption")
# the mtcc profile's order, used when the chosen profile does not list every model stage
DEFAULT_ORDER = ("probe", "faces", "segment", "layout", "distance", "cut", "prescore", "separate", "asd", "sync",
                 "masks", "audio_emb", "caption", "write")
# Default keep rates: fraction of the clip seconds entering a stage that it passes on (for segment: of the
# raw video's seconds, the seconds that become two-character clips). DESIGN.md and the anchors give keep
# *rules* (LatentSync: Sync-C >= 3, |offset| <= 6) but no measured funnel, so these are stated assumptions
# for talk-show / interview footage; replace them with a real run's funnel (`mtcc report`) via --keep.
KEEP: dict[str, float] = {
    "probe": 0.95,     # files with a usable video + audio stream
    "faces": 1.0,      # annotates, drops nothing
    "segment": 0.2,    # seconds where exactly two faces coexist for >= 49 frames at >= 64 px
    "layout": 0.8,     # split-screen composites (two feeds, a character per panel) named and dropped
    "distance": 0.8,   # pairs not too far apart
    "cut": 1.0,        # encodes, drops nothing
    "prescore": 1.0,   # records only in the mtcc profile (reject: false)
    "separate": 1.0,   # reject_silent is off by default
    "asd": 0.9,        # clips where somebody speaks
    "sync": 0.4,       # both characters speak, mean Sync-C >= 3, |offset| <= 6, diagonal binding
    "masks": 0.9,      # masks neither collapsed nor merged
    "audio_emb": 1.0,  # rejects only broken tracks
    "caption": 1.0,
    "write": 1.0,
}
KEEP_SOURCE = ("assumed (DESIGN.md and its anchors give keep rules but no funnel fractions); "
               "override with --keep STAGE=RATE from a real run's funnel")

# per-stage batch sweeps (the unit of each is in the module docstring)
SWEEPS_FULL: dict[str, list[int]] = {
    "separate": [1, 2, 4, 8, 16, 32, 64],
    "asd": [1, 4, 16, 64, 256],
    "sync": [32, 64, 128, 256, 512, 1024],
    "masks": [1, 2],
    "audio_emb": [1, 2, 4, 8, 16, 32],
    "caption": [1, 2, 4, 8, 16, 32],
}
SWEEPS_TINY: dict[str, list[int]] = {s: [1, 2] for s in MODEL_STAGES}
BATCH_UNITS = {
    "separate": "windows per forward (stages.separate.forward_batch)",
    "asd": "visual-encoder windows per forward (stages.asd.batch_windows)",
    "sync": "5-frame windows per forward (stages.sync.batch_windows)",
    "masks": "clips per call, tracked one after another (no batch dimension in SAM2's video predictor)",
    "audio_emb": "tracks per forward, 2 per clip (stages.audio_emb.forward_batch)",
    "caption": "clips per generate call (stages.caption.forward_batch)",
}
# a profile's stage settings that say where weights are, where to run or how to batch: the benchmark sets
# those itself; everything else (windows, crop scales, frame sampling, dtypes) is taken as the profile has it
NOT_FROM_PROFILE = {"model", "config", "device", "allow_random_weights", "resources", "forward_batch", "batch_windows",
                    "max_new_tokens", "backend", "vllm_args", "enabled", "max_reprompts"}

FPS = 25
RATE = 16000
SOURCE = (720, 1280)  # (h, w) of the frames a clip is cut from: 720p

# Qwen2-VL-7B-Instruct's config.json (text side; the vision side is Qwen2VLVisionConfig's defaults, the
# merger projecting into the text width)
QWEN_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
QWEN_7B_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 3584,
                  "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3}
# facebook/wav2vec2-base-960h's encoder (its config.json; the CTC head is not run by the stage)
WAV2VEC2_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "conv_dim": (512,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2), "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
                 "conv_bias": False, "feat_extract_norm": "group", "do_stable_layer_norm": False,
                 "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
SAM2_LARGE = ("configs", "sam2.1", "sam2.1_hiera_l.yaml")
# Qwen2-VL-Instruct's generation_config.json values that change the decode loop's work
QWEN_REPETITION_PENALTY = 1.05


class BenchError(ValueError):
    """A bad command line value; the message says which and what is accepted."""


# -- keep rates and the projection ---------------------------------------------------------------------

def parse_keep(items: list[str], order: list[str]) -> dict[str, float]:
    """The default keep rates with ``STAGE=RATE`` overrides applied; every stage of ``order`` gets one."""
    keep = {s: KEEP.get(s, 1.0) for s in order}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or name not in keep:
            raise BenchError(f"--keep {item!r}: expected STAGE=RATE with STAGE one of {', '.join(order)}")
        try:
            rate = float(text)
        except ValueError as e:
            raise BenchError(f"--keep {item!r}: RATE must be a number in [0, 1]") from e
        if not 0.0 <= rate <= 1.0:
            raise BenchError(f"--keep {item!r}: RATE must be in [0, 1] (a fraction of the stage's input seconds)")
        keep[name] = rate
    return keep


def reach(order: list[str], keep: dict[str, float]) -> dict[str, float]:
    """Fraction of the raw video's seconds that enter each stage of ``order``."""
    out: dict[str, float] = {}
    frac = 1.0
    for s in order:
        out[s] = frac
        frac *= keep.get(s, 1.0)
    return out


def project(gpu_s_per_clip_s: dict[str, float], keep: dict[str, float], order: list[str]) -> dict[str, Any]:
    """Hours of raw video one GPU gets through per hour: ``1 / sum_s reach_s x gpu_s_per_clip_s[s]``."""
    r = reach(order, keep)
    missing = [s for s in gpu_s_per_clip_s if s not in r]
    if missing:
        raise BenchError(f"stages {missing} are not in the pipeline order {order}")
    terms = {s: r[s] * float(g) for s, g in gpu_s_per_clip_s.items()}
    total = sum(terms.values())
    return {
        "reach": {s: r[s] for s in gpu_s_per_clip_s},
        "terms": terms,
        "gpu_s_per_raw_s": total,
        "raw_video_hours_per_gpu_hour": (1.0 / total) if total > 0 else math.inf,
    }


def parse_batches(items: list[str] | None, defaults: dict[str, list[int]]) -> dict[str, list[int]]:
    """``1,2,4`` (every stage) or ``STAGE=1,2,4`` (one stage), repeatable, over ``defaults``."""
    out = {s: list(v) for s, v in defaults.items()}
    for item in items or []:
        name, sep, text = str(item).rpartition("=")
        targets = [name.strip()] if sep else list(out)
        if sep and name.strip() not in out:
            raise BenchError(f"--batches {item!r}: STAGE must be one of {', '.join(out)}")
        try:
            sizes = sorted({int(x) for x in text.split(",") if x.strip()})
        except ValueError as e:
            raise BenchError(f"--batches {item!r}: expected comma-separated positive integers") from e
        if not sizes or sizes[0] < 1:
            raise BenchError(f"--batches {item!r}: expected comma-separated positive integers")
        for t in targets:
            out[t] = sizes
    return out


# -- the profile ---------------------------------------------------------------------------------------

def profile_settings(name: str) -> tuple[list[str], dict[str, dict[str, Any]], str]:
    """(stage order, per model stage the settings taken from the profile, profile path). The YAML is read
    as data: its ``models:`` include names weights, which the benchmark does not load."""
    import yaml
    from mtcc.pipeline.cli import resolve_config

    path = resolve_config(name)
    raw = yaml.safe_load(Path(path).read_text()) or {}
    stages = raw.get("stages") if isinstance(raw, dict) else None
    stages = stages if isinstance(stages, dict) else {}
    order = list(stages)
    if not all(s in order for s in MODEL_STAGES):
        order = list(DEFAULT_ORDER)
    settings = {s: {k: v for k, v in (stages.get(s) or {}).items() if k not in NOT_FROM_PROFILE}
                for s in MODEL_STAGES}
    return order, settings, str(path)


# -- GPU utilisation -----------------------------------------------------------------------------------

class UtilSampler:
    """GPU utilisation (%) every ``period`` s while the ``with`` block runs: NVML through ``pynvml``
    (nvidia-ml-py) when importable, else ``nvidia-smi -lms``. On a CPU device it samples nothing."""

    def __init__(self, device: Any, period: float = 0.1):
        self.device = device
        self.period = period
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._target = _gpu_ids(device) if getattr(device, "type", "cpu") == "cuda" else None

    def __enter__(self) -> UtilSampler:
        if self._target is None:
            return self
        handle = self._nvml_handle()
        if handle is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll_nvml, args=(handle,), daemon=True)
        elif shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            uuid, index = self._target
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", uuid or str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", str(max(1, int(self.period * 1000)))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self.source = "unavailable (no pynvml, no nvidia-smi)"
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _nvml_handle(self) -> Any:
        try:
            import pynvml
        except ImportError:
            return None
        uuid, index = self._target  # type: ignore[misc]
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            print(f"warning: NVML unavailable ({e}); trying nvidia-smi", file=sys.stderr)
            return None
        if uuid:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except pynvml.NVMLError as e:
                # MIG slices and some drivers: the index CUDA and NVML share when CUDA_VISIBLE_DEVICES is unset
                print(f"warning: NVML has no GPU {uuid} ({e}); using index {index}", file=sys.stderr)
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as e:
            print(f"warning: NVML unavailable ({e}); trying nvidia-smi", file=sys.stderr)
            return None

    def _poll_nvml(self, handle: Any) -> None:
        import pynvml

        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            except pynvml.NVMLError as e:
                print(f"warning: NVML utilisation query failed ({e}); no more samples", file=sys.stderr)
                return

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            text = line.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                self.samples.append(float(text))

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"gpu_util_mean": round(statistics.fmean(s), 1) if s else None,
                "gpu_util_max": max(s) if s else None, "gpu_util_samples": len(s), "gpu_util_source": self.source}


def _gpu_ids(device: Any) -> tuple[str | None, int]:
    """(NVML UUID, CUDA index) of a CUDA device: the UUID names the same GPU whatever
    CUDA_VISIBLE_DEVICES renumbers."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    text = str(uuid) if uuid is not None else ""
    if text and not text.startswith(("GPU-", "MIG-")):
        text = "GPU-" + text
    return (text or None), int(index)


# -- timing ----------------------------------------------------------------------------------------------

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


def _free(device: Any) -> None:
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
        _free(device)
        return [{"batch": batches[0], "oom": True, "error": str(e).splitlines()[0], "warmup": True}]
    for b in batches:
        try:
            row = {"batch": b, "oom": False, **measure(lambda b=b: run(b), device, repeats=repeats,
                                                       min_seconds=min_seconds)}
        except RuntimeError as e:  # as above
            if not _is_oom(e):
                raise
            rows.append({"batch": b, "oom": True, "error": str(e).splitlines()[0]})
            _free(device)
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


# -- the clip every stage sees ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipShape:
    seconds: float
    source: tuple[int, int] = SOURCE

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * FPS))

    @property
    def samples(self) -> int:
        return round(self.seconds * RATE)


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    # band-limited noise at speech level: the models' cost does not depend on it, the feature extractor's
    # normalisation and the separator's peak scaling see ordinary values
    x = rng.standard_normal(n).astype(np.float32)
    return (np.convolve(x, np.ones(8, np.float32) / 8, mode="same") * 0.3).astype(np.float32)


def _params(net: Any) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# -- the stages ------------------------------------------------------------------------------------------

@dataclass
class Bench:
    """One stage ready to run: ``run(batch)`` times nothing itself, ``info`` describes the model."""

    run: Callable[[int], Work]
    info: dict[str, Any]


def bench_separate(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    from mtcc.stages import separate as sep

    full = sep.packaged_settings()
    if tiny:
        full["network_audio"].update(sep.TINY_AUDIO)
    net = sep.build_network(full).to(device).eval()
    stage = sep.SpeechSeparation(**settings, device=str(device))
    stage._net = net
    window = max(1, round(stage.window_seconds * sep.RATE))
    hop = max(1, round(window * (1.0 - stage.overlap)))
    chars = 2
    per_clip = chars * len(sep.plan_windows(clip.samples, window, hop))
    mix = _speechlike(rng, clip.samples)
    lips = rng.standard_normal((chars, clip.frames, sep.LIP_SIZE, sep.LIP_SIZE)).astype(np.float32)

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        _, calls = sep.separate_tracks(stage._forward, [mix] * n, [lips] * n, [float(FPS)] * n,
                                       window=window, hop=hop, forward_batch=batch)
        return Work(n, n * clip.seconds, calls, {"items": n * per_clip})

    info = {"model": "clearvoice AV_MossFormer2_TSE_16K (av_mossformer2)" + (" reduced" if tiny else ""),
            "params": _params(net), "dtype": str(next(net.parameters()).dtype).removeprefix("torch."),
            "path": "stages.separate.separate_tracks + SpeechSeparation._forward",
            "per_clip": f"{chars} characters x {per_clip // chars} windows of {stage.window_seconds:g} s "
                        f"(overlap {stage.overlap:g})"}
    return Bench(run, info)


def bench_asd(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    import torch

    from mtcc.stages import asd as asd_stage
    from mtcc.stages.light_asd import LightASD

    net = LightASD().fuse().to(device)  # one size: make-tiny writes the real 1.0 M-parameter class too
    stage = asd_stage.ActiveSpeakers(**settings, device=str(device))
    stage._net = net
    stage._bf16 = stage.dtype == "bfloat16" or (stage.dtype == "auto" and asd_stage.bf16_supported(str(device)))
    faces = rng.integers(0, 256, (2, clip.frames, asd_stage.FACE_SIZE, asd_stage.FACE_SIZE), dtype=np.uint8)
    mfcc = asd_stage.mfcc_rows(_speechlike(rng, clip.samples), clip.frames)  # CPU work of _inputs, not timed
    per_clip = 2 * len(asd_stage.plan_windows(clip.frames, stage.encode_frames))

    def run(batch: int) -> Work:
        stage.batch_windows = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        stage.score([asd_stage._Clip(faces, [mfcc], False) for _ in range(n)])
        return Work(n, n * clip.seconds, math.ceil(n * per_clip / batch), {"items": n * per_clip})

    info = {"model": "Light-ASD (CVPR 2023), our class", "params": _params(net),
            "dtype": "bfloat16" if stage._bf16 else "float32", "torch_threads": torch.get_num_threads(),
            "path": "ActiveSpeakers.score (visual encoder on [N,T,112,112], audio encoder, GRU back-end)",
            "per_clip": f"2 faces x {per_clip // 2} windows of {stage.encode_frames} frames"}
    return Bench(run, info)


def bench_sync(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    from mtcc.stages import sync as sy

    net = sy.syncnet_class()(num_layers_in_fc_layers=1024).to(device).eval()
    stage = sy.SyncScores(**settings, device=str(device))
    stage._net = net
    windows = sy.n_windows(clip.frames, clip.samples)
    if windows < 1:
        raise BenchError(f"--clip-seconds {clip.seconds:g} is too short for SyncNet ({clip.frames} frames)")
    crops = rng.integers(0, 256, (2, clip.frames, sy.CROP_SIZE, sy.CROP_SIZE, 3), dtype=np.uint8)
    tracks = [_speechlike(rng, clip.samples) for _ in range(2)]
    mfcc = [sy.mfcc_features(t) for t in tracks]  # CPU work of _inputs, outside the timed GPU path
    per_clip = 2 * windows

    def run(batch: int) -> Work:
        stage.batch_windows = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        clips = [sy._Clip(crops, mfcc, tracks, windows) for _ in range(n)]
        stage._embed(clips)
        calls = 2 * math.ceil(n * per_clip / batch)  # video and audio windows alike
        return Work(n, n * clip.seconds, calls, {"items": 2 * n * per_clip})

    info = {"model": "syncnet_python SyncNetModel.S (SyncNet v2, 1024-d)", "params": _params(net), "dtype": "float32",
            "path": "SyncScores._embed (forward_lip on [N,3,5,224,224], forward_aud on [N,1,13,20])",
            "per_clip": f"2 faces x {windows} video windows + 2 tracks x {windows} audio windows"}
    return Bench(run, info)


def bench_masks(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator,
                reprompts: int) -> Bench:
    import contextlib
    import warnings

    import torch
    from mtcc.stages import masks as mk
    from mtcc.stages import models as stage_models
    from mtcc.stages import sam2_model

    base = mk.TINY_BASE if tiny else SAM2_LARGE
    cfg = stage_models.packaged_file("sam2", *base, install=sam2_model.INSTALL)
    data = sam2_model.read_config(cfg)
    if tiny:
        for key, value in mk.TINY_CHANGES.items():
            sam2_model.set_dotted(data, key, value)
    sam2_model.quiet_progress()
    # built on the CPU and moved, as load_predictor does with the real checkpoint
    model = sam2_model.build_model(data, cfg, "cpu").to(device).eval()
    stage = mk.CharacterMasks(**settings, device=str(device), max_reprompts=reprompts)
    size = int(model.image_size)
    h, w = even_size(clip.source[1], clip.source[0])[::-1]
    t = clip.frames
    # what CharacterMasks._frames hands SAM2: every clip frame resized to the square input, uint8, on the host
    frames = torch.from_numpy(rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8))
    boxes = np.array([[w * 0.2, h * 0.25, w * 0.38, h * 0.65], [w * 0.62, h * 0.25, w * 0.80, h * 0.65]])
    boxes = np.repeat(boxes[:, None, :], t, axis=1)
    lm_rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    lms = [np.repeat((b[0, :2] + lm_rel * (b[0, 2:] - b[0, :2]))[None], t, axis=0) for b in boxes]
    first = t // 2  # prompted mid-clip: a forward and a backward pass, as on most real clips

    def one_clip() -> int:
        out = mk.FrameMasks(boxes, stage.geometry, (h, w))
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            # the stage filters the same warning (sam2's optional hole-filling extension is not built)
            warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step", category=UserWarning)
            state = sam2_model.inference_state(model, frames, h, w)
            _, done = mk.track(model, state, out, lms, first, min_cover=stage.drift_min_cover,
                               max_reprompts=stage.max_reprompts)
        if not out.complete():
            raise RuntimeError(f"SAM2 produced masks for {(out.order >= 0).sum()} of {t} frames")
        return done

    def run(batch: int) -> Work:
        done = [one_clip() for _ in range(batch)]
        return Work(batch, batch * clip.seconds, batch * t, {"reprompts": int(sum(done))})

    info = {"model": f"SAM2.1 video predictor ({cfg.name}{', reduced' if tiny else ''})", "params": _params(model),
            "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32", "image_size": size,
            "path": "sam2_model.inference_state + masks.track (both characters in one state, RLE + latent canvas "
                    "per frame)",
            "per_clip": f"{t} frames at {size}x{size}, 2 objects, masks at {h}x{w}, max_reprompts {reprompts}"}
    return Bench(run, info)


def bench_audio_emb(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any],
                    rng: np.random.Generator) -> Bench:
    import torch
    from mtcc.stages import audio_emb as ae
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    stage = ae.AudioEmbeddings(**settings, device=str(device))
    config = Wav2Vec2Config(**(ae.TINY if tiny else WAV2VEC2_BASE))
    with torch.device(device):
        net = Wav2Vec2Model(config)
    stage._net = net.to(device=device, dtype=getattr(torch, stage.dtype)).eval()
    # base-960h's preprocessor_config.json (make_tiny writes the same)
    stage._fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=ae.RATE, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    n_frames = round(clip.samples / ae.RATE * stage.fps)
    track = _speechlike(rng, clip.samples)

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = batch  # 2 tracks per clip: two forwards' worth
        tracks = [track] * (2 * n)
        stage.embed_tracks(tracks, [n_frames] * len(tracks))
        return Work(n, n * clip.seconds, math.ceil(2 * n / batch), {"items": 2 * n})

    info = {"model": "transformers Wav2Vec2Model (" + ("reduced" if tiny else "wav2vec2-base-960h") + ")",
            "params": _params(net), "dtype": stage.dtype,
            "path": "AudioEmbeddings.embed_tracks (feature extractor, CNN, interpolation to frames, all layers)",
            "per_clip": f"2 tracks of {clip.samples} samples -> [{n_frames}, {config.num_hidden_layers}, "
                        f"{config.hidden_size}]"}
    return Bench(run, info)


def bench_caption(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator,
                  new_tokens: int) -> Bench:
    import torch
    from mtcc.stages import caption as cp
    from mtcc.stages import models as stage_models
    from mtcc.stages import qwen_tiny
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    stage_models.quiet_transformers()
    stage = cp.ClipCaption(**settings, device=str(device), max_new_tokens=new_tokens)
    # the tiny tokenizer stands in for Qwen's (not reachable offline): prompt token ids differ, the visual
    # tokens (nearly all of the prompt) and the model's vocabulary width do not
    tokenizer = qwen_tiny.build_tokenizer()
    processor = qwen_tiny.build_processor(tokenizer)
    if tiny:
        config = qwen_tiny.build_config(tokenizer)
    else:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in qwen_tiny.SPECIAL_TOKENS}
        text = {**QWEN_7B_TEXT, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"]}
        config = Qwen2VLConfig(text_config=text, vision_config=dict(QWEN_7B_VISION),
                               image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                               vision_start_token_id=ids["<|vision_start|>"],
                               vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
                               eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                               tie_word_embeddings=False)
    extra = {"attn_implementation": stage.attn_implementation} if stage.attn_implementation else {}
    dtype = getattr(torch, stage._dtype_name(str(device)))
    # built where it runs, in its run dtype: 8.3 B parameters never pass through host memory in float32
    with torch.device(device):
        net = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype, **extra)
    net = net.eval()
    stage.adopt_processor(processor)
    stage._dev = str(device)
    stage._net = net
    eos = config.text_config.eos_token_id
    checkpoint = GenerationConfig(bos_token_id=config.text_config.bos_token_id,
                                  pad_token_id=config.text_config.pad_token_id,
                                  eos_token_id=[eos, config.text_config.bos_token_id],
                                  repetition_penalty=QWEN_REPETITION_PENALTY)
    gen = cp.greedy_config(checkpoint, new_tokens, tokenizer.pad_token_id, eos)
    # random weights would stop at any step; every clip decodes exactly new_tokens tokens
    gen.min_new_tokens = new_tokens
    net.generation_config = gen
    stage._gen = gen
    stage._eos = set(gen.eos_token_id)
    times = cp.frame_times(clip.seconds, stage.fps, min_frames=stage.min_frames, max_frames=stage.max_frames,
                           temporal=stage._temporal)
    fh, fw = cp.target_size(clip.source[0], clip.source[1], min_pixels=stage.min_pixels, max_pixels=stage.max_pixels,
                            factor=stage._factor)
    # clip_frames decodes at the processor's target width (aspect kept), so frames arrive at about this size
    video = rng.integers(0, 256, (len(times), fh, fw, 3), dtype=np.uint8)

    def run(batch: int) -> Work:
        results = stage._generate([video] * batch)
        return Work(batch, batch * clip.seconds, 1, {
            "prompt_tokens": int(results[0]["prompt_tokens"]), "new_tokens": int(min(r["new_tokens"] for r in results)),
            "grid": [int(x) for x in results[0]["grid"]]})

    n_vis = (len(times) // stage._temporal) * (fh // 14) * (fw // 14) // stage._merge ** 2
    info = {"model": "transformers Qwen2VLForConditionalGeneration (" + ("tiny" if tiny else "Qwen2-VL-7B-Instruct")
                     + " architecture)", "params": _params(net), "dtype": str(dtype).removeprefix("torch."),
            "attn_implementation": getattr(net.config, "_attn_implementation", None),
            "path": "ClipCaption._generate (processor, generate, decode)",
            "per_clip": f"{len(times)} frames at {fh}x{fw} ({stage.fps:g} fps, max_pixels {stage.max_pixels}), "
                        f"{n_vis} visual tokens, {new_tokens} new tokens"}
    return Bench(run, info)


# -- main ------------------------------------------------------------------------------------------------

def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def format_report(doc: dict[str, Any]) -> str:
    head = (f"mtcc bench --gpu: {doc['device_name']} ({doc['device']}), scale {doc['scale']}, "
            f"{doc['clip_seconds']:g} s clips, profile {doc['profile']}")
    lines = [head, ""]
    for name, st in doc["stages"].items():
        lines.append(f"{name}: {st.get('model', '')} ({st.get('params', 0) / 1e6:.1f} M params); batch = {st['batch_unit']}")
        if st.get("error"):
            lines.append(f"  ERROR: {st['error']}")
            continue
        lines.append(f"  {'batch':>6} {'s/call':>9} {'s/fwd':>9} {'clip-s/s':>10} {'GPU s/clip-s':>13} "
                     f"{'peak GiB':>9} {'util %':>7}")
        for r in st["sweep"]:
            if r.get("oom"):
                lines.append(f"  {r['batch']:>6} out of memory")
                continue
            util = "-" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}"
            lines.append(f"  {r['batch']:>6} {r['seconds']:>9.3f} {r['seconds_per_forward']:>9.4f} "
                         f"{r['clip_s_per_s']:>10.2f} {r['gpu_s_per_clip_s']:>13.4f} "
                         f"{_fmt_bytes(r['peak_mem_bytes']):>9} {util:>7}")
    lines.append("")
    proj = doc.get("projection")
    if proj:
        lines.append(f"{'stage':<10} {'keep':>6} {'reach':>7} {'best batch':>10} {'GPU s/clip-s':>13} {'GPU s/raw s':>12}")
        for s, term in proj["terms"].items():
            b = doc["stages"][s]["best"]
            lines.append(f"{s:<10} {doc['keep'][s]:>6.3g} {proj['reach'][s]:>7.4f} {b['batch']:>10} "
                         f"{b['gpu_s_per_clip_s']:>13.4f} {term:>12.5f}")
        first = min(doc["order"].index(s) for s in proj["terms"])
        lines.append("keep rates before the model stages: " + ", ".join(
            f"{s} {doc['keep'][s]:g}" for s in doc["order"][:first]))
        lines.append(f"projected: {proj['raw_video_hours_per_gpu_hour']:.2f} hours of raw video per GPU-hour"
                     + (" (PARTIAL: only the stages measured)" if proj.get("partial") else ""))
        lines.append(f"keep rates: {doc['keep_source']}")
    else:
        lines.append("no projection: a stage failed or ran out of memory at every batch size")
    return "\n".join(lines)


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
            _free(device)

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
