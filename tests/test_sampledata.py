"""mtcc.sampledata: the fixture videos are real files that say what their truth JSON says.

Everything is checked against the written files (ffprobe, ffmpeg, decord), not against the
generator's own constants.
"""

from __future__ import annotations

import json
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mtcc.sampledata import generate, generate_long, load_truth
from mtcc.sampledata.fixtures import good_scenes
from mtcc.sampledata.scene import render

GOOD = ["two_talk", "two_talk_30fps", "two_cross", "one_person", "three_people", "two_far", "scene_events"]
BROKEN = ["broken_truncated", "broken_empty", "broken_text", "no_audio", "audio_only", "too_short", "tiny_res"]
WITH_VIDEO = GOOD + ["no_audio", "too_short", "tiny_res"]
TRUTH_KEYS = {"name", "file", "kind", "expect_probe", "width", "height", "fps", "duration", "n_frames",
              "audio", "cuts", "persons", "speech", "face_count", "boxes_every", "two_face_intervals",
              "two_face_frames"}
PERSON_KEYS = {"id", "photo", "voice", "appear", "disappear", "boxes"}
AUDIO_RATE = 16000


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampledata")
    t0 = time.monotonic()
    paths = generate(out, seed=0)
    return {"dir": out, "paths": paths, "seconds": time.monotonic() - t0}


def video(gen, name: str) -> Path:
    return gen["dir"] / f"{name}.mp4"


def truth(gen, name: str) -> dict:
    return load_truth(video(gen, name))


def ffprobe(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                           str(path)], capture_output=True, text=True)


def probe_ok(path: Path) -> dict:
    r = ffprobe(path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def streams(info: dict, kind: str) -> list[dict]:
    return [s for s in info.get("streams", []) if s.get("codec_type") == kind]


def decode_audio(path: Path, rate: int = AUDIO_RATE) -> np.ndarray:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(rate),
                        "-f", "f32le", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(r.stdout, dtype=np.float32)


def decode_frames(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def decode_gray(path: Path, width: int, height: int) -> np.ndarray:
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-an", "-f", "rawvideo",
                        "-pix_fmt", "gray", "pipe:1"], capture_output=True, check=True)
    return np.frombuffer(r.stdout, dtype=np.uint8).reshape(-1, height, width)


def decoded_md5(path: Path, kind: str) -> str:
    """MD5 of the decoded pixels (``kind`` "v") or samples ("a") of the first such stream."""
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", f"0:{kind}:0", "-f", "md5",
                        "pipe:1"], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def gray_video(gen, name: str) -> np.ndarray:
    """Decoded luma of a fixture, float32 (frames, height, width)."""
    t = truth(gen, name)
    return decode_gray(video(gen, name), t["width"], t["height"]).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def check_truth_consistency(t: dict) -> None:
    """Boxes, face counts, speech and the two-face runs agree with each other."""
    n, fps, every = t["n_frames"], t["fps"], t["boxes_every"]
    assert len(t["face_count"]) == n
    counts = np.zeros(n, dtype=int)
    for p in t["persons"]:
        assert set(p) == PERSON_KEYS
        a, b = round(p["appear"] * fps), round(p["disappear"] * fps)
        frames = [bx[0] for bx in p["boxes"]]
        # a box for exactly the frames in [appear, disappear) whose index is a multiple of boxes_every
        assert frames == [f for f in range(a, b) if f % every == 0]
        counts[a:b] += 1
    assert counts.tolist() == t["face_count"]
    for s in t["speech"]:
        assert 0.0 <= s["start"] < s["end"] <= t["duration"]
        assert t["persons"][s["person"]]["voice"] is not None
    # two_face_frames: maximal runs of exactly two faces, split at cuts, recomputed here
    cut_frames = {round(c * fps) for c in t["cuts"]}
    runs, start = [], None
    for i, c in enumerate(t["face_count"] + [-1]):
        if start is not None and (c != 2 or i in cut_frames):
            runs.append([start, i])
            start = None
        if c == 2 and start is None:
            start = i
    assert t["two_face_frames"] == runs
    assert t["two_face_frames"] == [[round(a * fps), round(b * fps)] for a, b in t["two_face_intervals"]]
    assert all(abs(a - fa / fps) < 1e-6 and abs(b - fb / fps) < 1e-6
               for (a, b), (fa, fb) in zip(t["two_face_intervals"], t["two_face_frames"]))


# ---------------------------------------------------------------- inventory and schema


def test_generate_writes_every_fixture_with_truth(gen):
    names = sorted(GOOD + BROKEN)
    assert gen["paths"] == sorted(gen["paths"])
    assert [p.name for p in gen["paths"]] == sorted(f"{n}.mp4" for n in names)
    for p in gen["paths"]:
        assert p.exists()
        t = load_truth(p)
        assert t == json.loads((p.parent / f"{p.stem}.truth.json").read_text())
        assert set(t) == TRUTH_KEYS
        assert t["name"] == p.stem and t["file"] == p.name
        assert t["kind"] == ("good" if p.stem in GOOD else "broken")


def test_generation_is_fast_enough(gen):
    assert gen["seconds"] < 40.0


@pytest.mark.parametrize("name", GOOD + BROKEN)
def test_truth_is_self_consistent(gen, name):
    t = truth(gen, name)
    assert t["boxes_every"] == 1
    if name not in WITH_VIDEO:
        assert t["persons"] == [] and t["face_count"] == []
        assert t["two_face_intervals"] == [] and t["two_face_frames"] == []
        return
    check_truth_consistency(t)


# ---------------------------------------------------------------- what ffprobe / decoders see


@pytest.mark.parametrize("name", WITH_VIDEO)
def test_ffprobe_matches_truth(gen, name):
    t = truth(gen, name)
    info = probe_ok(video(gen, name))
    (v,) = streams(info, "video")
    assert v["codec_name"] == "h264" and v["pix_fmt"] == "yuv420p"
    assert (v["width"], v["height"]) == (t["width"], t["height"])
    fps = float(Fraction(v["avg_frame_rate"]))
    assert abs(fps - t["fps"]) < 1e-3
    frame = 1.0 / t["fps"]
    assert abs(float(info["format"]["duration"]) - t["duration"]) <= frame
    assert abs(float(v["duration"]) - t["duration"]) <= frame
    a = streams(info, "audio")
    if t["audio"] is None:
        assert a == []
    else:
        (a,) = a
        assert a["codec_name"] == "aac"
        assert int(a["sample_rate"]) == t["audio"]["rate"]
        assert int(a["channels"]) == t["audio"]["channels"]
        assert abs(float(a["duration"]) - t["duration"]) <= frame


@pytest.mark.parametrize("name", WITH_VIDEO)
def test_decoded_frame_count_is_n_frames(gen, name):
    import decord

    t = truth(gen, name)
    assert len(decord.VideoReader(str(video(gen, name)))) == t["n_frames"] == round(t["duration"] * t["fps"])


def test_expect_probe_follows_default_probe_rules(gen):
    """Recompute the probe verdict (min 2 s, min 128x128, fps 10..120, audio required) from ffprobe."""
    for name in GOOD + BROKEN:
        r = ffprobe(video(gen, name))
        if r.returncode != 0:
            got = "unreadable"
        else:
            info = json.loads(r.stdout)
            v, a = streams(info, "video"), streams(info, "audio")
            if not info.get("streams"):
                got = "unreadable"
            elif not v:
                got = "no_video"
            elif not a:
                got = "no_audio"
            elif float(info["format"]["duration"]) < 2.0:
                got = "too_short"
            elif v[0]["width"] < 128 or v[0]["height"] < 128:
                got = "too_small"
            elif not 10 <= float(Fraction(v[0]["avg_frame_rate"])) <= 120:
                got = "bad_fps"
            else:
                got = "kept"
        assert got == truth(gen, name)["expect_probe"], name
    assert {n: truth(gen, n)["expect_probe"] for n in BROKEN} == {
        "broken_truncated": "unreadable", "broken_empty": "unreadable", "broken_text": "unreadable",
        "no_audio": "no_audio", "audio_only": "no_video", "too_short": "too_short", "tiny_res": "too_small"}
    assert all(truth(gen, n)["expect_probe"] == "kept" for n in GOOD)


def test_fixture_shapes(gen):
    """The specific sizes, rates and durations the fixtures promise."""
    def shape(n):
        info = probe_ok(video(gen, n))
        v, a = streams(info, "video"), streams(info, "audio")
        return ((v[0]["width"], v[0]["height"], float(Fraction(v[0]["avg_frame_rate"]))) if v else None,
                (int(a[0]["sample_rate"]), a[0]["channels"]) if a else None,
                round(float(info["format"]["duration"]), 1))

    assert shape("two_talk") == ((640, 360, 25.0), (44100, 2), 8.0)
    assert shape("two_talk_30fps") == ((640, 360, 30.0), (48000, 2), 6.0)
    assert shape("two_cross") == ((640, 360, 25.0), (44100, 2), 8.0)
    assert shape("two_far")[0] == (1280, 360, 25.0)
    assert shape("scene_events")[0] == (640, 360, 25.0) and shape("scene_events")[2] == 10.0
    assert shape("tiny_res")[:2] == ((64, 48, 25.0), (44100, 2))
    assert shape("too_short")[2] == 0.6
    assert shape("audio_only")[0] is None and shape("audio_only")[1] is not None


# ---------------------------------------------------------------- speech


@pytest.mark.parametrize("name", ["two_talk", "two_talk_30fps", "scene_events", "one_person"])
def test_audio_energy_inside_truth_speech_and_silence_outside(gen, name):
    t = truth(gen, name)
    x = decode_audio(video(gen, name))
    assert abs(len(x) / AUDIO_RATE - t["duration"]) < 0.05
    assert t["speech"], "no speech in truth"
    for s in t["speech"]:
        seg = x[int(s["start"] * AUDIO_RATE):int(s["end"] * AUDIO_RATE)]
        assert rms(seg) > 0.02, s
    # everywhere farther than 60 ms from every truth segment: near silence, 20 ms window by window
    quiet = np.ones(len(x), dtype=bool)
    margin = int(0.06 * AUDIO_RATE)
    for s in t["speech"]:
        quiet[max(0, int(s["start"] * AUDIO_RATE) - margin):int(s["end"] * AUDIO_RATE) + margin] = False
    win = int(0.02 * AUDIO_RATE)
    q = [rms(x[i:i + win]) for i in range(0, len(x) - win, win) if quiet[i:i + win].all()]
    assert len(q) > 20
    assert max(q) < 0.004


def test_two_talk_has_both_speakers_and_one_overlap(gen):
    t = truth(gen, "two_talk")
    by = {0: [], 1: []}
    for s in t["speech"]:
        by[s["person"]].append((s["start"], s["end"]))
    assert len(by[0]) >= 2 and len(by[1]) >= 2
    overlaps = [(a, b) for a in by[0] for b in by[1] if min(a[1], b[1]) > max(a[0], b[0])]
    assert len(overlaps) == 1
    assert t["persons"][0]["voice"] != t["persons"][1]["voice"]


def test_two_talk_30fps_uses_other_people_and_voices(gen):
    a, b = truth(gen, "two_talk"), truth(gen, "two_talk_30fps")
    assert {p["photo"] for p in a["persons"]}.isdisjoint({p["photo"] for p in b["persons"]})
    assert {p["voice"] for p in a["persons"]}.isdisjoint({p["voice"] for p in b["persons"]})


# ---------------------------------------------------------------- faces and mouths


@pytest.mark.parametrize("name", WITH_VIDEO)
def test_boxes_inside_frame(gen, name):
    t = truth(gen, name)
    for p in t["persons"]:
        for _, x0, y0, x1, y1 in p["boxes"]:
            assert 0 <= x0 < x1 <= t["width"] and 0 <= y0 < y1 <= t["height"]
            if name in GOOD:
                assert x1 - x0 >= 68 and y1 - y0 >= 68  # big enough for a face detector


def test_two_far_faces_sit_at_the_edges(gen):
    t = truth(gen, "two_far")
    xs = sorted((p["boxes"][0][1], p["boxes"][0][3]) for p in t["persons"])
    assert xs[0][0] < 40 and xs[1][1] > t["width"] - 40
    assert all(65 <= b[3] - b[1] <= 80 for p in t["persons"] for b in p["boxes"])


def _mouth_activity(gray: np.ndarray, boxes: dict[int, list[int]], ref_frames: list[int]) -> np.ndarray:
    """Mean |crop - closed-mouth reference| over the lower middle of each frame's own face box
    (so it follows a moving face), per frame in ``boxes`` (sorted)."""
    def crop(i):
        x0, y0, x1, y1 = boxes[i]
        w = x1 - x0
        return gray[i, (y0 + y1) // 2:y1, x0 + w // 5:x1 - w // 5].astype(np.float32)

    ref = np.median(np.stack([crop(i) for i in ref_frames]), axis=0)
    return np.array([np.abs(crop(i) - ref).mean() for i in sorted(boxes)])


def _speech_envelopes(t: dict, x: np.ndarray) -> np.ndarray:
    """Per person, per frame: audio RMS of the mix where the truth says that person speaks, else 0."""
    n, fps = t["n_frames"], t["fps"]
    hop = AUDIO_RATE / fps
    frame_rms = np.array([rms(x[int(i * hop):int((i + 1) * hop)]) for i in range(n)])
    env = np.zeros((len(t["persons"]), n))
    times = np.arange(n) / fps
    for s in t["speech"]:
        on = (times >= s["start"]) & (times < s["end"])
        env[s["person"], on] = frame_rms[on]
    return env


@pytest.mark.parametrize("name", ["two_talk", "two_talk_30fps", "two_cross"])
def test_mouth_motion_follows_own_voice(gen, name):
    t = truth(gen, name)
    frames = gray_video(gen, name)
    env = _speech_envelopes(t, decode_audio(video(gen, name)))
    assert len(t["persons"]) == 2
    for p in t["persons"]:
        me, other = p["id"], 1 - p["id"]
        boxes = {b[0]: b[1:] for b in p["boxes"]}
        silent = [i for i in range(t["n_frames"]) if env[me, i] == 0]
        act = _mouth_activity(frames, boxes, silent)
        c_own = np.corrcoef(act, env[me])[0, 1]
        c_other = np.corrcoef(act, env[other])[0, 1]
        assert c_own > 0.5, (p["photo"], c_own, c_other)
        assert c_own > c_other + 0.4, (p["photo"], c_own, c_other)


@pytest.mark.parametrize("name", [n for n in GOOD if n != "two_cross"] + ["tiny_res"])
def test_moving_mouth_lies_in_the_lower_middle_of_the_truth_box(gen, name):
    """While one person speaks alone, the most-changing pixels of the whole frame are that person's
    mouth: they must fall in the lower middle of that person's truth box (checks box alignment)."""
    t = truth(gen, name)
    gray = gray_video(gen, name)
    fps, n = t["fps"], t["n_frames"]
    # who is where in each frame; frames with the same layout show the same still picture but mouths
    layout: list[list] = [[] for _ in range(n)]
    for p in t["persons"]:
        for f, *box in p["boxes"]:
            layout[f].append((p["id"], *box))
    checked = 0
    for s in t["speech"]:
        others = [o for o in t["speech"] if o["person"] != s["person"]]
        frames_alone = [i for i in range(int(np.ceil(s["start"] * fps)), min(n, int(s["end"] * fps)))
                        if not any(o["start"] - 0.1 <= i / fps < o["end"] + 0.1 for o in others)]
        if len(frames_alone) < 10:
            continue
        mid = frames_alone[len(frames_alone) // 2]
        sel = [i for i in frames_alone if layout[i] == layout[mid]]
        std = gray[sel].std(axis=0)
        smooth = np.lib.stride_tricks.sliding_window_view(np.pad(std, 2, mode="edge"), (5, 5)).mean(axis=(2, 3))
        yy, xx = np.unravel_index(np.argmax(smooth), smooth.shape)
        x0, y0, x1, y1 = {b[0]: b[1:] for b in t["persons"][s["person"]]["boxes"]}[mid]
        w = x1 - x0
        assert x0 + 0.25 * w <= xx <= x1 - 0.25 * w, (s, (xx, yy), (x0, y0, x1, y1))
        assert (y0 + y1) / 2 <= yy <= y1, (s, (xx, yy), (x0, y0, x1, y1))
        checked += 1
    assert checked >= 1


def test_silent_person_mouth_is_still(gen):
    """no_audio has nobody speaking: the mouth region does not move."""
    t = truth(gen, "no_audio")
    frames = gray_video(gen, "no_audio")
    (p,) = t["persons"]
    boxes = {b[0]: b[1:] for b in p["boxes"]}
    assert _mouth_activity(frames, boxes, list(range(t["n_frames"]))).max() < 2.0


# ---------------------------------------------------------------- two people crossing


def test_two_cross_people_swap_sides_without_overlapping(gen):
    t = truth(gen, "two_cross")
    assert t["n_frames"] == 200 and t["cuts"] == [] and t["face_count"] == [2] * 200
    assert t["two_face_frames"] == [[0, 200]]
    a, b = ({bx[0]: bx[1:] for bx in p["boxes"]} for p in t["persons"])
    cx = lambda box: (box[0] + box[2]) / 2  # noqa: E731
    cy = lambda box: (box[1] + box[3]) / 2  # noqa: E731
    n = t["n_frames"]
    # person 0 is the left one at the first frame and the right one at the last
    assert a[0][2] < b[0][0] and cx(a[0]) < 200 < 440 < cx(b[0])
    assert b[n - 1][2] < a[n - 1][0] and cx(b[n - 1]) < 200 < 440 < cx(a[n - 1])
    # A high, B low, never overlapping much; both glide steadily, and cross around 4 s
    assert all(iou(a[i], b[i]) <= 0.3 for i in range(n))
    assert all(cy(a[i]) < 150 < cy(b[i]) for i in range(n))
    for boxes, sign in ((a, 1), (b, -1)):
        steps = np.diff([cx(boxes[i]) for i in range(n)]) * sign
        assert steps.min() >= 0 and steps.max() <= 4 and 1.0 < steps.mean() < 3.0
        assert len({(bx[2] - bx[0], bx[3] - bx[1]) for bx in boxes.values()}) == 1
    cross = next(i for i in range(n) if cx(a[i]) >= cx(b[i]))
    assert abs(cross / t["fps"] - 4.0) < 0.5
    # both talk, in turn
    assert {s["person"] for s in t["speech"]} == {0, 1}
    assert t["persons"][0]["voice"] != t["persons"][1]["voice"]


def test_two_cross_pixels_move_with_the_boxes(gen):
    """The upper half of each face box (above the mouth) shows the same picture in every frame, and a
    box displaced by 24 px does not: the truth boxes follow the moving faces."""
    t = truth(gen, "two_cross")
    gray = gray_video(gen, "two_cross")
    for p in t["persons"]:
        boxes = {bx[0]: bx[1:] for bx in p["boxes"]}

        def upper(i, dx=0):
            x0, y0, x1, y1 = boxes[i]
            return gray[i, y0:(y0 + y1) // 2, x0 + dx:x1 + dx]

        ref = upper(0)
        same = [np.abs(upper(i) - ref).mean() for i in range(0, t["n_frames"], 10)]
        shifted = [np.abs(upper(i, 24 if boxes[i][0] < 300 else -24) - ref).mean()
                   for i in range(0, t["n_frames"], 10)]
        assert max(same) < 4.0, (p["photo"], max(same))
        assert min(shifted) > 3 * max(same) + 4, (p["photo"], min(shifted), max(same))
    # and the speaker's mouth is the most-changing part of its box while it talks alone
    for s in t["speech"]:
        boxes = {bx[0]: bx[1:] for bx in t["persons"][s["person"]]["boxes"]}
        frames = range(int(np.ceil(s["start"] * t["fps"])), min(t["n_frames"], int(s["end"] * t["fps"])))
        if len(frames) < 10:
            continue
        crops = np.stack([gray[i, boxes[i][1]:boxes[i][3], boxes[i][0]:boxes[i][2]] for i in frames])
        std = crops.std(axis=0)
        smooth = np.lib.stride_tricks.sliding_window_view(np.pad(std, 2, mode="edge"), (5, 5)).mean(axis=(2, 3))
        yy, xx = np.unravel_index(np.argmax(smooth), smooth.shape)
        h, w = std.shape
        assert 0.25 * w <= xx <= 0.75 * w and h / 2 <= yy, (s, (xx, yy), (w, h))


# ---------------------------------------------------------------- scene events


def test_scene_events_face_count_steps_and_intervals(gen):
    t = truth(gen, "scene_events")
    fc = t["face_count"]
    assert t["n_frames"] == 250 and t["cuts"] == [5.0]
    assert fc == [1] * 75 + [2] * 100 + [3] * 75  # steps at 3.0 s and 7.0 s
    assert t["two_face_intervals"] == [[3.0, 5.0], [5.0, 7.0]]


def test_scene_events_pixels_show_entries_and_cut(gen):
    t = truth(gen, "scene_events")
    frames = decode_frames(video(gen, "scene_events")).astype(np.float32)
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[i-1]: frame i vs i-1
    cut = round(5.0 * t["fps"])
    assert np.argmax(diff) + 1 == cut and diff[cut - 1] > 10 * np.median(diff)
    # each late person: its box region changes exactly when it appears, the rest of the frame barely
    for p in t["persons"][1:]:
        f, x0, y0, x1, y1 = p["boxes"][0]
        assert f == round(p["appear"] * t["fps"]) and f != cut
        inside = np.abs(frames[f, y0:y1, x0:x1] - frames[f - 1, y0:y1, x0:x1]).mean()
        before = np.abs(frames[f - 1, y0:y1, x0:x1] - frames[f - 2, y0:y1, x0:x1]).mean()
        assert inside > 15 and inside > 5 * before + 1
    # at the cut every face jumps to a new place
    for p in t["persons"][:2]:
        boxes = {b[0]: b[1:] for b in p["boxes"]}
        (a0, _, a1, _), (b0, _, b1, _) = boxes[cut - 1], boxes[cut]
        assert abs((a0 + a1) / 2 - (b0 + b1) / 2) > 50


# ---------------------------------------------------------------- broken files


@pytest.mark.parametrize("name", ["broken_truncated", "broken_empty", "broken_text"])
def test_unreadable_files_fail_ffprobe(gen, name):
    r = ffprobe(video(gen, name))
    assert r.returncode != 0 or not json.loads(r.stdout or "{}").get("streams")


def test_truncated_is_a_real_mp4_prefix_without_moov(gen):
    full = video(gen, "two_talk").read_bytes()
    cut = video(gen, "broken_truncated").read_bytes()
    assert full.find(b"mdat") < full.rfind(b"moov")  # default muxing: moov at the end
    assert full.startswith(cut) and abs(len(cut) - 0.3 * len(full)) <= 1
    assert cut[4:8] == b"ftyp" and b"moov" not in cut


def test_empty_and_text(gen):
    assert video(gen, "broken_empty").stat().st_size == 0
    text = video(gen, "broken_text").read_bytes()
    assert len(text) > 10 and all(32 <= c < 127 or c in (9, 10, 13) for c in text)


def test_stream_layout_of_broken_but_readable_files(gen):
    na = probe_ok(video(gen, "no_audio"))
    assert len(streams(na, "video")) == 1 and streams(na, "audio") == []
    ao = probe_ok(video(gen, "audio_only"))
    assert streams(ao, "video") == [] and [s["codec_name"] for s in streams(ao, "audio")] == ["aac"]
    assert abs(float(ao["format"]["duration"]) - truth(gen, "audio_only")["duration"]) < 0.05
    assert rms(decode_audio(video(gen, "audio_only"))) > 0.01
    for n in ("too_short", "tiny_res"):
        info = probe_ok(video(gen, n))
        assert len(streams(info, "video")) == 1 and len(streams(info, "audio")) == 1
    assert float(probe_ok(video(gen, "too_short"))["format"]["duration"]) < 1.0


# ---------------------------------------------------------------- the long benchmark video


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "bench.mp4"
    t0 = time.monotonic()
    assert generate_long(path, minutes=0.5, seed=0) == path
    return {"path": path, "seconds": time.monotonic() - t0}


def test_long_video_matches_its_truth(long_video):
    path = long_video["path"]
    t = load_truth(path)
    assert set(t) == TRUTH_KEYS and t["name"] == "bench" and t["file"] == "bench.mp4"
    assert t["kind"] == "good" and t["expect_probe"] == "kept" and t["boxes_every"] == 5
    assert long_video["seconds"] < 20.0
    info = probe_ok(path)
    (v,), (a,) = streams(info, "video"), streams(info, "audio")
    assert (v["codec_name"], v["width"], v["height"], v["pix_fmt"]) == ("h264", 640, 360, "yuv420p")
    assert float(Fraction(v["avg_frame_rate"])) == 25.0
    assert (a["codec_name"], int(a["sample_rate"]), a["channels"]) == ("aac", 44100, 2)
    assert t["duration"] == 30.0 and abs(float(info["format"]["duration"]) - 30.0) <= 0.04
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True)
    assert int(r.stdout.strip()) == t["n_frames"] == 750
    check_truth_consistency(t)
    # shots of 10..40 s, 1..3 people each
    bounds = [0.0] + t["cuts"] + [t["duration"]]
    assert len(t["cuts"]) >= 1 and all(10.0 <= b - a <= 40.0 for a, b in zip(bounds, bounds[1:]))
    for a, b in zip(bounds, bounds[1:]):
        assert 1 <= len({p["id"] for p in t["persons"] if p["appear"] == a and p["disappear"] == b}) <= 3
    assert len(t["speech"]) >= 4


def test_long_video_pixels_cut_where_the_truth_says_and_mouths_follow_voices(long_video):
    path = long_video["path"]
    t = load_truth(path)
    gray = decode_gray(path, t["width"], t["height"])
    assert len(gray) == t["n_frames"]
    small = gray[:, ::4, ::4].astype(np.float32)
    diff = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2))  # diff[i-1]: frame i vs i-1
    cut_frames = sorted(round(c * t["fps"]) for c in t["cuts"])
    assert sorted(np.argsort(diff)[::-1][:len(cut_frames)] + 1) == cut_frames
    assert all(diff[f - 1] > 10 * np.median(diff) for f in cut_frames)
    env = _speech_envelopes(t, decode_audio(path))
    checked = 0
    for p in t["persons"]:
        a, b = round(p["appear"] * t["fps"]), round(p["disappear"] * t["fps"])
        box = p["boxes"][0][1:]
        me = env[p["id"], a:b]
        if p["voice"] is None or (me > 0).sum() < 25:
            continue
        act = _mouth_activity(gray, {i: box for i in range(a, b)}, [i for i in range(a, b) if env[p["id"], i] == 0])
        assert np.corrcoef(act, me)[0, 1] > 0.5, (p, np.corrcoef(act, me)[0, 1])
        checked += 1
    assert checked >= 2


# ---------------------------------------------------------------- determinism


def test_same_seed_same_output_other_seed_differs(gen, tmp_path):
    again = generate(tmp_path / "again", seed=0)
    assert [p.name for p in again] == [p.name for p in gen["paths"]]
    for p in again:
        assert load_truth(p) == truth(gen, p.stem), p.name
    for name in GOOD + ["no_audio", "tiny_res", "too_short"]:
        assert decoded_md5(tmp_path / "again" / f"{name}.mp4", "v") == decoded_md5(video(gen, name), "v"), name
    for name in ["two_talk", "two_cross", "audio_only"]:
        assert decoded_md5(tmp_path / "again" / f"{name}.mp4", "a") == decoded_md5(video(gen, name), "a"), name
    # another seed: other jitter, grain and speech timing (one fixture is enough to show it)
    (scene,) = [s for s in good_scenes() if s.name == "two_talk"]
    (tmp_path / "other").mkdir()
    other = render(scene, tmp_path / "other", seed=1)
    assert other["persons"][0]["boxes"] != truth(gen, "two_talk")["persons"][0]["boxes"]
    assert other["speech"] != truth(gen, "two_talk")["speech"]
    assert decoded_md5(tmp_path / "other" / "two_talk.mp4", "v") != decoded_md5(video(gen, "two_talk"), "v")


def test_long_video_is_deterministic(long_video, tmp_path):
    again = generate_long(tmp_path / "bench.mp4", minutes=0.5, seed=0)
    assert load_truth(again) == load_truth(long_video["path"])
    for kind in "va":
        assert decoded_md5(again, kind) == decoded_md5(long_video["path"], kind)
