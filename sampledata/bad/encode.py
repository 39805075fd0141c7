"""ffmpeg calls (argument lists only) and byte patches that derive a case's file from the base scene."""

from __future__ import annotations

import struct
from pathlib import Path

from mtcc.media.ffmpeg import BITEXACT, BITEXACT_FLAGS, NO_METADATA, run_written_out

from .. import broken


def ff(*args: str | Path) -> None:
    """One deliberately odd encode: each case's recipe is a malformation (wrong flags, damaged streams, odd
    containers) that reads best as ffmpeg's own arguments."""
    run_written_out(*args)


def remux(src: Path, dst: Path, tag: str, *extra: str) -> None:
    """A stream copy with its own comment: the same pictures and sound in different bytes, so no two
    cases are content duplicates of each other (that would turn one of them into a ``duplicate`` row)."""
    ff("-i", src, "-map", "0", "-c", "copy", *NO_METADATA, "-metadata", f"comment=mtcc bad case {tag}",
        *extra, *BITEXACT_FLAGS, dst)


def recode(src: Path, dst: Path, *args: str) -> None:
    ff("-i", src, *args, *BITEXACT, dst)


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-threads", "1"]


def patch_mkv_duration(path: Path, seconds: float) -> None:
    """Overwrite the Segment Duration of a Matroska file (EBML id 0x4489, an 8-byte float in units of
    the default 1 ms TimecodeScale): the header then claims ``seconds`` while the data stays as it is."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    if at < 0 or data.count(b"\x44\x89\x88") != 1:
        raise RuntimeError(f"{path.name}: expected exactly one 8-byte Segment Duration element")
    data[at + 3:at + 11] = struct.pack(">d", seconds * 1000.0)
    path.write_bytes(bytes(data))


def patch_mp4_rotation(path: Path) -> None:
    """Give the video track of an MP4 the display matrix of a phone held upright (turn 90 degrees
    clockwise to show), as a phone writes it; ffmpeg 5.1 has no option to write one."""
    data = bytearray(path.read_bytes())
    moov = next((off, size) for kind, off, size in broken.top_level_atoms(bytes(data)) if kind == "moov")
    done = 0
    at = data.find(b"tkhd", moov[0], moov[0] + moov[1])
    while at >= 0:
        box = at - 4
        if data[box + 8] != 0:
            raise RuntimeError(f"{path.name}: tkhd version {data[box + 8]} (only version 0 is written by ffmpeg)")
        matrix = box + 8 + 4 + 4 * 5 + 8 + 2 * 4
        width, height = struct.unpack(">II", data[matrix + 36:matrix + 44])
        if width:  # the sound track's tkhd has no size
            one = 1 << 16
            data[matrix:matrix + 36] = struct.pack(">9i", 0, one, 0, -one, 0, 0, (height >> 16) * one, 0, 1 << 30)
            done += 1
        at = data.find(b"tkhd", at + 4, moov[0] + moov[1])
    if done != 1:
        raise RuntimeError(f"{path.name}: expected one video tkhd, patched {done}")
    path.write_bytes(bytes(data))
