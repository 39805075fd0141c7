"""The training loader: MTCC shards -> batches in Bind-Your-Avatar's geometry.

    for batch in mtcc.training.loader("out/", batch_size=2, geometry={"frames": 49, "height": 480, "width": 720}):
        batch["video"]      # float32 [B, 3, F, H, W] in [-1, 1], letterboxed on black (F = geometry.frames)
        batch["audio_emb"]  # float16 [B, 2, F + 2m, 12, 768]: wav2vec rows start-m .. end+m (m = audio_margin, 2)
        batch["route"]      # int8    [B, T'*H'*W']: -1 background, 0/1 character, flattened (t, h, w)
        batch["a_ac"]       # float32 [B, 2, 2] audio-character matrix (row: audio track, column: character)
        batch["ref"]        # float32 [B, 2, 3, S, S] reference images in [-1, 1], letterboxed (S = ref_size)
        batch["caption"]    # list[str]

A training item is one route window of a sample: ``[start, end)`` frames of the clip. Samples are expanded
into their windows (``windows: all``) or one random window per sample and epoch (``windows: random``).
When the loader's geometry equals the one the shards were built with (meta ``masks.geometry``), windows and
routing masks come from the sample (``meta masks.windows``, ``route.npy``); otherwise the windows are
``geometry.windows(frames)`` and each routing mask is recomputed from ``masks.rle.json`` with the same
recipe the masks stage uses (``letterbox_mask`` + ``route_index_mask``), so small-geometry CPU training
reads the same shards.

A window shorter than ``geometry.frames`` (a clip shorter than that) is padded by repeating its last
frame (its masks and audio rows likewise; ``valid_frames`` gives the real count) or skipped
(``short_windows: skip``); either is counted in :meth:`Loader.stats`.

``a_ac`` comes from the sample's sync meta (``meta.sync.a_ac``); a sample without it gets the identity and
``a_ac_known = False`` so a trainer can tell a measured binding from a default.

Reading: each (rank, DataLoader worker) streams its shards (see :mod:`mtcc.training.shards`) with
:func:`mtcc.manifests.shard_tar.read_samples` over fsspec; tar members a trainer does not need (FLACs,
faces.json) are skipped unread, and so is every member of a sample the split or the manifest filters
exclude. Undecoded items pass through a shuffle buffer; only then is a window decoded: its frames alone,
by decord, at the letterboxed size. Workers return video and refs as uint8 (4x less inter-process traffic); the conversion to
``video_dtype`` happens in the consuming process. Workers start from a forkserver by default (never a fork
of a trainer that runs Ray, CUDA or thread pools: such forks can deadlock) and persist across epochs.
A corrupt shard (unreadable tar, truncated tar, unreadable manifest) is skipped from the point of the error
(samples read before it are kept) with a warning naming it; a sample that fails to decode is skipped with a
warning; both are counted in :meth:`Loader.stats`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mtcc.manifests.members import members_except
from mtcc.manifests.shard_tar import read_samples
from mtcc.stages.geometry import LatentGeometry, letterbox_mask, route_index_mask

from .config import DataConfig
from .filters import Condition, check_columns, parse_filters, passing_keys
from .shards import ShardRef, assigned, choose_split, epoch_order, resolve_shards

log = logging.getLogger("mtcc.training")

# members a training item is built from; the rest of a sample is skipped in the tar without being read
NEEDED = frozenset(members_except("mix.flac", "spk0.flac", "spk1.flac", "faces.json"))
STATS = ("shards_read", "shards_failed", "samples_read", "samples_filtered", "samples_incomplete", "samples_failed",
         "windows", "windows_padded", "windows_skipped_short", "batches")
_S = {name: i for i, name in enumerate(STATS)}


def _shard_errors() -> tuple[type[BaseException], ...]:
    return (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


def _decode_errors() -> tuple[type[BaseException], ...]:
    import cv2
    import decord

    return (ValueError, KeyError, IndexError, TypeError, RuntimeError, OSError, cv2.error, decord.DECORDError)


# -- small decoders --------------------------------------------------------------------------------------------
def npy_view(data: bytes) -> np.ndarray:
    """The array of ``np.save`` bytes as a read-only view into them (nothing decoded or copied)."""
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are not loaded")
    count = int(np.prod(shape)) if shape else 1
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def mp4_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first video track, from its ``tkhd`` box (no decoding); None if not found."""
    def boxes(lo: int, hi: int) -> Iterator[tuple[bytes, int, int]]:
        while lo + 8 <= hi:
            size, kind = struct.unpack(">I4s", data[lo:lo + 8])
            head = 8
            if size == 1:
                size, head = struct.unpack(">Q", data[lo + 8:lo + 16])[0], 16
            elif size == 0:
                size = hi - lo
            if size < head or lo + size > hi:
                return
            yield kind, lo + head, lo + size
            lo += size

    for kind, a, b in boxes(0, len(data)):
        if kind != b"moov":
            continue
        for k2, a2, b2 in boxes(a, b):
            if k2 != b"trak":
                continue
            for k3, a3, b3 in boxes(a2, b2):
                if k3 != b"tkhd":
                    continue
                body = data[a3:b3]
                off = 88 if body[:1] == b"\x01" else 76  # width, height follow the matrix; v1 has 64-bit times
                if len(body) < off + 8:
                    continue
                w, h = struct.unpack(">II", body[off:off + 8])
                if w >> 16 and h >> 16:
                    return w >> 16, h >> 16
    return None


def letterbox_square(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` resized to fit ``size`` x ``size`` with its aspect kept, centred on black."""
    import cv2

    h, w = img.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, min(size, round(w * s))), max(1, min(size, round(h * s)))
    out = np.zeros((size, size, 3), np.uint8)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable JPEG")
    return img[:, :, ::-1]


def window_frames(start: int, end: int, frames: int) -> list[int]:
    """Clip frame of each of the ``frames`` positions of a window; past its end the last frame repeats."""
    return [min(start + i, end - 1) for i in range(frames)]


def decode_video(data: bytes, idx: Sequence[int], geo: LatentGeometry, threads: int = 1) -> np.ndarray:
    """uint8 ``[3, F, geo.height, geo.width]``: clip frames ``idx`` decoded once at the letterboxed size
    (decord resizes inside the decoder) and placed on the black canvas."""
    import decord

    size = mp4_size(data)
    if size is None:  # no usable tkhd: learn the size from one decoded frame
        size = tuple(decord.VideoReader(io.BytesIO(data), num_threads=threads)[0].shape[1::-1])
    w, h, x0, y0 = geo.letterbox(*size)
    vr = decord.VideoReader(io.BytesIO(data), width=w, height=h, num_threads=threads)
    n = len(vr)
    idx = [min(i, n - 1) for i in idx]
    uniq = sorted(set(idx))
    frames = vr.get_batch(uniq).asnumpy()
    if len(uniq) == len(idx) and uniq == list(idx):
        sel = frames
    else:
        pos = {f: i for i, f in enumerate(uniq)}
        sel = frames[[pos[f] for f in idx]]
    out = np.zeros((3, len(idx), geo.height, geo.width), np.uint8)
    out[:, :, y0:y0 + h, x0:x0 + w] = sel.transpose(3, 0, 1, 2)
    return out


def route_from_rle(doc: dict[str, Any], idx: Sequence[int], geo: LatentGeometry) -> np.ndarray:
    """int8 flattened routing mask of clip frames ``idx`` from ``masks.rle.json``, by the masks stage's
    recipe: each character's mask letterboxed onto the canvas, trilinear to the grid, > threshold."""
    from mtcc.stages import rle as rle_codec

    chars = sorted(doc["characters"], key=lambda c: int(c["index"]))
    canvas = np.zeros((len(chars), len(idx), geo.height, geo.width), np.uint8)
    for k, c in enumerate(chars):
        seq = c["rle"]
        done: dict[int, np.ndarray] = {}
        for j, f in enumerate(idx):
            f = min(f, len(seq) - 1)
            if f not in done:
                done[f] = letterbox_mask(rle_codec.decode(seq[f]), geo)
            canvas[k, j] = done[f]
    return route_index_mask(canvas, geo).reshape(-1)


# -- samples and windows ---------------------------------------------------------------------------------------
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
            self.cache["audio"] = npy_view(self.members["audio_emb.npy"])
        return self.cache["audio"]

    def rle(self) -> dict[str, Any]:
        if "rle" not in self.cache:
            self.cache["rle"] = json.loads(self.members["masks.rle.json"])
        return self.cache["rle"]


class _Skip(Exception):
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


def plan_windows(sample: Sample, geo: LatentGeometry) -> list[Window]:
    """Every training window of a sample in the loader's geometry (see the module doc)."""
    m = sample.members
    if shard_geometry(sample.meta) == geo and "route.npy" in m and (sample.meta.get("masks") or {}).get("windows"):
        wins = [(int(a), int(b)) for a, b in sample.meta["masks"]["windows"]]
        rows = npy_view(m["route.npy"]).shape[0]
        if rows != len(wins):
            raise ValueError(f"route.npy has {rows} windows, meta masks.windows lists {len(wins)}")
        short_rle = "masks.rle.json" in m
        return [Window(a, b, None if (b - a < geo.frames and short_rle) else i) for i, (a, b) in enumerate(wins)]
    if "masks.rle.json" not in m:
        raise _Skip("masks.rle.json (the loader geometry differs from the shard's, so the routing mask is "
                    "recomputed from the masks)")
    return [Window(a, b, None) for a, b in geo.windows(sample.n_frames)]


# -- the per-worker stream -------------------------------------------------------------------------------------
class ShardStream(IterableDataset):
    """One epoch (or an endless stream) of batches for one rank; a DataLoader runs it in its workers."""

    def __init__(self, shards: list[ShardRef], cfg: DataConfig, *, rank: int, world_size: int, epoch: torch.Tensor,
                 split: str, conditions: list[Condition], stats: torch.Tensor):
        self.shards, self.cfg, self.rank, self.world_size = shards, cfg, rank, world_size
        self.epoch_t, self.split, self.conditions, self.stats = epoch, split, conditions, stats
        self.epoch = int(epoch[0])
        self.geo = cfg.geometry

    # worker identity and counters
    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[self._row, _S[name]] += n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch = int(self.epoch_t[0])  # set by the consumer before each pass (workers persist)
        wid, nw = self._worker()
        self._row = wid
        gid, total = self.rank * nw + wid, self.world_size * nw
        rng = np.random.default_rng([self.cfg.seed, self.epoch, self.rank, wid, 0xC0FFEE])
        items = self._resampled(rng) if self.cfg.resampled else self._epoch_items(gid, total)
        batch: list[dict[str, Any]] = []
        for item in self._decoded(self._shuffled(items, rng)):
            batch.append(item)
            if len(batch) == self.cfg.batch_size:
                self._count("batches")
                yield collate(batch)
                batch = []
        if batch and not self.cfg.drop_last:
            self._count("batches")
            yield collate(batch)

    # shards -> samples -> windows
    def _epoch_items(self, gid: int, total: int) -> Iterator[tuple[Sample, Window]]:
        order = epoch_order(len(self.shards), self.cfg.seed, self.epoch, self.cfg.shuffle_shards)
        if self.split == "shard":
            for i in assigned(order, gid, total):
                yield from self._shard_items(self.shards[i])
        else:  # every worker scans every shard and keeps every total-th window of the epoch
            j = 0
            for i in order:
                for item in self._shard_items(self.shards[i]):
                    if j % total == gid:
                        yield item
                    j += 1

    def _resampled(self, rng: np.random.Generator) -> Iterator[tuple[Sample, Window]]:
        bad: set[int] = set()
        dry = 0
        while len(bad) < len(self.shards):
            i = int(rng.integers(len(self.shards)))
            if i in bad:
                continue
            got = False
            for item in self._shard_items(self.shards[i], failed=bad, index=i):
                got = True
                yield item
            dry = 0 if got else dry + 1
            if dry > max(16, 4 * len(self.shards)):
                raise RuntimeError(f"resampled loader: {dry} shard draws in a row gave no item; do any samples "
                                   f"pass the filters {[str(c) for c in self.conditions]}?")
        raise RuntimeError("resampled loader: every shard failed to read (see the warnings above)")

    def _shard_items(self, ref: ShardRef, failed: set[int] | None = None,
                     index: int | None = None) -> Iterator[tuple[Sample, Window]]:
        n = 0
        try:
            allowed = self._allowed(ref)
            for sample in self._read(ref, allowed):
                for win in self._windows(sample):
                    n += 1
                    yield sample, win
            self._count("shards_read")
        except _shard_errors() as e:
            self._count("shards_failed")
            if failed is not None and index is not None:
                failed.add(index)
            log.warning("skipping corrupt shard %s after %d item(s): %s: %s", ref.url, n, type(e).__name__, e)

    def _allowed(self, ref: ShardRef) -> set[str] | None:
        if not self.conditions:
            return None
        if ref.manifest is None:
            raise ValueError("filters need the shard's manifest, and this tar is not inside an MTCC output")
        import fsspec
        import pyarrow.parquet as pq

        cols = sorted({"key", "status", *(c.column for c in self.conditions)})
        with fsspec.open(ref.manifest, "rb") as f:
            table = pq.read_table(f, columns=cols)
        return passing_keys(table, self.conditions)

    def _read(self, ref: ShardRef, allowed: set[str] | None) -> Iterator[Sample]:
        import fsspec

        def finish(key: str, members: dict[str, bytes]) -> Sample | None:
            try:
                return self._sample(key, ref, members)
            except _Skip as e:
                self._count("samples_incomplete")
                log.warning("shard %s: sample %s lacks %s; skipped", ref.url, key, e)
            except _decode_errors() as e:
                self._count("samples_failed")
                log.warning("shard %s: sample %s unreadable (%s: %s); skipped", ref.url, key, type(e).__name__, e)
            return None

        def select(key: str) -> frozenset[str]:
            return NEEDED if allowed is None or key in allowed else frozenset()

        with fsspec.open(ref.url, "rb") as f:
            for key, members in read_samples(f, select=select, where=ref.url):
                if allowed is not None and key not in allowed:
                    self._count("samples_filtered")
                elif (s := finish(key, members)) is not None:
                    yield s

    def _sample(self, key: str, ref: ShardRef, members: dict[str, bytes]) -> Sample:
        need = [m for m in ("json", "mp4", "audio_emb.npy", "ref0.jpg", "ref1.jpg") if m not in members]
        if "route.npy" not in members and "masks.rle.json" not in members:
            need.append("route.npy/masks.rle.json")
        if need:
            raise _Skip(", ".join(need))
        meta = json.loads(members["json"])
        s = Sample(key, ref.url, members, meta)
        audio = s.audio()
        if audio.ndim != 4:
            raise ValueError(f"audio_emb.npy has shape {audio.shape}, expected [characters, T, layers, dim]")
        s.n_frames = int(audio.shape[1])
        self._count("samples_read")
        return s

    def _windows(self, sample: Sample) -> list[Window]:
        try:
            wins = plan_windows(sample, self.geo)
        except _Skip as e:
            self._count("samples_incomplete")
            log.warning("shard %s: sample %s lacks %s; skipped", sample.shard, sample.key, e)
            return []
        except _decode_errors() as e:
            self._count("samples_failed")
            log.warning("shard %s: sample %s: no training windows (%s: %s); skipped", sample.shard, sample.key,
                        type(e).__name__, e)
            return []
        if self.cfg.short_windows == "skip":
            short = [w for w in wins if w.end - w.start < self.geo.frames]
            if short:
                self._count("windows_skipped_short", len(short))
                wins = [w for w in wins if w.end - w.start >= self.geo.frames]
        if self.cfg.windows == "random" and wins:
            pick = np.random.default_rng([self.cfg.seed, self.epoch, zlib.crc32(sample.key.encode())])
            wins = [wins[int(pick.integers(len(wins)))]]
        return wins

    # shuffle, then decode
    def _shuffled(self, items: Iterator[tuple[Sample, Window]], rng: np.random.Generator):
        size = self.cfg.shuffle_buffer
        if size <= 1:
            yield from items
            return
        buf: list[tuple[Sample, Window]] = []
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            j = int(rng.integers(size))
            buf[j], item = item, buf[j]
            yield item
        rng.shuffle(buf)
        yield from buf

    def _decoded(self, items) -> Iterator[dict[str, Any]]:
        errors = _decode_errors()
        for sample, win in items:
            try:
                item = decode_item(sample, win, self.cfg)
            except errors as e:
                self._count("samples_failed")
                log.warning("shard %s: sample %s window [%d, %d) failed to decode (%s: %s); skipped", sample.shard,
                            sample.key, win.start, win.end, type(e).__name__, e)
                continue
            self._count("windows")
            if int(item["valid_frames"]) < self.geo.frames:
                self._count("windows_padded")
            yield item


def decode_item(sample: Sample, win: Window, cfg: DataConfig) -> dict[str, Any]:
    """One training item, video and refs still uint8 (see the module doc for the fields)."""
    geo = cfg.geometry
    F, m = geo.frames, cfg.audio_margin
    idx = window_frames(win.start, win.end, F)
    video = decode_video(sample.members["mp4"], idx, geo, cfg.decode_threads)
    audio = sample.audio()
    chars, T = int(audio.shape[0]), int(audio.shape[1])
    rows = np.clip(np.arange(win.start - m, win.start + F + m), 0, T - 1)
    emb = np.ascontiguousarray(audio[:, rows]).astype(np.float16, copy=False)
    if win.npy_index is not None:
        route = np.array(npy_view(sample.members["route.npy"])[win.npy_index], np.int8).reshape(-1)
    else:
        route = route_from_rle(sample.rle(), idx, geo)
    if route.size != geo.tokens:
        raise ValueError(f"routing mask has {route.size} tokens, geometry has {geo.tokens}")
    refs = np.stack([letterbox_square(decode_jpeg(sample.members[f"ref{k}.jpg"]), cfg.ref_size)
                     for k in range(chars)]).transpose(0, 3, 1, 2)
    a_ac = (sample.meta.get("sync") or {}).get("a_ac")
    known = a_ac is not None and np.shape(a_ac) == (chars, chars)
    a_ac = np.asarray(a_ac, np.float32) if known else np.eye(chars, dtype=np.float32)
    caption = sample.members.get("caption.txt", b"").decode("utf-8", "replace").strip()
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


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_unit(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 0..255 -> ``dtype`` in [-1, 1]; floats pass through (cast)."""
    if x.dtype == torch.uint8:
        return x.to(dtype).div_(127.5).sub_(1.0)
    return x.to(dtype)


# -- the public loader -----------------------------------------------------------------------------------------
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class Loader:
    """Iterable over batches; one pass = one epoch (the next pass is the next epoch, or call
    :meth:`set_epoch`). In resampled mode one pass never ends."""

    def __init__(self, shards: Sequence[str] | str | None, config: DataConfig, *, rank: int | None = None,
                 world_size: int | None = None, epoch: int = 0):
        self.cfg = config
        specs = [shards] if isinstance(shards, str) else list(shards or config.shards)
        self.shards = resolve_shards(specs, config.committed_only)
        r, w = _dist()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.epoch = int(epoch)
        self.conditions = parse_filters(config.filters)
        if self.conditions:
            self._check_filters()
        workers = max(1, config.num_workers)
        self.split = choose_split(config.split, len(self.shards), self.world_size * workers)
        if config.split == "auto" and self.split == "window" and not config.resampled:
            log.info("%d shard(s) for %d rank(s) x %d worker(s): splitting by window (every worker scans every "
                     "shard)", len(self.shards), self.world_size, workers)
        self._stats = torch.zeros(workers, len(STATS), dtype=torch.int64).share_memory_()
        self._epoch_t = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._dl: DataLoader | None = None

    def _check_filters(self) -> None:
        import fsspec
        import pyarrow.parquet as pq

        with_manifest = [s for s in self.shards if s.manifest is not None]
        if not with_manifest:
            raise ValueError("data.filters need manifests, and none of the shards is inside an MTCC output")
        with fsspec.open(with_manifest[0].manifest, "rb") as f:
            check_columns(self.conditions, pq.read_schema(f))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def stats(self) -> dict[str, int]:
        """Counters summed over this loader's workers, since it was made."""
        return dict(zip(STATS, self._stats.sum(0).tolist()))

    def dataset(self) -> ShardStream:
        return ShardStream(self.shards, self.cfg, rank=self.rank, world_size=self.world_size, epoch=self._epoch_t,
                           split=self.split, conditions=self.conditions, stats=self._stats)

    def _finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.cfg.video_dtype != "uint8":
            dtype = _DTYPES[self.cfg.video_dtype]
            batch["video"] = to_unit(batch["video"], dtype)
            batch["ref"] = to_unit(batch["ref"], dtype)
        return batch

    def _dataloader(self) -> DataLoader:
        """One DataLoader for the loader's life: its workers persist across epochs (each new pass
        re-iterates the dataset in them, reading the epoch from shared memory)."""
        if self._dl is None:
            import multiprocessing

            ctx = multiprocessing.get_context(self.cfg.worker_start)
            if self.cfg.worker_start == "forkserver":
                # the server imports the loader once; every worker forks from that clean process
                ctx.set_forkserver_preload(["mtcc.training.data"])
            self._dl = DataLoader(self.dataset(), batch_size=None, num_workers=self.cfg.num_workers,
                                  prefetch_factor=self.cfg.prefetch_factor, pin_memory=self.cfg.pin_memory,
                                  persistent_workers=True, multiprocessing_context=ctx)
        return self._dl

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._epoch_t[0] = self.epoch
        it: Any = iter(self.dataset()) if self.cfg.num_workers == 0 else iter(self._dataloader())
        for batch in it:
            yield self._finish(batch)
        if not self.cfg.resampled:
            self.epoch += 1


def loader(shards: Sequence[str] | str | None = None, config: DataConfig | dict[str, Any] | None = None, *,
           rank: int | None = None, world_size: int | None = None, epoch: int = 0, **options: Any) -> Loader:
    """Batches from MTCC shards, for your own training loop.

    ``shards``: an MTCC output folder, tar paths or fsspec URLs, brace patterns or globs (default:
    ``config.shards``). ``config``: a :class:`DataConfig` or dict; ``options`` override its fields, e.g.
    ``loader("out/", batch_size=4, geometry={"frames": 17, "height": 128, "width": 192},
    filters=["sync.sync_c_mean >= 4"], num_workers=4)``. ``rank``/``world_size`` default to the initialised
    process group (or RANK/WORLD_SIZE, or a single process)."""
    base = config.model_dump() if isinstance(config, DataConfig) else dict(config or {})
    base.update(options)
    return Loader(shards, DataConfig.model_validate(base), rank=rank, world_size=world_size, epoch=epoch)
