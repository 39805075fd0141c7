"""The sample schema (the README's sample table), checked on a sample read back from a shard.

``check_sample`` decodes every member and compares its shape, dtype and cross-member consistency (frame
counts, clip resolution, track lengths) with what the schema promises a trainer. Members a profile does
not produce (the spine profile writes no masks) are only checked when present, unless ``require`` names them
(by default the members every sample has, ``members.REQUIRED``). Shards are read with
:func:`mtcc.manifests.shard_tar.read_samples`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from mtcc.media.clip import AUDIO_RATE, FPS
from mtcc.media.ffmpeg import probe_command, run_tool
from mtcc.media.members import AUDIO_EMB, CAPTION, FACES, IDENTITY, MASKS, META, MIX, MP4, REFS, ROUTE, TRACKS

from .members import REQUIRED

EMB_LAYERS, EMB_DIM = 12, 768
IDENTITY_DIM = 128  # dlib's face descriptor (nets/face_identity.py)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _flac(data: bytes) -> tuple[int, int, int]:
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    return info.samplerate, info.channels, info.frames


def _mp4(data: bytes) -> dict[str, Any]:
    # ffprobe reads the clip from stdin: no temp file, no file name on a command line
    entries = "stream=codec_type,codec_name,width,height,avg_frame_rate,nb_frames,sample_rate,channels"
    out = run_tool(probe_command(None, entries=entries), what="the sample's mp4", stdin=data, timeout=120)
    streams = json.loads(out)["streams"]
    return {s["codec_type"]: s for s in streams}


def check_sample(members: dict[str, bytes], require: Iterable[str] = REQUIRED) -> list[str]:
    """Problems with one sample (empty when it matches the schema); ``require`` names the members it must
    have (the configured profile's, ``members.MEMBERS`` for a full build)."""
    problems = [f"missing member {m}" for m in require if m not in members]
    meta = json.loads(members[META]) if META in members else {}
    frames = None
    size = None
    if MP4 in members:
        s = _mp4(members[MP4])
        v, a = s.get("video"), s.get("audio")
        if not v or v.get("codec_name") != "h264":
            problems.append(f"mp4: video stream is {v and v.get('codec_name')}, expected h264")
        else:
            if v.get("avg_frame_rate") != f"{FPS}/1":
                problems.append(f"mp4: {v.get('avg_frame_rate')} fps, expected {FPS}")
            frames, size = int(v.get("nb_frames") or 0), (int(v["height"]), int(v["width"]))
        if a is not None and (a.get("codec_name") != "aac" or int(a.get("sample_rate", 0)) != AUDIO_RATE
                              or int(a.get("channels", 0)) != 1):
            problems.append(f"mp4: audio {a.get('codec_name')} {a.get('sample_rate')} Hz x{a.get('channels')}, "
                            f"expected aac {AUDIO_RATE} Hz mono")
    lengths = {}
    for name in (MIX, TRACKS[0], TRACKS[1]):
        if name in members:
            sr, ch, n = _flac(members[name])
            lengths[name] = n
            if (sr, ch) != (AUDIO_RATE, 1):
                problems.append(f"{name}: {sr} Hz x{ch}, expected {AUDIO_RATE} Hz mono")
    if len(set(lengths.values())) > 1:
        problems.append(f"audio tracks differ in length: {lengths}")
    if frames is not None and lengths:
        n = next(iter(lengths.values()))
        if abs(n / AUDIO_RATE * FPS - frames) > 1.01:
            problems.append(f"audio covers {n / AUDIO_RATE * FPS:.2f} frames, video has {frames}")
    if FACES in members:
        faces = json.loads(members[FACES])
        chars = faces.get("characters", [])
        if len(chars) != 2:
            problems.append(f"faces.json: {len(chars)} characters, expected 2")
        for c in chars:
            for field in ("boxes", "landmarks", "scores"):
                if frames is not None and len(c.get(field, [])) != frames:
                    problems.append(f"faces.json: character {c.get('index')} has {len(c.get(field, []))} {field} "
                                    f"for {frames} frames")
            if "speaking" in c and frames is not None and len(c["speaking"]) != frames:
                problems.append(f"faces.json: character {c.get('index')} has {len(c['speaking'])} speaking logits for "
                                f"{frames} frames")
            if c.get("landmarks") and np.asarray(c["landmarks"][0]).shape != (5, 2):
                problems.append("faces.json: landmarks are not 5 x (x, y)")
    if MASKS in members:
        rle = json.loads(members[MASKS])
        if size is not None and tuple(rle.get("size", ())) != size:
            problems.append(f"masks.rle.json: size {rle.get('size')}, clip is {list(size)}")
        for c in rle.get("characters", []):
            if frames is not None and len(c.get("rle", [])) != frames:
                problems.append(f"masks.rle.json: character {c.get('index')} has {len(c.get('rle', []))} masks "
                                f"for {frames} frames")
        if len(rle.get("characters", [])) != 2:
            problems.append("masks.rle.json: expected 2 characters")
    if ROUTE in members:
        route = _npy(members[ROUTE])
        geo = (meta.get("masks") or {}).get("geometry") or {}
        grid = _grid(geo)
        if route.dtype != np.int8 or route.ndim != 4 or tuple(route.shape[1:]) != grid:
            problems.append(f"route.npy: {route.dtype} {route.shape}, expected int8 [W, {', '.join(map(str, grid))}]")
        elif not set(np.unique(route).tolist()) <= {-1, 0, 1}:
            problems.append(f"route.npy: values {sorted(np.unique(route).tolist())}, expected -1/0/1")
        windows = (meta.get("masks") or {}).get("windows")
        if windows is not None and len(windows) != route.shape[0]:
            problems.append(f"route.npy: {route.shape[0]} windows, meta lists {len(windows)}")
    if AUDIO_EMB in members:
        emb = _npy(members[AUDIO_EMB])
        want = (2, frames if frames is not None else emb.shape[1], EMB_LAYERS, EMB_DIM)
        if emb.dtype != np.float16 or emb.shape != want:
            problems.append(f"audio_emb.npy: {emb.dtype} {emb.shape}, expected float16 {list(want)}")
        elif not np.isfinite(emb).all():
            problems.append("audio_emb.npy: non-finite values")
    if IDENTITY in members:
        problems += _identity_problems(_npy(members[IDENTITY]), (meta.get("identity") or {}).get("frames"))
    for name in (REFS[0], REFS[1]):
        if name in members:
            from PIL import Image

            img = Image.open(io.BytesIO(members[name]))
            if img.format != "JPEG" or img.mode != "RGB" or min(img.size) < 8:
                problems.append(f"{name}: {img.format} {img.mode} {img.size}, expected an RGB JPEG")
    if CAPTION in members:
        try:
            if not members[CAPTION].decode("utf-8").strip():
                problems.append("caption.txt: empty")
        except UnicodeDecodeError:
            problems.append("caption.txt: not UTF-8")
    if meta:
        for k in ("key", "source", "source_sha256", "start", "end", "probe", "stats", "config_hash",
                  "pipeline_version", "models"):
            if k not in meta:
                problems.append(f"json: no '{k}'")
    return problems


def _identity_problems(desc: np.ndarray, frames: list[list[int]] | None) -> list[str]:
    """identity.npy: float32 ``[2, F, 128]``, finite on each character's described frames (the meta's
    ``identity.frames[k]``), NaN on the rows after them."""
    if desc.dtype != np.float32 or desc.ndim != 3 or desc.shape[0] != 2 or desc.shape[2] != IDENTITY_DIM:
        return [f"identity.npy: {desc.dtype} {desc.shape}, expected float32 [2, F, {IDENTITY_DIM}]"]
    if frames is None:
        return ["identity.npy: the meta has no identity.frames for its rows"]
    if len(frames) != 2 or desc.shape[1] != max(len(f) for f in frames):
        return [f"identity.npy: {desc.shape[1]} rows, the meta's identity.frames lists {[len(f) for f in frames]}"]
    for k, f in enumerate(frames):
        if not np.isfinite(desc[k, :len(f)]).all() or not np.isnan(desc[k, len(f):]).all():
            return [f"identity.npy: character {k} should have {len(f)} finite rows, then NaN"]
    return []


def _grid(geo: dict[str, Any]) -> tuple[int, int, int]:
    from mtcc.media.geometry import LatentGeometry

    return LatentGeometry(**geo).grid
