"""Read once, decode once: the node-local source cache, the clip cut made once, and payload that stays off the
driver. Sources are served by a local HTTP server that serves byte ranges like an object store and counts
every byte it sends (benchmarks/http_source.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from mtcc.benchmarks.http_source import CountingServer
from mtcc.manifests.report_data import read_manifests
from mtcc.pipeline.build import build
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.pipeline.inputs import fingerprint
from mtcc.storage.workspace import NodeWorkspace, WorkspaceError

MODEL_STAGES = ("separate", "sync", "masks", "audio_emb", "caption")


# -- the node-local source cache ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(sample_dir, real_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    for name in ("two_talk.mp4", "scene_events.mp4"):
        shutil.copy2(sample_dir / name, d / name)
    shutil.copy2(real_dir / "debate_split_screen.avi", d / "debate_split_screen.avi")
    return d


def test_concurrent_workers_fetch_a_source_once(served, tmp_path):
    size = (served / "two_talk.mp4").stat().st_size
    ws = NodeWorkspace(tmp_path / "w")
    seen: list[tuple[str, str | None]] = []
    with CountingServer(served) as srv:
        url = srv.url("two_talk.mp4")
        planned_fp = fingerprint(url)[1]
        srv.sent.clear()  # what the plan read is not the fetch's

        def read() -> None:
            with ws.source(url, planned_fp) as f:
                seen.append((hashlib.sha256(Path(f.path).read_bytes()).hexdigest(), f.sha256))

        workers = [threading.Thread(target=read) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert srv.sent["two_talk.mp4"] == size  # four readers, one fetch
    want = hashlib.sha256((served / "two_talk.mp4").read_bytes()).hexdigest()
    # every reader opened the whole file, and the sha256 computed while fetching says what it holds
    assert len(seen) == 4 and set(seen) == {(want, want)}


def test_cache_stays_within_its_budget_and_never_evicts_a_source_in_use(served, tmp_path):
    sizes = {n: (served / n).stat().st_size for n in ("two_talk.mp4", "scene_events.mp4")}
    ws = NodeWorkspace(tmp_path / "w", source_bytes=max(sizes.values()) + 1000)  # room for one at a time
    with CountingServer(served) as srv:
        a, b = srv.url("two_talk.mp4"), srv.url("scene_events.mp4")
        fa, fb = fingerprint(a)[1], fingerprint(b)[1]
        srv.sent.clear()
        with ws.source(a, fa):
            pass
        with ws.source(b, fb):  # a is not in use: it makes room
            assert ws.source_usage() == sizes["scene_events.mp4"]
            ws.evict_sources([ws_key(b, fb)])  # b is being read: eviction leaves it
            assert ws.source_usage() == sizes["scene_events.mp4"]
        ws.evict_sources([ws_key(b, fb)])  # now it goes
        assert ws.source_usage() == 0
        with ws.source(a, fa):  # evicted, so fetched again: the budget is a bound, not a hint
            pass
        assert srv.sent["two_talk.mp4"] == 2 * sizes["two_talk.mp4"]
    small = NodeWorkspace(tmp_path / "small", source_bytes=1000)
    with CountingServer(served) as srv, pytest.raises(WorkspaceError, match="run.source_cache_gb"):
        with small.source(srv.url("two_talk.mp4"), fingerprint(srv.url("two_talk.mp4"))[1]):
            pass


def ws_key(url: str, fp: str) -> str:
    from mtcc.storage.workspace import source_key

    return source_key(url, fp)


def test_local_sources_are_read_in_place(sample_dir, tmp_path):
    ws = NodeWorkspace(tmp_path / "w")
    with ws.source(str(sample_dir / "two_talk.mp4")) as f:
        assert f.path == str(sample_dir / "two_talk.mp4") and f.sha256 is None
    assert not (tmp_path / "w").exists()


def test_clip_eviction_removes_only_the_named_clips_and_survives_a_removed_workspace(tmp_path):
    ws = NodeWorkspace(tmp_path / "w")
    for key in ("vid-a_0000", "vid-a_0001", "vid-a_00001"):
        d = ws.clip_dir(key, "0123456789abcdef0123")
        d.mkdir(parents=True)
        (d / "clip.mp4").write_bytes(b"x")
    ws.evict_clips(["vid-a_0000"])
    assert sorted(p.name.rsplit("-", 1)[0] for p in ws.clips.iterdir()) == ["vid-a_00001", "vid-a_0001"]
    ws.clear()  # the end of the run empties the workspace while an eviction may still be on its way
    ws.evict_clips(["vid-a_0001"])
    assert not ws.root.exists()


# -- a build from URLs ----------------------------------------------------------------------------------

def light_cfg(tiny_overrides, *extra):
    """The offline profile without its slowest model stages (separation, sync, masks, audio embeddings,
    captions: they read no source); probe, faces and cut read it, asd and the scores on the clips stay on."""
    off = [f"stages.{s}.enabled=false" for s in MODEL_STAGES]
    return load_config(resolve_config("offline"), [*tiny_overrides, *off, "stages.prescore.reject=false", *extra])


@pytest.fixture(scope="module")
def url_build(served, tmp_path_factory, ray_local, tiny_overrides):
    root = tmp_path_factory.mktemp("urlbuild")
    work = root / "work"
    cfg = light_cfg(tiny_overrides, f"run.work_dir={work}")
    with CountingServer(served) as srv:
        listing = root / "inputs.txt"
        listing.write_text("".join(srv.url(p.name) + "\n" for p in sorted(served.iterdir())))
        res = build(cfg, [str(listing)], root / "out", runner="ray", progress=False)
        sent = dict(srv.sent)
    assert not res.shards_failed
    return root, res, sent, work


def test_each_url_source_crosses_the_network_once(url_build, served):
    root, res, sent, work = url_build
    sizes = {p.name: p.stat().st_size for p in served.iterdir()}
    ratios = {n: sent[n] / sizes[n] for n in sizes}
    # one fetch per file, plus the plan's 2 x 16 KiB content fingerprint
    assert all(r <= 1.2 for r in ratios.values()), ratios
    assert sum(sent.values()) <= 1.2 * sum(sizes.values())
    rows = read_manifests(root / "out").to_pylist()
    assert sum(r["status"] == "kept" for r in rows) >= 3  # the sources were used, not just fetched
    assert not work.exists() or not any(work.rglob("*.data"))  # the cache goes with the run


def test_url_build_gives_the_samples_of_a_local_build(url_build, served, tmp_path, tiny_overrides):
    root, _, _, _ = url_build
    local = tmp_path / "local"
    build(light_cfg(tiny_overrides), [str(served)], local, runner="inprocess", progress=False)

    def by_clip(out: Path) -> dict[tuple[str, int], dict]:
        import webdataset as wds

        rows = {r["key"]: r for r in read_manifests(out).to_pylist()}
        ds = wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)
        return {(Path(rows[s["__key__"]]["source"]).name, rows[s["__key__"]]["clip_idx"]): s for s in ds}

    url_samples, local_samples = by_clip(root / "out"), by_clip(local)
    assert url_samples.keys() == local_samples.keys() and len(url_samples) >= 3
    for k, s in url_samples.items():
        for member in ("mp4", "mix.flac", "faces.json", "ref0.jpg", "ref1.jpg"):
            assert s[member] == local_samples[k][member], (k, member)


def test_the_driver_routes_references_not_members(url_build):
    """Every member travels from the worker that made it to the commit: the driver receives candidates
    without member bytes (counted by the executor), and fetches each member once, at commit."""
    root, res, _, _ = url_build
    d = res.driver_bytes
    assert d["member_bytes_received"] == 0
    tar_bytes = sum(p.stat().st_size for p in (root / "out" / "shards").glob("*.tar"))
    # what the commit fetched is the members the shards hold (the tar adds headers and the meta)
    assert 0.8 * tar_bytes <= d["member_bytes_resolved"] <= tar_bytes


# -- the cut --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cut_clip(sample_dir):
    from conftest import clips_through_stages

    clips = clips_through_stages(sample_dir / "two_cross.mp4", max_seconds=10.0)
    assert len(clips) == 1 and clips[0].pending, [(c.key, c.message) for c in clips]
    return clips[0]


def test_cut_media_line_up_with_the_delivered_mp4(cut_clip, tmp_path):
    """The shared crops the cut writes (from its own raw picture pipe, not from the mp4) are cut from the very
    pictures the mp4 encodes: on every clip frame they differ from the decoded mp4, cropped with the same
    boxes, by compression only (measured: at most 1.8 of 255 on average), and clearly less than from the
    neighbouring frames (at most 0.63 of that; the two characters walk across). A node the cut did not run
    on rebuilds them from the mp4, and gets the same."""
    from conftest import fresh

    from mtcc.facts import ClipFaces, CutMedia
    from mtcc.media.crops import clip_boxes, crop_characters
    from mtcc.media.video import open_frames
    from mtcc.stages.clip_media import ClipMedia
    from mtcc.stages.cut import ClipCut

    ws = NodeWorkspace(tmp_path / "cut")
    c = fresh([cut_clip])[0]
    c.members = {}
    c.facts.drop(CutMedia)
    cut = ClipCut()
    cut.attach(ws)
    (c,) = cut.run_batch([c])
    media = ClipMedia(c, ws, "test")
    assert (media.dir / ClipMedia.CROPS).is_file()  # the cut's own crops, read below as they are
    made = media.crops().astype(int)
    n = c.fact(CutMedia).frames
    assert made.shape == (2, n, 224, 224, 3)
    w, h = c.fact(CutMedia).size
    video = open_frames(media.mp4(), {"width": w, "height": h}, None)
    assert video.n_frames == n == len(c.fact(ClipFaces).characters[0].boxes)
    boxes = clip_boxes(c.fact(ClipFaces).boxes(), media.scale)
    for idx, imgs in video.batches(list(range(n)), 32):
        for j, img in zip(idx, imgs):
            decoded = crop_characters(img, boxes[:, j]).astype(int)
            same = np.abs(decoded - made[:, j]).mean()
            near = min(np.abs(decoded - made[:, k]).mean() for k in (j - 1, j + 1) if 0 <= k < n)
            assert same < 2.5 and same < 0.8 * near, (j, same, near)
    rebuilt = ClipMedia(c, NodeWorkspace(tmp_path / "elsewhere"), "test").crops().astype(int)
    assert rebuilt.shape == made.shape and np.abs(rebuilt - made).mean() < 2.5


def test_a_stage_used_on_its_own_leaves_nothing_in_the_temporary_folder(cut_clip):
    """A stage outside a build makes a private workspace; the clip media read through it keep it (and their
    files) while they are used, however short-lived the stage, and it goes with the last of them: no folder is
    left behind, not even one the files were written into after the stage itself was gone."""
    import gc

    from mtcc.stages.clip_media import clip_media
    from mtcc.stages.fingerprint import ClipFingerprint

    media = clip_media(cut_clip, ClipFingerprint())  # the stage is gone once this line ends
    gc.collect()
    mp4, crops = Path(media.mp4()), media.crops()
    root = mp4.parents[2]  # <workspace>/clips/<clip>/clip.mp4
    assert mp4.is_file() and root.name.startswith("mtcc-work-") and crops.shape[0] == 2
    del media
    gc.collect()
    assert not root.exists()


def test_cut_puts_a_key_frame_every_second(cut_clip, tmp_path):
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(cut_clip.member("mp4"))
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                          "-of", "csv=p=0", str(mp4)], capture_output=True, text=True, check=True).stdout
    packets = sorted((float(t), "K" in f) for t, f in (ln.split(",")[:2] for ln in out.split()))
    keys = [i for i, (_, k) in enumerate(packets) if k]
    assert keys == list(range(0, len(packets), 25))


def test_derived_crops_match_crops_cut_from_the_frame(cut_clip, tmp_path):
    """A stage's own crop geometry cut from the shared crops equals that crop cut from the picture itself."""
    from mtcc.facts import ClipFaces, CutMedia
    from mtcc.media.crops import CropGeometry, clip_boxes, crop_characters
    from mtcc.media.video import open_frames
    from mtcc.stages.clip_media import ClipMedia

    media = ClipMedia(cut_clip, NodeWorkspace(tmp_path / "w"), "test")
    geom = CropGeometry(96, 1.2, 0.0)  # prescore's: partly outside the shared square (black there, as outside a frame)
    derived = media.crops(geom)
    w, h = cut_clip.fact(CutMedia).size
    frame = open_frames(media.mp4(), {"width": w, "height": h}, None).frame(12)
    direct = crop_characters(frame, clip_boxes(cut_clip.fact(ClipFaces).boxes(), media.scale)[:, 12], geom)
    inside = slice(int(96 * 0.1 / 1.2) + 2, 96)  # below the band above the shared square
    assert np.abs(derived[:, 12, inside].astype(int) - direct[:, inside].astype(int)).mean() < 4.0


def test_stages_after_the_cut_never_open_the_source(cut_clip, tmp_path):
    """The source is gone, and the stages that read clip media still run: they read the clip's own media."""
    import dataclasses

    from mtcc.stages.prescore import MouthPrescore
    from mtcc.stages.write import ClipWriter

    clip = dataclasses.replace(cut_clip, source=str(tmp_path / "deleted.mp4"), stats={}, facts=cut_clip.facts.copy(),
                               members=dict(cut_clip.members))
    out = MouthPrescore(reject=False).run_batch([clip])
    out = ClipWriter().run_batch(out)
    assert out[0].pending, out[0].message
    assert out[0].stats["prescore.corr_max"] > 0.3  # the faces and the voice of the clip, not noise


# -- the whole-video scan -------------------------------------------------------------------------------

def test_faces_scan_decodes_each_frame_once(sample_dir):
    from mtcc.benchmarks.decode_audit import DecodeAudit, audited
    from mtcc.stages.base import Candidate
    from mtcc.stages.faces import FaceTrack
    from mtcc.stages.probe import Probe

    src = sample_dir / "scene_events.mp4"
    truth = json.loads((sample_dir / "scene_events.truth.json").read_text())
    c = Candidate(key="v", video_id="v", source=str(src), shard=0)
    Probe().run_batch([c])
    faces = FaceTrack()
    faces.setup()
    audit = DecodeAudit()
    with audited(audit):
        audit.stage = "faces"
        faces.run_batch([c])
    s = audit.by_stage["faces"]
    assert s.decoded == s.needed == truth["n_frames"] == c.stats["faces.frames_decoded"]
    assert c.stats["faces.frames_redecoded"] == 0  # every track end was pinned from frames held in memory
    assert c.stats["faces.frames_refined"] > 0
    assert c.stats["faces.n_shots"] == len(truth["cuts"]) + 1
