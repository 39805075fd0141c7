"""A sample read from a shard, its training windows in the loader's geometry, and the training item one
window decodes to (see :mod:`mtcc.training.data` for the fields and the window rules)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtcc.media.geometry import LatentGeometry
from mtcc.media.members import AUDIO_EMB, CAPTION, MASKS, MP4, REFS, ROUTE

from .config import DataConfig
from .decode import decode_jpeg, decode_video, letterbox_square, npy_view, route_from_rle, window_frames


@dataclass
class Sample:
    key: str
    shard: str
    members: dict[str, bytes]
    meta: dict[str, Any] = field(default_factory=dict)
    n_frames: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    def audio(self) -> np.ndarray:
        if "audio" not in self.cache:
            self.cache["audio"] = npy_view(self.members[AUDIO_EMB])
        return self.cache["audio"]

    def rle(self) -> dict[str, Any]:
        if "rle" not in self.cache:
            self.cache["rle"] = json.loads(self.members[MASKS])
        return self.cache["rle"]


class SampleIncomplete(Exception):
    """An incomplete sample (a member the loader needs is missing): counted, not an error."""


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    npy_index: int | None  # row of route.npy usable as is, else recomputed from masks.rle.json


def shard_geometry(meta: dict[str, Any]) -> LatentGeometry | None:
    geo = (meta.get("masks") or {}).get("geometry")
    if not geo:
        return None
    try:
        return LatentGeometry(**geo)
    except (TypeError, ValueError):
        return None


def training_windows(sample: Sample, geo: LatentGeometry) -> list[Window]:
    """Every training window of a sample in the loader's geometry (the rules: :mod:`mtcc.training.data`)."""
    m = sample.members
    if shard_geometry(sample.meta) == geo and ROUTE in m and (sample.meta.get("masks") or {}).get("windows"):
        wins = [(int(a), int(b)) for a, b in sample.meta["masks"]["windows"]]
        rows = npy_view(m[ROUTE]).shape[0]
        if rows != len(wins):
            raise ValueError(f"route.npy has {rows} windows, meta masks.windows lists {len(wins)}")
        short_rle = MASKS in m
        return [Window(a, b, None if (b - a < geo.frames and short_rle) else i) for i, (a, b) in enumerate(wins)]
    if MASKS not in m:
        raise SampleIncomplete("masks.rle.json (the loader geometry differs from the shard's, so the routing mask is "
                    "recomputed from the masks)")
    return [Window(a, b, None) for a, b in geo.windows(sample.n_frames)]


def decode_item(sample: Sample, win: Window, cfg: DataConfig) -> dict[str, Any]:
    """One training item, video and refs still uint8 (the fields: :mod:`mtcc.training.data`)."""
    geo = cfg.geometry
    F, m = geo.frames, cfg.audio_margin
    idx = window_frames(win.start, win.end, F)
    video = decode_video(sample.members[MP4], idx, geo, cfg.decode_threads)
    audio = sample.audio()
    chars, T = int(audio.shape[0]), int(audio.shape[1])
    rows = np.clip(np.arange(win.start - m, win.start + F + m), 0, T - 1)
    emb = np.ascontiguousarray(audio[:, rows]).astype(np.float16, copy=False)
    if win.npy_index is not None:
        route = np.array(npy_view(sample.members[ROUTE])[win.npy_index], np.int8).reshape(-1)
    else:
        route = route_from_rle(sample.rle(), idx, geo)
    if route.size != geo.tokens:
        raise ValueError(f"routing mask has {route.size} tokens, geometry has {geo.tokens}")
    refs = np.stack([letterbox_square(decode_jpeg(sample.members[REFS[k]]), cfg.ref_size)
                     for k in range(chars)]).transpose(0, 3, 1, 2)
    a_ac = (sample.meta.get("sync") or {}).get("a_ac")
    known = a_ac is not None and np.shape(a_ac) == (chars, chars)
    a_ac = np.asarray(a_ac, np.float32) if known else np.eye(chars, dtype=np.float32)
    caption = sample.members.get(CAPTION, b"").decode("utf-8", "replace").strip()
    return {
        "key": sample.key,
        "shard": sample.shard,
        "window": torch.tensor([win.start, win.end], dtype=torch.int64),
        "valid_frames": torch.tensor(min(win.end - win.start, F), dtype=torch.int64),
        "video": torch.from_numpy(video),
        "audio_emb": torch.from_numpy(emb),
        "route": torch.from_numpy(np.array(route, dtype=np.int8)),
        "a_ac": torch.from_numpy(a_ac),
        "a_ac_known": torch.tensor(known),
        "ref": torch.from_numpy(np.ascontiguousarray(refs)),
        "caption": caption,
    }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in items[0].items():
        out[k] = torch.stack([it[k] for it in items]) if isinstance(v, torch.Tensor) else [it[k] for it in items]
    return out


def to_unit(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 0..255 -> ``dtype`` in [-1, 1]; floats pass through (cast)."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(127.5).sub_(1.0)
    return x.to(dtype)
