"""Picture: how good each clip looks, measured without a model, right after the cut (before any model stage
spends time on a clip that will not be kept).

Per character, from the shared face crops (media/crops.py) cut to the face box at ``face_size`` pixels, on
every ``frame_step``-th frame:
  * ``sharpness_<k>``: variance of the Laplacian of the grey face, median over frames. The face is always
    measured at the same size, so a small, upscaled or blurred face scores low whatever the clip's size;
  * ``luminance_<k>`` / ``contrast_<k>``: mean and standard deviation of the face's grey level (0-255);
  * ``complete_<k>``: share of frames whose face box lies wholly inside the picture;
  * ``yaw_<k>``, ``pitch_<k>``, ``roll_<k>``: head pose in degrees from the five landmarks (median over
    frames; yaw > 0: the nose points to the picture's right, pitch > 0: the face tilts down, roll > 0: the
    eye line turns clockwise), ``yaw_spread_<k>``: their spread (degrees, 90 % range of yaw);
  * ``size_change_<k>``: largest over smallest face box width (1: the face keeps its size).
Per clip:
  * ``bits_per_pixel``: the source's bits per pixel and frame (file size over duration, picture size and
    frame rate): low values are heavily compressed uploads, often upscaled;
  * ``camera_motion`` / ``camera_shake``: global motion of the picture (phase correlation of consecutive
    grey frames of the clip's mp4 at ``motion_width`` pixels), as a share of the picture width: the mean
    speed per second (pans and zooms) and the mean frame-to-frame change of the motion (shake).

Every score is a stat; a threshold left unset records it and rejects nothing. Where the numbers come from
and which profile rejects on what: docs/quality.md.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, ProbeResult
from mtcc.media.clip import CHARACTERS
from mtcc.media.crops import CropGeometry

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Rejection, Resources, Stage, StatView, Threshold
from .clip_media import clip_media

GREY = np.array([0.299, 0.587, 0.114], np.float32)


def laplacian_variance(grey: np.ndarray) -> np.ndarray:
    """``[N]`` variance of the 4-neighbour Laplacian of each ``[N, H, W]`` grey image (inner pixels)."""
    g = np.asarray(grey, np.float32)
    lap = g[:, 1:-1, :-2] + g[:, 1:-1, 2:] + g[:, :-2, 1:-1] + g[:, 2:, 1:-1] - 4 * g[:, 1:-1, 1:-1]
    return lap.reshape(len(g), -1).var(axis=1)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """``[T, 3]`` (yaw, pitch, roll) in degrees from ``[T, 5, 2]`` landmarks (left eye, right eye, nose, left
    and right mouth corner, in picture coordinates). A geometric estimate: the nose's offset from the
    eye-mouth axis (yaw) and its height between the eye and mouth lines (pitch), after undoing the roll."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 5, 2)
    eye_l, eye_r, nose, mouth_l, mouth_r = (lm[:, i] for i in range(5))
    d = eye_r - eye_l
    roll = np.arctan2(d[:, 1], d[:, 0])
    c, s = np.cos(-roll), np.sin(-roll)
    centre = (eye_l + eye_r) / 2

    def upright(p: np.ndarray) -> np.ndarray:
        q = p - centre
        return np.stack([c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1]], axis=1)

    n, ml, mr = upright(nose), upright(mouth_l), upright(mouth_r)
    mouth = (ml + mr) / 2
    half_eyes = np.maximum(np.linalg.norm(d, axis=1) / 2, 1e-6)
    # the nose tip leaves the face's midline by its depth x sin(yaw) while the eye span shrinks by cos(yaw);
    # the depth is about half the eye span
    axis_x = mouth[:, 0] / 2  # the midline between the eye centre (0) and the mouth centre, at the nose
    yaw = np.degrees(np.arctan((n[:, 0] - axis_x) / half_eyes))
    height = np.maximum(mouth[:, 1], 1e-6)
    # a frontal face has its nose tip ~55 % of the way from the eye line down to the mouth line
    pitch = np.degrees(np.arcsin(np.clip((n[:, 1] / height - 0.55) * 2, -1, 1)))
    return np.stack([yaw, pitch, np.degrees(roll)], axis=1)


def global_motion(grey: np.ndarray) -> np.ndarray:
    """``[T-1, 2]`` translation (dx, dy) in pixels between consecutive ``[T, H, W]`` grey frames (phase
    correlation with a Hann window: the picture's dominant motion, not a face moving in it)."""
    import cv2

    g = np.asarray(grey, np.float32)
    if len(g) < 2:
        return np.zeros((0, 2))
    window = cv2.createHanningWindow((g.shape[2], g.shape[1]), cv2.CV_32F)
    return np.array([cv2.phaseCorrelate(g[t - 1], g[t], window)[0] for t in range(1, len(g))], np.float64)


def bits_per_pixel(probe: ProbeResult) -> float:
    if not (probe.size_bytes and probe.duration and probe.width and probe.height and probe.fps):
        return float("nan")
    return float(probe.size_bytes) * 8 / float(probe.duration) / (probe.width * probe.height * float(probe.fps))


class PictureQuality(Stage):
    name: ClassVar[str] = "picture"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.02
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 310
    uses: ClassVar[tuple[str, ...]] = ("opencv-python-headless", "decord")
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces, ProbeResult)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        **{f"{s}_{k}": "float64" for k in range(CHARACTERS)
           for s in ("sharpness", "luminance", "contrast", "complete", "yaw", "pitch", "roll", "yaw_spread",
                     "size_change")},
        "bits_per_pixel": "float64", "camera_motion": "float64", "camera_shake": "float64",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("sharpness_0", "sharpness_1"), "sharpness", plot="face_sharpness",
                 title="Face sharpness (Laplacian variance at a fixed face size)", unit="grey levels²",
                 thresholds=(Threshold("min_sharpness", "min_sharpness"),)),
        StatView(("luminance_0", "luminance_1"), "luminance", plot="face_luminance",
                 title="Face luminance (mean grey level)", unit="0-255",
                 thresholds=(Threshold("min_luminance", "min_luminance"), Threshold("max_luminance", "max_luminance"))),
        StatView(("contrast_0", "contrast_1"), "contrast", plot="face_contrast",
                 title="Face contrast (grey level standard deviation)", unit="0-255",
                 thresholds=(Threshold("min_contrast", "min_contrast"),)),
        StatView(("yaw_0", "yaw_1"), "yaw", plot="face_yaw", title="Head yaw (median)", unit="degrees",
                 thresholds=(Threshold("max_yaw", "max_yaw"), Threshold("-max_yaw", "max_yaw", sign=-1))),
        StatView(("complete_0", "complete_1"), "complete", plot="face_complete",
                 title="Frames with the whole face box in the picture", unit="share",
                 thresholds=(Threshold("min_complete", "min_complete"),)),
        StatView(("bits_per_pixel",), "bits/px", plot="bits_per_pixel", title="Source bits per pixel and frame",
                 unit="bits", thresholds=(Threshold("min_bits_per_pixel", "min_bits_per_pixel"),)),
        StatView(("camera_shake",), "shake", plot="camera_shake",
                 title="Camera shake (frame-to-frame change of the global motion)", unit="share of width",
                 thresholds=(Threshold("max_camera_shake", "max_camera_shake"),)),
    )

    face_size: int = Field(112, ge=32, le=224, description="face crops are measured at this size (pixels, the "
                                                           "face box's longer side)")
    frame_step: int = Field(5, ge=1, description="measure the face on every this many frames (5: 5 a second)")
    motion_width: int = Field(160, ge=32, description="the picture is decoded this wide for the global motion")
    min_sharpness: float | None = Field(None, ge=0, description="reject when a character's face sharpness is "
                                                                "below this (None: record only)")
    min_luminance: float | None = Field(None, ge=0, le=255, description="reject when a face's mean grey level is "
                                                                         "below this (None: record only)")
    max_luminance: float | None = Field(None, ge=0, le=255, description="reject when a face's mean grey level is "
                                                                         "above this (None: record only)")
    min_contrast: float | None = Field(None, ge=0, description="reject when a face's grey-level standard "
                                                               "deviation is below this (None: record only)")
    min_complete: float | None = Field(None, ge=0, le=1, description="reject when a face box is wholly in the "
                                                                     "picture on fewer frames than this share")
    max_yaw: float | None = Field(None, ge=0, le=90, description="reject when a character's median |yaw| is "
                                                                 "above this, degrees (None: record only)")
    min_bits_per_pixel: float | None = Field(None, ge=0, description="reject sources with fewer bits per pixel "
                                                                     "and frame (None: record only)")
    max_camera_shake: float | None = Field(None, ge=0, description="reject when the camera shake is above this "
                                                                   "share of the width (None: record only)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.2, candidates_per_call=4),
                                 description=RESOURCES)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        faces = cand.fact(ClipFaces)
        probe = cand.fact(ProbeResult)
        media = clip_media(cand, self)
        n = media.frames
        frames = np.arange(0, n, self.frame_step)
        # [C, len(frames), S, S, 3]: the face box, squared, on the measured frames
        crops = media.crops(CropGeometry(self.face_size, 1.0), frames)
        stats: dict[str, Any] = {}
        width, height = float(probe.width or 0), float(probe.height or 0)
        for k, ch in enumerate(faces.characters):
            grey = crops[k].astype(np.float32) @ GREY
            stats[f"sharpness_{k}"] = float(np.median(laplacian_variance(grey)))
            stats[f"luminance_{k}"] = float(grey.mean())
            stats[f"contrast_{k}"] = float(np.median(grey.reshape(len(grey), -1).std(axis=1)))
            boxes = np.asarray(ch.boxes, np.float64).reshape(-1, 4)[:n]
            inside = ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height))
            stats[f"complete_{k}"] = float(inside.mean()) if len(inside) else float("nan")
            pose = head_pose(np.asarray(ch.landmarks, np.float64).reshape(-1, 5, 2)[:n])
            yaw, pitch, roll = np.median(pose, axis=0) if len(pose) else (math.nan,) * 3
            stats.update({f"yaw_{k}": float(yaw), f"pitch_{k}": float(pitch), f"roll_{k}": float(roll)})
            stats[f"yaw_spread_{k}"] = (float(np.percentile(pose[:, 0], 95) - np.percentile(pose[:, 0], 5))
                                        if len(pose) else float("nan"))
            w = boxes[:, 2] - boxes[:, 0]
            stats[f"size_change_{k}"] = float(w.max() / max(w.min(), 1e-6)) if len(w) else float("nan")
        stats["bits_per_pixel"] = bits_per_pixel(probe)
        stats.update(self._camera(media.mp4(), tuple(media.info.size), media.info.fps))
        return stats

    def _camera(self, mp4: str, size: tuple[int, int], fps: float) -> dict[str, float]:
        from mtcc.media.video import open_frames

        video = open_frames(mp4, {"width": size[0], "height": size[1]}, self.motion_width)
        grey = np.concatenate([np.asarray(imgs, np.float32) @ GREY for _, imgs in video.batches(None, 64)])
        shifts = global_motion(grey) / float(grey.shape[2])  # share of the width per frame
        if len(shifts) < 2:
            return {"camera_motion": 0.0, "camera_shake": 0.0}
        speed = np.linalg.norm(shifts, axis=1) * fps
        shake = np.linalg.norm(np.diff(shifts, axis=0), axis=1)
        return {"camera_motion": float(speed.mean()), "camera_shake": float(shake.mean())}

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        chars = [k for k in range(CHARACTERS) if f"sharpness_{k}" in stats]
        checks = [
            ("blurred_face", "min_sharpness", "sharpness", lambda v, t: v < t, "<"),
            ("dark_face", "min_luminance", "luminance", lambda v, t: v < t, "<"),
            ("bright_face", "max_luminance", "luminance", lambda v, t: v > t, ">"),
            ("flat_face", "min_contrast", "contrast", lambda v, t: v < t, "<"),
            ("cut_off_face", "min_complete", "complete", lambda v, t: v < t, "<"),
            ("turned_face", "max_yaw", "yaw", lambda v, t: abs(v) > t, "|>|"),
        ]
        for reason, setting, stat, fails, op in checks:
            limit = getattr(self, setting)
            if limit is None:
                continue
            bad = [k for k in chars if fails(stats[f"{stat}_{k}"], limit)]
            if bad:
                said = ", ".join(f"character {k}: {stat} {stats[f'{stat}_{k}']:.3g}" for k in bad)
                return Rejection(reason, f"{said} ({op} picture.{setting}={limit:g})")
        if self.min_bits_per_pixel is not None and stats["bits_per_pixel"] < self.min_bits_per_pixel:
            return Rejection("low_bitrate", f"source bits per pixel {stats['bits_per_pixel']:.4f} < "
                                            f"picture.min_bits_per_pixel={self.min_bits_per_pixel:g}")
        if self.max_camera_shake is not None and stats["camera_shake"] > self.max_camera_shake:
            return Rejection("shaky_camera", f"camera shake {stats['camera_shake']:.4f} > "
                                             f"picture.max_camera_shake={self.max_camera_shake:g}")
        return None

