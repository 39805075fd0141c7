"""Training the embedding router: one ``train(cfg)`` for every launcher.

* local: one process (``mtcc train CONFIG``); inside a torchrun process it joins torchrun's group;
* torchrun: ``torchrun --nproc_per_node N -m mtcc.training CONFIG`` (or ``mtcc train CONFIG --launcher torchrun``,
  which runs that for one node): ``env://`` rendezvous, NCCL on GPUs, gloo on CPU;
* Ray Train: ``mtcc train CONFIG --launcher ray`` runs :func:`train` in each worker of a ``TorchTrainer``
  (Ray sets the process group up; ``launch.ray`` gives workers, GPUs and resources per worker).

On GPU the forward runs under bf16 autocast (the loss in float32); on CPU in float32. Rank 0 writes
TensorBoard scalars (``OUT_DIR/tensorboard``), ``OUT_DIR/metrics.jsonl`` and every ``checkpoint_every`` steps a
checkpoint (see :mod:`mtcc.training.checkpoint`); a rerun with the same ``out_dir`` resumes from the latest
(model, optimizer, scheduler, step, RNG of every rank, loader epoch). The data position is restored to the
start of the saved epoch: the epoch's shuffle is seeded, so the same items come again in the same order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import OptimConfig, TrainConfig
from .data import Loader
from .items import to_unit
from .losses import iou_counts, iou_from_counts, router_loss
from .model import EmbeddingRouter

log = logging.getLogger("mtcc.training")


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _want_cuda(cfg: TrainConfig) -> bool:
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but torch sees no GPU")
    return cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())


def setup_distributed(cfg: TrainConfig, ray_worker: bool = False) -> DistContext:
    cuda = _want_cuda(cfg)
    env = os.environ
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():  # Ray Train (or a caller) made the group
        if cuda and ray_worker:
            from ray.train.torch import get_device

            device = get_device()
        else:
            device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, False)
    world = int(env.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://",
                                timeout=timedelta(minutes=30))
        return DistContext(dist.get_rank(), world, local_rank, local_world, device, True)
    return DistContext(0, 1, 0, 1, device, False)


def lr_lambda(o: OptimConfig, total: int):
    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, max(0.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps)))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.out = Path(cfg.run.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.geo = cfg.data.geometry
        _seed_all(cfg.run.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.model = EmbeddingRouter(cfg.model, self.geo).to(ctx.device)
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net: torch.nn.Module = DDP(self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                            else None)
        else:
            self.net = self.model
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                     weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(o, cfg.run.steps))
        self.step = 0
        self.epoch = 0
        self.resumed_from: int | None = None
        _seed_all(cfg.run.seed + 1 + ctx.rank)
        bf16 = cfg.run.precision == "bf16" or (cfg.run.precision == "auto" and ctx.device.type == "cuda")
        self.autocast = (torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16) if bf16
                         else contextlib.nullcontext())
        self.precision = "bf16" if bf16 else "fp32"

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = ckpt.rng_state()
        if self.ctx.world_size == 1:
            return [mine]
        got: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(got, mine)
        return got

    def save(self) -> Path | None:
        rngs = self._gather_rng()  # every rank takes part; rank 0 writes
        path = None
        if self.ctx.main:
            state = {
                "step": self.step, "epoch": self.epoch, "world_size": self.ctx.world_size,
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": rngs, "config": self.cfg.dump(),
            }
            path = ckpt.save(self.ckpt_dir, self.step, state, self.cfg.run.keep_last)
        if self.ctx.world_size > 1:
            dist.barrier()
        return path

    def resume(self) -> Path | None:
        path = ckpt.latest(self.ckpt_dir) if self.cfg.run.resume else None
        if path is None:
            return None
        state = ckpt.load(path)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        rngs = state.get("rng") or []
        if self.ctx.rank < len(rngs) and len(rngs) == self.ctx.world_size:
            ckpt.set_rng_state(rngs[self.ctx.rank])
        else:  # another world size: fresh per-rank streams, derived from the step so reruns agree
            _seed_all(self.cfg.run.seed + 1 + self.ctx.rank + 1000 * self.step)
        self.resumed_from = self.step
        return path

    # -- data --------------------------------------------------------------------------------------------------
    def make_loader(self) -> Loader:
        data = self.cfg.data.model_copy(update={"video_dtype": "uint8", "pin_memory": self.ctx.device.type == "cuda"})
        ld = Loader(None, data, rank=self.ctx.rank, world_size=self.ctx.world_size, epoch=self.epoch)
        if ld.split == "shard" and not data.resampled and len(ld.shards) < self.ctx.world_size:
            raise ValueError(f"{len(ld.shards)} shard(s) for {self.ctx.world_size} ranks with data.split=shard: "
                             f"some ranks would get no data; use data.split=auto/sample or data.resampled=true")
        return ld

    def _batches(self, ld: Loader):
        while True:
            n = 0
            for b in ld:
                n += 1
                self.epoch = ld.epoch
                yield b
            if n == 0:
                raise RuntimeError(f"rank {self.ctx.rank}: epoch {ld.epoch - 1} gave no batch "
                                   "(see the loader warnings)")

    def _first_batch(self, it) -> dict[str, Any]:
        """The first batch, with every rank confirming it has one (a rank without data would otherwise
        leave the others waiting in the first all-reduce)."""
        try:
            first = next(it)
            ok = 1
        except RuntimeError as e:
            log.error("%s", e)
            first, ok = None, 0
        if self.ctx.world_size > 1:
            flag = torch.tensor([ok], device=self.ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = int(flag.item())
        if not ok or first is None:
            raise RuntimeError("a rank got no training data; see the loader warnings (too few samples for the ranks? "
                               "filters too strict?)")
        return first

    # -- the loop ----------------------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.ctx.device
        video = to_unit(batch["video"].to(d, non_blocking=True))
        ref = to_unit(batch["ref"].to(d, non_blocking=True))
        return video, ref, batch["route"].to(d, non_blocking=True)

    def fit(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        resumed = self.resume()
        end = min(cfg.run.steps, cfg.run.stop_at or cfg.run.steps)
        writer = metrics = None
        if ctx.main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=self.step or None)
            metrics = open(self.out / "metrics.jsonl", "a")  # noqa: SIM115 (open for the whole run, closed below)
            if resumed is not None:
                record = {"event": "resume", "step": self.step, "epoch": self.epoch, "checkpoint": str(resumed),
                          "optimizer_sha256": ckpt.state_digest(self.opt.state_dict()),
                          "model_sha256": ckpt.state_digest(self.model.state_dict())}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                log.info("resumed from %s (step %d, epoch %d)", resumed, self.step, self.epoch)
        start_step = self.step
        ld = self.make_loader()
        it = self._batches(ld)
        fixed = self._first_batch(it) if self.step < end else None
        pending = fixed
        chars = cfg.model.characters
        acc = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, ce, st, layer sums
        ious = torch.zeros(chars, 2, dtype=torch.int64, device=ctx.device)
        n_acc, wait, t_log = 0, 0.0, time.perf_counter()
        first_loss = last_loss = None
        t_start, s_start = time.perf_counter(), self.step
        self.net.train()
        while self.step < end:
            t0 = time.perf_counter()
            if cfg.run.fixed_batch:
                batch = fixed
            elif pending is not None:
                batch, pending = pending, None
            else:
                batch = next(it)
            video, ref, route = self._inputs(batch)
            wait += time.perf_counter() - t0
            with self.autocast:
                out = self.net(video, ref)
            loss, parts = router_loss(out, route, self.geo.grid, cfg.loss)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            acc += torch.stack([loss.detach().double(), *(parts[k].double() for k in ("ce", "st", "layer"))])
            ious += iou_counts(out.logits.detach(), route, chars)
            n_acc += 1
            if self.step % cfg.run.log_every == 0 or self.step == end:
                rec = self._log(acc, ious, n_acc, wait, time.perf_counter() - t_log, video.shape[0], writer, metrics)
                first_loss = rec["loss"] if first_loss is None else first_loss
                last_loss = rec["loss"]
                acc.zero_()
                ious.zero_()
                n_acc, wait, t_log = 0, 0.0, time.perf_counter()
            if self.step % cfg.run.checkpoint_every == 0 or self.step == end:
                path = self.save()
                if ctx.main and path is not None:
                    log.info("step %d: checkpoint %s", self.step, path)
        elapsed = time.perf_counter() - t_start
        summary = {
            "step": self.step, "start_step": start_step, "resumed_from": self.resumed_from,
            "first_loss": first_loss, "last_loss": last_loss, "world_size": ctx.world_size,
            "device": str(ctx.device), "precision": self.precision,
            "steps_per_s": (self.step - s_start) / elapsed if elapsed > 0 and self.step > s_start else None,
            "loader": ld.stats(), "epoch": self.epoch,
        }
        if ctx.main:
            assert writer is not None and metrics is not None
            writer.close()
            metrics.close()
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _log(self, acc: torch.Tensor, ious: torch.Tensor, n: int, wait: float, elapsed: float, batch: int,
             writer, metrics) -> dict[str, Any]:
        ctx = self.ctx
        stats = torch.cat([acc, torch.tensor([n, wait, elapsed], dtype=torch.float64, device=acc.device)])
        if ctx.world_size > 1:
            dist.all_reduce(stats)
            dist.all_reduce(ious)
        w = ctx.world_size
        loss, ce, st, layer = (stats[:4] / stats[4]).tolist()
        steps = stats[4].item() / w
        iou = iou_from_counts(ious.cpu())
        valid = [v for v in iou if not math.isnan(v)]
        rec: dict[str, Any] = {
            "step": self.step, "epoch": self.epoch, "loss": loss, "ce": ce, "st": st, "layer": layer,
            **{f"iou_{k}": (None if math.isnan(v) else v) for k, v in enumerate(iou)},
            "miou": sum(valid) / len(valid) if valid else None,
            "lr": self.sched.get_last_lr()[0],
            "steps_per_s": steps / (stats[6].item() / w) if stats[6] > 0 else None,
            "data_wait": stats[5].item() / stats[6].item() if stats[6] > 0 else None,
        }
        rec["samples_per_s"] = rec["steps_per_s"] * batch * w if rec["steps_per_s"] else None
        if ctx.main:
            for k in ("loss", "ce", "st", "layer", "miou", *(f"iou_{i}" for i in range(len(iou)))):
                if rec.get(k) is not None:
                    writer.add_scalar(f"train/{k}", rec[k], self.step)
            writer.add_scalar("train/lr", rec["lr"], self.step)
            for k in ("steps_per_s", "samples_per_s", "data_wait"):
                if rec[k] is not None:
                    writer.add_scalar(f"perf/{k}", rec[k], self.step)
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            log.info("step %d loss %.4f (ce %.4f st %.4f layer %.5f) mIoU %s lr %.2e %.2f steps/s data wait %.0f%%",
                     self.step, loss, ce, st, layer, "n/a" if rec["miou"] is None else f"{rec['miou']:.3f}",
                     rec["lr"], rec["steps_per_s"] or 0.0, 100 * (rec["data_wait"] or 0.0))
        return rec


def _threads(cfg: TrainConfig, ctx: DistContext) -> None:
    if ctx.device.type == "cpu":
        torch.set_num_threads(cfg.run.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, ctx.local_world_size)))


def train(cfg: TrainConfig, *, ray_worker: bool = False) -> dict[str, Any]:
    """Train (or resume) the router as configured; returns a summary (complete on rank 0)."""
    ctx = setup_distributed(cfg, ray_worker=ray_worker)
    _threads(cfg, ctx)
    try:
        return Trainer(cfg, ctx).fit()
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()


# -- Ray Train ---------------------------------------------------------------------------------------------------
def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute: Ray workers (and other nodes) do not share the driver's working directory."""
    import fsspec

    def fix(p: str) -> str:
        return p if "://" in p else str(Path(p).expanduser().absolute())

    shards = [s if fsspec.core.split_protocol(s)[0] else fix(s) for s in cfg.data.shards]
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"shards": shards}),
                                  "run": cfg.run.model_copy(update={"out_dir": fix(cfg.run.out_dir)})})


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = TrainConfig.model_validate(config["config"])
    summary = train(cfg, ray_worker=True)
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})


def launch_ray(cfg: TrainConfig) -> dict[str, Any]:
    """Run :func:`train` on ``launch.ray.num_workers`` Ray Train workers; returns rank 0's summary."""
    import ray
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = absolute_paths(cfg)
    r = cfg.launch.ray
    if not ray.is_initialized():
        ray.init(address=r.address, log_to_driver=True)
    storage = r.storage_path or str(Path(cfg.run.out_dir) / "ray")
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": cfg.dump()},
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker=dict(r.resources_per_worker)),
        run_config=RayRunConfig(name="mtcc-router", storage_path=storage),
    )
    trainer.fit()
    summary_path = Path(cfg.run.out_dir) / "summary.json"
    return json.loads(summary_path.read_text()) if summary_path.exists() else {}
