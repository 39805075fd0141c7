"""``mtcc bench --gpu`` on the CPU with the reduced models: every model stage swept through its real code
path, and the projection checked against the formula recomputed here from the JSON's own numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mtcc.benchmarks.gpu import plan, projection
from mtcc.pipeline.cli import main as cli_main

MODEL_STAGES = ("separate", "asd", "sync", "masks", "audio_emb", "caption")


def gpu_seconds_per_raw_second(doc: dict, keep: dict) -> dict[str, float]:
    """Per model stage, the GPU seconds one raw second costs it, from first principles: walk the pipeline order
    carrying the fraction of raw seconds still in the funnel; each model stage costs (that fraction) x (its
    fastest measured GPU seconds per clip second)."""
    in_funnel = 1.0
    terms = {}
    for stage in doc["order"]:
        if stage in doc["stages"]:
            rows = [r for r in doc["stages"][stage]["sweep"] if not r["oom"]]
            terms[stage] = in_funnel * min(r["seconds"] / r["clip_seconds"] for r in rows)
        in_funnel *= keep[stage]
    return terms


def hours_per_gpu_hour(doc: dict, keep: dict) -> float:
    """Hours of raw video per GPU-hour: one over the GPU seconds a raw second costs all model stages."""
    return 1.0 / sum(gpu_seconds_per_raw_second(doc, keep).values())


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench-gpu") / "bench.json"
    rc = cli_main(["bench", "--gpu", "--device", "cpu", "--scale", "tiny", "--clip-seconds", "0.5",
                   "--batches", "1,2", "--new-tokens", "4", "--threads", "1", "--keep", "sync=0.5",
                   "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), out


def test_every_model_stage_swept(bench_json):
    doc, _ = bench_json
    assert set(doc["stages"]) == set(MODEL_STAGES)
    for name in MODEL_STAGES:
        st = doc["stages"][name]
        assert "error" not in st, st.get("traceback")
        assert st["params"] > 0
        rows = st["sweep"]
        assert [r["batch"] for r in rows] == [1, 2], name
        for r in rows:
            assert not r["oom"]
            assert r["seconds"] > 0 and r["seconds_per_forward"] > 0, (name, r)
            assert r["clip_seconds"] > 0 and r["clip_s_per_s"] > 0 and r["forwards"] >= 1
            assert r["clip_seconds"] == pytest.approx(r["clips"] * doc["clip_seconds"])
            # no GPU here: no memory peak, no utilisation samples
            assert r["peak_mem_bytes"] is None and r["gpu_util_mean"] is None
        assert st["best"]["batch"] in (1, 2)
    # the caption stage decoded exactly the forced number of tokens
    assert all(r["new_tokens"] == 4 for r in doc["stages"]["caption"]["sweep"])


def test_projection_is_the_formula(bench_json):
    doc, _ = bench_json
    assert doc["keep"]["sync"] == 0.5  # the --keep of the measuring run
    assert doc["keep"]["segment"] == projection.KEEP["segment"]
    want = hours_per_gpu_hour(doc, doc["keep"])
    got = doc["projection"]["raw_video_hours_per_gpu_hour"]
    assert got == pytest.approx(want, rel=1e-12)
    assert doc["projection"]["partial"] is False
    # each stage's term, recomputed
    assert doc["projection"]["terms"] == pytest.approx(gpu_seconds_per_raw_second(doc, doc["keep"]), rel=1e-12)


def test_keep_override_changes_projection(bench_json, tmp_path):
    doc, path = bench_json
    old = doc["projection"]["raw_video_hours_per_gpu_hour"]

    # segment comes before every model stage: halving what it keeps halves the load, doubling the hours
    seg = tmp_path / "seg.json"
    assert cli_main(["bench", "--gpu", "--reproject", str(path), "--keep", "sync=0.5",
                     "--keep", f"segment={doc['keep']['segment'] / 2}", "--json", str(seg)]) == 0
    assert json.loads(seg.read_text())["projection"]["raw_video_hours_per_gpu_hour"] == pytest.approx(2 * old)

    # masks sits between model stages: only audio_emb and caption see less
    mid = tmp_path / "mid.json"
    assert cli_main(["bench", "--gpu", "--reproject", str(path), "--keep", "masks=0.25", "--json", str(mid)]) == 0
    new = json.loads(mid.read_text())
    keep = dict(doc["keep"], masks=0.25, sync=projection.KEEP["sync"])  # a reprojection starts from the defaults
    assert new["keep"] == keep
    assert new["projection"]["raw_video_hours_per_gpu_hour"] == pytest.approx(hours_per_gpu_hour(doc, keep), rel=1e-12)
    assert not math.isclose(new["projection"]["raw_video_hours_per_gpu_hour"], old)


def test_project_known_answer():
    order = ["probe", "segment", "separate", "sync", "caption", "write"]
    keep = {"probe": 1.0, "segment": 0.5, "separate": 1.0, "sync": 0.25, "caption": 1.0, "write": 1.0}
    # reach: separate 0.5, sync 0.5, caption 0.125 -> 0.5*2 + 0.5*4 + 0.125*8 = 4 GPU s per raw s
    p = projection.project({"separate": 2.0, "sync": 4.0, "caption": 8.0}, keep, order)
    assert p["gpu_s_per_raw_s"] == pytest.approx(4.0)
    assert p["raw_video_hours_per_gpu_hour"] == pytest.approx(0.25)
    assert p["reach"] == {"separate": 0.5, "sync": 0.5, "caption": 0.125}


def test_bad_arguments_refused(bench_json):
    order = list(plan.DEFAULT_ORDER)
    for bad in (["nosuch=0.5"], ["sync"], ["sync=1.5"], ["sync=x"]):
        with pytest.raises(plan.BenchError):
            projection.parse_keep(bad, order)
    with pytest.raises(plan.BenchError):
        plan.parse_batches(["caption=0,2"], plan.SWEEPS_FULL)
    assert plan.parse_batches(["caption=4,2", "8"], plan.SWEEPS_FULL)["sync"] == [8]
    assert plan.parse_batches(["caption=4,2"], plan.SWEEPS_FULL)["caption"] == [2, 4]
    _, path = bench_json
    assert cli_main(["bench", "--gpu", "--reproject", str(path), "--keep", "sync=2"]) == 2
