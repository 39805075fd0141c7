"""The offline profile end to end, in one process (the Ray runner gives the same bytes for every stage of
it: test_pipeline.py): the visual stages (real CenterFace weights, PySceneDetect)
checked against the ground truth the sample generator planted, and the audio stages (tiny random
models of the real separation and SyncNet classes) checked for what they must write."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mtcc.manifests.report_data import read_manifests
from mtcc.media.tracking import iou_matrix
from mtcc.pipeline.build import build
from mtcc.pipeline.config import load_config, resolve_config

pytestmark = pytest.mark.slow
FPS = 25


@pytest.fixture(scope="module")
def offline_build(sample_dir, real_dir, tmp_path_factory, tiny_overrides, light_asd_weights):
    out = tmp_path_factory.mktemp("faces") / "out"
    # who speaks when from the authors' real Light-ASD weights, as a user runs the offline profile
    cfg = load_config(resolve_config("offline"), [*tiny_overrides, f"stages.asd.model={light_asd_weights}"])
    res = build(cfg, [str(sample_dir), str(real_dir)], out, runner="inprocess", progress=False)
    assert not res.shards_failed
    rows = read_manifests(out).to_pylist()
    return out, rows


def samples(out: Path) -> dict[str, dict]:
    import webdataset as wds

    ds = wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)
    return {s["__key__"]: s for s in ds}


def video_row(rows, name):
    return next(r for r in rows if r["level"] == "video" and Path(r["source"]).name == name)


def clips_of(rows, name):
    vid = video_row(rows, name)["video_id"]
    return sorted((r for r in rows if r["level"] == "clip" and r["video_id"] == vid), key=lambda r: r["start"])


def truth(sample_dir, name):
    return json.loads((sample_dir / f"{Path(name).stem}.truth.json").read_text())


def test_no_stage_errors_on_samples_or_real_footage(offline_build):
    _, rows = offline_build
    errors = [(r["key"], r["message"]) for r in rows if r["reason"] == "error"]
    assert errors == []


def test_segment_bounds_match_truth_and_respect_the_cut(offline_build, sample_dir):
    _, rows = offline_build
    t = truth(sample_dir, "scene_events.mp4")
    clips = clips_of(rows, "scene_events.mp4")
    assert len(clips) == len(t["two_face_intervals"]) == 2
    for clip, (a, b) in zip(clips, t["two_face_intervals"]):
        assert abs(clip["start"] * FPS - a * FPS) <= 2, (clip["start"], a)
        assert abs(clip["end"] * FPS - b * FPS) <= 2, (clip["end"], b)
        for cut in t["cuts"]:
            assert not (clip["start"] < cut - 1 / FPS and clip["end"] > cut + 1 / FPS), "clip crosses a cut"
    assert video_row(rows, "scene_events.mp4")["faces.n_shots"] == len(t["cuts"]) + 1


def test_three_faces_and_one_face_yield_no_clip(offline_build):
    _, rows = offline_build
    for name in ("three_people.mp4", "one_person.mp4"):
        row = video_row(rows, name)
        assert (row["status"], row["reason"], row["stage"]) == ("rejected", "no_two_face_segment", "segment")
        assert clips_of(rows, name) == []
    assert video_row(rows, "three_people.mp4")["faces.max_faces"] == 3


def test_far_apart_pair_is_rejected_by_distance_with_its_ratio(offline_build):
    _, rows = offline_build
    cfg = load_config(resolve_config("offline"), ["models=null"])  # thresholds only
    limit = next(s for s in cfg.stages if s.name == "distance").min_ratio
    far = clips_of(rows, "two_far.mp4")
    assert far and all(c["reason"] == "too_distant" and c["stage"] == "distance" for c in far)
    assert all(c["distance.ratio"] < limit for c in far)
    near = clips_of(rows, "two_talk.mp4")
    assert near and all(c["status"] == "kept" and c["distance.ratio"] > limit for c in near)


def _truth_boxes(t, person, frames_src):
    table = {f: b for f, *b in t["persons"][person]["boxes"]}
    return np.array([table[f] for f in frames_src], np.float64)


@pytest.mark.parametrize("name", ["two_talk.mp4", "two_cross.mp4", "two_talk_30fps.mp4"])
def test_tracks_follow_the_true_faces_and_never_swap(offline_build, sample_dir, name):
    """Every output frame: character i's box overlaps person i of the truth (person 0 = left-most at the
    first frame). On two_cross the faces move past each other, so a left/right swap would show here."""
    out, rows = offline_build
    t = truth(sample_dir, name)
    got = samples(out)
    clips = [c for c in clips_of(rows, name) if c["status"] == "kept"]
    assert clips
    for clip in clips:
        faces = json.loads(got[clip["key"]]["faces.json"])
        assert faces["frames"] == round((clip["end"] - clip["start"]) * FPS)
        src = np.clip(np.round((clip["start"] + np.arange(faces["frames"]) / FPS) * t["fps"]).astype(int),
                      0, t["n_frames"] - 1)
        for i, ch in enumerate(faces["characters"]):
            boxes = np.asarray(ch["boxes"])
            want = _truth_boxes(t, i, src)
            ious = np.diag(iou_matrix(boxes, want))
            assert ious.min() > 0.5, (name, i, float(ious.min()))
            assert np.asarray(ch["landmarks"]).shape == (faces["frames"], 5, 2)
    if name == "two_cross.mp4":
        faces = json.loads(got[clips[0]["key"]]["faces.json"])
        c0, c1 = (np.asarray(ch["boxes"]) for ch in faces["characters"])
        assert c0[0, 0] < c1[0, 0] and c0[-1, 0] > c1[-1, 0]  # they really did cross


def test_kept_clips_carry_faces_and_reference_images(offline_build, sample_dir):
    from PIL import Image

    from mtcc.media.mask_outputs import ref_window

    out, rows = offline_build
    got = samples(out)
    kept = [r for r in rows if r["status"] == "kept"]
    assert set(got) == {r["key"] for r in kept}
    told_apart = 0
    for r in kept:
        s = got[r["key"]]
        assert {"mp4", "mix.flac", "spk0.flac", "spk1.flac", "faces.json", "ref0.jpg", "ref1.jpg", "json"} <= set(s)
        meta = json.loads(s["json"])
        # said in every sample
        assert meta["random_weights"] == ["audio_emb", "caption", "masks", "separate", "sync"]
        assert set(meta["stats"]) >= {"sync.sync_c_0", "sync.offset_1", "prescore.corr_0", "separate.rms_1"}
        faces = json.loads(s["faces.json"])
        # each reference is character i's own: the window around ITS box at ITS best frame (the masks
        # stage's cutout), to the pixel, so a swapped ref0/ref1 shows wherever the two windows differ
        h, w = meta["masks"]["size"]
        sx, sy = w / int(meta["probe"]["width"]), h / int(meta["probe"]["height"])
        sizes = []
        for i in (0, 1):
            img = Image.open(io.BytesIO(s[f"ref{i}.jpg"]))
            best = meta["masks"]["ref_frames"][i]
            box = np.asarray(faces["characters"][i]["boxes"], np.float64).reshape(-1, 4)[best] * [sx, sy, sx, sy]
            xa, ya, xb, yb = ref_window(box, 1.6, w, h)
            assert img.size == (xb - xa, yb - ya), (r["key"], i)
            assert img.size[0] >= 0.9 * (box[2] - box[0])  # the crop holds the whole face
            sizes.append(img.size)
        told_apart += sizes[0] != sizes[1]
    assert told_apart, "no kept sample whose two references differ in size: a swap would go unseen"


def test_every_kept_sample_has_every_member_of_the_schema(offline_build):
    """The README's sample table read back from the shards: each member's presence, shape, dtype and agreement with the
    clip (frame counts, resolution, track lengths), for generated and real footage alike."""
    from mtcc.manifests.members import MEMBERS
    from mtcc.manifests.sample import check_sample
    from mtcc.manifests.shard_tar import read_samples

    out, rows = offline_build
    kept = {r["key"] for r in rows if r["status"] == "kept"}
    seen = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        for key, members in read_samples(tar):
            seen[key] = check_sample(members, require=MEMBERS)
    assert set(seen) == kept and len(kept) >= 5
    assert {k: p for k, p in seen.items() if p} == {}
    # and the check itself catches a broken sample
    _, members = next(s for tar in sorted((out / "shards").glob("*.tar")) for s in read_samples(tar))
    buf = io.BytesIO()
    np.save(buf, np.load(io.BytesIO(members["route.npy"])).astype(np.int16))
    emb = np.load(io.BytesIO(members["audio_emb.npy"]))
    buf2 = io.BytesIO()
    np.save(buf2, emb[:, :-1])
    ident = np.load(io.BytesIO(members["identity.npy"]))
    ident[1, 0, 0] = np.nan  # a described frame without its descriptor
    buf3 = io.BytesIO()
    np.save(buf3, ident)
    broken = {**members, "route.npy": buf.getvalue(), "audio_emb.npy": buf2.getvalue(), "identity.npy": buf3.getvalue()}
    del broken["caption.txt"]
    problems = " | ".join(check_sample(broken, require=MEMBERS))
    assert "missing member caption.txt" in problems and "route.npy: int16" in problems
    assert "audio_emb.npy" in problems and "identity.npy: character 1" in problems


def test_audio_stage_members_have_the_clip_length(offline_build):
    import soundfile as sf

    out, rows = offline_build
    got = samples(out)
    for r in (r for r in rows if r["status"] == "kept"):
        n = round((r["end"] - r["start"]) * 16000)
        for k in ("spk0.flac", "spk1.flac", "mix.flac"):
            audio, rate = sf.read(io.BytesIO(got[r["key"]][k]))
            assert rate == 16000 and abs(len(audio) - n) <= 160, (r["key"], k, len(audio), n)


def test_prescore_keeps_in_sync_generated_pairs(offline_build):
    _, rows = offline_build
    cfg = load_config(resolve_config("offline"), ["models=null"])  # thresholds only
    limit = next(s for s in cfg.stages if s.name == "prescore").min_corr
    for name in ("two_talk.mp4", "two_talk_30fps.mp4", "two_cross.mp4"):
        for c in clips_of(rows, name):
            assert c["prescore.corr_max"] >= limit, (name, c["prescore.corr_max"])


def test_real_split_screen_debate_has_two_tracks(offline_build):
    _, rows = offline_build
    row = video_row(rows, "debate_split_screen.avi")
    assert row["faces.n_tracks"] >= 2 and row["faces.max_faces"] == 2


def test_same_scene_pair_is_kept_with_the_speaker_of_each_turn(offline_build):
    """The shared real same-scene pair (rejected before by prescore): every clip kept, the left woman speaking
    in the first, the right one in the second, as the authors' code says (100 % / 8 %, then 0 % / 100 %)."""
    out, rows = offline_build
    clips = clips_of(rows, "same_scene_pair_16fps.mp4")
    assert len(clips) == 2 and all(c["status"] == "kept" for c in clips), [(c["key"], c["reason"]) for c in clips]
    first, second = clips
    assert first["asd.speaking_0"] > 0.6 and first["asd.speaking_1"] < 0.1
    assert second["asd.speaking_0"] < 0.05 and second["asd.speaking_1"] > 0.5
    got = samples(out)
    for c in clips:
        meta = json.loads(got[c["key"]]["json"])
        assert meta["asd"]["random_weights"] is False and "asd" not in meta["random_weights"]
        faces = json.loads(got[c["key"]]["faces.json"])
        assert all(len(ch["speaking"]) == faces["frames"] for ch in faces["characters"])
    # the speaker's logits are positive on most frames, the listener's on few
    faces = json.loads(got[first["key"]]["faces.json"])
    speaking = [np.mean(np.asarray(ch["speaking"]) > 0) for ch in faces["characters"]]
    assert speaking[0] > 0.8 > 0.3 > speaking[1]


def test_split_screen_debate_is_named_and_a_single_head_gives_no_clip(offline_build):
    _, rows = offline_build
    debate = clips_of(rows, "debate_split_screen.avi")
    assert debate and all((c["status"], c["stage"], c["reason"]) == ("rejected", "layout", "split_screen")
                          for c in debate)
    head = video_row(rows, "single_talking_head_2997fps.mp4")
    assert (head["status"], head["reason"]) == ("rejected", "no_two_face_segment")


def test_different_face_sizes_are_recorded_not_rejected():
    """A host close to the camera and a guest three times smaller (planted boxes): the size ratio is a stat
    in the manifest, never a reason; only the distance between the faces decides."""
    from mtcc.facts import ClipCharacter, ClipFaces
    from mtcc.stages.base import Candidate
    from mtcc.stages.distance import FaceDistance

    def clip(guest_x: float) -> Candidate:
        c = Candidate(key=f"g{guest_x:g}", video_id="v", source="s", shard=0, level="clip")
        host = ClipCharacter(0, 0, [[100.0, 100.0, 250.0, 250.0]] * 3, [[0.0] * 10] * 3, [0.9] * 3)
        guest = ClipCharacter(1, 1, [[guest_x, 150.0, guest_x + 50.0, 200.0]] * 3, [[0.0] * 10] * 3, [0.9] * 3)
        c.put(ClipFaces(25, 3, "left_to_right_at_first_frame", (host, guest)))
        return c

    near, far = FaceDistance(min_ratio=0.15).run_batch([clip(300.0), clip(1500.0)])
    assert near.pending and near.stats["distance.size_ratio"] == pytest.approx((50 * 50) / (150 * 150))
    assert near.stats["distance.face_px"] == pytest.approx(100.0)
    assert (far.status, far.reason) == ("rejected", "too_distant")  # the distance decides, at the same sizes
    assert far.stats["distance.size_ratio"] == near.stats["distance.size_ratio"]


def test_every_clip_past_the_distance_stage_has_its_size_ratio(offline_build):
    _, rows = offline_build
    scored = [r for r in rows if r["level"] == "clip" and r["stage"] not in ("segment", "layout")]
    assert scored and all(r["distance.size_ratio"] is not None for r in scored)


def test_index_finds_the_planted_people_and_no_false_duplicate(offline_build, sample_dir, tmp_path):
    """The generated videos paste real photos (astronaut, chandler, phoebe, ross) as their people, some in
    several videos: each photo must be one person id wherever it appears, different photos different ids, the
    real pair's two people ids of their own; and nothing in the whole set is a near-duplicate of another."""
    import shutil

    import pyarrow.parquet as pq

    from mtcc.pipeline.index import index_out

    src, rows = offline_build
    out = tmp_path / "out"
    shutil.copytree(src, out)
    index_out(out, log=lambda m: None)
    ids: dict[str, set[int]] = {}
    for r in pq.read_table(out / "index" / "identities.parquet").to_pylist():
        ids.setdefault(r["key"], set()).add(r["identity"])
    kept = [r for r in rows if r["level"] == "clip" and r["status"] == "kept"]
    photos: dict[str, set[int]] = {}  # photo -> the ids of the clips it is in, intersected
    real: set[int] = set()
    for r in kept:
        name = Path(r["source"]).name
        t = sample_dir / f"{Path(name).stem}.truth.json"
        if not t.exists():
            real |= ids[r["key"]]
            continue
        mid = (r["start"] + r["end"]) / 2
        there = [p["photo"] for p in truth(sample_dir, name)["persons"] if p["appear"] <= mid <= p["disappear"]]
        assert len(there) == 2 and len(ids[r["key"]]) == 2, (r["key"], there, ids[r["key"]])
        for photo in there:
            photos[photo] = photos.get(photo, ids[r["key"]]) & ids[r["key"]]
    assert len(photos) >= 4 and all(len(v) == 1 for v in photos.values()), photos
    found = [next(iter(v)) for v in photos.values()]
    assert len(set(found)) == len(found), photos  # different photos, different people
    assert len(real) == 2, real  # the real pair: two women, two people (not one merged, not split in more)
    assert not real & set(found), (real, photos)  # the real footage's people are nobody generated
    groups = pq.read_table(out / "index" / "duplicates.parquet")
    assert groups.num_rows == 0, groups.to_pylist()
