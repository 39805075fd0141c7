"""`mtcc export bya OUT DEST`: a real pipeline build exported into the Bind-Your-Avatar trainer's layout and read
back with a reader written here from that layout (their ConsisID_Dataset's rules: the index line, the anno
entries, the mp4 per clip, masks per character per frame, face boxes, left/right audio, and the audio-character
matrix derived from character "1"'s frame-0 mask side against ``speaker``).

The binding fields of the sample meta (the asd output, sync's cross-matrix verdict) are planted into shards
written with the pipeline's own commit code from the real build's sample: that is the ground truth fed to
the exporter, which must turn a swapped binding into the other track in the slot the trainer binds."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcc.manifests.shard_tar import read_samples
from mtcc.media import rle as rle_codec
from mtcc.training.export.bya import export_bya
from mtcc.training.export.bya_binding import IDENTITY, SWAP, mask_side, read_binding, slot_tracks, their_af_matrix
from mtcc.training.export.bya_clip import ExportOptions, reader_windows

pytestmark = pytest.mark.slow


# -- a reader of their layout ------------------------------------------------------------------------------------
def read_layout(dest: Path) -> dict[str, dict]:
    """Every clip their trainer would load from ``dest``, by name, with everything it reads."""
    import decord
    from PIL import Image

    lines = [ln.strip() for ln in (dest / "instance_data_root.txt").read_text().splitlines() if ln.strip()]
    clips = {}
    for line in lines:
        sub_root, anno, anno_base = line.split(",")
        for e in json.loads(Path(anno).read_text()):
            if e["fps"] * e["duration"] < 49:
                continue
            video = Path(sub_root) / f"{os.path.basename(e['path'])}.mp4"
            name = video.stem
            base = Path(anno_base)
            track = base / "track_masks_data" / name
            docs = {f: json.loads((track / f"{f}.json").read_text())
                    for f in ("valid_frame", "corresponding_data", "control_sam2_frame")}
            frames = len(decord.VideoReader(str(video)))
            masks = {}
            for ident, folders in docs["corresponding_data"].items():
                folder = track / "tracking_mask_results" / str(folders["face"])
                masks[ident] = np.stack([np.array(Image.open(folder / f"annotated_frame_{t:05d}.png"))
                                         for t in range(frames)])
            audio = [torch.load(base / "audio_emb" / side / f"{name}.pt", weights_only=True)
                     for side in ("left_audio", "right_audio")]
            first = next(iter(docs["corresponding_data"]))  # their first id with a face
            # their matrix: identity iff the first id's frame-0 mask is on the speaker's side
            af = [[1, 0], [0, 1]] if their_side(masks[first][0]) == e["speaker"] else [[0, 1], [1, 0]]
            clips[name] = {"entry": e, "video": video, "frames": frames, "masks": masks, "audio": audio, "af": af,
                           "bbox": json.loads((base / "refine_bbox_jsons" / f"{name}.json").read_text()), **docs}
    return clips


def their_side(mask: np.ndarray) -> str:
    """Their dataset's side rule, written here from their code and not taken from the exporter: split the
    mask at width // 2, the half with more mask pixels is the character's side."""
    half = mask.shape[1] // 2
    left, right = int((mask[:, :half] > 0).sum()), int((mask[:, half:] > 0).sum())
    return "left" if left > right else "right" if right > left else "neither"


def test_their_side_rule_and_matrix_on_literal_masks():
    """The exporter's side rule and matrix against literal masks and the matrices their rule gives."""
    on_left = np.array([[0, 0, 0, 0, 0, 0], [255, 255, 0, 0, 0, 0], [255, 0, 0, 0, 0, 0]], np.uint8)
    on_right = on_left[:, ::-1].copy()
    straddle = np.array([[0, 0, 255, 255, 0, 0]], np.uint8)  # as much on each side of the middle
    assert (mask_side(on_left), mask_side(on_right), mask_side(straddle)) == ("left", "right", "equal_or_none")
    assert (their_side(on_left), their_side(on_right)) == ("left", "right")
    assert their_af_matrix(mask_side(on_left), "left") == [[1, 0], [0, 1]]
    assert their_af_matrix(mask_side(on_right), "left") == [[0, 1], [1, 0]]
    assert their_af_matrix(mask_side(on_right), "right") == [[1, 0], [0, 1]]
    assert their_af_matrix(mask_side(straddle), "left") == [[0, 1], [1, 0]]  # matches neither side


def recovered_binding(clip: dict, emb: np.ndarray) -> list[list[int]]:
    """track x character matrix implied by the export: the track in slot s (found by its values) is the
    voice of the character the trainer's matrix binds slot s to."""
    out = [[0, 0], [0, 0]]
    for slot, tensor in enumerate(clip["audio"]):
        k = [t for t in range(2) if torch.equal(tensor, torch.from_numpy(emb[t].astype(np.float32)))]
        assert len(k) == 1, f"slot {slot} holds no single separated track"
        out[k[0]][clip["af"][slot].index(1)] = 1
    return out


# -- planted binding fields on the real build's sample ---------------------------------------------------------
def asd_meta(speaking: tuple[float, float], track_face: list[list[float]] | None, overlap: float = 0.0) -> dict:
    """The asd stage's sample meta (the ``Speakers`` fact) with planted verdicts."""
    return {"model": "planted", "random_weights": False, "fps": 25, "dtype": "float32",
            "speaking_fraction": list(speaking), "intervals": [[], []], "both_speaking": overlap, "turns": 1,
            "track_face": track_face, "speech": None, "axes": ""}


FACE_IDENT = [[0.9, 0.1], [0.2, 0.8]]  # track i scores high on face i
FACE_SWAP = [[0.1, 0.9], [0.8, 0.2]]

# name -> (shard, planted asd (or None), sync verdict: True swapped / False / None mixture, expected outcome)
PLANTS = {
    "ident-left": (0, asd_meta((0.7, 0.05), FACE_IDENT), False, IDENTITY),
    "swap-right": (0, asd_meta((0.05, 0.6), FACE_SWAP), True, SWAP),
    "swap-both": (0, asd_meta((0.5, 0.45), FACE_SWAP, overlap=0.2), True, SWAP),
    "asd-only-swap": (1, asd_meta((0.02, 0.7), FACE_SWAP), None, SWAP),
    "contra": (1, asd_meta((0.6, 0.03), FACE_IDENT), True, "binding_contradicted"),
    "no-asd": (1, None, True, "no_asd"),  # sync says swapped: an unbound export must follow it (no asd vote)
    "holes": (1, asd_meta((0.6, 0.03), FACE_IDENT), False, "no_window"),
}
EXPORTED = {k for k, v in PLANTS.items() if isinstance(v[3], list)}


def plant(real_out: Path, out: Path) -> dict[str, dict]:
    """Shards 0 and 1 of ``out``: the real sample under the PLANTS keys, with the planted meta."""
    from mtcc.facts import ALL, ProbeResult, SourceHash
    from mtcc.manifests.paths import OutPaths
    from mtcc.pipeline.shard import commit_shard
    from mtcc.stages import SAMPLE_META, STAGES
    from mtcc.stages.base import Candidate

    FACTS = {f.key: f for f in ALL}

    (key, members), = list(read_samples(next((real_out / "shards").glob("*.tar"))))
    meta = json.loads(members.pop("json"))
    layout = OutPaths(out)
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    run_info = {k: meta[k] for k in ("config_hash", "pipeline_version", "versions", "profile", "models") if k in meta}
    planted: dict[str, dict] = {}
    shards: dict[int, list[Candidate]] = {}
    for name, (shard, asd, sync_swapped, _) in PLANTS.items():
        meta_of = {k: meta[k] for k in SAMPLE_META if k in meta}
        # the planted measures stand for real ones: tracks from a real separator, scored by a real SyncNet
        meta_of["separate"] = {**meta["separate"], "random_weights": False}
        sync = {**meta["sync"], "random_weights": False}
        if sync_swapped is None:
            sync.update(audio_source="mixture", binding_margin=0.0, swapped=False)
        else:
            sync.update(audio_source="separated", swapped=sync_swapped, binding_margin=-1.5 if sync_swapped
                        else 1.5, a_ac=SWAP if sync_swapped else IDENTITY)
        meta_of["sync"] = sync
        if asd is not None:
            meta_of["asd"] = asd
        else:  # no asd output at all (the real build's random-weight asd has its own reason, random_weights)
            meta_of.pop("asd", None)
        m = dict(members)
        if name == "holes":  # character 2 loses its mask on frames 10 and 40: no 49-frame window is whole
            doc = json.loads(m["masks.rle.json"])
            h, w = doc["size"]
            for t in (10, 40):
                doc["characters"][1]["rle"][t] = rle_codec.encode(np.zeros((h, w), bool))
            m["masks.rle.json"] = json.dumps(doc).encode()
        c = Candidate(key=f"{name}_0000", video_id=name, source=meta["source"], shard=shard, level="clip",
                      clip_idx=0, start=meta["start"], end=meta["end"], status="kept", stats=dict(meta["stats"]),
                      members=m)
        c.put(SourceHash(meta["source_sha256"]))
        c.put(ProbeResult.from_json(meta["probe"]))
        for k, v in meta_of.items():
            c.put(FACTS[k].from_json(v))
        shards.setdefault(shard, []).append(c)
        planted[c.key] = {"members": m, "asd": asd}
    for shard, cands in shards.items():
        # the stages whose meta the planted samples carry: the real classes, so their json keeps it
        commit_shard(layout, shard, cands, [cls for cls in STAGES.values() if cls.sample_meta()], run_info)
    return planted


@pytest.fixture(scope="module")
def planted_out(pipeline_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("bya_planted") / "out"
    return out, plant(pipeline_shards, out)


@pytest.fixture(scope="module")
def exported(planted_out, tmp_path_factory):
    out, planted = planted_out
    dest = tmp_path_factory.mktemp("bya") / "dest"
    summary = export_bya(out, dest, workers=2, progress=False)
    return dest, summary, planted


def snapshot(dest: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every clip file (the summary report aside)."""
    out = {}
    for p in sorted(dest.rglob("*")):
        if p.is_file() and p.name not in ("export_report.json", ".lock"):
            out[p.relative_to(dest).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


# -- tests ------------------------------------------------------------------------------------------------------
def test_binding_rules_put_each_voice_where_their_matrix_binds_it():
    """Every combination of measured binding, speaking side and character-1 mask side: the track in each
    slot is the voice of the character their derived matrix gives that slot."""
    for swapped, speaks_right, side_1 in product((False, True), (False, True), ("left", "right", "equal_or_none")):
        meta = {"asd": asd_meta((0.2, 0.7) if speaks_right else (0.7, 0.2), FACE_SWAP if swapped else FACE_IDENT),
                "sync": {"audio_source": "separated", "swapped": swapped, "binding_margin": -1 if swapped else 1}}
        b = read_binding(meta, 0.1)
        assert b.state == "measured" and b.swapped is swapped and b.speaker_side == ("right" if speaks_right
                                                                                    else "left")
        af = their_af_matrix(side_1, b.speaker_side)
        owner = [1 - k if swapped else k for k in range(2)]  # character whose voice track k is
        for slot, track in enumerate(slot_tracks(b, af)):
            assert owner[track] == af[slot].index(1)
        if side_1 == "left":  # the normal case: left_audio holds the speaker's voice
            assert owner[slot_tracks(b, af)[0]] == b.speaker
    assert read_binding({"sync": {"swapped": False, "binding_margin": 1}}, 0.1).reason == "no_asd"
    random_asd = {**asd_meta((0.7, 0.1), FACE_IDENT), "random_weights": True}
    assert read_binding({"asd": random_asd, "sync": {"swapped": False, "binding_margin": 1}}, 0.1).reason \
        == "random_weights"
    assert read_binding({"asd": asd_meta((0.5, 0.5), None)}, 0.1).reason == "binding_unknown"
    contra = {"asd": asd_meta((0.5, 0.5), FACE_IDENT), "sync": {"swapped": True, "binding_margin": -1}}
    assert read_binding(contra, 0.1).reason == "binding_contradicted"
    # their window draw: 60 valid frames give starts 2..9; a hole in character 2 at frame 10 kills all of them
    assert reader_windows(list(range(60)), list(range(60))) == (8, 8)
    assert reader_windows(list(range(60)), [t for t in range(60) if t != 10]) == (0, 8)
    assert reader_windows(list(range(60)), [t for t in range(60) if t != 58]) == (8, 8)
    assert reader_windows(list(range(52)), list(range(52))) == (0, 0)


def test_export_reads_back_in_their_layout_with_the_planted_bindings(exported):
    dest, summary, planted = exported
    assert summary.exported == len(EXPORTED) and summary.already == 0 and not summary.errors
    assert dict(summary.skipped) == {"binding_contradicted": 1, "no_asd": 1, "no_window": 1}
    report = json.loads((dest / "export_report.json").read_text())
    assert {k: v["reason"] for k, v in report["skipped_clips"].items()} == {
        f"{k}_0000": v[3] for k, v in PLANTS.items() if k not in EXPORTED}
    clips = read_layout(dest)
    assert set(clips) == {f"{k}_0000" for k in EXPORTED}
    for name, clip in clips.items():
        plant_name = name.removesuffix("_0000")
        m = planted[name]["members"]
        asd, want = PLANTS[plant_name][1], PLANTS[plant_name][3]
        faces, doc = json.loads(m["faces.json"]), json.loads(m["masks.rle.json"])
        emb = np.load(io.BytesIO(m["audio_emb.npy"]))
        n = emb.shape[1]
        e = clip["entry"]
        # frame counts agree everywhere; fps x duration passes their filter exactly
        assert clip["frames"] == n == doc["frames"] == len(faces["characters"][0]["boxes"]) and n >= 53
        assert e["fps"] == 25 and e["fps"] * e["duration"] >= n and e["cap"] == m["caption.txt"].decode().strip()
        assert clip["video"].read_bytes() == m["mp4"]
        # masks: uint16, the id inside, equal to our RLE on every frame
        assert clip["corresponding_data"] == {"1": {"face": 1}, "2": {"face": 2}}
        for k, ident in enumerate(("1", "2")):
            got = clip["masks"][ident]
            assert got.dtype == np.uint16 and set(np.unique(got).tolist()) <= {0, int(ident)}
            want_masks = np.stack([rle_codec.decode(r) for r in doc["characters"][k]["rle"]])
            assert np.array_equal(got > 0, want_masks)
            assert clip["valid_frame"][ident]["face"] == [t for t in range(n) if want_masks[t].any()]
        # face boxes per frame with their ids (the clip keeps the source size here: scale 1)
        assert sorted(clip["bbox"], key=int) == [str(t) for t in range(n)]
        for t in (0, n // 2, n - 1):
            for item in clip["bbox"][str(t)]["face"]:
                box = faces["characters"][item["new_track_id"] - 1]["boxes"][t]
                assert [item["box"][c] for c in ("x1", "y1", "x2", "y2")] == pytest.approx(box, abs=0.01)
        # audio: float32 (T, 12, 768), one row per frame
        assert all(a.dtype == torch.float32 and tuple(a.shape) == (n, 12, 768) for a in clip["audio"])
        # the speaker is the side that speaks most; the matrix their trainer derives binds each voice to its face
        assert e["speaker"] == ("left" if asd["speaking_fraction"][0] >= asd["speaking_fraction"][1] else "right")
        assert clip["af"] == e["mtcc"]["af_matrix"]
        assert recovered_binding(clip, emb) == want, name
        assert e["both_speaking"] == (plant_name == "swap-both") and e["mtcc"]["binding"] == "measured"
    assert json.loads((dest / "anno.json").read_text()) == [clips[k]["entry"] for k in sorted(clips)]


def test_rerun_writes_nothing_and_redoes_a_deleted_file(exported, planted_out):
    dest, _, _ = exported
    out, _ = planted_out
    before = snapshot(dest)
    again = export_bya(out, dest, progress=False)
    assert (again.exported, again.already) == (0, len(EXPORTED))
    assert snapshot(dest) == before
    png = dest / "anno/track_masks_data/swap-right_0000/tracking_mask_results/2/annotated_frame_00007.png"
    pt = dest / "anno/audio_emb/right_audio/ident-left_0000.pt"
    png.unlink()
    pt.write_bytes(pt.read_bytes()[:100])  # a torn file: same name, wrong size
    third = export_bya(out, dest, progress=False)
    assert (third.exported, third.already) == (2, len(EXPORTED) - 2)
    after = snapshot(dest)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # the same bytes again
    assert not list(dest.rglob(".*.tmp"))


def test_keep_unbound_exports_the_unbound_and_says_so(planted_out, tmp_path):
    from mtcc.pipeline.lock import RunLock
    from mtcc.training.export.bya import ExportError

    out, planted = planted_out
    with RunLock(tmp_path / "dest" / ".lock"), pytest.raises(ExportError, match="another export is writing"):
        export_bya(out, tmp_path / "dest", progress=False)  # one export per DEST at a time
    summary = export_bya(out, tmp_path / "dest", options=ExportOptions(keep_unbound=True), progress=False)
    assert summary.exported == len(EXPORTED) + 2 and summary.kept_unbound == 2
    assert dict(summary.skipped) == {"no_window": 1}
    clips = read_layout(tmp_path / "dest")
    assert {n: c["entry"]["mtcc"]["binding"] for n, c in clips.items() if c["entry"]["mtcc"]["binding"] != "measured"} \
        == {"contra_0000": "contradicted", "no-asd_0000": "unknown"}
    # the unbound clips still carry a binding true of their files: asd's vote where there is one, else sync's
    emb = np.load(io.BytesIO(planted["contra_0000"]["members"]["audio_emb.npy"]))
    assert recovered_binding(clips["contra_0000"], emb) == IDENTITY
    assert recovered_binding(clips["no-asd_0000"], emb) == SWAP
    assert clips["no-asd_0000"]["entry"]["mtcc"]["speaker_source"] == "default"


def test_the_real_build_without_asd_output_is_skipped_and_counted(pipeline_shards, tmp_path):
    """The command on the real build (its asd stage ran on make-tiny's random weights, which decide
    nothing): nothing bound, so nothing exported, said so."""
    dest = tmp_path / "dest"
    res = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "export", "bya", str(pipeline_shards), str(dest),
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    # nothing to train on: a failure, said loudly, with the real cause (asd ran, on random weights)
    assert res.returncode == 1, res.stderr
    assert "0 exported" in res.stdout and "(random_weights 1)" in res.stdout, res.stdout
    assert "NOTHING TO TRAIN ON" in res.stdout and "train with" not in res.stdout
    assert json.loads((dest / "anno.json").read_text()) == []
    assert (dest / "instance_data_root.txt").read_text() == f"{dest}/videos,{dest}/anno.json,{dest}/anno\n"
    bad = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "export", "bya", str(pipeline_shards),
                          str(tmp_path / "a,b")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "commas" in bad.stderr


def test_url_out_reads_committed_shards_only(s3, planted_out, exported, tmp_path):
    out, _ = planted_out
    dest_local, _, _ = exported
    s3.put(str(out), "bucket/bya", recursive=True)
    s3.rm_file("bucket/bya/commits/000001.json")  # shard 1 uncommitted: a build still writing it
    summary = export_bya("s3://bucket/bya", tmp_path / "dest", progress=False)
    in_shard_0 = {k for k in EXPORTED if PLANTS[k][0] == 0}
    assert summary.shards == 1 and summary.exported == len(in_shard_0) and not summary.skipped
    clips = read_layout(tmp_path / "dest")
    local = read_layout(dest_local)
    assert set(clips) == {f"{k}_0000" for k in in_shard_0}
    for name, clip in clips.items():
        assert clip["entry"]["mtcc"]["shard"].startswith("s3://bucket/bya/shards/")
        assert clip["video"].read_bytes() == local[name]["video"].read_bytes()
        assert clip["af"] == local[name]["af"]
        assert all(torch.equal(a, b) for a, b in zip(clip["audio"], local[name]["audio"], strict=True))


def test_votes_on_tracks_from_random_weights_bind_nothing():
    """A make-tiny separator's tracks (or a make-tiny SyncNet's scores on them) say nothing about whose voice
    is whose, even where a real asd model scored them: the clip is unbound, its speaking side still asd's."""
    measured = {"asd": asd_meta((0.2, 0.7), FACE_SWAP), "separate": {"random_weights": False},
                "sync": {"audio_source": "separated", "swapped": True, "binding_margin": -1, "random_weights": False}}
    assert read_binding(measured, 0.1).state == "measured"
    tiny_tracks = {**measured, "separate": {"random_weights": True}}
    b = read_binding(tiny_tracks, 0.1)
    assert (b.reason, b.votes, b.speaker_side) == ("binding_unknown", {"asd": None, "sync": None}, "right")
    assert "RANDOM" in b.why
    tiny_sync = {**measured, "sync": {**measured["sync"], "random_weights": True}}
    b = read_binding(tiny_sync, 0.1)
    assert (b.state, b.votes) == ("measured", {"asd": "swapped", "sync": None})


def test_selection_exports_its_clips_only(planted_out, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtcc.pipeline.selection import select
    from mtcc.training.export.bya import ExportError

    out, planted = planted_out
    sel_out = tmp_path / "out"
    shutil.copytree(out, sel_out)
    shards = sorted(int(p.stem) for p in (sel_out / "commits").glob("*.json"))
    pq.write_table(pa.table({"shard": pa.array(shards, pa.int32()), "source": [f"s{s}" for s in shards]}),
                   sel_out / "plan.parquet")  # what `mtcc run` plans; select refuses a folder without it
    want = sorted(EXPORTED)[:2]
    keys = ", ".join(f"'{k}_0000'" for k in want)
    select(sel_out, "two", where=f"key in [{keys}]", keep_duplicates=True, log=lambda m: None)
    summary = export_bya(sel_out, tmp_path / "dest", selection="two", progress=False)
    anno = json.loads((tmp_path / "dest" / "anno.json").read_text())
    assert summary.exported == 2 and len(anno) == 2, (summary.format(), anno)
    assert sorted(p.name for p in (tmp_path / "dest" / "anno" / "track_masks_data").iterdir()) == \
        [f"{k}_0000" for k in want]
    with pytest.raises(ExportError, match="no part 'val'"):
        export_bya(sel_out, tmp_path / "dest2", selection="two", selection_part="val", progress=False)
    assert not (tmp_path / "dest2").exists()
