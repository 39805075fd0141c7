"""Valid videos in other shapes (containers, codecs, frame rates, rotation, sizes, sound): each must give
kept clips, or at least be processed without an error."""

from __future__ import annotations

from mtcc.media.ffmpeg import BITEXACT, encoders

from .base import BASE_SECONDS
from .case import KEPT, PROCESSED, Plan, vid
from .encode import X264, ff, patch_mkv_duration, patch_mp4_rotation, recode, remux


def add_shapes(plan: Plan) -> None:
    case, base, v = plan.case, plan.base, plan.videos
    case("reference", vid("reference.mp4"), KEPT, "the base scene itself: H.264 + AAC 44.1 kHz stereo in MP4")
    case("container_mkv", vid("container_mkv.mkv"), KEPT, "Matroska (stream copy)",
         lambda: remux(base, v / "container_mkv.mkv", "mkv"))
    case("container_mov", vid("container_mov.mov"), KEPT, "QuickTime MOV (stream copy)",
         lambda: remux(base, v / "container_mov.mov", "mov"))
    # codecs this ffmpeg may lack are left out of the corpus (and of expected.json), not failed
    have = encoders()
    if {"libvpx-vp9", "libopus"} <= have:
        case("container_webm_vp9", vid("container_webm_vp9.webm"), KEPT, "WebM: VP9 + Opus 48 kHz",
             lambda: recode(base, v / "container_webm_vp9.webm", "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "36",
                             "-deadline", "realtime", "-cpu-used", "8", "-threads", "1",
                             "-c:a", "libopus", "-b:a", "48k", "-ar", "48000"))
    mp3 = ["-c:a", "libmp3lame", "-b:a", "96k"] if "libmp3lame" in have else ["-c:a", "mp2", "-b:a", "128k"]
    case("container_avi_mpeg4", vid("container_avi_mpeg4.avi"), KEPT, "AVI: MPEG-4 part 2 + MP3 (or MP2)",
         lambda: recode(base, v / "container_avi_mpeg4.avi", "-c:v", "mpeg4", "-q:v", "3", *mp3))
    if "libx265" in have:
        case("codec_hevc", vid("codec_hevc.mp4"), KEPT, "HEVC (x265, hvc1 tag) + AAC copy",
             lambda: recode(base, v / "codec_hevc.mp4", "-c:v", "libx265", "-preset", "ultrafast", "-crf", "26",
                             "-x265-params", "log-level=error:pools=1:frame-threads=1", "-tag:v", "hvc1",
                             "-c:a", "copy"))
    av1 = (["-c:v", "libsvtav1", "-preset", "12", "-crf", "40", "-svtav1-params", "lp=1"] if "libsvtav1" in have
           else ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-crf", "45", "-b:v", "0",
                 "-threads", "1"] if "libaom-av1" in have else None)
    if av1 is not None:
        case("codec_av1", vid("codec_av1.mp4"), KEPT, f"AV1 ({av1[1]}) + AAC copy in MP4",
             lambda: recode(base, v / "codec_av1.mp4", *av1, "-c:a", "copy"))
    case("h264_bframes_open_gop", vid("h264_bframes_open_gop.mp4"), KEPT,
         "H.264 with 4 B-frames, B-pyramid and open GOPs (decode order != display order, leading pictures)",
         lambda: recode(base, v / "h264_bframes_open_gop.mp4", *X264,
                         "-x264-params", "bframes=4:b-pyramid=normal:open-gop=1:keyint=20:min-keyint=4",
                         "-c:a", "copy"))
    vfr = ["-vf", "select='not(eq(mod(n\\,7)\\,2)+eq(mod(n\\,7)\\,5))'", "-fps_mode", "vfr", *X264, "-c:a", "copy"]
    case("variable_frame_rate", vid("variable_frame_rate.mkv"), KEPT,
         "variable frame rate in Matroska (which reports 25/1 as the average): 2 of every 7 frames "
         "dropped, the rest keep their timestamps",
         lambda: recode(base, v / "variable_frame_rate.mkv", *vfr))
    case("variable_frame_rate_mp4", vid("variable_frame_rate_mp4.mp4"), KEPT,
         "the same variable frame rate in MP4 (whose average rate, 18 fps, is not the stream's 25/1)",
         lambda: recode(base, v / "variable_frame_rate_mp4.mp4", *vfr))
    case("rotation_90", vid("rotation_90.mp4"), KEPT,
         "pixels stored turned a quarter left, a 90 degree display matrix turns them upright again",
         lambda: (recode(base, v / "rotation_90.mp4", "-vf", "transpose=cclock", *X264, "-c:a", "copy"),
                  patch_mp4_rotation(v / "rotation_90.mp4")))
    case("odd_dimensions", vid("odd_dimensions_383x215.mp4"), KEPT,
         "383x215 (odd width and height: 4:4:4 H.264, 4:2:0 cannot be odd)",
         lambda: recode(base, v / "odd_dimensions_383x215.mp4", "-vf", "format=yuv444p,crop=383:215:0:0", *X264,
                         "-pix_fmt", "yuv444p", "-c:a", "copy"))
    case("audio_8khz_mono", vid("audio_8khz_mono.mp4"), KEPT, "AAC 8 kHz mono (the lowest rate accepted)",
         lambda: recode(base, v / "audio_8khz_mono.mp4", "-c:v", "copy", "-c:a", "aac", "-ar", "8000", "-ac", "1"))
    case("audio_48khz", vid("audio_48khz.mp4"), KEPT, "AAC 48 kHz stereo",
         lambda: recode(base, v / "audio_48khz.mp4", "-c:v", "copy", "-c:a", "aac", "-ar", "48000"))
    case("audio_5_1", vid("audio_5_1.mkv"), KEPT, "AC-3 5.1 (six channels) in Matroska",
         lambda: recode(base, v / "audio_5_1.mkv", "-c:v", "copy", "-c:a", "ac3", "-ac", "6", "-ar", "48000"))
    case("audio_silent", vid("audio_silent.mp4"), KEPT,
         "digital silence for sound: probe has no reason to refuse it; prescore records no match but is "
         "told not to reject in a corpus run",
         lambda: ff("-i", base, "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-map", "0:v", "-map", "1:a",
                     "-c:v", "copy", "-c:a", "aac", "-t", f"{BASE_SECONDS}", *BITEXACT,
                     v / "audio_silent.mp4"))
    case("audio_shorter_than_video", vid("audio_shorter_than_video.mp4"), KEPT,
         "the audio stream ends after 1 s of a 3 s video (write pads the clip's sound with silence)",
         lambda: recode(base, v / "audio_shorter_than_video.mp4", "-c:v", "copy", "-af", "atrim=end=1.0",
                         "-c:a", "aac"))
    case("duration_header_3h", vid("duration_header_3h.mkv"), PROCESSED,
         "a 3 s file whose Matroska header claims 3 hours (below max_duration): nothing may trust the "
         "header enough to allocate or wait for hours of frames",
         lambda: (remux(base, v / "duration_header_3h.mkv", "3h"),
                  patch_mkv_duration(v / "duration_header_3h.mkv", 3 * 3600.0)))
    case("frames_8k_static", vid("frames_8k_static.mp4"), PROCESSED,
         "7680x4320, one still frame of the scene for 2.2 s at 10 fps: decoded at full size without error, "
         "its clip written at the cut's size cap when one is set (still faces give no lip motion, so a clip "
         "is not promised)",
         lambda: ff("-ss", "1.0", "-i", base, "-i", base, "-map", "0:v:0", "-map", "1:a:0",
                     "-vf", "select='eq(n\\,0)',scale=7680:4320:flags=bilinear,loop=loop=-1:size=1,fps=10",
                     *X264[:2], "-preset", "ultrafast", "-tune", "stillimage", "-crf", "30", "-threads", "2",
                     "-c:a", "copy", "-t", "2.2", *BITEXACT, v / "frames_8k_static.mp4"))
