"""What a clip's masks become: the stats the ``masks`` stage decides on, ``masks.rle.json``, the routing
ground truth ``route.npy`` on the latent grid, and the background-free reference images."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from mtcc.media import rle as rle_codec
from mtcc.media.geometry import LatentGeometry, route_index_mask

FPS = 25  # the clip frame rate the masks are given at (masks.rle.json)


def mask_stats(rles: list[list[dict[str, Any]]], covers: np.ndarray) -> dict[str, Any]:
    """Per character ``k``: ``area_k`` (mean fraction of the frame), ``empty_k`` (fraction of frames with an
    empty mask), ``stability_k`` (mean IoU of consecutive frames; two empty frames count as stable),
    ``face_cover_k`` (mean coverage of the face box over frames where it is on screen); ``overlap``: the
    largest, over character pairs, mean IoU between two characters' masks of a frame."""
    stats: dict[str, Any] = {}
    n_frames = len(rles[0]) if rles else 0
    for k, seq in enumerate(rles):
        h, w = seq[0]["size"]
        areas = rle_codec.area(seq) / float(h * w)
        stab = [rle_codec.iou(seq[f], seq[f + 1], empty=1.0) for f in range(len(seq) - 1)]
        cov = np.asarray(covers[k], np.float64)
        stats[f"area_{k}"] = round(float(areas.mean()), 6)
        stats[f"empty_{k}"] = round(float(np.mean(areas == 0)), 6)
        stats[f"stability_{k}"] = round(float(np.mean(stab)) if stab else 1.0, 6)
        stats[f"face_cover_{k}"] = round(float(np.nanmean(cov)), 6) if np.isfinite(cov).any() else 0.0
    pair = [float(np.mean([rle_codec.iou(rles[a][f], rles[b][f]) for f in range(n_frames)]))
            for a in range(len(rles)) for b in range(a + 1, len(rles))]
    stats["overlap"] = round(max(pair), 6) if pair else 0.0
    return stats


def route_windows(canvas: Callable[[int, int], np.ndarray], n_frames: int, geo: LatentGeometry) -> np.ndarray:
    """int8 ``[W, *geo.grid]``: for each window of ``geo.windows(n_frames)``, the letterboxed masks
    ``canvas(start, end)`` (``[C, end-start, geo.height, geo.width]``, 0/1) reduced by the trainer's
    recipe."""
    wins = geo.windows(n_frames)
    return np.stack([route_index_mask(canvas(s, e), geo) for s, e in wins]).astype(np.int8)


def masks_json(rles: list[list[dict[str, Any]]], track_ids: list[Any], size: tuple[int, int]) -> bytes:
    """``masks.rle.json``: ``{"size": [h, w], "fps": 25, "frames": T, "characters": [{"index", "track_id",
    "rle": [per frame {"size", "counts"}]}]}``, compact, keys sorted (byte-identical reruns)."""
    doc = {
        "size": [int(size[0]), int(size[1])],
        "fps": FPS,
        "frames": len(rles[0]) if rles else 0,
        "characters": [{"index": k, "track_id": tid, "rle": seq} for k, (tid, seq) in enumerate(zip(track_ids, rles))],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def ref_window(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the reference crop: a square of ``margin`` x the box's longer side around its
    centre, cut at the frame's edges (as the plain references are)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * margin / 2
    return (max(0, int(cx - half)), max(0, int(cy - half)), min(width, int(cx + half)), min(height, int(cy + half)))


def cutout(frame: np.ndarray, mask: np.ndarray, box: np.ndarray, margin: float,
           background: tuple[int, int, int]) -> np.ndarray:
    """The reference crop of ``frame`` (uint8 RGB at the mask's resolution) with every pixel outside
    ``mask`` set to ``background``."""
    h, w = mask.shape
    xa, ya, xb, yb = ref_window(box, margin, w, h)
    crop = frame[ya:yb, xa:xb].copy()
    crop[~mask[ya:yb, xa:xb].astype(bool)] = np.asarray(background, np.uint8)
    return crop


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
