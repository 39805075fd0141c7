"""Every ffmpeg/ffprobe command of the project is built and started here.

* The commands: ffmpeg-python builds each one's stream graph and options (``cut_command``,
  ``frames_command``, ``encode_frames_command``, ...) and compiles it to an argument list; ffprobe has no
  builder there, so its few argument lists are written out below.
* Running them: ``run_tool`` (wait, output as bytes), ``open_tool`` (read the output as it comes): argument
  lists only, never a shell; file names behind ``file:`` so that none is ever taken for an option or a
  protocol; a failure raises ``MediaError`` naming the file and what the tool said.
* Identical bytes on every rerun: ``BITEXACT_OPTIONS`` keep ffmpeg's version string and the input's
  metadata out of what it writes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg as ffpy  # ffmpeg-python

# Options that keep ffmpeg from writing its version string (BITEXACT_FLAG_OPTIONS) and the input's metadata:
# reruns give identical bytes. As ffmpeg-python options, and written out (BITEXACT_FLAGS, NO_METADATA,
# BITEXACT) for the recipes that spell their arguments out.
BITEXACT_FLAG_OPTIONS: dict[str, Any] = {"fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact"}
NO_METADATA_OPTIONS: dict[str, Any] = {"map_metadata": -1}
BITEXACT_OPTIONS: dict[str, Any] = {**NO_METADATA_OPTIONS, **BITEXACT_FLAG_OPTIONS}


def written_out(options: Mapping[str, Any]) -> list[str]:
    """ffmpeg-python options as ffmpeg's own arguments: ``{"fflags": "+bitexact"}`` -> ``["-fflags", "+bitexact"]``."""
    return [a for k, v in options.items() for a in (f"-{k}", str(v))]


BITEXACT_FLAGS = written_out(BITEXACT_FLAG_OPTIONS)
NO_METADATA = written_out(NO_METADATA_OPTIONS)
BITEXACT = written_out(BITEXACT_OPTIONS)
# every ffmpeg run: no keyboard on stdin, only errors on stderr (which MediaError quotes)
QUIET = ("-nostdin", "-v", "error")

# one filter of a chain: (name, positional arguments), e.g. ("scale", ("trunc(iw/2)*2", "trunc(ih/2)*2"))
Filter = tuple[str, tuple[Any, ...]]


class MediaError(RuntimeError):
    """A media tool failed on one input; the message names the file and what the tool said."""


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(f"'{name}' not found on PATH; install it (e.g. `make sysdeps` or apt-get install ffmpeg)")
    return path


def run_tool(args: list[str], *, what: str, timeout: float = 600.0, stdin: bytes | None = None) -> bytes:
    require_tool(args[0])
    tool = os.path.basename(args[0])  # messages name the tool, not where this machine keeps it
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"{tool} timed out after {timeout:.0f}s on {what}") from e
    if proc.returncode != 0:
        # drop the context pointers ffmpeg prints ("[mov @ 0x55d0...]"): messages must repeat exactly
        text = re.sub(r" @ 0x[0-9a-fA-F]+", "", proc.stderr.decode("utf-8", "replace"))
        err = text.strip().splitlines()
        tail = " | ".join(err[-3:]) if err else f"exit code {proc.returncode}"
        raise MediaError(f"{tool} failed on {what}: {tail}")
    return proc.stdout


def open_tool(args: list[str], *, pipe_stdout: bool = True, stderr: Any = subprocess.PIPE,
              pipe_stdin: bool = False) -> subprocess.Popen:
    """A media tool started with its output to read as it comes (raw frames), or its input to write as it
    is made (``pipe_stdin``): an argument list, never a shell. The caller reads ``stdout`` / writes
    ``stdin``, waits and checks the exit code (``stderr``: a pipe, or a file to keep it in)."""
    require_tool(args[0])
    return subprocess.Popen(args, stdin=subprocess.PIPE if pipe_stdin else None,
                            stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL, stderr=stderr)


def _compile(*outputs: Any) -> list[str]:
    spec = outputs[0] if len(outputs) == 1 else ffpy.merge_outputs(*outputs)
    return ffpy.compile(spec.global_args(*QUIET), cmd=require_tool("ffmpeg"), overwrite_output=True)


def filter_text(filters: Sequence[Filter]) -> str:
    """A chain as one ``-vf`` / ``-af`` argument: ``fps=25,scale=w:h``."""
    return ",".join(name + ("=" + ":".join(str(a) for a in args) if args else "") for name, args in filters)


def _chain(stream: Any, filters: Sequence[Filter]) -> Any:
    for name, args in filters:
        stream = stream.filter(name, *args)
    return stream


def cut_command(src: str, start: float, duration: float, *, filters: Sequence[Filter], mp4: Path,
                mp4_options: Mapping[str, Any], flac: Path | None, flac_options: Mapping[str, Any],
                raw_frames: int | None) -> list[str]:
    """One decode of ``src`` from ``start`` for ``duration`` seconds, written at once to the clip's mp4
    (first video stream through ``filters``, first audio stream if there is one), to ``flac`` (the first
    audio stream) and, with ``raw_frames``, that many of the mp4's own pictures as raw RGB on stdout."""
    source = ffpy.input(ff_input(src), ss=f"{start:.6f}", t=f"{duration:.6f}")
    sound = source["a:0?"]  # optional: a video without sound still gets its mp4
    outputs = []
    if raw_frames is None:
        outputs.append(ffpy.output(source["v:0"], sound, str(mp4), vf=filter_text(filters), **mp4_options))
    else:
        # the encoder and the pipe get the same pictures: one filtered stream, split in two
        pictures = _chain(source["v:0"], filters).split()
        outputs.append(ffpy.output(pictures[0], sound, str(mp4), **mp4_options))
    if flac is not None:
        outputs.append(ffpy.output(source["a:0"], str(flac), **flac_options))
    if raw_frames is not None:
        outputs.append(ffpy.output(pictures[1], "pipe:1", format="rawvideo", pix_fmt="rgb24",
                                   **{"frames:v": raw_frames}))
    return _compile(*outputs)


def frames_command(path: str, *, width: int, height: int, threads: int, start: float | None = None,
                   count: int | None = None) -> list[str]:
    """Every frame of the first video stream (or ``count`` from ``start``), as shown (rotation applied,
    no frame dropped or repeated), scaled to ``width`` x ``height``, raw RGB on stdout."""
    source = ffpy.input(ff_input(path), **({} if start is None else {"ss": f"{start:.6f}"}))
    options: dict[str, Any] = {"fps_mode": "passthrough", "vf": f"scale={width}:{height}", "threads": threads}
    if count is not None:
        options["frames:v"] = count
    return _compile(ffpy.output(source["v:0"], "-", format="rawvideo", pix_fmt="rgb24", **options))


def clip_frame_command(index: int) -> list[str]:
    """Frame ``index`` of an mp4 read from stdin, as a PNG on stdout."""
    return _compile(ffpy.input("pipe:0").output(
        "pipe:1", vf=f"select=eq(n\\,{int(index)})", fps_mode="passthrough", format="image2pipe",
        **{"frames:v": 1, "c:v": "png"}))


def source_frame_command(path: str, t: float, width: int) -> list[str]:
    """The source's picture at ``t`` seconds, ``width`` pixels wide, as a PNG on stdout."""
    return _compile(ffpy.input(ff_input(path), ss=f"{max(t, 0.0):.3f}").output(
        "pipe:1", vf=f"scale={width}:-2", format="image2pipe", **{"frames:v": 1, "c:v": "png"}))


def decode_command(path: str) -> list[str]:
    """Decode every stream of ``path`` and keep nothing: what reading the file costs."""
    return _compile(ffpy.input(ff_input(path)).output("-", format="null"))


def encode_frames_command(out: Path, *, width: int, height: int, fps: int, pix_fmt_in: str = "rgb24",
                          video_options: Mapping[str, Any], sound: Any = None,
                          sound_options: Mapping[str, Any] | None = None) -> list[str]:
    """An mp4 from raw frames written to stdin (``pix_fmt_in``, ``width`` x ``height`` at ``fps``) and,
    if given, ``sound``: ``("file", path)`` or ``("lavfi", graph)``; no sound: ``sound_options`` should
    say ``an``."""
    frames = ffpy.input("pipe:0", format="rawvideo", pix_fmt=pix_fmt_in, s=f"{width}x{height}", r=fps)
    streams = [frames["v:0"]]
    if sound is not None:
        kind, what = sound
        audio = ffpy.input(ff_input(str(what))) if kind == "file" else ffpy.input(what, f="lavfi")
        streams.append(audio["a:0"])
    return _compile(ffpy.output(*streams, str(out), **video_options, **(sound_options or {})))


def run_written_out(*args: str | Path) -> None:
    """ffmpeg with its arguments written out by the caller (the bad-input corpus, whose every case is a
    deliberate malformation): still an argument list, still quiet, the last argument names the output."""
    cmd = [require_tool("ffmpeg"), *QUIET, "-y", *map(str, args)]
    run_tool(cmd, what=cmd[-1])


@functools.cache
def encoders() -> frozenset[str]:
    """Encoder names this ffmpeg has (builds differ: HEVC, VP9, AV1 and MP3 encoders are optional)."""
    out = run_tool([require_tool("ffmpeg"), "-hide_banner", "-encoders"], what="ffmpeg -encoders").decode()
    return frozenset(parts[1] for parts in (line.split() for line in out.splitlines()) if len(parts) > 1)


def convert_command(src: Path | str, out: Path | str, **options: Any) -> list[str]:
    """``src`` written to ``out`` with ``options`` (ffmpeg's output options without their dash; a value of
    None is a flag, e.g. ``vn=None``)."""
    return _compile(ffpy.input(ff_input(str(src))).output(str(out), **options))


def probe_command(path: str | None, *, entries: str | None = None, stream: str | None = None,
                  output_format: str = "json") -> list[str]:
    """ffprobe of ``path`` (None: a file on stdin): format and streams, or just ``entries``
    (``-show_entries`` syntax) of the ``stream`` it selects."""
    args = [require_tool("ffprobe"), "-v", "error"]
    if stream is not None:
        args += ["-select_streams", stream]
    args += ["-show_format", "-show_streams"] if entries is None else ["-show_entries", entries]
    return [*args, "-of", output_format, "-i", "pipe:0" if path is None else ff_input(path)]


def ffprobe(path: str) -> dict[str, Any]:
    """The format and streams of ``path``, as ffprobe's JSON."""
    out = run_tool(probe_command(path), what=path, timeout=120)
    return json.loads(out.decode("utf-8", "replace") or "{}")


def ff_input(path: str) -> str:
    """An ffmpeg input argument that is only ever read as a local file: an absolute path behind the
    ``file:`` protocol, so names like ``-x.mp4`` or ``concat:a|b`` are not taken as options or protocols."""
    return "file:" + os.path.abspath(path)


def parse_rate(text: str | None) -> float:
    """'30000/1001' -> 29.97; '0/0' or missing -> 0.0."""
    if not text:
        return 0.0
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def ffmpeg_version() -> str:
    try:
        first = run_tool([require_tool("ffmpeg"), "-version"], what="ffmpeg -version", timeout=30)
        first = first.decode().splitlines()[0]
    except MediaError:
        return "unavailable"
    return first.split(" Copyright")[0].strip()
