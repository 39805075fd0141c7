"""Hostile-input corpus: files a crawl of real footage throws at the pipeline, each with the outcome the
documented behaviour promises for it.

``generate_bad(dir, seed=0)`` renders one short two-person talking scene and derives every variant from
it with ffmpeg (argument lists only; hostile names are given to files by ``os.rename`` after encoding
under a plain name, so the generator never hands one to a tool either). Layout::

    DIR/videos/<case files>            the cases named in inputs.txt (+ a folder, links, a FIFO)
    DIR/odd_names/<case files>         names a one-path-per-line list cannot carry (a newline, bytes that
                                       are not UTF-8): fed to a run as a folder input
    DIR/store/linked_target.mp4        reached only through a symlink in videos/
    DIR/inputs.txt                     the list input: every listed case, plus a missing file, a
                                       directory, the same file twice and a symlink to a listed file
    DIR/<file>.expect.json             beside each case (a missing file's expectation sits where it
                                       would be)
    DIR/expected.json                  index: inputs to pass, run overrides, every case

Run it with ``mtcc run offline --input DIR/inputs.txt --input DIR/odd_names --output OUT`` plus the
``overrides`` of expected.json; ``check(load_corpus(DIR), rows)`` then compares the manifest rows.

An expectation is ``{"status": [...], "stage": [...], "reason": [...], "never": ["error"]}`` against
the outcome of the input (see :func:`observe`); a missing key accepts anything, ``null`` in ``reason``
stands for "no reason" (kept). A case whose outcome depends on who runs it (permissions: root reads a
chmod-000 file) has ``{"if_root": {...}, "if_not_root": {...}}`` instead; :func:`expectation` picks.
``row`` is ``own`` (exactly one video-level row whose source is the case's path) or ``merged`` (the
path is the same file as ``same_as`` and is planned once, under that path: no row of its own).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mtcc.stages.media import BITEXACT, BITEXACT_FLAGS, NO_METADATA

from . import broken
from .scene import Person, Place, Scene, fixture_rng, render

BASE_SECONDS = 3.0
BASE_W, BASE_H = 384, 216
# Settings a corpus run needs besides the offline profile: the model stages after prescore run on random
# weights there and would only add minutes (the corpus tests input handling, not models; write still
# makes every member of the visual stages); prescore's calibrated threshold is about lip motion, and
# several cases (a still 8K frame, silence) legitimately have none.
RUN_OVERRIDES = [
    "stages.separate.enabled=false", "stages.sync.enabled=false", "stages.masks.enabled=false",
    "stages.audio_emb.enabled=false", "stages.caption.enabled=false", "stages.prescore.reject=false",
]

NEVER = ["error"]
KEPT = {"status": ["kept"], "never": NEVER}
# decodable and sane, but nothing promises a clip (a still frame, a timeline that lies): any decision
# of any stage except an error row
PROCESSED = {"status": ["kept", "rejected"], "never": NEVER}


def rejected(reason: str, stage: str = "probe") -> dict[str, Any]:
    return {"status": ["rejected"], "stage": [stage], "reason": [reason], "never": NEVER}


UNREADABLE = rejected("unreadable")


@dataclass
class Case:
    name: str
    file: str  # relative to the corpus root, with os.fsdecode's surrogates for bytes that are not UTF-8
    expect: dict[str, Any]
    why: str
    listed: bool = True  # named in inputs.txt; False: reached through the odd_names/ folder input
    row: str = "own"
    same_as: str | None = None
    # the pipeline does not meet ``expect`` yet: what it does instead and where the fix belongs (the
    # expectation stays what the documented behaviour promises; the test marks the case xfail, strict)
    known_issue: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["file_hex"] = os.fsencode(self.file).hex()  # JSON carries the surrogates, not every reader does
        return d


@dataclass
class Corpus:
    root: Path
    cases: list[Case]
    inputs: list[Path]
    overrides: list[str] = field(default_factory=lambda: list(RUN_OVERRIDES))
    seconds: float = 0.0

    def path(self, case: Case) -> Path:
        return self.root / case.file


# -- ffmpeg ---------------------------------------------------------------------------------------------

def _ff(*args: str | Path) -> None:
    cmd = ["ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {cmd[-1]}: {proc.stderr.decode(errors='replace').strip()}")


@functools.cache
def encoders() -> frozenset[str]:
    """Encoder names this ffmpeg has (builds differ: HEVC, VP9, AV1 and MP3 encoders are optional)."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
    return frozenset(parts[1] for parts in (line.split() for line in out.splitlines()) if len(parts) > 1)


def _remux(src: Path, dst: Path, tag: str, *extra: str) -> None:
    """A stream copy with its own comment: the same pictures and sound in different bytes, so no two
    cases are content duplicates of each other (that would turn one of them into a ``duplicate`` row)."""
    _ff("-i", src, "-map", "0", "-c", "copy", *NO_METADATA, "-metadata", f"comment=mtcc bad case {tag}",
        *extra, *BITEXACT_FLAGS, dst)


def _recode(src: Path, dst: Path, *args: str) -> None:
    _ff("-i", src, *args, *BITEXACT, dst)


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-threads", "1"]


def _patch_mkv_duration(path: Path, seconds: float) -> None:
    """Overwrite the Segment Duration of a Matroska file (EBML id 0x4489, an 8-byte float in units of
    the default 1 ms TimecodeScale): the header then claims ``seconds`` while the data stays as it is."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    if at < 0 or data.count(b"\x44\x89\x88") != 1:
        raise RuntimeError(f"{path.name}: expected exactly one 8-byte Segment Duration element")
    data[at + 3:at + 11] = struct.pack(">d", seconds * 1000.0)
    path.write_bytes(bytes(data))


def _patch_mp4_rotation(path: Path) -> None:
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


def _base_scene() -> Scene:
    return Scene(
        "bad_base", BASE_W, BASE_H, 25, BASE_SECONDS,
        persons=[
            Person("astronaut", "en-us+f2", [Place(0.0, 100, 108, 66)], says=[(0.2, "Hello, how are you?")]),
            Person("ross", "en-us+m3", [Place(0.0, 284, 110, 68)], says=[(1.6, "Fine, thank you.")]),
        ],
        shots=[(0.0, "wall")], audio_rate=44100, channels=2, kind="bad",
    )


# -- the cases --------------------------------------------------------------------------------------------

Job = Callable[[], None]


def _cases_and_jobs(root: Path, base: Path, seed: int) -> tuple[list[Case], list[Job], list[Job]]:
    """(cases, encode jobs that may run in parallel, finishing steps run after them in order)."""
    v = root / "videos"
    cases: list[Case] = []
    jobs: list[Job] = []
    after: list[Job] = []

    def case(name: str, file: str, expect: dict[str, Any], why: str, job: Job | None = None, **kw: Any) -> None:
        cases.append(Case(name, file, expect, why, **kw))
        if job is not None:
            jobs.append(job)

    def vid(name: str) -> str:
        return f"videos/{name}"

    # --- valid videos in other shapes: each must give kept clips -----------------------------------------
    case("reference", vid("reference.mp4"), KEPT, "the base scene itself: H.264 + AAC 44.1 kHz stereo in MP4")
    case("container_mkv", vid("container_mkv.mkv"), KEPT, "Matroska (stream copy)",
         lambda: _remux(base, v / "container_mkv.mkv", "mkv"))
    case("container_mov", vid("container_mov.mov"), KEPT, "QuickTime MOV (stream copy)",
         lambda: _remux(base, v / "container_mov.mov", "mov"))
    # codecs this ffmpeg may lack are left out of the corpus (and of expected.json), not failed
    have = encoders()
    if {"libvpx-vp9", "libopus"} <= have:
        case("container_webm_vp9", vid("container_webm_vp9.webm"), KEPT, "WebM: VP9 + Opus 48 kHz",
             lambda: _recode(base, v / "container_webm_vp9.webm", "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "36",
                             "-deadline", "realtime", "-cpu-used", "8", "-threads", "1",
                             "-c:a", "libopus", "-b:a", "48k", "-ar", "48000"))
    mp3 = ["-c:a", "libmp3lame", "-b:a", "96k"] if "libmp3lame" in have else ["-c:a", "mp2", "-b:a", "128k"]
    case("container_avi_mpeg4", vid("container_avi_mpeg4.avi"), KEPT, "AVI: MPEG-4 part 2 + MP3 (or MP2)",
         lambda: _recode(base, v / "container_avi_mpeg4.avi", "-c:v", "mpeg4", "-q:v", "3", *mp3))
    if "libx265" in have:
        case("codec_hevc", vid("codec_hevc.mp4"), KEPT, "HEVC (x265, hvc1 tag) + AAC copy",
             lambda: _recode(base, v / "codec_hevc.mp4", "-c:v", "libx265", "-preset", "ultrafast", "-crf", "26",
                             "-x265-params", "log-level=error:pools=1:frame-threads=1", "-tag:v", "hvc1",
                             "-c:a", "copy"))
    av1 = (["-c:v", "libsvtav1", "-preset", "12", "-crf", "40", "-svtav1-params", "lp=1"] if "libsvtav1" in have
           else ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-crf", "45", "-b:v", "0",
                 "-threads", "1"] if "libaom-av1" in have else None)
    if av1 is not None:
        case("codec_av1", vid("codec_av1.mp4"), KEPT, f"AV1 ({av1[1]}) + AAC copy in MP4",
             lambda: _recode(base, v / "codec_av1.mp4", *av1, "-c:a", "copy"))
    case("h264_bframes_open_gop", vid("h264_bframes_open_gop.mp4"), KEPT,
         "H.264 with 4 B-frames, B-pyramid and open GOPs (decode order != display order, leading pictures)",
         lambda: _recode(base, v / "h264_bframes_open_gop.mp4", *X264,
                         "-x264-params", "bframes=4:b-pyramid=normal:open-gop=1:keyint=20:min-keyint=4",
                         "-c:a", "copy"))
    vfr = ["-vf", "select='not(eq(mod(n\\,7)\\,2)+eq(mod(n\\,7)\\,5))'", "-fps_mode", "vfr", *X264, "-c:a", "copy"]
    case("variable_frame_rate", vid("variable_frame_rate.mkv"), KEPT,
         "variable frame rate in Matroska (which reports 25/1 as the average): 2 of every 7 frames "
         "dropped, the rest keep their timestamps",
         lambda: _recode(base, v / "variable_frame_rate.mkv", *vfr))
    case("variable_frame_rate_mp4", vid("variable_frame_rate_mp4.mp4"), KEPT,
         "the same variable frame rate in MP4 (whose average rate, 18 fps, is not the stream's 25/1)",
         lambda: _recode(base, v / "variable_frame_rate_mp4.mp4", *vfr))
    case("rotation_90", vid("rotation_90.mp4"), KEPT,
         "pixels stored turned a quarter left, a 90 degree display matrix turns them upright again",
         lambda: (_recode(base, v / "rotation_90.mp4", "-vf", "transpose=cclock", *X264, "-c:a", "copy"),
                  _patch_mp4_rotation(v / "rotation_90.mp4")))
    case("odd_dimensions", vid("odd_dimensions_383x215.mp4"), KEPT,
         "383x215 (odd width and height: 4:4:4 H.264, 4:2:0 cannot be odd)",
         lambda: _recode(base, v / "odd_dimensions_383x215.mp4", "-vf", "format=yuv444p,crop=383:215:0:0", *X264,
                         "-pix_fmt", "yuv444p", "-c:a", "copy"))
    case("audio_8khz_mono", vid("audio_8khz_mono.mp4"), KEPT, "AAC 8 kHz mono (the lowest rate accepted)",
         lambda: _recode(base, v / "audio_8khz_mono.mp4", "-c:v", "copy", "-c:a", "aac", "-ar", "8000", "-ac", "1"))
    case("audio_48khz", vid("audio_48khz.mp4"), KEPT, "AAC 48 kHz stereo",
         lambda: _recode(base, v / "audio_48khz.mp4", "-c:v", "copy", "-c:a", "aac", "-ar", "48000"))
    case("audio_5_1", vid("audio_5_1.mkv"), KEPT, "AC-3 5.1 (six channels) in Matroska",
         lambda: _recode(base, v / "audio_5_1.mkv", "-c:v", "copy", "-c:a", "ac3", "-ac", "6", "-ar", "48000"))
    case("audio_silent", vid("audio_silent.mp4"), KEPT,
         "digital silence for sound: probe has no reason to refuse it; prescore records no match but is "
         "told not to reject in a corpus run",
         lambda: _ff("-i", base, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-map", "0:v", "-map", "1:a",
                     "-c:v", "copy", "-c:a", "aac", "-t", f"{BASE_SECONDS}", *BITEXACT,
                     v / "audio_silent.mp4"))
    case("audio_shorter_than_video", vid("audio_shorter_than_video.mp4"), KEPT,
         "the audio stream ends after 1 s of a 3 s video (write pads the clip's sound with silence)",
         lambda: _recode(base, v / "audio_shorter_than_video.mp4", "-c:v", "copy", "-af", "atrim=end=1.0",
                         "-c:a", "aac"))
    case("duration_header_3h", vid("duration_header_3h.mkv"), PROCESSED,
         "a 3 s file whose Matroska header claims 3 hours (below max_duration): nothing may trust the "
         "header enough to allocate or wait for hours of frames",
         lambda: (_remux(base, v / "duration_header_3h.mkv", "3h"),
                  _patch_mkv_duration(v / "duration_header_3h.mkv", 3 * 3600.0)))
    case("frames_8k_static", vid("frames_8k_static.mp4"), PROCESSED,
         "7680x4320, one still frame of the scene for 2.2 s at 10 fps: decoded and written at full size "
         "without error (still faces give no lip motion, so a clip is not promised)",
         lambda: _ff("-ss", "1.0", "-i", base, "-i", base, "-map", "0:v:0", "-map", "1:a:0",
                     "-vf", "select='eq(n\\,0)',scale=7680:4320:flags=bilinear,loop=loop=-1:size=1,fps=10",
                     *X264[:2], "-preset", "ultrafast", "-tune", "stillimage", "-crf", "30", "-threads", "2",
                     "-c:a", "copy", "-t", "2.2", *BITEXACT, v / "frames_8k_static.mp4"))
    case("permission_000", vid("permission_000.mp4"),
         {"if_root": KEPT, "if_not_root": UNREADABLE},
         "mode 000: root reads it anyway (a valid video, kept); anyone else gets `unreadable`",
         lambda: _remux(base, v / "permission_000.mp4", "perm"))
    after.append(lambda: os.chmod(v / "permission_000.mp4", 0))
    case("listed_twice", vid("listed_twice.mp4"), KEPT,
         "listed three times (as is, with ./ and with a doubled /): planned once, one row",
         lambda: _remux(base, v / "listed_twice.mp4", "twice"))
    case("symlink_outside", vid("symlink_outside.mp4"), KEPT,
         "a symlink to a video outside every input (store/): processed under the link's path",
         lambda: _remux(base, root / "store" / "linked_target.mp4", "outside"))
    after.append(lambda: os.symlink(Path("..") / "store" / "linked_target.mp4", v / "symlink_outside.mp4"))

    # --- names: a name is data, never code or options; each is a valid video that must be kept ---------
    names = {
        "name_shell_substitution": "name_$(touch x)_`touch x`.mp4",
        "name_semicolon_pipe_glob": "name_;_echo_x_|_*_?_[ab].mp4",
        "name_quotes": "name_'single'_\"double\".mp4",
        "name_leading_dash": "-name_leading_dash.mp4",
        "name_unicode": "name_café_日本語_😀.mp4",
    }
    for cname, fname in names.items():
        tmp = v / f".tmp_{cname}.mp4"
        case(cname, vid(fname), KEPT, f"file name {fname!r}: argument lists and file: inputs only",
             lambda tmp=tmp, cname=cname: _remux(base, tmp, cname))
        after.append(lambda tmp=tmp, fname=fname: os.rename(tmp, v / fname))
    odd = root / "odd_names"
    newline_name = "name_new\nline.mp4"
    case("name_newline", f"odd_names/{newline_name}", KEPT,
         "a newline in the name (a one-path-per-line list cannot name it: reached by the folder input)",
         lambda: _remux(base, odd / ".tmp_newline.mp4", "newline"), listed=False)
    after.append(lambda: os.rename(odd / ".tmp_newline.mp4", odd / newline_name))
    non_utf8 = os.fsdecode(b"name_latin1_caf\xe9.mp4")
    case("name_not_utf8", f"odd_names/{non_utf8}", UNREADABLE,
         "a name with a byte that is not UTF-8 (Latin-1 e-acute): manifests hold UTF-8 text, so the file "
         "gets an `unreadable` row that says to rename it",
         lambda: _remux(base, odd / ".tmp_latin1.mp4", "latin1"), listed=False)
    after.append(lambda: os.rename(odd / ".tmp_latin1.mp4", odd / non_utf8))

    # --- what the plan decides -------------------------------------------------------------------------
    case("duplicate_copy", vid("zz_duplicate_of_reference.mp4"), rejected("duplicate", "plan"),
         "a byte copy of reference.mp4 at another path: planned once, the copy gets a `duplicate` row")
    after.append(lambda: shutil.copyfile(base, v / "zz_duplicate_of_reference.mp4"))
    case("symlink_to_listed", vid("symlink_to_listed.mp4"), KEPT,
         "a symlink to reference.mp4, both listed: the same file, planned once (as reference.mp4)",
         row="merged", same_as=vid("reference.mp4"))
    after.append(lambda: os.symlink("reference.mp4", v / "symlink_to_listed.mp4"))

    # --- not usable, each for a documented reason ------------------------------------------------------
    case("truncated_no_moov", vid("broken_truncated.mp4"), UNREADABLE,
         "the first 30% of an MP4 whose moov atom is at the end: no index at all")
    after.append(lambda: broken.truncated(base, v))
    case("truncated_mid_stream", vid("truncated_mid_stream.mp4"), UNREADABLE,
         "a fast-start MP4 (moov first) cut at 60%: the header is complete and promises media data the "
         "file no longer has",
         lambda: _remux(base, root / ".work" / "faststart.mp4", "faststart", "-movflags", "+faststart"))

    case("truncated_mkv", vid("truncated_mkv.mkv"), UNREADABLE,
         "a Matroska file cut at 60%: its header still claims the whole Segment (and 3 s), its Cues are gone",
         lambda: _remux(base, root / ".work" / "full.mkv", "mkvcut"))
    case("corrupt_mid_stream", vid("corrupt_mid_stream.mp4"), PROCESSED,
         "2 KiB of random bytes over the middle of the media data (bit rot): every header intact, some "
         "pictures undecodable; ffmpeg conceals the damage",
         lambda: _remux(base, root / ".work" / "to_corrupt.mp4", "corrupt"))

    def cut() -> None:
        data = (root / ".work" / "faststart.mp4").read_bytes()
        (v / "truncated_mid_stream.mp4").write_bytes(data[: int(len(data) * 0.6)])
        data = (root / ".work" / "full.mkv").read_bytes()
        (v / "truncated_mkv.mkv").write_bytes(data[: int(len(data) * 0.6)])
        data = bytearray((root / ".work" / "to_corrupt.mp4").read_bytes())
        mdat = next((off, size) for kind, off, size in broken.top_level_atoms(bytes(data)) if kind == "mdat")
        mid = mdat[0] + mdat[1] // 2
        data[mid:mid + 2048] = fixture_rng("corrupt_mid_stream", seed).integers(0, 256, 2048, dtype="uint8").tobytes()
        (v / "corrupt_mid_stream.mp4").write_bytes(bytes(data))
    after.append(cut)
    case("zero_bytes", vid("broken_empty.mp4"), UNREADABLE, "an empty file")
    after.append(lambda: broken.empty(v))
    case("text_named_mp4", vid("broken_text.mp4"), UNREADABLE, "a text file with an .mp4 name")
    after.append(lambda: broken.text(v))
    case("random_bytes", vid("random_bytes.mp4"), UNREADABLE, "64 KiB of random bytes")
    after.append(lambda: (v / "random_bytes.mp4").write_bytes(
        fixture_rng("random_bytes", seed).integers(0, 256, 65536, dtype="uint8").tobytes()))
    case("missing_file", vid("missing.mp4"), UNREADABLE, "named in inputs.txt, never created")
    case("directory_in_list", vid("folder.mp4"), UNREADABLE,
         "a directory (with a video's extension) named in inputs.txt: a list names files")
    after.append(lambda: (v / "folder.mp4").mkdir())
    case("dangling_symlink", vid("dangling_symlink.mp4"), UNREADABLE, "a symlink to a file that does not exist")
    after.append(lambda: os.symlink("no_such_target.mp4", v / "dangling_symlink.mp4"))
    case("symlink_loop", vid("symlink_loop.mp4"), UNREADABLE, "a symlink to itself (ELOOP)")
    after.append(lambda: os.symlink("symlink_loop.mp4", v / "symlink_loop.mp4"))
    case("fifo", vid("fifo.mp4"), UNREADABLE,
         "a named pipe with a video's name: opening it would block forever, nothing may read it")
    after.append(lambda: os.mkfifo(v / "fifo.mp4"))
    case("audio_only", vid("audio_only.mp4"), rejected("no_video"), "AAC only, no video stream")
    after.append(lambda: broken.audio_only(v, seed))
    case("cover_art_only", vid("cover_art_only.mp4"), rejected("no_video"),
         "AAC plus a still cover picture (attached_pic): a picture is not a video stream",
         lambda: _ff("-i", base, "-ss", "1.0", "-i", base, "-map", "0:a:0", "-map", "1:v:0", "-frames:v", "1",
                     "-c:a", "copy", "-c:v", "png", "-disposition:v:0", "attached_pic", *BITEXACT,
                     v / "cover_art_only.mp4"))
    case("video_only", vid("video_only.mp4"), rejected("no_audio"), "H.264 only, no audio stream",
         lambda: _recode(base, v / "video_only.mp4", "-map", "0:v", "-c:v", "copy", "-an"))
    case("duration_0_2s", vid("duration_0_2s.mp4"), rejected("too_short"), "0.2 s long",
         lambda: _recode(base, v / "duration_0_2s.mp4", "-t", "0.2", *X264, "-c:a", "aac"))
    case("duration_header_10h", vid("duration_header_10h.mkv"), rejected("too_long"),
         "a 3 s file whose header claims 10 hours (above the 6 h max_duration)",
         lambda: (_remux(base, v / "duration_header_10h.mkv", "10h"),
                  _patch_mkv_duration(v / "duration_header_10h.mkv", 10 * 3600.0)))
    case("frames_1x1", vid("frames_1x1.mp4"), rejected("too_small"), "1x1 pixel frames (4:4:4 H.264)",
         lambda: _recode(base, v / "frames_1x1.mp4", "-vf", "scale=1:1", *X264, "-pix_fmt", "yuv444p",
                         "-c:a", "copy"))
    case("fps_1", vid("fps_1.mp4"), rejected("fps_out_of_range"), "1 frame per second",
         lambda: _recode(base, v / "fps_1.mp4", "-vf", "fps=1", *X264, "-c:a", "copy"))
    case("fps_240", vid("fps_240.mp4"), rejected("fps_out_of_range"), "240 frames per second",
         lambda: _recode(base, v / "fps_240.mp4", "-vf", "fps=240", *X264[:2], "-preset", "ultrafast", *X264[4:],
                         "-c:a", "copy"))
    case("audio_4khz", vid("audio_4khz.mkv"), rejected("audio_rate_low"), "PCM sound at 4 kHz",
         lambda: _recode(base, v / "audio_4khz.mkv", "-c:v", "copy", "-c:a", "pcm_s16le", "-ar", "4000"))
    return cases, jobs, after


def case_list(seed: int = 0) -> list[Case]:
    """The cases :func:`generate_bad` writes, without writing anything (tests parametrize over them)."""
    root = Path("/nonexistent-mtcc-corpus")
    return _cases_and_jobs(root, root / "videos" / "reference.mp4", seed)[0]


# -- generation -------------------------------------------------------------------------------------------

def expect_path(root: Path, case: Case) -> Path:
    p = root / case.file
    return p.with_name(p.name + ".expect.json")


def _input_list(cases: list[Case]) -> str:
    lines = ["# MTCC hostile-input corpus: one path per line, relative to this file.",
             "# Names with a newline or non-UTF-8 bytes cannot be written here: pass odd_names/ as a folder.", ""]
    for c in sorted(cases, key=lambda c: c.file):
        if not c.listed:
            continue
        lines.append(c.file)
        if c.name == "listed_twice":
            lines += [f"./{c.file}", c.file.replace("/", "//")]
    return "\n".join(lines) + "\n"


def generate_bad(out_dir: str | Path, *, seed: int = 0) -> Corpus:
    """Write the hostile-input corpus into ``out_dir`` (which must not hold one yet); see the module doc."""
    t0 = time.monotonic()
    root = Path(out_dir).absolute()
    if (root / "videos").exists() or (root / "expected.json").exists():
        # links, a FIFO and a mode-000 file cannot be rewritten in place: start from a fresh folder
        raise FileExistsError(f"{root} already holds a hostile-input corpus; generate into a new folder")
    for d in ("videos", "odd_names", "store", ".work"):
        (root / d).mkdir(parents=True, exist_ok=True)
    base = root / "videos" / "reference.mp4"
    render(_base_scene(), root / "videos", seed, file_name=base.name)
    cases, jobs, after = _cases_and_jobs(root, base, seed)
    # each encode is small and single-threaded: two at a time fill two cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        for fut in [pool.submit(j) for j in jobs]:
            fut.result()
    for step in after:
        step()
    shutil.rmtree(root / ".work")
    (root / "inputs.txt").write_text(_input_list(cases), encoding="utf-8")
    corpus = Corpus(root, cases, [root / "inputs.txt", root / "odd_names"], seconds=time.monotonic() - t0)
    for c in cases:
        doc = {"case": c.name, "file": c.file, "expect": c.expect, "why": c.why, "row": c.row,
               "same_as": c.same_as, "known_issue": c.known_issue}
        expect_path(root, c).write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    index = {"seed": seed, "inputs": [str(p.relative_to(root)) for p in corpus.inputs],
             "overrides": corpus.overrides, "generation_s": round(corpus.seconds, 2),
             "cases": [c.to_json() for c in cases]}
    (root / "expected.json").write_text(json.dumps(index, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    return corpus


def load_corpus(root: str | Path) -> Corpus:
    root = Path(root).absolute()
    index = json.loads((root / "expected.json").read_text(encoding="utf-8"))
    cases = [Case(c["name"], os.fsdecode(bytes.fromhex(c["file_hex"])), c["expect"], c["why"], c["listed"],
                  c["row"], c["same_as"], c["known_issue"]) for c in index["cases"]]
    return Corpus(root, cases, [root / p for p in index["inputs"]], index["overrides"], index["generation_s"])


# -- checking a build against the corpus ------------------------------------------------------------------

def expectation(case: Case, euid: int | None = None) -> dict[str, Any]:
    """The outcome ``case`` promises to a run by user ``euid`` (default: this process's)."""
    if "if_root" in case.expect:
        euid = os.geteuid() if euid is None else euid
        return case.expect["if_root" if euid == 0 else "if_not_root"]
    return case.expect


def observe(video_row: dict[str, Any], clip_rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One input's outcome from its manifest rows: ``kept`` when any clip of it was kept, else the
    rejection that ended it (the video row's own, or the first clip's when every clip was rejected)."""
    clips = sorted(clip_rows, key=lambda r: (r.get("clip_idx") or 0))
    if video_row["status"] == "kept" or any(r["status"] == "kept" for r in clips):
        return {"status": "kept", "stage": None, "reason": None}
    if video_row["status"] == "expanded" and clips:
        first = clips[0]
        return {"status": first["status"], "stage": first["stage"], "reason": first["reason"]}
    return {"status": video_row["status"], "stage": video_row["stage"], "reason": video_row["reason"]}


def matches(outcome: dict[str, Any], expect: dict[str, Any]) -> bool:
    if outcome["reason"] in expect.get("never", []):
        return False
    return all(outcome[k] in expect[k] for k in ("status", "stage", "reason") if k in expect)


def row_source(corpus: Corpus, file: str) -> str:
    """The ``source`` a manifest row of corpus file ``file`` carries (the path as planned, never the
    target of a link)."""
    from mtcc.pipeline.inputs import plan_source

    return plan_source(os.path.abspath(corpus.root / file))


def check(corpus: Corpus, rows: list[dict[str, Any]], euid: int | None = None) -> dict[str, Any]:
    """Compare a build's manifest rows with the corpus. Returns {case: {expect, observed, ok, problem,
    video_id}} (the samples of a kept case are for the caller to read back: they live in the shards)."""
    videos: dict[str, list[dict[str, Any]]] = {}
    clips: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        (videos if r["level"] == "video" else clips).setdefault(
            r["source"] if r["level"] == "video" else r["video_id"], []).append(r)
    report: dict[str, Any] = {}
    for c in corpus.cases:
        src = row_source(corpus, c.file)
        want = expectation(c, euid)
        own = videos.get(src, [])
        entry: dict[str, Any] = {"expect": want, "observed": None, "ok": False, "problem": None, "video_id": None}
        if c.row == "merged":
            target = videos.get(row_source(corpus, c.same_as or ""), [])
            if own:
                entry["problem"] = f"planned on its own ({len(own)} rows) though it is the same file as {c.same_as}"
            elif len(target) != 1:
                entry["problem"] = f"{c.same_as} has {len(target)} video rows, want 1"
            else:
                entry["observed"] = observe(target[0], clips.get(target[0]["video_id"], []))
                entry["video_id"] = target[0]["video_id"]
        elif len(own) != 1:
            entry["problem"] = f"{len(own)} video rows for {src!r}, want exactly 1"
        else:
            entry["observed"] = observe(own[0], clips.get(own[0]["video_id"], []))
            entry["video_id"] = own[0]["video_id"]
        if entry["observed"] is not None:
            entry["ok"] = matches(entry["observed"], want)
            if not entry["ok"]:
                r = own[0] if own else None
                entry["problem"] = f"observed {entry['observed']}" + (f": {r['message']}" if r else "")
        report[c.name] = entry
    return report


def tree_state(root: str | Path) -> dict[bytes, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of every entry under ``root`` by byte path, links not followed: the corpus
    must look exactly the same after a run (no file read, written, created or touched)."""
    out: dict[bytes, tuple[int, int, int]] = {}
    base = os.fsencode(os.path.abspath(root))
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            # a directory's own mtime changes when anything is created in it: compared too
            out[p[len(base):]] = (stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


__all__ = ["RUN_OVERRIDES", "Case", "Corpus", "case_list", "check", "encoders", "expect_path", "expectation",
           "generate_bad", "load_corpus", "matches", "observe", "row_source", "tree_state"]
