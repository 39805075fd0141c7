"""Synthetic MTCC shards with planted ground truth, for the loader's tests and benchmark.

Each sample is written in the exact sample format by the pipeline's own commit code
(``pipeline.shard.commit_shard``: tar + manifest + commit file), so what the loader reads here is what it
reads from a real build. What is planted:

* video: two filled ellipses (character 0 left, character 1 right) drifting right by one pixel a frame on a
  grey background; a block in the top-left corner whose grey level encodes the frame index
  (``FRAME_CODE_BASE + FRAME_CODE_STEP * t``) so a decoded window shows which clip frames it holds;
* ``masks.rle.json``: exactly those ellipses; ``route.npy``: the masks stage's recipe at the shard geometry;
* ``audio_emb.npy``: float16 ``[2, T, 12, 768]`` with every value of row ``t`` of character ``c`` equal
  to ``1000 c + t`` (exact in float16 below 2048);
* meta ``sync.a_ac``: the identity, or the swap for every third sample (or absent when ``a_ac=False``);
  stat ``sync.sync_c_mean`` = ``1 + (index mod 7)``, so manifest filters select a known subset.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from mtcc.facts import Fact, MaskResult, SyncResult
from mtcc.media.ffmpeg import BITEXACT_FLAG_OPTIONS, encode_frames_command, run_tool
from mtcc.media.geometry import LatentGeometry, letterbox_mask, route_index_mask
from mtcc.media.members import AUDIO_EMB, CAPTION, FACES, MASKS, MIX, MP4, REFS, ROUTE, TRACKS
from mtcc.media.npy import npy_bytes

FRAME_CODE_BASE, FRAME_CODE_STEP = 16, 6
CODE_BLOCK = 24  # px of the frame-index block at clip resolution
LAYERS, DIM = 12, 768


@dataclass
class Planted:
    key: str
    shard: int
    frames: int
    size: tuple[int, int]  # (w, h) of the clip
    sync_c: float
    a_ac: list[list[int]] | None
    windows: list[tuple[int, int]]  # at the shard geometry


def planted_masks(t: int, w: int, h: int) -> np.ndarray:
    """bool [2, h, w]: the two characters' masks at frame t."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((2, h, w), bool)
    for k, cx in enumerate((0.3 * w + t, 0.7 * w + t)):
        cy, rx, ry = 0.55 * h, 0.12 * w, 0.3 * h
        out[k] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    return out


def _frame(t: int, masks: np.ndarray) -> np.ndarray:
    h, w = masks.shape[1:]
    img = np.full((h, w, 3), 96, np.uint8)
    img[masks[0]] = (200, 60, 40)
    img[masks[1]] = (40, 80, 210)
    img[:CODE_BLOCK, :CODE_BLOCK] = min(255, FRAME_CODE_BASE + FRAME_CODE_STEP * t)
    return img


def encode_mp4(frames: np.ndarray, fps: int = 25) -> bytes:
    """H.264 25 fps + silent 16 kHz mono AAC, as the write stage's clips (argument list, no shell)."""
    n, h, w, _ = frames.shape
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "clip.mp4"
        video = {"t": f"{n / fps:.6f}", "c:v": "libx264", "preset": "veryfast", "crf": 12, "pix_fmt": "yuv420p",
                 "shortest": None, **BITEXACT_FLAG_OPTIONS}
        cmd = encode_frames_command(out, width=w, height=h, fps=fps, video_options=video,
                                    sound=("lavfi", "anullsrc=r=16000:cl=mono"),
                                    sound_options={"c:a": "aac", "ar": 16000, "ac": 1})
        run_tool(cmd, what="a synthetic clip", stdin=frames.tobytes())
        return out.read_bytes()


def _jpeg(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _flac(n: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), 16000, format="FLAC")
    return buf.getvalue()


def make_sample(key: str, index: int, frames: int, size: tuple[int, int], geo: LatentGeometry, *,
                route: bool = True, a_ac: bool = True) -> tuple[dict[str, bytes], dict[str, Any], Planted]:
    """(members, candidate info, truth) of one synthetic sample."""
    from mtcc.media import rle as rle_codec

    w, h = size
    masks = np.stack([planted_masks(t, w, h) for t in range(frames)], axis=1)  # [2, T, h, w]
    video = np.stack([_frame(t, masks[:, t]) for t in range(frames)])
    rles = [[rle_codec.encode(masks[k, t]) for t in range(frames)] for k in range(2)]
    rle_doc = {"size": [h, w], "fps": 25, "frames": frames,
               "characters": [{"index": k, "track_id": k, "rle": rles[k]} for k in range(2)]}
    emb = np.empty((2, frames, LAYERS, DIM), np.float16)
    for c in range(2):
        emb[c] = (1000 * c + np.arange(frames, dtype=np.float32))[:, None, None]
    wins = geo.windows(frames)
    members = {
        MP4: encode_mp4(video),
        MIX: _flac(frames * 640), TRACKS[0]: _flac(frames * 640), TRACKS[1]: _flac(frames * 640),
        FACES: json.dumps({"frames": frames, "characters": []}).encode(),
        MASKS: json.dumps(rle_doc, sort_keys=True, separators=(",", ":")).encode(),
        AUDIO_EMB: npy_bytes(emb),
        CAPTION: f"caption of {key}".encode(),
    }
    for k in range(2):
        ys, xs = np.nonzero(masks[k, 0])
        members[REFS[k]] = _jpeg(np.ascontiguousarray(video[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]))
    if route:
        rows = []
        for s, e in wins:
            canvas = np.stack([[letterbox_mask(masks[k, t], geo) for t in range(s, e)] for k in range(2)])
            rows.append(route_index_mask(canvas, geo))
        members[ROUTE] = npy_bytes(np.stack(rows).astype(np.int8))
    matrix = [[0, 1], [1, 0]] if index % 3 == 2 else [[1, 0], [0, 1]]
    # the facts the trainer reads (mask windows and geometry, the audio-character matrix); the rest of
    # their fields say what made them
    facts: list[Fact] = [MaskResult(windows=[list(x) for x in wins], geometry=geo.model_dump(), size=[h, w],
                                    prompt_frames=[], reprompts=0, ref_frames=[], model="synthetic", config="",
                                    image_size=0, random_weights=False)]
    if a_ac:
        facts.append(SyncResult(model="synthetic", random_weights=False, audio_source="planted", vshift=0, windows=0,
                                cross=None, a_ac=matrix, binding_margin=None, swapped=matrix == [[0, 1], [1, 0]],
                                axes="a_ac[i][j]: audio track i x character j (planted)"))
    truth = Planted(key, -1, frames, size, float(1 + index % 7), matrix if a_ac else None, wins)
    return members, facts, truth


_SYNC = SimpleNamespace(name="sync", stats_schema={"sync_c_mean": "float64", "swapped": "bool"},
                        sample_facts=lambda: (SyncResult,))
_MASKS = SimpleNamespace(name="masks", stats_schema={"overlap": "float64"}, sample_facts=lambda: (MaskResult,))


def write_shards(out: str | Path, n_shards: int, per_shard: int, *, frames: int | list[int] = 30,
                 size: tuple[int, int] = (192, 128), geometry: LatentGeometry | None = None, commit: bool = True,
                 route: bool = True, a_ac: bool = True, rejected_per_shard: int = 1) -> dict[str, Planted]:
    """An MTCC output folder ``out`` with ``n_shards`` committed shards of ``per_shard`` samples (plus
    ``rejected_per_shard`` rejected manifest rows each); ``frames`` may cycle through several lengths.
    Returns the planted truth by key."""
    from mtcc.manifests.paths import OutPaths
    from mtcc.pipeline.sample_tar import write_tar
    from mtcc.pipeline.shard import commit_shard
    from mtcc.stages.base import Candidate

    geo = geometry or LatentGeometry(frames=9, height=64, width=96)
    layout = OutPaths(Path(out))
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    lengths = frames if isinstance(frames, list) else [frames]
    truth: dict[str, Planted] = {}
    run_info = {"config_hash": "synthetic", "pipeline_version": "synthetic", "models": {}}
    i = 0
    for shard in range(n_shards):
        cands = []
        for j in range(per_shard + rejected_per_shard):
            key = f"synth{shard:03d}v{j:02d}_{0:04d}"
            c = Candidate(key=key, video_id=key[:-5], source=f"/synthetic/{key}.mp4", shard=shard, level="clip",
                          clip_idx=0, start=0.0, end=1.0)
            if j >= per_shard:
                c.stats["sync.sync_c_mean"] = 0.5
                c.reject("sync", "low_sync", "synthetic rejected row")
                cands.append(c)
                continue
            members, facts, t = make_sample(key, i, lengths[i % len(lengths)], size, geo, route=route, a_ac=a_ac)
            c.members, c.status = members, "kept"
            for f in facts:
                c.put(f)
            c.stats["sync.sync_c_mean"] = t.sync_c
            c.stats["sync.swapped"] = t.a_ac == [[0, 1], [1, 0]]
            t.shard = shard
            truth[key] = t
            cands.append(c)
            i += 1
        if commit:
            commit_shard(layout, shard, cands, [_SYNC, _MASKS], run_info)
        else:
            write_tar(layout.tar(shard), [c for c in cands if c.status == "kept"], run_info, [_SYNC, _MASKS])
    return truth
