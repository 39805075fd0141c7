"""Training configuration: YAML (``safe_load`` only) validated into pydantic models that refuse unknown keys.

A config file only ever holds data: it names settings, it never imports or runs code. ``--set KEY=VALUE``
overrides any value (the value is parsed as YAML, so ``--set data.filters='["sync.sync_c_mean >= 4"]'``
gives a list). Errors name the key and, for unknown keys, the allowed ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mtcc.media.geometry import LatentGeometry
from mtcc.pipeline.config import apply_overrides, read_yaml, validation_problems
from mtcc.pipeline.errors import ConfigError

__all__ = ["ConfigError", "DataConfig", "LaunchConfig", "LossConfig", "ModelConfig", "OptimConfig", "RayLaunch",
           "RunConfig", "TrainConfig", "load_train_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """What the loader reads and the geometry of the batches it yields."""

    shards: list[str] = Field(default_factory=list, description=(
        "MTCC output folders (OUT, holding shards/), tar paths or fsspec URLs, brace patterns "
        "(mtcc-{000000..000009}.tar) or globs"))
    geometry: LatentGeometry = Field(default_factory=LatentGeometry, description=(
        "clip and latent sizes of the batches; when they equal the shards' own (meta masks.geometry) "
        "route.npy is used as is, otherwise the routing mask is recomputed from masks.rle.json"))
    windows: Literal["all", "random"] = Field("all", description=(
        "training items per sample and epoch: every route window, or one random window"))
    short_windows: Literal["pad", "skip"] = Field("pad", description=(
        "a window shorter than geometry.frames (a short clip): pad by repeating its last frame (batch field "
        "valid_frames says how many are real) or skip it (counted in the loader stats)"))
    batch_size: int = Field(1, ge=1)
    drop_last: bool = Field(False, description="drop each worker's last partial batch of an epoch")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes per rank (0 = in the caller)")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker keeps ready")
    shuffle_buffer: int = Field(64, ge=0, description="items (undecoded windows) a worker shuffles among; 0 = off")
    shuffle_shards: bool = Field(True, description="shuffle the shard order every epoch (seeded)")
    resampled: bool = Field(False, description=(
        "infinite stream: each worker draws shards at random with replacement (no epochs)"))
    split: Literal["auto", "shard", "window"] = Field("auto", description=(
        "unit given to each (rank, worker): whole shards, or windows (every worker scans every shard and keeps "
        "its share; for datasets with fewer shards than ranks x workers); auto picks shard when there are "
        "enough shards"))
    filters: list[str] = Field(default_factory=list, description=(
        "manifest conditions, all of which a sample must meet, e.g. 'sync.sync_c_mean >= 4' (column, one "
        "of < <= > >= == !=, a number, true/false or a string); evaluated on the shard's manifest, so "
        "samples that fail are skipped in the tar without being decoded"))
    selection: str | None = Field(None, description=(
        "read only the samples of a selection `mtcc select` made: its name (found under the OUT the shards "
        "are in) or the path/URL of its .parquet; shards it does not name are not opened"))
    selection_part: str = Field("train", description=(
        "the part of the selection to read: train, or a part its --split named (e.g. val)"))
    committed_only: bool = Field(True, description="read only shards whose commits/<shard>.json exists")
    ref_size: int = Field(224, ge=8, description="reference images are letterboxed into this square")
    audio_margin: int = Field(2, ge=0, description="audio_emb rows of context each side of the window's frames")
    video_dtype: Literal["float32", "bfloat16", "float16", "uint8"] = Field("float32", description=(
        "video and ref dtype; floats are in [-1, 1], uint8 is the raw 0..255 (convert on the GPU)"))
    decode_threads: int = Field(1, ge=0, description="decord threads per video (0 = decord's choice)")
    pin_memory: bool = False
    worker_start: Literal["forkserver", "spawn", "fork"] = Field("forkserver", description=(
        "how DataLoader workers start: forkserver (a clean process that imported the loader once, then a fork "
        "per worker: safe beside Ray, CUDA and thread pools), spawn, or fork (fastest; can deadlock when the "
        "parent runs threads, e.g. inside Ray)"))
    seed: int = 0


class ModelConfig(_Strict):
    """The embedding router (see ``mtcc.training.model``)."""

    dim: int = Field(128, ge=8, description="token width")
    layers: int = Field(4, ge=1, description="spatio-temporal attention layers (each gives a mask)")
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_hidden: int = Field(32, ge=4, description="channels after the first (spatial) patch convolution")
    face_channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)
    characters: int = Field(2, ge=1, description="characters n; the output has n + 1 classes (background first)")
    rope_theta: float = Field(10000.0, gt=1)

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim ({self.dim}) / heads ({self.heads}) must be an even integer (RoPE pairs)")
        return self


class LossConfig(_Strict):
    """Weights of the three terms (Bind-Your-Avatar: 1, 0.001, 8)."""

    ce: float = Field(1.0, ge=0, description="cross-entropy over n + 1 classes, background included")
    st: float = Field(0.001, ge=0, description="spatio-temporal gradient (smoothness) of the predicted mask")
    layer: float = Field(8.0, ge=0, description="variance of the predicted mask across layers")


class OptimConfig(_Strict):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null = off")


class RunConfig(_Strict):
    out_dir: str = Field("runs/router", description=(
        "checkpoints/, tensorboard/, metrics.jsonl; must be shared by all nodes of a multi-node run"))
    steps: int = Field(1000, ge=1, description="total optimizer steps (the schedule spans these)")
    stop_at: int | None = Field(None, ge=1, description=(
        "end this invocation after this step (checkpointed) while the schedule still spans `steps`: "
        "time-limited jobs; rerunning resumes"))
    checkpoint_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1, description="checkpoints kept (older ones are deleted)")
    resume: bool = Field(True, description="start from the latest checkpoint in out_dir when there is one")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 autocast on GPU, fp32 on CPU")
    fixed_batch: bool = Field(False, description=(
        "train on the first batch over and over (each rank its own): an overfitting sanity check"))
    cpu_threads: int | None = Field(None, ge=1, description=(
        "torch threads per process on CPU (default: cores / local ranks)"))


class RayLaunch(_Strict):
    address: str | None = Field(None, description="None = start or join a local Ray; 'auto' = a running cluster")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    storage_path: str | None = Field(None, description="Ray Train's run storage (default: <out_dir>/ray)")


class LaunchConfig(_Strict):
    nproc_per_node: int | None = Field(None, ge=1, description="torchrun launcher: processes (default: GPUs, or 1)")
    ray: RayLaunch = Field(default_factory=RayLaunch)


class TrainConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    def dump(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def build_train_config(raw: dict[str, Any] | None, overrides: list[str] | None = None) -> TrainConfig:
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("training config must be a YAML mapping")
    raw = dict(raw or {})
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid training config:\n  " + "\n  ".join(validation_problems(e, TrainConfig))) from e


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      shards: list[str] | None = None) -> TrainConfig:
    """A training config file (or the defaults when ``path`` is None), then ``--set`` overrides, then
    ``shards`` (when given, they replace ``data.shards``)."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        raw = read_yaml(p, "training config")
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a training config is a YAML mapping (data, model, loss, optim, run, launch)")
    cfg = build_train_config(raw, overrides)
    if shards:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"shards": list(shards)})})
    return cfg
