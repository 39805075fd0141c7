"""What a ``mtcc bench --gpu`` run measures: the model stages, the batch sizes each sweeps (in the
stage's own batching unit, ``BATCH_UNITS``) and the settings it takes from the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_STAGES = ("separate", "asd", "sync", "masks", "audio_emb", "caption")
# the mtcc profile's order, used when the chosen profile does not list every model stage
DEFAULT_ORDER = ("probe", "faces", "segment", "layout", "distance", "cut", "prescore", "separate", "asd", "sync",
                 "masks", "audio_emb", "caption", "write")

# per-stage batch sweeps, each in its stage's unit (BATCH_UNITS)
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
    "asd": "visual-encoder windows per forward (stages.asd.forward_batch)",
    "sync": "5-frame windows per forward (stages.sync.forward_batch)",
    "masks": "clips per call, tracked one after another (no batch dimension in SAM2's video predictor)",
    "audio_emb": "tracks per forward, 2 per clip (stages.audio_emb.forward_batch)",
    "caption": "clips per generate call (stages.caption.forward_batch)",
}
# a profile's stage settings that say where weights are, where to run or how to batch: the benchmark sets
# those itself; everything else (windows, crop scales, frame sampling, dtypes) is taken as the profile has it
NOT_FROM_PROFILE = {"model", "config", "device", "allow_random_weights", "resources", "forward_batch",
                    "max_new_tokens", "backend", "vllm_args", "enabled", "max_reprompts"}


class BenchError(ValueError):
    """A bad command line value; the message says which and what is accepted."""


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


def profile_settings(name: str) -> tuple[list[str], dict[str, dict[str, Any]], str]:
    """(stage order, per model stage the settings taken from the profile, profile path). The YAML is read
    as data: its ``models:`` include names weights, which the benchmark does not load."""
    import yaml

    from mtcc.pipeline.config import resolve_config

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
