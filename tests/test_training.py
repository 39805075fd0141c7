"""The router trainer: model pieces (3D RoPE, character equivariance), loss terms, checkpoints, the config,
and end to end: shards built by the real pipeline, 2-process DDP with torchrun (loss down on a fixed batch,
stop and resume bit-for-bit), Ray Train with 2 workers, and the `mtcc train` command."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcc.media.geometry import LatentGeometry
from mtcc.pipeline.errors import ConfigError
from mtcc.training import checkpoint as ckpt
from mtcc.training.config import LossConfig, ModelConfig, load_train_config
from mtcc.training.losses import iou_counts, iou_from_counts, layer_variance, router_loss, st_gradient
from mtcc.training.model import EmbeddingRouter, RouterOutput, apply_rope, rope_angles, rope_dims
from mtcc.training.synthetic import write_shards

REPO = Path(__file__).resolve().parents[1]
SMALL = LatentGeometry(frames=9, height=64, width=96)
# a CPU run small enough for a 2-core CI box; every setting a user would pass with --set
CPU_SET = ["data.geometry={frames: 9, height: 128, width: 192}", "data.ref_size=48", "data.num_workers=0",
           "data.batch_size=2", "data.shuffle_buffer=0", "model.dim=32", "model.heads=2", "model.layers=2",
           "model.face_channels=[8, 16]", "model.patch_hidden=8", "optim.lr=3e-3", "optim.warmup_steps=0",
           "run.cpu_threads=1", "run.log_every=1"]


def small_model(layers: int = 2) -> EmbeddingRouter:
    torch.manual_seed(0)
    return EmbeddingRouter(ModelConfig(dim=32, heads=2, layers=layers, face_channels=[8, 16], patch_hidden=8), SMALL)


# -- model ------------------------------------------------------------------------------------------------------
def test_rope_3d_scores_depend_only_on_relative_position():
    grid, hd = (5, 6, 7), 16
    angles = rope_angles(grid, hd, 10000.0)
    cos, sin = angles.cos().float(), angles.sin().float()
    torch.manual_seed(0)
    q, k = torch.randn(hd), torch.randn(hd)
    n = grid[0] * grid[1] * grid[2]
    rq, rk = apply_rope(q.expand(n, hd), cos, sin), apply_rope(k.expand(n, hd), cos, sin)

    def idx(t, h, w):
        return (t * grid[1] + h) * grid[2] + w

    for (a, b), shift in [(((0, 1, 2), (2, 3, 1)), (1, 2, 3)), (((1, 0, 0), (0, 5, 6)), (3, 0, 0))]:
        base = rq[idx(*a)] @ rk[idx(*b)]
        moved = rq[idx(*(x + s for x, s in zip(a, shift)))] @ rk[idx(*(x + s for x, s in zip(b, shift)))]
        assert torch.allclose(base, moved, atol=1e-4)
    # and it does depend on the offset along every axis
    for d in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        assert not torch.allclose(rq[0] @ rk[0], rq[0] @ rk[idx(*d)], atol=1e-3)
    assert sum(rope_dims(64)) == 64 and rope_dims(64) == (16, 24, 24)


def test_router_shapes_and_character_equivariance():
    m = small_model(layers=3).eval()
    video, ref = torch.rand(2, 3, 9, 64, 96) * 2 - 1, torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out = m(video, ref)
        swapped = m(video, ref.flip(1))
    assert out.logits.shape == (2, SMALL.tokens, 3) and out.layer_logits.shape == (3, 2, SMALL.tokens, 3)
    assert torch.equal(out.logits, out.layer_logits[-1])
    # swapping the reference images swaps the two character classes, background untouched
    assert torch.allclose(swapped.logits, out.logits[..., [0, 2, 1]], atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(1, 3, 13, 64, 96), ref[:1])


def test_loss_terms_on_planted_predictions():
    grid = SMALL.grid
    n = SMALL.tokens
    route = torch.full((1, n), -1, dtype=torch.int8)
    route[0, : n // 3] = 0
    route[0, n // 3: n // 2] = 1
    perfect = torch.nn.functional.one_hot(route.long() + 1, 3).float() * 30
    out = RouterOutput(perfect, perfect.expand(4, -1, -1, -1))
    total, parts = router_loss(out, route, grid, LossConfig())
    assert parts["ce"] < 1e-6 and parts["layer"] == 0 and parts["st"] > 0
    flat = torch.zeros(1, n, 3)
    assert st_gradient(flat.softmax(-1), grid) == 0
    assert layer_variance(torch.stack([flat, flat + 5])) == 0  # the same distribution in every layer
    assert layer_variance(torch.stack([flat, perfect])) > 0
    assert torch.isclose(total, parts["ce"] + 0.001 * parts["st"], atol=1e-6)
    counts = iou_counts(perfect, route, 2)
    assert iou_from_counts(counts) == [1.0, 1.0]
    half = perfect.clone()
    half[0, : n // 6] = torch.tensor([30.0, 0, 0])  # half of character 0 predicted as background
    assert iou_from_counts(iou_counts(half, route, 2))[0] == pytest.approx(0.5, abs=0.02)


# -- config and checkpoints ----------------------------------------------------------------------------------------
def test_train_config_is_data_only_and_strict(tmp_path):
    cfg = load_train_config(REPO / "configs" / "train.yaml")
    assert cfg.data.geometry.tokens == 17550 and cfg.data.audio_margin == 2
    assert (cfg.loss.ce, cfg.loss.st, cfg.loss.layer) == (1.0, 0.001, 8.0)
    small = load_train_config(REPO / "configs" / "train.yaml", CPU_SET, shards=["x"])
    assert small.data.geometry.grid == (3, 8, 12) and small.data.shards == ["x"]
    with pytest.raises(ConfigError, match="allowed: .*lr"):
        load_train_config(None, ["optim.learning_rate=1"])
    evil = tmp_path / "evil.yaml"
    evil.write_text("run: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(evil)
    with pytest.raises(ConfigError, match="temporal_stride"):
        load_train_config(None, ["data.geometry.frames=10"])


def test_checkpoints_are_atomic_weights_only_and_pruned(tmp_path):
    m = small_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.zeros(1, 3, 9, 64, 96), torch.zeros(1, 2, 3, 16, 16)).logits.sum().backward()
    opt.step()
    state = {"step": 3, "model": m.state_dict(), "optimizer": opt.state_dict(), "rng": [ckpt.rng_state()],
             "config": {"a": [1, 2.5, None, "x"]}}
    want = (torch.rand(3), np.random.rand(3), random.random())  # what the generators give from the saved state
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        ckpt.save(root, step, {**state, "step": step}, keep_last=2)
    (root / ".step-00000009.pt.tmp").write_bytes(b"partial")  # a write killed half way
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 3]
    loaded = ckpt.load(ckpt.latest(root))  # weights_only=True inside
    assert loaded["step"] == 3
    assert ckpt.state_digest(loaded["optimizer"]) == ckpt.state_digest(opt.state_dict())
    assert ckpt.state_digest(loaded["model"]) == ckpt.state_digest(m.state_dict())
    ckpt.set_rng_state(loaded["rng"][0])  # torch's, numpy's and Python's generators, each back where it was
    assert torch.equal(torch.rand(3), want[0])
    assert np.array_equal(np.random.rand(3), want[1]) and random.random() == want[2]


# -- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train_synth") / "out"
    write_shards(out, 2, 2, frames=[30, 20], size=(192, 128), geometry=SMALL)
    return out


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_mtcc_train_single_process_learns_planted_masks_logs_and_resumes(synth_shards, tmp_path, capsys):
    """`mtcc train` in one process on the synthetic shards (planted ellipse masks): the router learns them
    on a fixed batch, TensorBoard and metrics.jsonl get every step, a longer rerun resumes."""
    from mtcc.pipeline.cli import main

    out_dir = tmp_path / "run"
    sets = [*CPU_SET, f"run.out_dir={out_dir}", "run.checkpoint_every=10", "run.fixed_batch=true", "data.num_workers=1",
            "data.geometry={frames: 9, height: 64, width: 96}"]
    args = ["train", "train", "--shards", str(synth_shards), *(a for s in sets for a in ("--set", s))]
    assert main([*args, "--set", "run.steps=30"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 30
    assert [s for s, _ in ckpt.list_checkpoints(out_dir / "checkpoints")] == [10, 20, 30]
    recs = _metrics(out_dir)
    assert recs[-1]["loss"] < 0.3 * recs[0]["loss"]
    assert recs[-1]["iou_0"] > 0.8 and recs[-1]["iou_1"] > 0.8, recs[-1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/ce", "train/st", "train/layer", "train/miou", "train/lr",
            "perf/steps_per_s", "perf/data_wait"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 31))
    # a longer run on the same out_dir picks the last checkpoint up
    assert main([*args, "--set", "run.steps=33"]) == 0
    recs = _metrics(out_dir)
    resume = [r for r in recs if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 30
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 34))


def test_every_parameter_gets_a_gradient():
    """DDP needs every parameter in the loss: the last layer has no (unused) update path."""
    m = small_model(layers=3)
    out = m(torch.rand(1, 3, 9, 64, 96), torch.rand(1, 2, 3, 16, 16))
    loss, _ = router_loss(out, torch.randint(-1, 2, (1, SMALL.tokens)), SMALL.grid, LossConfig())
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


# -- the pipeline's own shards (conftest.pipeline_shards), 2 processes -------------------------------------------
def mtcc_train(shards: Path, out_dir: Path, *sets: str, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mtcc.pipeline.cli", "train", "train", "--shards", str(shards),
           "--launcher", launcher, "--nproc-per-node", "2",
           *(a for s in [*CPU_SET, f"run.out_dir={out_dir}", *sets] for a in ("--set", s))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


@pytest.mark.slow
def test_ddp_torchrun_on_pipeline_shards_learns_and_resumes_exactly(pipeline_shards, tmp_path):
    """2 processes (gloo): the loss on a fixed batch goes down over 30 steps; a run stopped at step 15 and
    resumed continues from step 15 with the saved optimizer state, and reproduces the uninterrupted run."""
    from mtcc.training.data import loader

    # the shards are real pipeline output with everything a batch needs
    batch = next(iter(loader(str(pipeline_shards), geometry={"frames": 9, "height": 128, "width": 192},
                             num_workers=0, ref_size=48)))
    assert batch["route"].shape == (1, 3 * 8 * 12) and bool(batch["a_ac_known"].all())
    common = ["run.steps=30", "run.checkpoint_every=15", "run.keep_last=2", "run.fixed_batch=true"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    mtcc_train(pipeline_shards, straight, *common)
    losses = [r["loss"] for r in _metrics(straight) if "loss" in r]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0] and sum(losses[-5:]) < sum(losses[:5]) / 2, losses
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 30

    mtcc_train(pipeline_shards, stopped, *common, "run.stop_at=15")
    assert [s for s, _ in ckpt.list_checkpoints(stopped / "checkpoints")] == [15]
    saved = ckpt.load(stopped / "checkpoints" / "step-00000015.pt")
    assert saved["step"] == 15 and len(saved["rng"]) == 2
    mtcc_train(pipeline_shards, stopped, *common)
    recs = _metrics(stopped)
    resume = [r for r in recs if r.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 15
    assert resume[0]["optimizer_sha256"] == ckpt.state_digest(saved["optimizer"])
    assert resume[0]["model_sha256"] == ckpt.state_digest(saved["model"])
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 31))
    # same optimizer state at 15 as the uninterrupted run, and the same losses after it
    other = ckpt.load(straight / "checkpoints" / "step-00000015.pt")
    assert ckpt.state_digest(other["optimizer"]) == ckpt.state_digest(saved["optimizer"])
    resumed = [r["loss"] for r in recs if "loss" in r]
    assert resumed == pytest.approx(losses, rel=1e-5)


@pytest.mark.slow
def test_ray_train_two_workers(synth_shards, ray_local, tmp_path):
    """Ray Train TorchTrainer with 2 CPU workers (gloo) runs the same train() and checkpoints."""
    from mtcc.training.config import load_train_config
    from mtcc.training.trainer import launch_ray

    cfg = load_train_config(REPO / "configs" / "train.yaml",
                            [*CPU_SET, f"run.out_dir={tmp_path / 'ray_run'}", "run.steps=4", "run.checkpoint_every=2",
                             "launch.ray.num_workers=2", "launch.ray.use_gpu=false",
                             "launch.ray.resources_per_worker={CPU: 0.5}"], shards=[str(synth_shards)])
    summary = launch_ray(cfg)
    assert summary["step"] == 4 and summary["world_size"] == 2
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "ray_run" / "checkpoints")] == [2, 4]
    assert len([r for r in _metrics(tmp_path / "ray_run") if "loss" in r]) == 4
