"""One MTCC sample -> one clip of the Bind-Your-Avatar layout (runs in a worker process).

Every file is written under a temporary name and renamed into place; the clip's folder of masks is built
as a whole under a temporary name; the clip's entry (``entries/{name}.json``) is written last. A clip that
is skipped or fails leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mtcc.media.members import AUDIO_EMB, CAPTION, FACES, MASKS, META, MP4

from .bya_binding import mask_side, read_binding, slot_tracks, their_af_matrix
from .bya_layout import (
    ENTRY_VERSION,
    IDS,
    SFT_FRAMES,
    SFT_MISS_TOLERANCE,
    SFT_SKIP,
    BYAFolder,
    file_sizes,
    json_bytes,
    remove_clip,
    write_atomic,
)

NEEDED = (META, MP4, FACES, MASKS, AUDIO_EMB, CAPTION)
EMB_LAYERS, EMB_DIM = 12, 768
# zlib's run-length strategy at level 1: on a binary mask 1.4x faster than plain level 1 and a third of its
# size (11.8 -> 8.8 ms, 12 -> 4 kB at 1152x768); the default level is twice as slow at 1080p
PNG_OPTIONS = {"format": "PNG", "compress_level": 1, "compress_type": zlib.Z_RLE}


class ExportOptions(BaseModel):
    """What decides which clips are exported and what their entries say (recorded in every entry: a rerun
    with other options redoes the clips)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_unbound: bool = Field(False, description="export clips whose binding is unknown or contradicted")
    min_frames: int = Field(SFT_FRAMES + 2 * SFT_SKIP, ge=SFT_FRAMES + 2 * SFT_SKIP,
                            description="clip frames with a mask for both characters, at least: 49 for the window "
                                        "plus 2 skipped at each end (their sft.sh), which are also the audio context")
    both_min_fraction: float = Field(0.1, ge=0, le=1, description="a clip where each character speaks at least "
                                                                  "this fraction of frames is marked both_speaking")


class SkipClip(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class ClipJob:
    dest: Path
    name: str
    shard: str
    members: dict[str, bytes]
    options: ExportOptions


@dataclass
class ClipResult:
    name: str
    status: str  # exported | skipped | error
    reason: str | None = None
    message: str | None = None
    bound: bool = True
    entry: dict[str, Any] = field(default_factory=dict)


def convert(job: ClipJob) -> ClipResult:
    """Export one sample; a skip or an error becomes a result naming the clip, never an exception."""
    layout = BYAFolder(job.dest)
    try:
        remove_clip(layout, job.name)  # whatever an earlier run left of this clip (its entry goes first)
        entry, bound = _convert(layout, job)
        return ClipResult(job.name, "exported", bound=bound, entry=entry)
    except SkipClip as s:
        remove_clip(layout, job.name)
        return ClipResult(job.name, "skipped", s.reason, s.message)
    # one bad sample must not take down the export: it becomes an error row naming the clip and the cause
    except Exception as e:  # noqa: BLE001
        remove_clip(layout, job.name)
        return ClipResult(job.name, "error", type(e).__name__, f"{job.shard}: {job.name}: {type(e).__name__}: {e}")


def _convert(layout: BYAFolder, job: ClipJob) -> tuple[dict[str, Any], bool]:
    m, name, opts = job.members, job.name, job.options
    missing = [k for k in NEEDED if k not in m]
    if missing:
        raise SkipClip("missing_member", f"sample lacks {', '.join(missing)} (a profile without those stages)")
    meta = json.loads(m[META])
    binding = read_binding(meta, opts.both_min_fraction)
    bound = binding.state == "measured"
    if not bound and not opts.keep_unbound:
        raise SkipClip(binding.reason or "binding_unknown", f"binding {binding.state}: {binding.why}")
    faces = json.loads(m[FACES])
    masks = json.loads(m[MASKS])
    emb = np.load(io.BytesIO(m[AUDIO_EMB]), allow_pickle=False)
    chars = sorted(masks.get("characters", []), key=lambda c: int(c["index"]))
    fchars = sorted(faces.get("characters", []), key=lambda c: int(c["index"]))
    if len(chars) != 2 or len(fchars) != 2:
        raise SkipClip("not_two_characters", f"{len(fchars)} characters in faces.json, {len(chars)} in masks")
    n = len(chars[0]["rle"])
    lengths = {"masks 0": n, "masks 1": len(chars[1]["rle"]), "faces 0": len(fchars[0]["boxes"]),
               "faces 1": len(fchars[1]["boxes"]), "audio_emb": emb.shape[1] if emb.ndim == 4 else -1}
    if len(set(lengths.values())) != 1 or emb.shape != (2, n, EMB_LAYERS, EMB_DIM):
        raise SkipClip("inconsistent", f"frame counts differ or audio_emb is {emb.dtype} {emb.shape}: {lengths}")
    if n < opts.min_frames:
        raise SkipClip("too_short", f"{n} frames < min_frames {opts.min_frames}: their trainer reads 49 frames and "
                                    f"skips 2 at each end (the build keeps clips from stages.segment.min_frames; set "
                                    f"it to {opts.min_frames} to keep only clips this export takes)")
    caption = m[CAPTION].decode("utf-8").strip()
    fps = float(masks.get("fps") or faces.get("fps") or 25)
    h, w = (int(v) for v in masks["size"])

    valid, side_1 = _write_masks(layout, name, chars)
    try:
        good, total = reader_windows(valid[0], valid[1])
        if good == 0:
            raise SkipClip("no_window", f"no {SFT_FRAMES}-frame window where both masks are present "
                                        f"({len(valid[0])}/{len(valid[1])} of {n} frames have a mask)")
        _finish_track_dir(layout, name, valid, meta)
    except BaseException:
        shutil.rmtree(layout.temp(layout.track_dir(name)), ignore_errors=True)
        raise

    write_atomic(layout.bboxes(name), json_bytes(_bboxes(fchars, meta.get("probe") or {}, (h, w))))
    af = their_af_matrix(side_1, binding.speaker_side)
    tracks = slot_tracks(binding, af)
    for slot, k in enumerate(tracks):
        _save_tensor(layout.audio(name, slot), emb[k])
    write_atomic(layout.video(name), m[MP4])

    duration = n / fps
    if fps * duration < n:  # their filter is fps * duration >= 49: never lose a frame to rounding
        duration = float(np.nextafter(duration, np.inf))
    entry = {
        "path": name, "cap": caption, "fps": fps, "duration": duration, "speaker": binding.speaker_side,
        # fields below are ours; their reader ignores them
        "both_speaking": binding.both_speaking,
        "mtcc": {
            "key": meta.get("key", name), "shard": job.shard, "frames": n,
            "speaking_fraction": None if binding.speaking_fraction is None else dict(
                zip(("left", "right"), binding.speaking_fraction, strict=True)),
            "overlap": binding.overlap, "speaker_source": binding.speaker_source,
            "binding": binding.state, "binding_votes": binding.votes, "swapped": binding.swapped,
            "audio_tracks": tracks, "af_matrix": af, "mask_side_1": side_1,
            "reader_windows": [good, total], "random_weights": meta.get("random_weights", []),
        },
    }
    files = [*(layout.mask(name, IDS[k], t) for k in range(2) for t in range(n)),
             *(layout.track_dir(name) / f for f in ("valid_frame.json", "corresponding_data.json",
                                                     "control_sam2_frame.json")),
             layout.bboxes(name), layout.audio(name, 0), layout.audio(name, 1), layout.video(name)]
    doc = {"version": ENTRY_VERSION, "entry": entry, "options": opts.model_dump(),
           "files": file_sizes(layout, files)}
    write_atomic(layout.entry(name), json_bytes(doc))
    return entry, bound


def _write_masks(layout: BYAFolder, name: str, chars: list[dict[str, Any]]) -> tuple[list[list[int]], str]:
    """uint16 PNG per character per frame into the clip's temporary track folder; returns the frames with a
    non-empty mask per character and their side rule on character "1"'s frame 0."""
    from PIL import Image

    from mtcc.media import rle as rle_codec

    tmp = layout.temp(layout.track_dir(name))
    shutil.rmtree(tmp, ignore_errors=True)
    valid: list[list[int]] = [[], []]
    side_1 = "equal_or_none"
    for k, c in enumerate(chars):
        ident = IDS[k]
        folder = tmp / "tracking_mask_results" / ident
        folder.mkdir(parents=True)
        value = np.uint16(int(ident))
        for t, r in enumerate(c["rle"]):
            mask = rle_codec.decode(r)
            img = mask.astype(np.uint16) * value
            if k == 0 and t == 0:
                side_1 = mask_side(img)
            if mask.any():
                valid[k].append(t)
            Image.fromarray(img).save(folder / f"annotated_frame_{t:05d}.png", **PNG_OPTIONS)
    return valid, side_1


def _finish_track_dir(layout: BYAFolder, name: str, valid: list[list[int]], meta: dict[str, Any]) -> None:
    tmp, final = layout.temp(layout.track_dir(name)), layout.track_dir(name)
    prompt = ((meta.get("masks") or {}).get("prompt_frames") or [0])[0]
    docs = {
        "valid_frame.json": {IDS[k]: {"face": valid[k]} for k in range(2)},
        "corresponding_data.json": {ident: {"face": int(ident)} for ident in IDS},
        "control_sam2_frame.json": {ident: {"face": int(prompt)} for ident in IDS},
    }
    for fname, obj in docs.items():
        (tmp / fname).write_bytes(json_bytes(obj))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def segments(frames: list[int], tolerance: int) -> list[list[int]]:
    """Runs of frames whose gaps are at most ``tolerance`` (their grouping of valid frames)."""
    out: list[list[int]] = []
    for f in frames:
        if out and f - out[-1][-1] <= tolerance:
            out[-1].append(f)
        else:
            out.append([f])
    return out


def reader_windows(valid_1: list[int], valid_2: list[int], frames: int = SFT_FRAMES, skip: int = SFT_SKIP,
                   tolerance: int = SFT_MISS_TOLERANCE) -> tuple[int, int]:
    """(windows their reader can draw that have both masks on every frame, windows it can draw).

    Their reader takes the longest run of character "1"'s mask frames, refuses runs of ``frames`` or fewer,
    and draws the start uniformly from ``skip .. len - skip - frames`` inside it; a window with a frame
    missing from character "2"'s mask frames fails (and their loader retries another clip)."""
    runs = segments(valid_1, tolerance)
    if not runs:
        return 0, 0
    run = max(runs, key=len)
    last = len(run) - skip - frames
    if len(run) <= frames or last < skip:
        return 0, 0
    have = set(valid_2)
    good = sum(all(f in have for f in run[p:p + frames]) and run[p + frames - 1] - run[p] == frames - 1
               for p in range(skip, last + 1))
    return good, last - skip + 1


def _bboxes(chars: list[dict[str, Any]], probe: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Per frame, both face boxes in clip pixels (faces.json holds source pixels; the clip is the source
    scaled to even dimensions), with their character id as ``new_track_id``."""
    h, w = size
    sx = w / float(probe.get("width") or w)
    sy = h / float(probe.get("height") or h)
    scale = np.array([sx, sy, sx, sy])
    limit = np.array([w, h, w, h], np.float64)
    boxes = [np.clip(np.asarray(c["boxes"], np.float64).reshape(-1, 4) * scale, 0, limit) for c in chars]
    out: dict[str, Any] = {}
    for t in range(len(boxes[0])):
        items = []
        for k, c in enumerate(chars):
            x1, y1, x2, y2 = (round(float(v), 2) for v in boxes[k][t])
            score = c.get("scores", [None] * (t + 1))[t]
            items.append({"box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "new_track_id": int(IDS[k]),
                          "track_id": c.get("track_id"), "score": score})
        out[str(t)] = {"face": items}
    return out


def _save_tensor(path: Path, rows: np.ndarray) -> None:
    """float32 ``(T, 12, 768)`` as a plain tensor (their loader ``torch.load``s it and indexes rows)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).clone()
    buf = io.BytesIO()
    torch.save(tensor, buf)
    write_atomic(path, buf.getvalue())
