"""`mtcc bench` (benchmarks/harness.py): the decode audit's frame accounting on a video whose key frames we
planted, the per-stage thread count of in-process runs, and the harness's report on the spine profile."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtcc.benchmarks.decode_audit import DecodeAudit, StreamIndex, audited

GOP, N, FPS = 10, 60, 25


@pytest.fixture(scope="module")
def gop_video(tmp_path_factory) -> Path:
    """60 frames at 25 fps, a key frame exactly every 10 frames, no B-frames: decode costs are known."""
    p = tmp_path_factory.mktemp("gop") / "gop.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={FPS}",
                    "-frames:v", str(N), "-c:v", "libx264", "-g", str(GOP), "-keyint_min", str(GOP),
                    "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p", str(p)], check=True)
    return p


def test_stream_index_reads_planted_key_frames(gop_video):
    idx = StreamIndex.probe(str(gop_video))
    assert idx.n == N
    assert idx.keys.tolist() == list(range(0, N, GOP))
    assert idx.times[1] == pytest.approx(1 / FPS, abs=1e-3)


def test_decode_cost_model(gop_video):
    idx = StreamIndex.probe(str(gop_video))
    assert idx.sequential_cost(list(range(N))) == N  # dense: every frame once
    # every 5th frame: a new GOP's key frame is a seek target (frames 6..9 are skipped), then forward to +5
    assert idx.sequential_cost(list(range(0, N, 5))) == (1 + 5) * (N // GOP)
    # one frame in the middle of a GOP: its key frame and everything up to it
    assert idx.sequential_cost([25]) == 25 - 20 + 1
    # going back re-seeks to the key frame at or before the target
    assert idx.sequential_cost([25, 12]) == 6 + (12 - 10 + 1)
    # ffmpeg -ss 1.0 -t 0.4: starts at frame 25, seeks to key 20, ends at frame 35
    assert idx.range_cost(1.0, 0.4, None) == (35 - 20, 35 - 25)


def test_audit_counts_what_stages_read(gop_video):
    from mtcc.facts import ProbeResult
    from mtcc.media.video import open_frames
    from mtcc.stages.base import Candidate
    from mtcc.stages.probe import Probe

    c = Candidate(key="v", video_id="v", source=str(gop_video), shard=0)
    Probe().run_batch([c])
    audit = DecodeAudit()
    with audited(audit):
        audit.stage = "reader"
        vf = open_frames(str(gop_video), c.fact(ProbeResult).to_json(), None)
        got = [i for idx, _ in vf.batches([3, 4, 25], 8) for i in idx]
        audit.stage = "encoder"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", "1.0", "-t", "0.4", "-i", str(gop_video),
                        "-c:v", "libx264", str(gop_video.with_name("cut.mp4"))], check=True)
    assert got == [3, 4, 25]
    r, e = audit.by_stage["reader"], audit.by_stage["encoder"]
    assert (r.needed, r.decoded) == (3, 5 + 6)  # 0..4 from the first key frame, then 20..25
    assert (e.needed, e.decoded) == (10, 15)
    s = audit.summary(clips=1)
    assert s["frames_needed_distinct"] == 2 + 10  # frame 25 is needed by both: counted once
    assert s["ratio_decoded_per_needed"] == pytest.approx(26 / 12, abs=1e-3)
    # the hooks are gone afterwards
    from mtcc.media.video import VideoFrames

    assert VideoFrames.batches.__qualname__ == "VideoFrames.batches"


def test_stage_threads_apply_and_restore():
    import torch

    from mtcc.pipeline.executor import stage_thread_count, stage_threads
    from mtcc.stages import STAGES

    stage = STAGES["probe"].model_validate({"resources": {"num_cpus": 0.05}})
    assert stage_thread_count(stage) == 1  # a fractional CPU share is one thread, as on a Ray actor
    wide = STAGES["probe"].model_validate({"resources": {"num_cpus": 0.05, "threads": 3}})
    session = torch.get_num_threads()
    torch.set_num_threads(2)  # neither stage's count (the suite runs at 1), so that each restore shows
    try:
        with stage_threads(wide):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2
        with stage_threads(stage):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(session)


def test_stage_threads_of_a_model_free_stage_never_import_torch():
    """In a fresh process (this one has torch): the in-process runner, as its Ray actor, pays for torch only
    when a stage's model brought it."""
    code = textwrap.dedent("""
        import sys
        from mtcc.pipeline.executor import stage_threads
        from mtcc.stages import STAGES
        with stage_threads(STAGES["probe"].model_validate({"resources": {"num_cpus": 0.05, "threads": 3}})):
            inside = "torch" in sys.modules
        print(inside, "torch" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_bench_cli_spine(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "bench", "--config", "spine", "--copies", "1",
                          "--no-builds", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    assert list(rep["stages"]) == ["probe", "clip", "cut", "write"]
    funnel = rep["end_to_end_inprocess"]["funnel"]
    assert funnel["inputs"] == rep["inputs"] == rep["stages"]["probe"]["candidates_in"]
    # every input ends kept or rejected; the sample set has broken files, so some are rejected by probe
    assert funnel["videos_rejected"] > 0 and funnel["kept_clips"] > 0
    assert rep["ratios"]["filter_vs_ffmpeg_decode"]["value"] == pytest.approx(
        rep["filter_stages_s"] / rep["ffmpeg_decode_s"], rel=0.01)
    d = rep["decode"]
    assert d["stages"]["cut"]["frames_needed"] > 0
    assert "write" not in d["stages"]  # the write stage packs what the cut made: it decodes nothing
    assert d["frames_decoded"] >= d["frames_needed_distinct"] > 0
    assert rep["ratios"]["ray_vs_inprocess"]["met"] is None  # not measured with --no-builds, and says so
    assert all(r["peak_rss_mb"] and r["peak_rss_mb"] > 0 for r in rep["stages"].values())
    assert "filter_vs_ffmpeg_decode" in res.stdout


@pytest.mark.slow
def test_ray_actor_threads(ray_local, tmp_path):
    """A stage actor runs torch at the stage's thread count (the same as in-process) even when torch was
    imported after the actor started; a stage without a model never imports torch."""
    import ray

    from mtcc.pipeline.executor import WorkspaceSpec
    from mtcc.pipeline.ray_actor import StageActor
    from mtcc.stages.probe import Probe

    actor_cls = ray.remote(StageActor)
    work = WorkspaceSpec(str(tmp_path / "work"), 1 << 30)
    wide = actor_cls.options(num_cpus=0.05).remote(Probe, {"resources": {"num_cpus": 0.05, "threads": 3}}, work)
    plain = actor_cls.options(num_cpus=0.05).remote(Probe, {"resources": {"num_cpus": 0.05}}, work)

    def torch_state(self):  # noqa: ANN001 - runs inside the actor
        import sys

        return "torch" in sys.modules, (sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None)

    def import_torch(self):  # noqa: ANN001 - what a model stage's code does in its actor
        import torch

        return torch.get_num_threads()

    try:
        # a stage without a model: its actor never imported torch
        assert ray.get(plain.__ray_call__.remote(torch_state), timeout=120) == (False, None)
        for actor, want in ((wide, 3), (plain, 1)):
            ray.get(actor.__ray_call__.remote(import_torch), timeout=120)
            ray.get(actor.process.remote([]), timeout=120)  # every batch runs at the stage's count
            assert ray.get(actor.__ray_call__.remote(torch_state), timeout=120) == (True, want)
    finally:
        ray.kill(wide)
        ray.kill(plain)


ACTOR_THEN_TORCH = """
import sys
from mtcc.pipeline.executor import WorkspaceSpec
from mtcc.pipeline.ray_actor import StageActor
from mtcc.stages.probe import Probe
if sys.argv[2] == "actor":
    StageActor(Probe, {"resources": {"num_cpus": 0.05, "threads": 2}}, WorkspaceSpec(sys.argv[1], 1 << 30),
               clear_workspace=False).ready()
import torch  # what a model stage's setup does: OpenMP reads its settings as torch loads it
"""


@pytest.mark.parametrize("policy, spins", [(None, "0"), ("ACTIVE", "30000000000")], ids=["unset", "node_says_active"])
def test_stage_actor_openmp_threads_sleep_while_they_wait(policy, spins, tmp_path):
    """A stage actor's OpenMP runtime does not spin while it waits (the cores are its neighbours'), unless the
    node's environment sets a policy. Seen as the runtime itself reports its spin count (OMP_DISPLAY_ENV), in
    a fresh interpreter; the same interpreter without the actor spins (300000), so the test sees the actor's doing."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "VERBOSE"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy

    def spin_count(mode: str) -> str:
        run = subprocess.run([sys.executable, "-c", ACTOR_THEN_TORCH, str(tmp_path / mode), mode], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        found = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", run.stderr)
        assert len(found) == 1, run.stderr[-2000:]
        return found[0]

    assert spin_count("actor") == spins
    if policy is None:
        assert spin_count("plain") == "300000"  # libgomp's own default: it spins
