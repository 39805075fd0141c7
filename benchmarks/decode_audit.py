"""How much video each stage decodes, against how much it asks for.

Two kinds of decode happen in the stages: ``VideoFrames`` reads (decord, or an ffmpeg pipe when decord cannot)
and ffmpeg subprocesses that read video (the clip encode, the pipe itself). The audit watches both while a
benchmark runs the stages in-process, one at a time:

* frames NEEDED: the source frames a stage asked ``VideoFrames`` for, and the source frames an ffmpeg
  encode covers (``-ss``/``-t``);
* frames DECODED: what the codec had to decode to produce them. A decoder can only start at a key frame and
  must decode every frame in between, so for an ordered access list this follows the seek logic of decord
  (continue forward when no key frame lies between the last decoded frame and the next request, else seek to
  the last key frame before it) and of ffmpeg (input ``-ss`` seeks to the key frame before, then decodes
  forward to the last frame it outputs). Key frames and frame times come from ffprobe's packet list (no
  decode), in display order.

This is a model of the decoder's work, not a hardware counter; it is exact for the access patterns above and
is what makes "decode once, at the size each stage needs" checkable.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class StreamIndex:
    """Display-order frame times (seconds from the first frame) and key-frame positions of one video."""

    times: np.ndarray
    keys: np.ndarray  # sorted frame indices that are key frames

    @classmethod
    def probe(cls, path: str) -> StreamIndex:
        from mtcc.media.ffmpeg import MediaError, probe_command, run_tool

        try:
            out = run_tool(probe_command(path, stream="v:0", entries="packet=pts_time,flags",
                                         output_format="csv=p=0"), what=path).decode(errors="replace")
        except MediaError:
            out = ""  # a broken input of the set: no packets, no key frames (it decodes nothing either)
        pts, key = [], []
        for line in out.splitlines():
            parts = line.split(",")
            if len(parts) < 2 or parts[0] in ("", "N/A"):
                continue
            pts.append(float(parts[0]))
            key.append("K" in parts[1])
        if not pts:
            return cls(np.zeros(0), np.zeros(0, np.int64))
        order = np.argsort(pts, kind="stable")
        t = np.asarray(pts)[order]
        k = np.flatnonzero(np.asarray(key)[order])
        return cls(t - t[0], k if len(k) else np.array([0]))

    @property
    def n(self) -> int:
        return len(self.times)

    def key_at_or_before(self, i: int) -> int:
        j = int(np.searchsorted(self.keys, i, side="right")) - 1
        return int(self.keys[max(j, 0)])

    def index_at(self, t: float) -> int:
        return int(min(max(np.searchsorted(self.times, t - 1e-6), 0), max(self.n - 1, 0)))

    def sequential_cost(self, order: list[int]) -> int:
        """Frames decoded to produce ``order`` (in that order) from one open reader."""
        cur, cost = -1, 0
        for i in order:
            if i == cur:
                continue
            k = self.key_at_or_before(i)
            if cur < i and k <= cur:
                cost += i - cur  # same GOP, ahead: decode forward
            else:
                cost += i - k + 1  # seek to the key frame, decode up to i
            cur = i
        return cost

    def range_cost(self, start_s: float | None, dur_s: float | None, count: int | None) -> tuple[int, int]:
        """(decoded, covered) frames of an ffmpeg read from ``start_s`` for ``dur_s`` or ``count`` frames."""
        if self.n == 0:
            return 0, 0
        a = self.index_at(start_s) if start_s else 0
        if count is not None:
            b = min(self.n, a + count)
        elif dur_s is not None:
            b = max(a + 1, min(self.n, self.index_at((start_s or 0.0) + dur_s)))
        else:
            b = self.n
        k = self.key_at_or_before(a) if start_s else 0
        return b - k, b - a


@dataclass
class StageDecode:
    needed: int = 0
    decoded: int = 0
    reads: int = 0
    pixels: int = 0  # decoded-size pixels delivered (the size each stage asked for)
    needed_frames: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    # the same, per (path, size the frames were asked at): "source" for full size (an encode, a full read)
    needed_sized: dict[tuple[str, str], set[int]] = field(default_factory=lambda: defaultdict(set))


class DecodeAudit:
    def __init__(self) -> None:
        self.stage = "?"
        self.by_stage: dict[str, StageDecode] = defaultdict(StageDecode)
        self._index: dict[str, StreamIndex] = {}

    def index(self, path: str) -> StreamIndex:
        if path not in self._index:
            self._index[path] = StreamIndex.probe(path)
        return self._index[path]

    # --- VideoFrames reads
    def frames_read(self, vf: object, order: list[int], decord_backend: bool) -> None:
        s = self.by_stage[self.stage]
        path = str(getattr(vf, "path"))
        s.reads += 1
        s.needed += len(set(order))
        s.needed_frames[path].update(order)
        full = float(getattr(vf, "scale_x", 1.0)) == 1.0 and float(getattr(vf, "scale_y", 1.0)) == 1.0
        size = "source" if full else f"{getattr(vf, 'width', 0)}x{getattr(vf, 'height', 0)}"
        s.needed_sized[(path, size)].update(order)
        s.pixels += len(order) * int(getattr(vf, "width", 0)) * int(getattr(vf, "height", 0))
        if decord_backend:  # the pipe's decode is counted where ffmpeg is started
            s.decoded += self.index(path).sequential_cost(order)

    # --- ffmpeg subprocesses
    def ffmpeg_started(self, args: list[str]) -> None:
        if "-i" not in args:
            return
        i = args.index("-i")
        path = args[i + 1]
        if path.startswith("file:"):
            path = path[5:]
        maps = [args[j + 1] for j, a in enumerate(args[:-1]) if a == "-map"]
        graphs = [args[j + 1] for j, a in enumerate(args[:-1]) if a == "-filter_complex"]
        if "-vn" in args or (maps and not any(":v" in m for m in maps + graphs)):
            return  # audio only: no video decoded
        pre, post = args[:i], args[i + 2:]

        def opt(name: str, where: list[str]) -> str | None:
            return where[where.index(name) + 1] if name in where[:-1] else None

        start = opt("-ss", pre)
        dur = opt("-t", pre) or opt("-t", post)
        count = opt("-frames:v", post)
        idx = self.index(path)
        decoded, covered = idx.range_cost(float(start) if start else None, float(dur) if dur else None,
                                          int(count) if count else None)
        s = self.by_stage[self.stage]
        s.decoded += decoded
        if not ("-f" in post and opt("-f", post) == "rawvideo"):
            # an encode (the clip), not a pipe read whose frames the VideoFrames hook already counted
            a = idx.index_at(float(start)) if start else 0
            s.needed += covered
            s.needed_frames[path].update(range(a, a + covered))
            s.needed_sized[(path, "source")].update(range(a, a + covered))

    def summary(self, clips: int) -> dict:
        stages = {}
        union: dict[str, set[int]] = defaultdict(set)
        sized: dict[tuple[str, str], set[int]] = defaultdict(set)
        for name, s in self.by_stage.items():
            for p, f in s.needed_frames.items():
                union[p].update(f)
            for k, f in s.needed_sized.items():
                sized[k].update(f)
            stages[name] = {"frames_needed": s.needed, "frames_decoded": s.decoded, "reads": s.reads,
                            "decoded_per_needed": round(s.decoded / s.needed, 3) if s.needed else None,
                            "mpix_delivered": round(s.pixels / 1e6, 1)}
        decoded = sum(s.decoded for s in self.by_stage.values())
        needed_sum = sum(s.needed for s in self.by_stage.values())
        distinct = sum(len(v) for v in union.values())
        distinct_sized = sum(len(v) for v in sized.values())
        return {
            "stages": stages,
            "frames_decoded": decoded,
            "frames_needed_distinct": distinct,
            "frames_needed_per_stage_sum": needed_sum,
            # the goal ratio: every source frame any stage needs, decoded once
            "ratio_decoded_per_needed": round(decoded / distinct, 3) if distinct else None,
            # a frame needed at two sizes (the scan's reduced decode, the clip encode's full one) counts twice:
            # what is left above 1 is decoding that no stage asked for (GOP pre-roll, repeats at one size)
            "frames_needed_distinct_by_size": distinct_sized,
            "ratio_decoded_per_needed_by_size": round(decoded / distinct_sized, 3) if distinct_sized else None,
            # per stage: only waste inside each stage (GOP pre-roll, whole-file pipes), not repeats across stages
            "ratio_decoded_per_stage_need": round(decoded / needed_sum, 3) if needed_sum else None,
            "kept_clips": clips,
            "frames_decoded_per_kept_clip": round(decoded / clips, 1) if clips else None,
        }


@contextmanager
def audited(audit: DecodeAudit) -> Iterator[DecodeAudit]:
    """Hook VideoFrames reads and ffmpeg process starts for the duration of the block (benchmark only)."""
    from mtcc.media import video as video_mod

    vf_cls = video_mod.VideoFrames
    orig_batches, orig_frame = vf_cls.batches, vf_cls.frame
    orig_popen = subprocess.Popen.__init__

    def batches(self, indices, size):  # noqa: ANN001 - same signature as VideoFrames.batches
        order = list(range(self.n_frames)) if indices is None else list(indices)
        audit.frames_read(self, order, self.reader is not None)
        yield from orig_batches(self, indices, size)

    def frame(self, index):  # noqa: ANN001
        audit.frames_read(self, [int(index)], self.reader is not None)
        return orig_frame(self, index)

    def popen(self, args, *a, **kw):  # noqa: ANN001
        if isinstance(args, (list, tuple)) and args and Path(str(args[0])).name == "ffmpeg":
            audit.ffmpeg_started([str(x) for x in args])
        orig_popen(self, args, *a, **kw)

    vf_cls.batches, vf_cls.frame = batches, frame
    subprocess.Popen.__init__ = popen
    try:
        yield audit
    finally:
        vf_cls.batches, vf_cls.frame = orig_batches, orig_frame
        subprocess.Popen.__init__ = orig_popen
