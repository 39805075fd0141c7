"""Segments: maximal runs where exactly N face tracks coexist inside one shot, every face at least
``min_face_px`` wide, at least ``min_frames`` long at the output rate; long runs are cut into windows.

Characters are ordered left to right at the clip's first frame and keep their track's identity for the
whole clip: crossing or turning away never swaps them. A third face, a lost face or a cut ends a run.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipCharacter, ClipFaces, FrameTimes, ProbeResult, Shots, VideoTracks
from mtcc.media.tracking import interpolate
from mtcc.media.video import FrameClock

from .base import RESOURCES, Candidate, Key, Resources, Stage, optional
from .clip import make_clip


def runs(active: np.ndarray, n: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """Maximal runs [a, b) of rows of the boolean matrix ``active`` [frames, tracks] in which exactly
    ``n`` tracks are on and the set of tracks does not change."""
    out = []
    start, key = None, None
    for f in range(len(active) + 1):
        cur = tuple(np.flatnonzero(active[f]).tolist()) if f < len(active) else None
        if cur != key:
            if key is not None and len(key) == n:
                out.append((start, f, key))
            start, key = f, cur
    return out


def windows(a: float, b: float, min_s: float, max_s: float) -> list[tuple[float, float]]:
    """Split [a, b) into equal windows no longer than ``max_s`` and no shorter than ``min_s``."""
    dur = b - a
    if dur < min_s:
        return []
    k = max(1, math.ceil(dur / max_s))
    while k > 1 and dur / k < min_s:
        k -= 1
    step = dur / k
    return [(a + i * step, a + (i + 1) * step) for i in range(k)]


def on_frames(wins: list[tuple[float, float]], clock: FrameClock, t0: float,
              min_s: float) -> list[tuple[float, float]]:
    """Variable rate: the windows' inner bounds moved onto the start of the frame shown there.

    The clip encode (``-ss``, then ``fps=``) starts its timeline at the first frame at or after the seek
    point; a start inside a gap of a variable-rate stream would shift every picture of the clip one output
    frame early against its sound and faces.json. A window the move leaves shorter than ``min_s`` is
    dropped. Constant rate: unchanged."""
    if not clock.variable or len(wins) < 2:
        return wins
    cuts = [t0 + clock.time_of(clock.index_at(s - t0)) for s, _ in wins[1:]]
    moved = zip([wins[0][0], *cuts], [*cuts, wins[-1][1]])
    return [(s, e) for s, e in moved if e - s >= min_s - 1e-6]


class TwoFaceSegments(Stage):
    name: ClassVar[str] = "segment"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.002
    typical_keep: ClassVar[float] = 0.2
    actor_memory_mb: ClassVar[int] = 185
    max_actor_cpus: ClassVar[float] = 1.0
    clip_fields: ClassVar[dict[str, str]] = {"characters": "n_faces", "fps": "out_fps"}
    requires: ClassVar[tuple[Key | type, ...]] = (VideoTracks, ProbeResult, optional(FrameTimes), optional(Shots))
    provides: ClassVar[tuple[Key | type, ...]] = (ClipFaces,)
    stats_schema: ClassVar[dict[str, str]] = {"n_clips": "int64", "segment_seconds": "float64"}
    expands: ClassVar[bool] = True

    n_faces: int = Field(2, ge=1, description="faces a clip must hold on every frame (the later stages take 2)")
    min_face_px: float = Field(40.0, ge=1, description="min face box width (source pixels) on every frame")
    out_fps: int = Field(25, ge=1, description="frame rate of the clips' face tracks (the cut's mp4 rate)")
    min_frames: int = Field(49, ge=1, description="at out_fps; Bind-Your-Avatar trains on 49-frame clips")
    max_seconds: float = Field(10.0, gt=0, description="longer runs are cut into equal windows of at most this")
    edge_trim_frames: int = Field(0, ge=0, description="source frames dropped at each end of a run")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.25, candidates_per_call=8), description=RESOURCES)

    def _clip_faces(self, tracks: list[dict[str, Any]], clock: FrameClock, t0: float, start: float,
                    end: float) -> ClipFaces:
        n_out = int(round((end - start) * self.out_fps))
        pos = clock.position_at(start - t0 + np.arange(n_out) / self.out_fps)
        chars = [{"track_id": t["id"], **interpolate(t, pos)} for t in tracks]
        chars.sort(key=lambda c: float(c["boxes"][0, 0] + c["boxes"][0, 2]))  # left-most first
        return ClipFaces(self.out_fps, n_out, "left_to_right_at_first_frame", tuple(
            ClipCharacter(i, c["track_id"], np.round(c["boxes"], 2).tolist(), np.round(c["landmarks"], 2).tolist(),
                          np.round(c["scores"], 4).tolist())
            for i, c in enumerate(chars)))

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        out: list[Candidate] = []
        for video in batch:
            faces = video.fact(VideoTracks)
            # when each source frame is shown: a variable-rate stream's frames are not at i/fps
            times = video.maybe(FrameTimes)
            clock = times.clock() if times else FrameClock(float(faces.fps), faces.n_frames)
            t0 = video.fact(ProbeResult).start  # file time of the video start
            tracks = faces.tracks
            shots = video.maybe(Shots)
            shots = shots.spans if shots else ((0, faces.n_frames),)
            clips: list[tuple[float, float, list[dict[str, Any]]]] = []
            total = 0.0
            for a, b in shots:
                in_shot = [t for t in tracks if t["shot"] == [a, b]]
                if len(in_shot) < self.n_faces:
                    continue
                frames = np.arange(a, b)
                active = np.zeros((b - a, len(in_shot)), bool)
                for j, t in enumerate(in_shot):
                    on = (frames >= t["frames"][0]) & (frames <= t["frames"][-1])
                    width = interpolate(t, frames.astype(np.float64))["boxes"]
                    active[:, j] = on & ((width[:, 2] - width[:, 0]) >= self.min_face_px)
                for ra, rb, members in runs(active, self.n_faces):
                    ra, rb = ra + a + self.edge_trim_frames, rb + a - self.edge_trim_frames
                    if rb <= ra:
                        continue
                    total += clock.time_of(rb) - clock.time_of(ra)
                    min_s = self.min_frames / self.out_fps
                    wins = windows(t0 + clock.time_of(ra), t0 + clock.time_of(rb), min_s, self.max_seconds)
                    for s, e in on_frames(wins, clock, t0, min_s):
                        clips.append((s, e, [in_shot[m] for m in members]))
            self.record(video, {"n_clips": len(clips), "segment_seconds": round(total, 3)})
            if not clips:
                video.reject(self.name, "no_two_face_segment",
                             f"no run of {self.n_faces} faces (each >= {self.min_face_px:g}px wide) lasting "
                             f"{self.min_frames} frames at {self.out_fps} fps inside one shot "
                             f"({len(tracks)} face tracks in {len(shots)} shots)")
                out.append(video)
                continue
            video.status = "expanded"
            out.append(video)
            for k, (s, e, members) in enumerate(clips):
                clip = make_clip(video, self.name, k, s, e)
                clip.facts.drop(VideoTracks)  # the video's tracks stay with the video; a clip keeps its own
                clip.put(self._clip_faces(members, clock, t0, clip.start, clip.end))
                out.append(clip)
        return out
