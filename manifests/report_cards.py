"""The gallery: one card per kept clip (middle frame with both masks and face boxes, the two references,
who speaks when, both separated tracks, caption, scores) and per rejected candidate (the source frame at
its middle, reason and message). Pictures are written into the report's staging folder."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mtcc.manifests.paths import OutPaths
from mtcc.manifests.shard_tar import ShardTarError
from mtcc.media.ffmpeg import MediaError, clip_frame_command, run_tool, source_frame_command
from mtcc.media.members import CAPTION, FACES, MASKS, META, MP4, REFS, TRACKS
from mtcc.storage.files import is_remote_source, local_source

from . import report_plots as plots
from .report_data import pick_kept, pick_rejected, read_some, stage_file
from .report_views import View, card_scores, video_duration_column

FRAME_TIMEOUT_S = 120.0


@dataclass
class Card:
    kind: str  # kept | rejected
    key: str
    source: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative path, alt text)
    placeholder: str | None = None
    caption: str | None = None
    scores: list[tuple[str, str]] = field(default_factory=list)
    stage: str | None = None
    reason: str | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)

    def pictures(self, kind: str) -> list[tuple[str, str]]:
        """The card's images of one kind, in the order the card shows them: ``main`` (the frame), ``refs``,
        ``speaking`` (the timeline under the frame), ``wave`` (the separated tracks)."""
        side = ("_wave.png", "_speaking.png")
        test = {"main": lambda p: "_ref" not in p and not p.endswith(side), "refs": lambda p: "_ref" in p,
                "speaking": lambda p: p.endswith("_speaking.png"), "wave": lambda p: p.endswith("_wave.png")}[kind]
        return [(p, a) for p, a in self.images if test(p)]


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def clip_frame(mp4: bytes, index: int) -> np.ndarray:
    """Frame ``index`` of a clip given as bytes (the write stage puts the moov atom first, so ffmpeg
    reads it from a pipe: no temp file)."""
    png = run_tool(clip_frame_command(index), what=f"clip frame {index}", stdin=mp4, timeout=FRAME_TIMEOUT_S)
    if not png:
        raise MediaError(f"ffmpeg returned no frame {index}")
    return _decode_png(png)


def source_frame(source: str, t: float, width: int = 480) -> np.ndarray:
    path = local_source(source)
    png = run_tool(source_frame_command(path, t, width), what=path, timeout=FRAME_TIMEOUT_S)
    if not png:
        raise MediaError(f"ffmpeg found no frame at {t:.2f}s")
    return _decode_png(png)


def _flac(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    y, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return y.mean(axis=1), rate


def _masks_at(rle: dict[str, Any], frame: int) -> list[np.ndarray | None]:
    from mtcc.media import rle as rle_mod

    out: list[np.ndarray | None] = []
    for ch in sorted(rle.get("characters", []), key=lambda c: c.get("index", 0)):
        seq = ch.get("rle") or []
        out.append(rle_mod.decode(seq[frame]) if frame < len(seq) else None)
    return out


def _boxes_at(faces: dict[str, Any], frame: int, sx: float, sy: float) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for ch in sorted(faces.get("characters", []), key=lambda c: c.get("index", 0)):
        boxes = ch.get("boxes") or []
        if frame < len(boxes) and boxes[frame] is not None:
            x0, y0, x1, y1 = boxes[frame][:4]
            out.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
        else:
            out.append(None)
    return out


def _random_stages(row: dict[str, Any]) -> list[str]:
    return sorted(k.split(".")[0] for k, v in row.items() if k.endswith(".random_weights") and v)


def kept_card(row: dict[str, Any], sample: dict[str, bytes] | None, idx: int, stage_dir: Path,
              warn: Callable[[str], None], views: Sequence[View]) -> Card:
    card = Card("kept", row["key"], row["source"] or "", scores=card_scores(row, views))
    if sample is None:
        card.placeholder = "sample not found in its shard tar"
        return card
    meta: dict[str, Any] = {}
    try:
        meta = json.loads(sample[META]) if META in sample else {}
    except ValueError:
        card.warnings.append("the sample's json member is not valid JSON")
    if meta.get("random_weights"):
        card.warnings.append("made with RANDOM weights in " + ", ".join(map(str, meta["random_weights"]))
                             + ": plumbing only, not training data")
    name = f"kept_{idx:02d}"
    try:
        card.images.append((_thumbnail(sample, meta, stage_dir / "gallery" / f"{name}.jpg"),
                            "middle frame with both characters' masks and face boxes"))
    except (MediaError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        warn(f"report: no thumbnail for {row['key']}: {e}")
        card.placeholder = f"no frame: {e}"
    for k in (0, 1):
        ref = sample.get(REFS[k])
        if ref:
            try:
                stage_file(stage_dir / "gallery" / f"{name}_ref{k}.jpg", plots.reencode_jpeg(ref))
                card.images.append((f"gallery/{name}_ref{k}.jpg", f"reference image of character {k}"))
            except (OSError, ValueError) as e:
                warn(f"report: unreadable ref{k}.jpg in {row['key']}: {e}")
    asd = meta.get("asd") or {}
    if asd.get("intervals") is not None:
        try:
            duration = float(row["end"] - row["start"]) if row.get("end") is not None else 0.0
            stage_file(stage_dir / "gallery" / f"{name}_speaking.png", plots.speaking_png(asd["intervals"], duration))
            said = "; ".join(f"character {k} speaks on {f:.0%} of frames"
                             for k, f in enumerate(asd.get("speaking_fraction") or []))
            card.images.append((f"gallery/{name}_speaking.png", f"speaking timeline: {said}"))
        except (OSError, ValueError, TypeError) as e:
            warn(f"report: no speaking timeline for {row['key']}: {e}")
    tracks = [sample[TRACKS[k]] for k in (0, 1) if TRACKS[k] in sample]
    if tracks:
        try:
            decoded = [_flac(t) for t in tracks]
            stage_file(stage_dir / "gallery" / f"{name}_wave.png",
                       plots.waveforms_png([y for y, _ in decoded], decoded[0][1]))
            card.images.append((f"gallery/{name}_wave.png", "separated speech of each character"))
        except (OSError, ValueError, RuntimeError) as e:
            warn(f"report: unreadable speech tracks in {row['key']}: {e}")
    if CAPTION in sample:
        card.caption = sample[CAPTION].decode("utf-8", "replace")
    return card


def _thumbnail(sample: dict[str, bytes], meta: dict[str, Any], dst: Path) -> str:
    faces = json.loads(sample[FACES]) if FACES in sample else {}
    rle = json.loads(sample[MASKS]) if MASKS in sample else {}
    n = int(rle.get("frames") or faces.get("frames") or len((faces.get("characters") or [{}])[0].get("boxes", []))
            or 1)
    mid = n // 2
    frame = clip_frame(sample[MP4], mid)
    sx, sy = box_scale(frame.shape[1], frame.shape[0], meta.get("probe") or {})
    img = plots.overlay(frame, _masks_at(rle, mid) if rle else [], _boxes_at(faces, mid, sx, sy) if faces else [])
    stage_file(dst, plots.jpeg(img))
    return f"gallery/{dst.name}"


def box_scale(w: int, h: int, probe: dict[str, Any]) -> tuple[float, float]:
    """(x, y) factors from the source pixels face boxes are in to a ``w`` x ``h`` clip frame (the cut scales
    the picture). The probe's width and height are the picture as shown, rotation already applied, as the
    boxes and the clip are."""
    pw, ph = probe.get("width"), probe.get("height")
    return (w / pw if pw else 1.0), (h / ph if ph else 1.0)


def rejected_card(row: dict[str, Any], idx: int, stage_dir: Path, views: Sequence[View]) -> Card:
    card = Card("rejected", row["key"], row["source"] or "", scores=card_scores(row, views), stage=row.get("stage"),
                reason=row.get("reason"), message=row.get("message"))
    rnd = _random_stages(row)
    if rnd:
        card.warnings.append("scores from RANDOM weights in " + ", ".join(rnd))
    if row.get("start") is not None and row.get("end") is not None:
        t = (row["start"] + row["end"]) / 2
    else:
        duration = video_duration_column(views)
        t = ((row.get(duration) if duration else None) or 0.0) / 2
    source = row["source"] or ""
    if not source:
        card.placeholder = "no source recorded"
    elif is_remote_source(source):
        card.placeholder = "remote source: not fetched for the report"
    elif not Path(local_source(source)).is_file():
        card.placeholder = "source file not found (moved or deleted since the build)"
    else:
        try:
            frame = source_frame(source, t)
            name = f"gallery/rejected_{idx:02d}.jpg"
            stage_file(stage_dir / name, plots.jpeg(frame))
            card.images.append((name, f"source frame at {t:.2f} s"))
        except (MediaError, OSError, ValueError) as e:
            card.placeholder = f"no frame: {e}"
    return card


def gallery(layout: OutPaths, table: pa.Table, n: int, stage_dir: Path, warn: Callable[[str], None],
            views: Sequence[View], url: str | None = None) -> tuple[list[Card], list[Card]]:
    kept_rows = pick_kept(table, n)
    by_shard: dict[int, list[str]] = {}
    for r in kept_rows:
        by_shard.setdefault(int(r["shard"]), []).append(r["key"])
    samples: dict[str, dict[str, bytes]] = {}
    for shard, keys in sorted(by_shard.items()):
        try:
            # a remote OUT's tars stay remote: ``layout`` is only a local view of its metadata
            tar = f"{url}/shards/{layout.tar(shard).name}" if url else layout.tar(shard)
            samples.update(read_some(tar, keys))
        except (OSError, tarfile.TarError, ShardTarError) as e:
            warn(f"report: cannot read {layout.tar(shard).name}: {e}")
    kept = [kept_card(r, samples.get(r["key"]), i, stage_dir, warn, views) for i, r in enumerate(kept_rows)]
    rejected = [rejected_card(r, i, stage_dir, views) for i, r in enumerate(pick_rejected(table, n))]
    return kept, rejected
