"""Frame access: rotated sources are seen the way the viewer (and the clip encode) sees them."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from conftest import clips_through_stages

from mtcc.facts import ClipFaces, FrameTimes, ProbeResult
from mtcc.media.tracking import iou_matrix
from mtcc.media.video import open_frames
from mtcc.stages.base import Candidate
from mtcc.stages.probe import Probe


@pytest.fixture(scope="module")
def rotated(sample_dir, tmp_path_factory):
    """two_talk.mp4 remuxed with a 90-degree display rotation (phone footage)."""
    out = tmp_path_factory.mktemp("rot") / "two_talk_rot90.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample_dir / "two_talk.mp4"), "-c", "copy",
                    "-metadata:s:v:0", "rotate=90", str(out)], check=True)
    return out


def probe(path) -> dict:
    c = Candidate(key="v", video_id="v", source=str(path), shard=0)
    Probe().run_batch([c])
    return c.fact(ProbeResult).to_json()


def best_person_iou(got: np.ndarray, truth: dict, boxes_of) -> float:
    """A character's boxes against the planted person they match best (``boxes_of(person)``: that person's
    boxes on the same frames): the worst frame's IoU."""
    return max(float(np.diag(iou_matrix(got, boxes_of(person))).min()) for person in truth["persons"])


def test_rotated_frames_come_in_display_orientation(rotated, sample_dir):
    p = probe(rotated)
    assert (p["width"], p["height"], p["rotation"]) == (360, 640, 90)
    rot = open_frames(str(rotated), p, 320)  # a reduced size: where decord alone gets rotation wrong
    plain = open_frames(str(sample_dir / "two_talk.mp4"), probe(sample_dir / "two_talk.mp4"), 640)
    f = next(rot.batches([10], 1))[1][0]
    g = next(plain.batches([10], 1))[1][0]
    assert f.shape[0] > f.shape[1]  # portrait, as displayed
    want = cv2.resize(np.rot90(g, 1), (f.shape[1], f.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(want.astype(int) - f.astype(int)).mean() < 5
    assert rot.n_frames == plain.n_frames


def test_face_boxes_on_rotated_footage_are_in_display_coordinates(rotated, sample_dir):
    truth = json.loads((sample_dir / "two_talk.truth.json").read_text())
    width = truth["width"]
    clips = clips_through_stages(rotated, max_seconds=10.0)
    assert len(clips) == 1
    faces = clips[0].fact(ClipFaces)
    for ch in faces.characters:
        got = np.asarray(ch.boxes)[::10]

        def turned(person):  # a 90-degree counter-clockwise turn: (x, y) -> (y, width - x)
            b = np.asarray([box[1:] for box in person["boxes"]], np.float64)[::10][: len(got)]
            return np.stack([b[:, 1], width - b[:, 2], b[:, 3], width - b[:, 0]], 1)

        assert best_person_iou(got, truth, turned) > 0.5


# -- non-square pixels: the picture as shown ----------------------------------------------------------------

@pytest.fixture(scope="module")
def anamorphic(sample_dir, tmp_path_factory):
    """two_talk.mp4 stored as SD widescreen broadcast is: 480x360 pixels, each a third wider than tall (SAR
    4:3), so that players show the 640x360 picture."""
    out = tmp_path_factory.mktemp("sar") / "two_talk_sar43.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(sample_dir / "two_talk.mp4"), "-vf",
                    "scale=480:360,setsar=4/3", "-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-c:a", "copy",
                    str(out)], check=True)
    return out


def test_non_square_pixels_are_seen_and_cut_as_the_picture_shown(anamorphic, sample_dir):
    """Probe widens the stored width by the pixel aspect; faces are found where the planted people are in the
    picture as shown, and the clip is cut at that picture's size with square pixels (not squeezed by 3/4)."""
    from mtcc.training.decode import mp4_size

    p = probe(anamorphic)
    assert (p["width"], p["height"]) == (640, 360) and p["sample_aspect"] == pytest.approx(4 / 3, abs=1e-4)
    truth = json.loads((sample_dir / "two_talk.truth.json").read_text())
    clips = clips_through_stages(anamorphic, max_seconds=10.0)
    assert len(clips) == 1
    clip = clips[0]
    first = int(round(clip.start * truth["fps"]))
    for ch in clip.fact(ClipFaces).characters:
        got = np.asarray(ch.boxes)[::10]

        def shown_boxes(person):
            at = {box[0]: box[1:] for box in person["boxes"]}
            return np.asarray([at[first + 10 * i] for i in range(len(got))], np.float64)

        assert best_person_iou(got, truth, shown_boxes) > 0.5
    assert mp4_size(clip.members["mp4"]) == (640, 360)
    shown = open_frames(str(sample_dir / "two_talk.mp4"), probe(sample_dir / "two_talk.mp4"), None)
    cut = anamorphic.parent / "clip.mp4"
    cut.write_bytes(clip.members["mp4"])
    got = next(open_frames(str(cut), probe(cut), None).batches([10], 1))[1][0].astype(int)
    want = next(shown.batches([first + 10], 1))[1][0].astype(int)
    assert np.abs(got - want).mean() < 6


# -- variable frame rate: frames are placed by their timestamps ------------------------------------------

RAMP_FPS, RAMP_FRAMES = 25, 56
GREY0, GREY_STEP = 16, 4  # source frame n is grey 16 + 4n: every decoded picture names its source frame
# the hostile corpus's recipe: 2 of every 7 frames dropped, the rest keep their timestamps
DROP = "select='not(eq(mod(n\\,7)\\,2)+eq(mod(n\\,7)\\,5))'"


def _dropped(n: int) -> bool:
    return n % 7 in (2, 5)


KEPT = [n for n in range(RAMP_FRAMES) if not _dropped(n)]
SLOWER_RATES = (16, 24)


def _ff(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def source_frame(img: np.ndarray) -> int:
    """The ramp's frame number a decoded picture shows (its time is that number / 25)."""
    return int(round((float(img.mean()) - GREY0) / GREY_STEP))


@pytest.fixture(scope="module")
def ramp(tmp_path_factory) -> dict[str, str]:
    """A 25 fps grey ramp as constant-rate MP4, and with frames dropped as variable-rate Matroska (which
    reports 25/1 as its average) and MP4 (which reports about 18 fps), B-frames in all of them."""
    d = tmp_path_factory.mktemp("vfr")
    enc = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "10", "-bf", "2", "-g", "12", "-pix_fmt", "yuv420p"]
    grey = (f"color=c=black:s=128x96:r={RAMP_FPS}:d={RAMP_FRAMES / RAMP_FPS},format=gray,"
            f"geq=lum='{GREY0}+{GREY_STEP}*N'")
    files = {"cfr": d / "ramp_cfr.mp4", "mkv": d / "ramp_vfr.mkv", "mp4": d / "ramp_vfr.mp4"}
    _ff("-f", "lavfi", "-i", grey, *enc, files["cfr"])
    for ext in ("mkv", "mp4"):
        _ff("-i", files["cfr"], "-vf", DROP, "-fps_mode", "vfr", *enc, files[ext])
    for rate in SLOWER_RATES:  # the same frames at a constant rate below the clips' 25 fps (film, old TV, AI)
        files[f"cfr{rate}"] = d / f"ramp_cfr{rate}.mp4"
        _ff("-f", "lavfi", "-i", grey.replace(f"r={RAMP_FPS}:d={RAMP_FRAMES / RAMP_FPS}",
                                             f"r={rate}:d={RAMP_FRAMES / rate}"), *enc, files[f"cfr{rate}"])
    return {k: str(v) for k, v in files.items()}


def open_with(path: str, backend: str, monkeypatch) -> object:
    """``open_frames`` on decord, or on the ffmpeg pipe it falls back to when decord refuses a file."""
    import decord

    if backend == "ffmpeg":
        def refuse(*_a, **_k):
            raise decord.DECORDError("refused by the test")
        monkeypatch.setattr(decord, "VideoReader", refuse)
    video = open_frames(path, probe(path), None)
    assert video.backend == backend
    return video


def shown_frames(video) -> list[int]:
    return [source_frame(img) for _, imgs in video.batches(None, 16) for img in imgs]


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_variable_rate_frames_are_placed_at_their_timestamps(ramp, container, backend, monkeypatch):
    video = open_with(ramp[container], backend, monkeypatch)
    shown = shown_frames(video)
    assert shown == KEPT  # every kept frame decoded once, in display order
    assert video.n_frames == len(KEPT) and video.clock.variable
    for k, n in enumerate(KEPT):
        assert video.time_of(k) == pytest.approx(n / RAMP_FPS, abs=1e-4)
        assert video.index_at(n / RAMP_FPS) == k
    assert video.time_of(video.n_frames) == pytest.approx(RAMP_FRAMES / RAMP_FPS, abs=1e-4)
    # inside the gap a dropped frame left, the frame before it is still on screen
    for n in range(RAMP_FRAMES):
        assert shown[video.index_at(n / RAMP_FPS)] == max(m for m in KEPT if m <= n), n
    for n in (0, 9, 23, 40, 55):  # single frames (the pipe seeks to them by time)
        assert source_frame(video.frame(video.index_at(n / RAMP_FPS))) == max(m for m in KEPT if m <= n), n


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_constant_rate_keeps_frame_i_at_i_over_fps(ramp, backend, monkeypatch):
    video = open_with(ramp["cfr"], backend, monkeypatch)
    assert shown_frames(video) == list(range(RAMP_FRAMES))
    assert not video.clock.variable and video.fps == RAMP_FPS and video.n_frames == RAMP_FRAMES
    t = np.arange(0.0, RAMP_FRAMES / RAMP_FPS + 0.1, 0.013)
    assert (video.index_at(t) == np.clip(np.round(t * RAMP_FPS), 0, RAMP_FRAMES - 1)).all()
    assert video.time_of(np.arange(RAMP_FRAMES)).tolist() == (np.arange(RAMP_FRAMES) / RAMP_FPS).tolist()
    assert source_frame(video.frame(37)) == 37


@pytest.mark.parametrize("container", ["cfr", "mkv", "mp4", *(f"cfr{r}" for r in SLOWER_RATES)])
def test_clip_frames_are_the_source_frames_the_stages_map_them_to(ramp, container, tmp_path):
    """The clip the cut encodes shows, frame by frame, the source frames clip_source_frames maps it to (which
    prescore's repeated frames come from): what the clip shows is the fixture's truth, read from its pixels.
    Sources at 16 and 24 fps repeat frames in the 25 fps clip; which ones is the fps filter's choice."""
    from mtcc.media.crops import clip_source_frames
    from mtcc.stages.cut import ClipCut

    path = ramp[container]
    p = probe(path)
    video = open_frames(path, p, None)
    shown = shown_frames(video)
    for first in range(0, 30, 3):  # clips start on a frame (segment puts them there)
        start = round(float(video.time_of(video.index_at(first / RAMP_FPS))), 6)
        end = round(start + 1.13, 6)  # inside the 2.24 s video, and not on a frame
        cand = Candidate(key="r_0000", video_id="r", source=path, shard=0, level="clip", clip_idx=0,
                         start=start, end=end)
        cand.put(ProbeResult.from_json(p))
        ClipCut().compute(cand)
        clip = tmp_path / f"clip_{first}.mp4"
        clip.write_bytes(cand.members["mp4"])
        in_clip = shown_frames(open_frames(str(clip), probe(clip), None))
        src = clip_source_frames(video.clock, start, float(p.get("video_start") or 0.0), len(in_clip), 25)
        assert len(in_clip) == round((end - start) * 25)
        assert [shown[i] for i in src] == in_clip, first


@pytest.fixture(scope="module")
def cross_vfr(sample_dir, tmp_path_factory):
    """two_cross.mp4 (faces gliding across the frame at ~50 px/s) with 2 of every 7 frames dropped, as
    variable-rate Matroska: a frame placed at i/25 instead of its timestamp is up to seconds late."""
    out = tmp_path_factory.mktemp("cross") / "two_cross_vfr.mkv"
    _ff("-i", sample_dir / "two_cross.mp4", "-vf", DROP, "-fps_mode", "vfr", "-c:v", "libx264", "-preset",
        "veryfast", "-crf", "18", "-c:a", "copy", out)
    return out


def test_face_boxes_of_variable_rate_footage_sit_at_their_times(cross_vfr, sample_dir):
    truth = json.loads((sample_dir / "two_cross.truth.json").read_text())
    clips = clips_through_stages(cross_vfr, max_seconds=3.0)  # several windows: inner bounds are snapped
    assert len(clips) >= 2
    clock = clips[0].fact(FrameTimes).clock()
    assert clock.variable
    t0 = clips[0].fact(ProbeResult).start  # file time of the scene's time 0
    covered = 0.0
    for clip in clips:
        faces = clip.fact(ClipFaces)
        # a clip starts on a frame: the encode's timeline then begins at the clip start
        assert np.abs(clock.times - (clip.start - t0)).min() < 1e-5, clip.start
        times = clip.start - t0 + np.arange(faces.frames) / faces.fps
        scene = np.clip(np.round(times * truth["fps"]).astype(int), 0, truth["n_frames"] - 1)
        for ch in faces.characters:

            def at_scene_frames(person):
                table = {f: b for f, *b in person["boxes"]}
                return np.array([table[f] for f in scene], np.float64)

            best = best_person_iou(np.asarray(ch.boxes), truth, at_scene_frames)
            assert best > 0.5, (clip.key, best)
        covered += clip.end - clip.start
    assert covered > 0.8 * truth["duration"]  # the clips span the video's real length, not 5/7 of it


# -- phone footage: stored sideways, shown upright ----------------------------------------------------------

# per display rotation: how the picture is stored (the turn that the display matrix undoes) and the tag
STORED_SIDEWAYS = {90: "transpose=clock", 180: "hflip,vflip", 270: "transpose=cclock"}


def _upright_frame(path, t: float) -> np.ndarray:
    """The picture a player shows at ``t`` s (ffmpeg applies the display matrix, as players do)."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", str(t), "-i", str(path), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    p = probe(path)
    return np.frombuffer(out, np.uint8).reshape(p["height"], p["width"], 3)


@pytest.fixture(scope="module")
def phone_build(real_dir, light_asd_weights, tiny_overrides, tmp_path_factory):
    """The real same-scene fixture as it is and stored sideways with each display rotation that turns it
    upright again, built together (offline profile, real Light-ASD; the stages that score what the test
    does not read are off: the separation and sound scores, on-screen text, and every stage after asd)."""
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config

    base = tmp_path_factory.mktemp("phone")
    videos = base / "videos"
    videos.mkdir()
    src = real_dir / "same_scene_pair_16fps.mp4"
    (videos / "rot000.mp4").write_bytes(src.read_bytes())
    for rot, turn in STORED_SIDEWAYS.items():
        stored = base / f"stored{rot}.mp4"
        _ff("-i", src, "-vf", turn, "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-c:a", "copy", stored)
        _ff("-i", stored, "-c", "copy", "-metadata:s:v:0", f"rotate={rot}", videos / f"rot{rot:03d}.mp4")
    cfg = load_config(resolve_config("offline"), [
        *tiny_overrides, f"stages.asd.model={light_asd_weights}", "stages.asd.allow_random_weights=false",
        *[f"stages.{s}.enabled=false" for s in ("text", "separate", "sound", "sync", "masks", "audio_emb",
                                                 "identity", "fingerprint", "caption")]])
    res = build(cfg, [str(videos)], base / "out", runner="inprocess", progress=False)
    assert not res.shards_failed, res.shards_failed
    from mtcc.manifests.shard_tar import read_samples

    samples: dict[str, list[tuple[float, dict]]] = {}
    for tar in sorted((base / "out" / "shards").glob("*.tar")):
        for key, members in read_samples(tar):
            meta = json.loads(members["json"])
            samples.setdefault(meta["source"].rsplit("/", 1)[-1], []).append((meta["start"], members))
    return videos, {k: sorted(v, key=lambda s: s[0]) for k, v in samples.items()}


def test_sideways_stored_real_footage_is_kept_with_the_same_speakers_and_an_upright_clip(phone_build, tmp_path):
    videos, samples = phone_build
    for rot in STORED_SIDEWAYS:  # players show every copy upright, as the original
        shown = _upright_frame(videos / f"rot{rot:03d}.mp4", 3.0).astype(int)
        assert np.abs(shown - _upright_frame(videos / "rot000.mp4", 3.0).astype(int)).mean() < 4, rot
    original = samples["rot000.mp4"]
    assert len(original) == 2  # the fixture's two conversation clips
    speaking = [json.loads(m["json"])["asd"]["speaking_fraction"] for _, m in original]
    # who speaks: the left character in the first clip, the right one in the second
    assert speaking[0][0] > 0.5 > speaking[0][1] and speaking[1][1] > 0.5 > speaking[1][0]
    for rot in STORED_SIDEWAYS:
        turned = samples.get(f"rot{rot:03d}.mp4", [])
        assert [round(s, 2) for s, _ in turned] == [round(s, 2) for s, _ in original], rot  # every clip kept
        for (_, got), (_, want) in zip(turned, original):
            asd, ref = json.loads(got["json"])["asd"], json.loads(want["json"])["asd"]
            assert np.allclose(asd["speaking_fraction"], ref["speaking_fraction"], atol=0.05), (rot, asd, ref)
            clip = tmp_path / f"clip{rot}.mp4"
            clip.write_bytes(got["mp4"])
            p = probe(clip)
            assert (p["width"], p["height"], p["rotation"]) == (1152, 768, 0), (rot, p)  # upright, untagged
            plain = tmp_path / "plain.mp4"
            plain.write_bytes(want["mp4"])
            diff = np.abs(_upright_frame(clip, 1.0).astype(int) - _upright_frame(plain, 1.0).astype(int)).mean()
            assert diff < 4, (rot, diff)


def test_the_report_draws_face_boxes_of_sideways_footage_where_the_faces_are(phone_build):
    """Face boxes are in the picture as shown, and the probe records that picture's size (rotation applied):
    the gallery's box scale for a clip of a sideways-stored copy is its upright original's."""
    from mtcc.manifests.report_cards import box_scale
    from mtcc.training.decode import mp4_size

    _, samples = phone_build
    (_, original), *_ = samples["rot000.mp4"]
    want = box_scale(*mp4_size(original["mp4"]), json.loads(original["json"])["probe"])
    assert want == pytest.approx((1.0, 1.0))  # the clip keeps the 1152x768 picture
    for rot in STORED_SIDEWAYS:
        for _, got in samples[f"rot{rot:03d}.mp4"]:
            meta = json.loads(got["json"])
            assert meta["probe"]["rotation"] == rot
            assert box_scale(*mp4_size(got["mp4"]), meta["probe"]) == pytest.approx(want), rot
