"""PanelLayout: split-screen and stacked-panel composites (two camera feeds side by side or one above the
other, a character per panel) are not one scene; they are rejected as ``split_screen``.

Evidence (computed by the faces stage on the frames it already decodes, see :class:`SeamCollector`): a
panel border is a straight line across the whole frame where the picture jumps. Per sampled frame, for
every column, the fraction of rows where the grey level differs across that column (two pixels apart, more
than ``EDGE_LEVEL``) is its *coverage*; the same for rows. Natural vertical structures (poles, door frames,
building edges) are interrupted by the people, the ground or the sky; a panel border is not. Per shot the
mean coverage of every sampled frame is reduced to its peaks (``seams``: axis, position as a fraction of
the frame, strength = mean coverage), so a video's info stays small.

Decision per clip (this stage): a seam of the clip's shot with strength >= ``min_strength`` that keeps the
two characters on opposite sides (each face box wholly on its own side, on at least ``min_separated`` of the
clip's frames) makes the clip ``split_screen``. A pillarbox or letterbox edge is a seam too, but both faces
sit on the same side of it, so it never counts.

Why ``min_strength`` is 0.85: docs/calibration.md (the seams measured on panels and on one-scene clips).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, FrameTimes, ProbeResult, SeamEvidence
from mtcc.media.clip import CHARACTERS

from .base import RESOURCES, Candidate, Key, Rejection, Resources, Stage, StatView

EDGE_LEVEL = 16.0  # grey levels (0..255) across a column/row that count as an edge
PEAK_FLOOR = 0.3  # mean coverage below this is not kept as a seam candidate
BORDER = 0.02  # seams this close to the frame's edge (fraction) are ignored: nothing can sit beyond them


def seam_evidence(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the edge coverage of every column and every row.

    ``frames``: uint8 RGB ``[B, H, W, 3]`` (the faces stage's decode size). Returns float32
    ``[B, W]`` (column x: fraction of rows where |grey(x+1) - grey(x-1)| > EDGE_LEVEL; 0 at the two outer
    columns) and ``[B, H]`` (the same across rows)."""
    import cv2

    grey = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]).astype(np.int16)
    cols = np.zeros(grey.shape[:1] + grey.shape[2:], np.float32)
    rows = np.zeros(grey.shape[:2], np.float32)
    cols[:, 1:-1] = (np.abs(grey[:, :, 2:] - grey[:, :, :-2]) > EDGE_LEVEL).mean(axis=1)
    rows[:, 1:-1] = (np.abs(grey[:, 2:, :] - grey[:, :-2, :]) > EDGE_LEVEL).mean(axis=2)
    return cols, rows


def peaks(profile: np.ndarray, floor: float = PEAK_FLOOR) -> list[tuple[float, float]]:
    """(position as a fraction of the profile's length, value) of the local maxima >= ``floor``, one per
    run of neighbouring values above the floor (a border line's two edges are one seam)."""
    p = np.asarray(profile, np.float64)
    n = len(p)
    out = []
    above = np.concatenate([[False], p >= floor, [False]])
    d = np.flatnonzero(np.diff(above.astype(np.int8)))
    for a, b in zip(d[::2], d[1::2]):
        i = a + int(np.argmax(p[a:b]))
        pos = (i + 0.5) / n
        if BORDER <= pos <= 1 - BORDER:
            out.append((round(pos, 4), round(float(p[i]), 3)))
    return out


class SeamCollector:
    """Seam evidence of one video, gathered frame by frame as the faces stage decodes, summarised per shot.

    ``add(indices, frames)`` with source frame indices and their decoded RGB frames; ``summary(shots)``
    -> ``{"size": [w, h], "shots": [[a, b, [[axis, position, strength], ...]], ...]}`` (axis ``v``: a
    vertical border at x = position * width; ``h``: horizontal at y = position * height)."""

    def __init__(self) -> None:
        self._frames: list[int] = []
        self._cols: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._size: tuple[int, int] | None = None

    def add(self, indices: list[int], frames: np.ndarray) -> None:
        if len(indices) == 0:
            return
        cols, rows = seam_evidence(frames)
        self._size = (int(frames.shape[2]), int(frames.shape[1]))
        self._frames += [int(i) for i in indices]
        # coverage to 1/255 steps: an hour at 5 fps and 640x360 keeps ~18 MB until the summary
        self._cols += list(np.round(cols * 255).astype(np.uint8))
        self._rows += list(np.round(rows * 255).astype(np.uint8))

    def summary(self, shots: list[list[int]]) -> dict[str, Any]:
        frames = np.asarray(self._frames)
        out = []
        for a, b in shots:
            sel = np.flatnonzero((frames >= a) & (frames < b))
            seams: list[list[Any]] = []
            if len(sel):
                cols = np.mean([self._cols[i] for i in sel], axis=0) / 255
                rows = np.mean([self._rows[i] for i in sel], axis=0) / 255
                seams = [["v", p, s] for p, s in peaks(cols)] + [["h", p, s] for p, s in peaks(rows)]
            out.append([int(a), int(b), seams])
        return {"size": list(self._size) if self._size else None, "shots": out}


def separating_fraction(axis: str, at: float, boxes0: np.ndarray, boxes1: np.ndarray, tol: float) -> float:
    """Fraction of frames on which a border at pixel ``at`` (x for ``v``, y for ``h``) has one character's
    box wholly on each side (``tol`` pixels of overlap allowed)."""
    lo, hi = (0, 2) if axis == "v" else (1, 3)
    a_first = (boxes0[:, hi] <= at + tol) & (boxes1[:, lo] >= at - tol)
    b_first = (boxes1[:, hi] <= at + tol) & (boxes0[:, lo] >= at - tol)
    return float(np.mean(a_first | b_first)) if len(boxes0) else 0.0


class PanelLayout(Stage):
    name: ClassVar[str] = "layout"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.001
    typical_keep: ClassVar[float] = 0.8
    actor_memory_mb: ClassVar[int] = 185
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    requires: ClassVar[tuple[Key | type, ...]] = (ProbeResult, FrameTimes, SeamEvidence, ClipFaces)
    stats_schema: ClassVar[dict[str, str]] = {
        "seam_strength": "float64", "seam_axis": "string", "seam_position": "float64", "separated": "float64",
        "split_screen": "bool",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (StatView(("split_screen",), "split screen"),)

    split_screen: Literal["reject", "keep"] = Field("reject", description="what to do with panel composites")
    min_strength: float = Field(0.85, gt=0, le=1, description="mean edge coverage of a border across the frame")
    min_separated: float = Field(0.9, gt=0, le=1, description="share of clip frames on which the border keeps the two "
                                                              "characters on opposite sides")
    tolerance: float = Field(0.02, ge=0, description="box overlap across the border allowed, fraction of the frame")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.05, candidates_per_call=32), description=RESOURCES)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        seams = cand.fact(SeamEvidence)
        if not seams.size:
            raise ValueError("no seam evidence on the candidate: the faces stage records it (SeamEvidence); "
                             "list 'faces' before 'layout' in the profile")
        probe = cand.fact(ProbeResult)
        w, h = float(probe.width or 0), float(probe.height or 0)
        clock = cand.fact(FrameTimes).clock()
        first = clock.index_at(float(cand.start or 0.0) - probe.start)
        shot = next((s for s in seams.shots if s[0] <= first < s[1]), None)
        chars = cand.fact(ClipFaces).characters
        if len(chars) != 2:
            raise ValueError(f"layout needs exactly 2 characters, clip has {len(chars)}")
        b0, b1 = (np.asarray(c.boxes, np.float64) for c in chars)
        best = {"seam_strength": 0.0, "seam_axis": "", "seam_position": None, "separated": 0.0}
        for axis, pos, strength in (shot[2] if shot else []):
            extent = w if axis == "v" else h
            sep = separating_fraction(axis, pos * extent, b0, b1, self.tolerance * extent)
            if sep >= self.min_separated and strength > best["seam_strength"]:
                best = {"seam_strength": float(strength), "seam_axis": axis, "seam_position": float(pos),
                        "separated": round(sep, 4)}
        best["split_screen"] = best["seam_strength"] >= self.min_strength
        return best

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if stats["split_screen"] and self.split_screen == "reject":
            where = "vertical" if stats["seam_axis"] == "v" else "horizontal"
            return Rejection("split_screen", f"panel composite, not one scene: a {where} border at "
                                             f"{stats['seam_position']:.1%} of the frame crosses "
                                             f"{stats['seam_strength']:.0%} of it and keeps the two characters apart "
                                             f"on {stats['separated']:.0%} of the clip's frames "
                                             f"(stages.layout.split_screen=keep keeps such clips)")
        return None
