"""Frame access: each stage decodes once, at the size it needs.

decord is the fast path (random access, resize in the decoder). Some streams defeat it (e.g. H.264
whose parameter sets arrive late: decord cannot build its filter graph), and decord mishandles rotation
metadata when it resizes; those go through an ffmpeg pipe that streams display-oriented frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtcc.media.ffmpeg import frames_command, open_tool, probe_command, run_tool

# Timestamps that stray from i/fps by less than this share of a frame (millisecond-rounded Matroska/WebM
# times, float32 in decord) still describe a constant rate; such a video keeps frame i at exactly i/fps
CFR_TOLERANCE = 0.25


class FrameClock:
    """When each frame of a video is shown, in seconds from the video stream's start (the time base of
    the clip encode's ``-ss`` once the probe's ``video_start`` is added).

    Constant rate (``times`` None): frame i at i/fps, as every stage assumed before variable-rate input.
    Variable rate: the stream's own presentation times; ``fps`` is then the mean rate, used only where a
    rough rate will do (detector sampling steps, minimum shot lengths)."""

    def __init__(self, fps: float, n_frames: int, times: np.ndarray | None = None, end: float | None = None):
        self.fps = float(fps)
        self.n_frames = int(n_frames)
        self.times = None if times is None else np.asarray(times, np.float64)
        if self.times is not None:
            if len(self.times) != self.n_frames:
                raise ValueError(f"{len(self.times)} frame times for {self.n_frames} frames")
            step = self.frame_step()
            self.end = float(end) if end is not None and end > self.times[-1] else float(self.times[-1] + step)
            # frame i's edges: its start, and the next frame's start (the last one: the stream's end)
            self._edges = np.append(self.times, self.end)

    @property
    def variable(self) -> bool:
        return self.times is not None

    def frame_step(self) -> float:
        """The stream's usual frame interval: the median gap between frames (drops do not shorten it)."""
        if self.times is None or len(self.times) < 2:
            return 1.0 / self.fps
        return float(np.median(np.diff(self.times)))

    def time_of(self, index):
        """Start time of frame ``index`` (int or array); ``n_frames`` gives the end of the last frame."""
        if self.times is None:
            return np.asarray(index) / self.fps if np.ndim(index) else index / self.fps
        at = self._edges[np.clip(np.asarray(index), 0, self.n_frames)]
        return at if np.ndim(index) else float(at)

    def position_at(self, t):
        """Fractional frame position of time ``t`` (float or array): where tracks are interpolated."""
        if self.times is None:
            return np.asarray(t) * self.fps if np.ndim(t) else t * self.fps
        pos = np.interp(t, self._edges, np.arange(self.n_frames + 1, dtype=np.float64))
        return pos if np.ndim(t) else float(pos)

    def index_at(self, t):
        """The frame shown at time ``t`` (float or array), within half a frame: constant rate rounds
        t*fps to the nearest frame; variable rate takes the last frame starting by t + half a usual
        frame interval, so a time inside a dropped frame's gap keeps showing the frame before it, as the
        clip encode's fps filter does."""
        last = max(0, self.n_frames - 1)
        if self.times is None:
            idx = np.clip(np.round(np.asarray(t) * self.fps).astype(int), 0, last)
        else:
            idx = np.searchsorted(self.times, np.asarray(t) + 0.5 * self.frame_step(), side="right") - 1
            idx = np.clip(idx, 0, last)
        return idx if np.ndim(t) else int(idx)

    def to_info(self) -> dict[str, Any]:
        """JSON-able form for ``Candidate.info`` (times only for a variable rate)."""
        if self.times is None:
            return {"fps": self.fps, "n_frames": self.n_frames}
        return {"fps": self.fps, "n_frames": self.n_frames, "times": np.round(self.times, 6).tolist(),
                "end": round(self.end, 6)}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> FrameClock:
        return cls(info["fps"], info["n_frames"], info.get("times"), info.get("end"))


def clock_from_timestamps(starts: np.ndarray, end: float | None, fps: float) -> FrameClock:
    """A clock for frames starting at ``starts`` (seconds from the stream start, presentation order):
    constant rate when they sit on the i/fps grid of the container's rate ``fps``, else the times."""
    starts = np.asarray(starts, np.float64)
    n = len(starts)
    if n < 2:
        return FrameClock(fps if fps > 0 else 25.0, n)
    # measured from the first frame: a constant-rate video keeps frame 0 at the video start, as always
    if fps > 0 and np.all(np.abs(starts - starts[0] - np.arange(n) / fps) < CFR_TOLERANCE / fps):
        return FrameClock(fps, n)
    stop = float(end) if end is not None and end > starts[-1] else float(starts[-1] + np.median(np.diff(starts)))
    return FrameClock(n / max(stop - starts[0], 1e-6), n, starts, stop)


@dataclass
class VideoFrames:
    """Frames of one video at a reduced size, and how its pixels map back to the source."""

    path: str
    fps: float
    n_frames: int
    width: int
    height: int
    scale_x: float  # source px per decoded px
    scale_y: float
    reader: object | None = None  # decord.VideoReader; None = ffmpeg pipe
    threads: int = 1
    t0: float = 0.0  # file time of frame 0 (ffmpeg seeks in file time)
    clock: FrameClock = field(default=None)  # type: ignore[assignment]  # None: constant rate at fps

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = FrameClock(self.fps, self.n_frames)

    @property
    def backend(self) -> str:
        return "decord" if self.reader is not None else "ffmpeg"

    def time_of(self, index):
        """Start of frame ``index`` in seconds from the video start (add ``t0`` for file time)."""
        return self.clock.time_of(index)

    def index_at(self, t):
        """The frame shown at ``t`` seconds from the video start (see :meth:`FrameClock.index_at`)."""
        return self.clock.index_at(t)

    def batches(self, indices: list[int] | None, size: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """(indices, uint8 RGB [B,H,W,3]) in chunks of ``size``; ``None`` = every frame."""
        if self.reader is not None:
            import decord

            todo = list(range(self.n_frames)) if indices is None else indices
            for i in range(0, len(todo), size):
                chunk = todo[i:i + size]
                try:
                    frames = self.reader.get_batch(chunk).asnumpy()
                except decord.DECORDError:
                    # a damaged packet (bit rot, a bad cut) stops decord for good; ffmpeg conceals the damage
                    # and goes on: the rest of this video's frames come from the pipe, same indices
                    self.reader = None
                    yield from self.batches(todo[i:], size)
                    return
                yield chunk, frames
            return
        want = None if indices is None else set(indices)
        idx: list[int] = []
        buf: list[np.ndarray] = []
        for i, frame in enumerate(self._pipe()):
            if want is None or i in want:
                idx.append(i)
                buf.append(frame)
                if len(buf) == size:
                    yield idx, np.stack(buf)
                    idx, buf = [], []
        if buf:
            yield idx, np.stack(buf)

    def frame(self, index: int) -> np.ndarray:
        if self.reader is not None:
            import decord

            try:
                return self.reader[index].asnumpy()
            except decord.DECORDError:
                self.reader = None  # damaged stream: the pipe from here on (see batches)
        # half a frame early: a seek time printed to the microsecond can land just after the frame's own
        # timestamp, and ffmpeg would then skip to the next frame
        start = self.t0 + self.time_of(index) - 0.5 * self.clock.frame_step()
        return next(self._pipe(start=max(0.0, start), count=1))

    def _pipe(self, start: float | None = None, count: int | None = None) -> Iterator[np.ndarray]:
        args = frames_command(self.path, width=self.width, height=self.height, threads=self.threads,
                              start=start, count=count)
        size = self.width * self.height * 3
        proc = open_tool(args)
        try:
            assert proc.stdout is not None
            while data := proc.stdout.read(size):
                if len(data) < size:
                    break
                yield np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
        finally:
            proc.stdout.close()
            proc.kill()
            proc.wait()


def reduced_size(src_w: int, src_h: int, width: int) -> tuple[int, int]:
    """An even-sized (w, h) no wider than ``width`` (never upscaled), same aspect."""
    w = min(width, src_w)
    h = max(2, int(round(src_h * w / src_w / 2)) * 2)
    return max(2, w // 2 * 2), h


def coded_size(probe: dict) -> tuple[int, int]:
    """The stream's (w, h) before its rotation: probe reports the displayed size, decord decodes unrotated
    frames (at the stored size, which non-square pixels make narrower: those are always decoded resized)."""
    w, h = int(probe["width"]), int(probe["height"])
    return (h, w) if int(probe.get("rotation") or 0) in (90, 270) else (w, h)


def _packet_clock(path: str, fps: float) -> FrameClock:
    """The frame clock from the video packets' timestamps (ffprobe reads packets, decodes nothing)."""
    out = run_tool(probe_command(path, stream="v:0",
                                 entries="stream=start_time:packet=pts_time,duration_time,flags"), what=path)
    doc = json.loads(out.decode("utf-8", "replace") or "{}")
    # packets an edit list cuts off are flagged D (discard): the decoder drops them, they are no frames
    packets = [p for p in doc.get("packets") or [] if "D" not in p.get("flags", "")]
    streams = doc.get("streams") or [{}]
    try:
        origin = float(streams[0].get("start_time") or 0.0)
        pts = np.array([float(p["pts_time"]) for p in packets])
    except (KeyError, ValueError):
        # packets without timestamps (some AVI, raw streams): only their count is known
        return FrameClock(fps, len(packets))
    if len(pts) == 0:
        return FrameClock(fps, 0)
    order = np.argsort(pts, kind="stable")  # packets come in decode order; frames leave in display order
    last = packets[int(order[-1])]
    try:
        end = float(last["duration_time"]) + pts[order[-1]] - origin
    except (KeyError, ValueError):
        end = None
    return clock_from_timestamps(pts[order] - origin, end, fps)


def _decord_clock(reader: Any) -> FrameClock:
    """The frame clock from decord's index (built when the file was opened: no decoding)."""
    n = len(reader)
    fps = float(reader.get_avg_fps())
    if n == 0:
        return FrameClock(fps, 0)
    ts = np.asarray(reader.get_frame_timestamp(list(range(n))), np.float64).reshape(n, 2)
    return clock_from_timestamps(ts[:, 0], float(ts[-1, 1]), fps)


def open_frames(path: str, probe: dict, width: int | None, threads: int = 1) -> VideoFrames:
    import decord

    src_w, src_h = coded_size(probe)
    w, h = (src_w, src_h) if width is None or width >= src_w else reduced_size(src_w, src_h, width)
    try:
        if int(probe.get("rotation") or 0) % 360:
            # decord turns a rotated frame only when it does not resize it (resized, the turned frame is
            # squeezed into the unturned size); ffmpeg applies the display matrix as the clip encode
            # does, so boxes and crops live in the orientation the viewer and the training clip see
            raise decord.DECORDError("rotated stream")
        if (w, h) == (src_w, src_h) and not probe.get("sample_aspect"):  # non-square pixels: resized to shown
            reader = decord.VideoReader(path, num_threads=threads)
        else:
            reader = decord.VideoReader(path, width=w, height=h, num_threads=threads)
        clock = _decord_clock(reader)
        return VideoFrames(path, clock.fps, clock.n_frames, w, h, src_w / w, src_h / h, reader,
                           threads, float(probe.get("video_start") or 0.0), clock)
    except decord.DECORDError:
        # the pipe decodes at the displayed size (ffmpeg applies the rotation itself): ``width`` is the
        # displayed width, as for an unrotated source
        disp_w, disp_h = int(probe["width"]), int(probe["height"])
        w, h = (disp_w, disp_h) if width is None or width >= disp_w else reduced_size(disp_w, disp_h, width)
        clock = _packet_clock(path, float(probe.get("fps") or probe.get("fps_real") or 25.0))
        return VideoFrames(path, clock.fps, clock.n_frames, w, h, int(probe["width"]) / w, int(probe["height"]) / h,
                           None, threads, float(probe.get("video_start") or 0.0), clock)
