"""The text stage on planted truth (subtitles, a lower third and a caption across a face, burnt in with
ffmpeg's drawtext; each drawn box measured from the pixels the drawing changed) and on real footage (the
real debate's clock and channel logo; the real same-scene pair has no text)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clips_through_stages, fresh, recut

from mtcc.facts import ClipFaces, CutMedia, ScreenTextLines
from mtcc.media.video import open_frames
from mtcc.nets.loading import WeightsError
from mtcc.stages.base import Candidate
from mtcc.stages.clip_media import clip_media
from mtcc.stages.screen_text import ScreenText, same_place

BORDER = 2
TEXT = f"fontcolor=white:borderw={BORDER}:bordercolor=black:font=Sans"


def planted(face: tuple[float, float, float, float]) -> dict[str, str]:
    """drawtext recipes on the 640x360 two_talk: subtitles whose words change halfway at one place, a lower
    third on a dark band, and a caption across the face ``face`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = face
    return {
        "subtitles": f"drawtext=text='we will be right back':x=(w-tw)/2:y=h-48:fontsize=24:{TEXT}:"
                     f"enable='lt(t,3)',"
                     f"drawtext=text='after these messages from home':x=(w-tw)/2:y=h-48:fontsize=24:{TEXT}:"
                     f"enable='gte(t,3)'",
        "lower_third": f"drawbox=x=0:y=h-96:w=300:h=40:color=black@0.7:t=fill,"
                       f"drawtext=text='JANE DOE  SENATOR':x=12:y=h-88:fontsize=22:{TEXT}",
        "over_face": f"drawtext=text='BREAKING NEWS':x={int((x0 + x1) / 2)}-tw/2:y={int((y0 + y1) / 2)}-th/2:"
                     f"fontsize=26:{TEXT}",
    }


@pytest.fixture(scope="module")
def talk(sample_dir) -> Candidate:
    (clip,) = clips_through_stages(sample_dir / "two_talk.mp4", max_seconds=10.0)
    return clip


def face_box(c: Candidate, k: int) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in np.median(c.fact(ClipFaces).characters[k].box_array(), axis=0))


@pytest.fixture(scope="module")
def variants(talk, sample_dir, tmp_path_factory) -> dict[str, Candidate]:
    """``talk`` as is, and cut again from each planted copy of its source."""
    d = tmp_path_factory.mktemp("text")
    return {"original": talk, **{name: recut(talk, sample_dir / "two_talk.mp4", d / f"{name}.mp4", vf=vf,
                                              **{"c:v": "libx264", "crf": 16, "c:a": "copy"})
                                 for name, vf in planted(face_box(talk, 0)).items()}}


@pytest.fixture(scope="module")
def reader() -> ScreenText:
    stage = ScreenText()
    stage.setup()
    return stage


def read(stage: ScreenText, cand: Candidate, **cfg) -> Candidate:
    if cfg:
        stage = ScreenText(**cfg)
        stage.setup()
    (c,) = stage.run_batch(fresh([cand]))
    return c


def stat(c: Candidate, name: str):
    return c.stats[f"text.{name}"]


def drawn_boxes(original: Candidate, copy: Candidate, times: list[float], brighter: bool) -> list[np.ndarray]:
    """Per time, the box of the pixels the drawing changed: the truth of what was planted, measured (the
    lower third's band darkens its pixels, its white glyphs brighten them: ``brighter`` keeps the glyphs,
    grown by their border)."""
    out = []
    frames = []
    holder = ScreenText()  # its workspace holds the two mp4s while they are read (it removes them when collected)
    for c in (original, copy):
        media = c.fact(CutMedia)
        video = open_frames(clip_media(c, holder).mp4(), {"width": media.size[0], "height": media.size[1]}, None)
        idx = [min(media.frames - 1, int(t * media.fps)) for t in times]
        frames.append(np.concatenate([f for _, f in video.batches(idx, len(idx))]).astype(np.int16))
    for a, b in zip(*frames):
        d = (b - a).max(axis=2) if brighter else np.abs(b - a).max(axis=2)
        ys, xs = np.nonzero(d > 60)
        grow = BORDER if brighter else 0  # the glyphs' black border is part of the text drawn
        out.append(np.array([xs.min() - grow, ys.min() - grow, xs.max() + 1 + grow, ys.max() + 1 + grow], np.float64))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def best_iou(found: list[list[float]], truth: np.ndarray) -> float:
    return max((iou(np.array(b), truth) for b in found), default=0.0)


def test_the_generated_clip_has_no_text(reader, variants):
    c = read(reader, variants["original"])
    assert c.status == "pending"
    assert stat(c, "text_frames") == 0.0 and stat(c, "text_cover") == 0.0 and stat(c, "static_text") == 0.0
    assert stat(c, "text_read") == ""


@pytest.mark.parametrize("video", ["two_talk_30fps", "scene_events"])
def test_drawn_faces_are_not_read_as_text(reader, sample_dir, video):
    # the detector takes some of these drawn faces for a line, read as one character ("9", "T") with up to
    # 0.89 confidence; none of the sample videos has text, so none may be found (and none rejected)
    for clip in clips_through_stages(sample_dir / f"{video}.mp4", max_seconds=10.0):
        c = read(reader, clip, max_text_over_face=0.2)
        assert c.status == "pending", c.message
        assert stat(c, "text_frames") == 0.0, c.fact(ScreenTextLines).texts


def found_where_drawn(reader, variants, name: str, brighter: bool = False) -> tuple[Candidate, list[np.ndarray]]:
    """``name`` read; on every frame read, a line found with IoU >= 0.5 with the drawn box; (the read
    candidate, the drawn boxes)."""
    c = read(reader, variants[name])
    lines = c.fact(ScreenTextLines)
    assert len(lines.times) >= 2
    truth = drawn_boxes(variants["original"], variants[name], lines.times, brighter=brighter)
    for found, box in zip(lines.boxes, truth, strict=True):
        assert best_iou(found, box) >= 0.5, (found, box)
    return c, truth


def test_subtitles_are_found_where_drawn_and_held_as_static_text(reader, variants):
    c, truth = found_where_drawn(reader, variants, "subtitles")
    lines = c.fact(ScreenTextLines)
    assert stat(c, "text_frames") == 1.0
    # the words change halfway; the place holds: one static place, where the subtitles are drawn
    assert len(lines.static) == 1 and same_place(np.array(lines.static[0]), truth[0])[0, 0]
    assert stat(c, "static_text") > 0.01
    assert stat(c, "text_over_face_0") == 0.0 and stat(c, "text_over_face_1") == 0.0
    assert "right back" in stat(c, "text_read") or "messages" in stat(c, "text_read")


def test_a_lower_third_is_found_where_drawn(reader, variants):
    c, _ = found_where_drawn(reader, variants, "lower_third", brighter=True)
    assert stat(c, "static_text") > 0.005
    assert "JANE" in stat(c, "text_read").upper()


def test_text_across_a_face_is_flagged_for_that_face_only(reader, variants):
    c, _ = found_where_drawn(reader, variants, "over_face")
    assert stat(c, "text_over_face_0") == 1.0
    assert stat(c, "text_over_face_1") == 0.0
    for name in ("original", "subtitles", "lower_third"):
        assert stat(read(reader, variants[name]), "text_over_face_0") == 0.0


def test_thresholds_reject_with_named_reasons_only_where_set(reader, variants):
    for name in ("subtitles", "lower_third", "over_face"):
        assert read(reader, variants[name]).status == "pending"  # record only by default
    r = read(reader, variants["subtitles"], max_static_text=0.001)
    assert (r.status, r.reason) == ("rejected", "static_text") and "text.max_static_text" in r.message
    r = read(reader, variants["over_face"], max_text_over_face=0.5)
    assert (r.status, r.reason) == ("rejected", "text_over_face") and "character 0" in r.message
    r = read(reader, variants["lower_third"], max_text_cover=0.001)
    assert (r.status, r.reason) == ("rejected", "text_on_screen")
    for name in ("max_static_text", "max_text_over_face", "max_text_cover"):
        assert read(reader, variants["original"], **{name: 0.001}).status == "pending"


def test_real_debate_clock_and_logo_are_static_text_in_the_lower_left(reader, real_dir):
    clips = clips_through_stages(real_dir / "debate_split_screen.avi", max_seconds=10.0)
    assert clips
    for clip in clips:
        c = read(reader, clip)
        lines = c.fact(ScreenTextLines)
        w, h = lines.size
        assert stat(c, "text_frames") == 1.0
        assert lines.static, lines.boxes
        for x0, y0, x1, y1 in lines.static:  # the station's corner: the left third, the lowest quarter
            assert x1 < w / 3 and y0 > 0.7 * h, lines.static
        assert "0:0" in stat(c, "text_read")  # the debate's clock
        # neither debater has text over the face
        assert stat(c, "text_over_face_0") == 0.0 and stat(c, "text_over_face_1") == 0.0


def test_real_same_scene_pair_has_no_text(reader, real_dir):
    for clip in clips_through_stages(real_dir / "same_scene_pair_16fps.mp4", max_seconds=10.0):
        c = read(reader, clip)
        assert stat(c, "text_frames") == 0.0 and stat(c, "static_text") == 0.0


def test_a_model_folder_without_the_models_is_refused_naming_them(tmp_path):
    stage = ScreenText(model=str(tmp_path))
    with pytest.raises(WeightsError, match="ch_PP-OCRv4_det_infer.onnx"):
        stage.setup()
