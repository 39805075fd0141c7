"""Files that are not usable, each for a documented reason: damaged (truncated, corrupt, empty, not a
video, not a file at all) or refused by probe's limits (no video, no audio, too short, too long, too
small, frame or sample rate out of range)."""

from __future__ import annotations

import os

from mtcc.media.ffmpeg import BITEXACT

from .. import broken
from ..scene import fixture_rng
from .case import PROCESSED, UNREADABLE, Plan, rejected, vid
from .encode import X264, ff, patch_mkv_duration, recode, remux


def add_unusable(plan: Plan) -> None:
    case, after, root, base, v, seed = plan.case, plan.after, plan.root, plan.base, plan.videos, plan.seed
    case("truncated_no_moov", vid("broken_truncated.mp4"), UNREADABLE,
         "the first 30% of an MP4 whose moov atom is at the end: no index at all")
    after.append(lambda: broken.truncated(base, v))
    case("truncated_mid_stream", vid("truncated_mid_stream.mp4"), UNREADABLE,
         "a fast-start MP4 (moov first) cut at 60%: the header is complete and promises media data the "
         "file no longer has",
         lambda: remux(base, root / ".work" / "faststart.mp4", "faststart", "-movflags", "+faststart"))

    case("truncated_mkv", vid("truncated_mkv.mkv"), UNREADABLE,
         "a Matroska file cut at 60%: its header still claims the whole Segment (and 3 s), its Cues are gone",
         lambda: remux(base, root / ".work" / "full.mkv", "mkvcut"))
    case("corrupt_mid_stream", vid("corrupt_mid_stream.mp4"), PROCESSED,
         "2 KiB of random bytes over the middle of the media data (bit rot): every header intact, some "
         "pictures undecodable; ffmpeg conceals the damage",
         lambda: remux(base, root / ".work" / "to_corrupt.mp4", "corrupt"))

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
         lambda: ff("-i", base, "-ss", "1.0", "-i", base, "-map", "0:a:0", "-map", "1:v:0", "-frames:v", "1",
                     "-c:a", "copy", "-c:v", "png", "-disposition:v:0", "attached_pic", *BITEXACT,
                     v / "cover_art_only.mp4"))
    case("video_only", vid("video_only.mp4"), rejected("no_audio"), "H.264 only, no audio stream",
         lambda: recode(base, v / "video_only.mp4", "-map", "0:v", "-c:v", "copy", "-an"))
    case("duration_0_2s", vid("duration_0_2s.mp4"), rejected("too_short"), "0.2 s long",
         lambda: recode(base, v / "duration_0_2s.mp4", "-t", "0.2", *X264, "-c:a", "aac"))
    case("duration_header_10h", vid("duration_header_10h.mkv"), rejected("too_long"),
         "a 3 s file whose header claims 10 hours (above the 6 h max_duration)",
         lambda: (remux(base, v / "duration_header_10h.mkv", "10h"),
                  patch_mkv_duration(v / "duration_header_10h.mkv", 10 * 3600.0)))
    case("frames_1x1", vid("frames_1x1.mp4"), rejected("too_small"), "1x1 pixel frames (4:4:4 H.264)",
         lambda: recode(base, v / "frames_1x1.mp4", "-vf", "scale=1:1", *X264, "-pix_fmt", "yuv444p",
                         "-c:a", "copy"))
    case("fps_1", vid("fps_1.mp4"), rejected("fps_out_of_range"), "1 frame per second",
         lambda: recode(base, v / "fps_1.mp4", "-vf", "fps=1", *X264, "-c:a", "copy"))
    case("fps_240", vid("fps_240.mp4"), rejected("fps_out_of_range"), "240 frames per second",
         lambda: recode(base, v / "fps_240.mp4", "-vf", "fps=240", *X264[:2], "-preset", "ultrafast", *X264[4:],
                         "-c:a", "copy"))
    case("audio_4khz", vid("audio_4khz.mkv"), rejected("audio_rate_low"), "PCM sound at 4 kHz",
         lambda: recode(base, v / "audio_4khz.mkv", "-c:v", "copy", "-c:a", "pcm_s16le", "-ar", "4000"))
