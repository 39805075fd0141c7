"""Frame access: each stage decodes once, at the size it needs.

decord is the fast path (random access, resize in the decoder). Some streams defeat it (e.g. H.264
whose parameter sets arrive late: decord cannot build its filter graph), and decord mishandles rotation
metadata when it resizes; those go through an ffmpeg pipe that streams display-oriented frames.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .media import ff_input, require_tool


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

    @property
    def backend(self) -> str:
        return "decord" if self.reader is not None else "ffmpeg"

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
        return next(self._pipe(start=self.t0 + index / self.fps, count=1))

    def _pipe(self, start: float | None = None, count: int | None = None) -> Iterator[np.ndarray]:
        args = [require_tool("ffmpeg"), "-nostdin", "-v", "error"]
        if start is not None:
            args += ["-ss", f"{start:.6f}"]
        args += ["-i", ff_input(self.path), "-map", "0:v:0", "-fps_mode", "passthrough",
                 "-vf", f"scale={self.width}:{self.height}", "-threads", str(self.threads)]
        if count is not None:
            args += ["-frames:v", str(count)]
        args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        size = self.width * self.height * 3
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    """The stream's stored (w, h): probe reports the displayed size, decord decodes the stored one."""
    w, h = int(probe["width"]), int(probe["height"])
    return (h, w) if int(probe.get("rotation") or 0) in (90, 270) else (w, h)


def _count_frames(path: str) -> int:
    from .media import run_tool

    out = run_tool([require_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets",
                    "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", ff_input(path)], what=path)
    return int(out.decode().strip().split(",")[0] or 0)


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
        if (w, h) == (src_w, src_h):
            reader = decord.VideoReader(path, num_threads=threads)
        else:
            reader = decord.VideoReader(path, width=w, height=h, num_threads=threads)
        return VideoFrames(path, float(reader.get_avg_fps()), len(reader), w, h, src_w / w, src_h / h, reader,
                           threads, float(probe.get("video_start") or 0.0))
    except decord.DECORDError:
        # displayed size for the pipe: ffmpeg applies the rotation itself
        w, h = (w, h) if coded_size(probe) == (int(probe["width"]), int(probe["height"])) else (h, w)
        fps = float(probe.get("fps") or probe.get("fps_real") or 25.0)
        return VideoFrames(path, fps, _count_frames(path), w, h, int(probe["width"]) / w, int(probe["height"]) / h,
                           None, threads, float(probe.get("video_start") or 0.0))
