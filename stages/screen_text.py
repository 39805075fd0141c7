"""Text: what is written over the picture (burnt-in subtitles, lower thirds, logos, tickers, scores), read
with PP-OCRv4 (nets/screen_text.py) on ``sample_fps`` frames a second of the clip's mp4, right after the
cut. A model should not learn to paint captions, nor learn faces with a name across their chin.

  * ``text_frames``: share of the frames read that show any text;
  * ``text_cover``: share of the picture under text, averaged over the frames read;
  * ``static_text``: share of the picture under text that stays in place: a line whose place (half its
    width and half its height overlapping) holds text on at least ``static_share`` of the frames read;
    a ticking clock or a changing subtitle at one place counts, text that moves does not;
  * ``text_over_face_<k>``: share of the frames read on which text covers at least ``face_overlap`` of
    character k's face box;
  * ``text_read``: what the static text reads, top to bottom (for a human reading the manifest).

The boxes themselves go into the sample's json (``ScreenTextLines``) for a trainer that crops or masks them.
Every score is a stat; a threshold left unset records it and rejects nothing (docs/quality.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, ScreenTextLines
from mtcc.media.clip import CHARACTERS
from mtcc.media.crops import clip_boxes
from mtcc.nets.screen_text import DETECTOR, TextBox

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Rejection, Resources, Stage, StatView, Threshold
from .clip_media import clip_media


def same_place(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]``: box a and box b (x0, y0, x1, y1 rows) overlap by at least half the narrower one's width
    and half the lower one's height (a subtitle line and a shorter one at its place; a clock ticking)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 1, 4), np.asarray(b, np.float64).reshape(1, -1, 4)
    ox = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    oy = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    w = np.minimum(a[..., 2] - a[..., 0], b[..., 2] - b[..., 0])
    h = np.minimum(a[..., 3] - a[..., 1], b[..., 3] - b[..., 1])
    return (ox >= 0.5 * w) & (oy >= 0.5 * h)


def covered(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The ``[H, W]`` mask of the picture under any of ``boxes`` (pixels of a picture of ``size`` (w, h))."""
    w, h = size
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        mask[max(0, int(y0)):min(h, int(np.ceil(y1))), max(0, int(x0)):min(w, int(np.ceil(x1)))] = True
    return mask


def static_lines(frames: list[np.ndarray], share: float) -> list[np.ndarray]:
    """Per frame, whether each of its boxes is in place on at least ``share`` of the frames (its own included)."""
    out = []
    for boxes in frames:
        if not len(boxes):
            out.append(np.zeros(0, bool))
            continue
        held = sum(same_place(boxes, other).any(axis=1) for other in frames if len(other))
        out.append(np.asarray(held, np.float64) / len(frames) >= share)
    return out


class ScreenText(Stage):
    name: ClassVar[str] = "text"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.12
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 470
    uses: ClassVar[tuple[str, ...]] = ("rapidocr-onnxruntime", "pyclipper", "shapely", "onnxruntime", "decord")
    max_actor_cpus: ClassVar[float] = 2.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces)
    provides: ClassVar[tuple[Key | type, ...]] = (ScreenTextLines,)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "text_frames": "float64", "text_cover": "float64", "static_text": "float64",
        **{f"text_over_face_{k}": "float64" for k in range(CHARACTERS)},
        "text_read": "string",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("text_cover",), "text", plot="text_cover", title="Share of the picture under on-screen text",
                 unit="share", thresholds=(Threshold("max_text_cover", "max_text_cover"),)),
        StatView(("static_text",), "static text", plot="static_text",
                 title="Share of the picture under text that stays in place (logos, lower thirds, subtitles)",
                 unit="share", thresholds=(Threshold("max_static_text", "max_static_text"),)),
        StatView(("text_over_face_0", "text_over_face_1"), "text on face", plot="text_over_face",
                 title="Share of frames with text over a face", unit="share",
                 thresholds=(Threshold("max_text_over_face", "max_text_over_face"),)),
    )

    model: str | None = Field(None, description=f"a folder with PP-OCRv4's ONNX files ({DETECTOR} and its "
                                                "recogniser); None: the ones inside the rapidocr-onnxruntime wheel")
    sample_fps: float = Field(1.0, gt=0, le=25, description="frames read per second of clip (at least two per "
                                                            "clip, so that text that stays can be told apart)")
    size: int = Field(640, ge=160, le=2048, description="the frames are read with their longer side at this "
                                                        "many pixels (text under ~8 pixels high is not seen)")
    box_score: float = Field(0.5, gt=0, lt=1, description="the detector's mean text probability from which a "
                                                          "region is a text line")
    text_score: float = Field(0.5, gt=0, lt=1, description="the recogniser's confidence from which a line is "
                                                           "text (drops faces and patterns the detector mistakes)")
    min_chars: int = Field(2, ge=1, description="a line that reads as fewer letters or digits is not text (a "
                                                 "face the detector takes for a line reads as one character)")
    static_share: float = Field(0.6, gt=0, le=1, description="a line whose place holds text on at least this "
                                                             "share of the frames read is static text")
    face_overlap: float = Field(0.1, gt=0, le=1, description="text covering at least this share of a face box "
                                                             "is text over that face")
    max_text_cover: float | None = Field(None, ge=0, le=1, description="reject when text covers a larger mean "
                                                                       "share of the picture (None: record only)")
    max_static_text: float | None = Field(None, ge=0, le=1, description="reject when static text covers a "
                                                                        "larger share of the picture (None: "
                                                                        "record only)")
    max_text_over_face: float | None = Field(None, ge=0, le=1, description="reject when text is over a face on "
                                                                           "a larger share of the frames read "
                                                                           "(None: record only)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.5, candidates_per_call=4),
                                 description=RESOURCES)

    def load(self) -> None:
        from mtcc.nets.screen_text import ScreenTextReader

        self._reader = ScreenTextReader(self.model, threads=self.thread_count, size=self.size,
                                        box_score=self.box_score, text_score=self.text_score,
                                        min_chars=self.min_chars)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        from mtcc.media.video import open_frames

        faces = cand.fact(ClipFaces)
        media = clip_media(cand, self)
        mp4_w, mp4_h = (int(v) for v in media.info.size)
        n, fps = media.frames, float(media.info.fps)
        count = max(2, int(round(media.info.seconds * self.sample_fps)))
        idx = sorted({min(n - 1, int((i + 0.5) / self.sample_fps * fps)) for i in range(count)})
        width = self.size if mp4_w >= mp4_h else max(2, int(round(self.size * mp4_w / mp4_h)))
        video = open_frames(media.mp4(), {"width": mp4_w, "height": mp4_h}, width)
        pics = np.concatenate([imgs for _, imgs in video.batches(idx, len(idx))])
        size = (int(pics.shape[2]), int(pics.shape[1]))
        read = self._reader.read(pics)
        # boxes in the read frames' pixels for the shares; in the mp4's for the sample
        boxes = [np.array([t.box for t in lines], np.float64).reshape(-1, 4) for lines in read]
        static = static_lines(boxes, self.static_share)
        area = float(size[0] * size[1])
        to_mp4 = np.array([video.scale_x, video.scale_y, video.scale_x, video.scale_y])  # mp4 px per read px
        face_boxes = clip_boxes(faces.boxes(), media.scale) / to_mp4
        under = [covered(b, size) for b in boxes]  # per frame read, the picture under its text
        stats: dict[str, Any] = {
            "text_frames": float(np.mean([len(b) > 0 for b in boxes])),
            "text_cover": float(np.mean([m.sum() / area for m in under])),
            "static_text": float(covered(np.concatenate([b[s] for b, s in zip(boxes, static)]), size).sum() / area),
        }
        for k in range(len(faces.characters)):
            over = []
            for f, text in zip(idx, under):
                face = face_boxes[k, min(f, face_boxes.shape[1] - 1)]
                face_area = max((face[2] - face[0]) * (face[3] - face[1]), 1e-6)
                inter = text & covered(face[None], size)
                over.append(inter.sum() / face_area >= self.face_overlap)
            stats[f"text_over_face_{k}"] = float(np.mean(over))
        stats["text_read"] = self._static_reading(read, static)
        cand.put(ScreenTextLines(
            model="PP-OCRv4", size=[mp4_w, mp4_h], times=[round(i / fps, 3) for i in idx],
            boxes=[[[round(float(v), 1) for v in np.asarray(t.box) * to_mp4] for t in lines] for lines in read],
            texts=[[t.text for t in lines] for lines in read],
            static=[[round(float(v), 1) for v in box * to_mp4] for box in _merged_static(boxes, static)]))
        return stats

    @staticmethod
    def _static_reading(read: list[list[TextBox]], static: list[np.ndarray]) -> str:
        """The readings of the static lines, each place once (its most confident reading), top to bottom."""
        best: list[TextBox] = []
        for lines, keep in zip(read, static):
            for line, s in zip(lines, keep):
                if not s:
                    continue
                at = [i for i, b in enumerate(best) if same_place(np.array(b.box), np.array(line.box))[0, 0]]
                if not at:
                    best.append(line)
                elif line.score > best[at[0]].score:
                    best[at[0]] = line
        best.sort(key=lambda t: (round(t.box[1]), t.box[0]))
        return " | ".join(t.text for t in best)[:200]

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        for reason, setting, stat in (("text_on_screen", "max_text_cover", "text_cover"),
                                      ("static_text", "max_static_text", "static_text")):
            limit = getattr(self, setting)
            if limit is not None and stats[stat] > limit:
                return Rejection(reason, f"{stat} {stats[stat]:.3f} > text.{setting}={limit:g}")
        if self.max_text_over_face is not None:
            over = {k: stats[f"text_over_face_{k}"] for k in range(CHARACTERS) if f"text_over_face_{k}" in stats}
            bad = [k for k, v in over.items() if v > self.max_text_over_face]
            if bad:
                said = ", ".join(f"character {k}: {over[k]:.2f} of frames" for k in bad)
                return Rejection("text_over_face", f"text over the face of {said} (> "
                                                   f"text.max_text_over_face={self.max_text_over_face:g})")
        return None


def _merged_static(boxes: list[np.ndarray], static: list[np.ndarray]) -> list[np.ndarray]:
    """One box per static place: the union of the boxes seen there."""
    places: list[np.ndarray] = []
    for b, s in zip(boxes, static):
        for box in b[s]:
            at = [i for i, p in enumerate(places) if same_place(p, box)[0, 0]]
            if at:
                p = places[at[0]]
                places[at[0]] = np.array([min(p[0], box[0]), min(p[1], box[1]), max(p[2], box[2]), max(p[3], box[3])])
            else:
                places.append(np.asarray(box, np.float64))
    return sorted(places, key=lambda p: (round(p[1]), p[0]))
