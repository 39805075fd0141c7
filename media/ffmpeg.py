"""Every ffprobe/ffmpeg run of the product goes through here (``run_tool``, ``open_tool``, ``ffprobe``):
argument lists only, file names behind ``file:`` (never a shell, never an option); the bit-exact flags that
make reruns give identical bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from fractions import Fraction
from typing import Any

# Flags that keep ffmpeg from writing its version string (BITEXACT_FLAGS) and the input's metadata
# (NO_METADATA): reruns give identical bytes.
BITEXACT_FLAGS = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
NO_METADATA = ["-map_metadata", "-1"]
BITEXACT = [*NO_METADATA, *BITEXACT_FLAGS]


class MediaError(RuntimeError):
    """A media tool failed on one input; the message names the file and what the tool said."""


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(f"'{name}' not found on PATH; install it (e.g. `make sysdeps` or apt-get install ffmpeg)")
    return path


def run_tool(args: list[str], *, what: str, timeout: float = 600.0, stdin: bytes | None = None) -> bytes:
    require_tool(args[0])
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise MediaError(f"{args[0]} timed out after {timeout:.0f}s on {what}") from e
    if proc.returncode != 0:
        # drop the context pointers ffmpeg prints ("[mov @ 0x55d0...]"): messages must repeat exactly
        text = re.sub(r" @ 0x[0-9a-fA-F]+", "", proc.stderr.decode("utf-8", "replace"))
        err = text.strip().splitlines()
        tail = " | ".join(err[-3:]) if err else f"exit code {proc.returncode}"
        raise MediaError(f"{args[0]} failed on {what}: {tail}")
    return proc.stdout


def open_tool(args: list[str], *, pipe_stdout: bool = True, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """A media tool started with its output to read as it comes (raw frames): an argument list, never a shell.
    The caller reads ``stdout``, waits and checks the exit code (``stderr``: a pipe, or a file to keep it in)."""
    require_tool(args[0])
    return subprocess.Popen(args, stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL, stderr=stderr)


def ffprobe(path: str) -> dict[str, Any]:
    out = run_tool(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", ff_input(path)],
        what=path,
        timeout=120,
    )
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
        first = run_tool(["ffmpeg", "-version"], what="ffmpeg -version", timeout=30).decode().splitlines()[0]
    except MediaError:
        return "unavailable"
    return first.split(" Copyright")[0].strip()
