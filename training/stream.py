"""The per-worker stream of training batches: shards -> samples -> windows -> shuffle -> decode.

Each (rank, DataLoader worker) streams its shards (see :mod:`mtcc.training.shards`) with
:func:`mtcc.manifests.shard_tar.read_samples` over fsspec; tar members a trainer does not need (FLACs,
faces.json) are skipped unread, and so is every member of a sample the split or the manifest filters
exclude. Undecoded items pass through a shuffle buffer; only then is a window decoded: its frames alone,
by decord, at the letterboxed size. Workers return video and refs as uint8 (4x less inter-process
traffic); the conversion to ``video_dtype`` happens in the consuming process. Workers start from a forkserver by default (never a fork
of a trainer that runs Ray, CUDA or thread pools: such forks can deadlock) and persist across epochs.
A corrupt shard (unreadable tar, truncated tar, unreadable manifest) is skipped from the point of the error
(samples read before it are kept) with a warning naming it; a sample that fails to decode is skipped with a
warning; both are counted in :meth:`mtcc.training.data.Loader.stats`.
"""

from __future__ import annotations

import json
import logging
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mtcc.manifests.members import members_except
from mtcc.manifests.shard_tar import read_samples
from mtcc.media.members import AUDIO_EMB, FACES, MASKS, META, MIX, MP4, REFS, ROUTE, TRACKS
from mtcc.storage.remote_io import open_read

from .config import DataConfig
from .filters import Condition, FilterError, check_columns, passing_keys
from .items import Sample, SampleIncomplete, Window, collate, decode_item, training_windows
from .shards import ShardRef, assigned, epoch_order

log = logging.getLogger("mtcc.training")

# members a training item is built from; the rest of a sample is skipped in the tar without being read
NEEDED = frozenset(members_except(MIX, TRACKS[0], TRACKS[1], FACES))
STATS = ("shards_read", "shards_failed", "samples_read", "samples_filtered", "samples_incomplete", "samples_failed",
         "windows", "windows_padded", "windows_skipped_short", "batches")
_S = {name: i for i, name in enumerate(STATS)}


def _shard_errors() -> tuple[type[BaseException], ...]:
    return (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


def _decode_errors() -> tuple[type[BaseException], ...]:
    import cv2
    import decord

    return (ValueError, KeyError, IndexError, TypeError, RuntimeError, OSError, cv2.error, decord.DECORDError)


class ShardStream(IterableDataset):
    """One epoch (or an endless stream) of batches for one rank; a DataLoader runs it in its workers."""

    def __init__(self, shards: list[ShardRef], cfg: DataConfig, *, rank: int, world_size: int, epoch: torch.Tensor,
                 split: str, conditions: list[Condition], stats: torch.Tensor,
                 selected: dict[int, frozenset[str]] | None = None):
        self.shards, self.cfg, self.rank, self.world_size = shards, cfg, rank, world_size
        self.selected = selected
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
        else:
            # every worker scans every shard and keeps every total-th window, counted within the shard from the
            # shard's place in the epoch: a worker whose read of a shard stops early (a flaky store) loses its
            # own windows of that shard only, where a count run over the epoch would shift its picks onto the
            # other workers' windows for the rest of the epoch
            for p, i in enumerate(order):
                for k, item in enumerate(self._shard_items(self.shards[i])):
                    if (p + k) % total == gid:
                        yield item

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
        except FilterError:
            raise  # the filters do not fit this shard's manifest: the user's to fix, not a corrupt shard to skip
        except _shard_errors() as e:
            self._count("shards_failed")
            if failed is not None and index is not None:
                failed.add(index)
            log.warning("skipping corrupt shard %s after %d item(s): %s: %s", ref.url, n, type(e).__name__, e)

    def _allowed(self, ref: ShardRef) -> set[str] | None:
        chosen = None if self.selected is None else set(self.selected.get(ref.shard_id, ()))
        if not self.conditions:
            return chosen
        if ref.manifest is None:
            raise ValueError("filters need the shard's manifest, and this tar is not inside an MTCC output")
        import pyarrow.parquet as pq

        cols = sorted({"key", "status", *(c.column for c in self.conditions)})
        with open_read(ref.manifest) as f:
            manifest = pq.ParquetFile(f)
            try:  # the loader checked one manifest: a shard of another output may lack the column
                check_columns(self.conditions, manifest.schema_arrow)
            except FilterError as e:
                raise FilterError(f"{ref.manifest}: {e}") from None
            table = manifest.read(columns=cols)
        passing = passing_keys(table, self.conditions)
        return passing if chosen is None else passing & chosen

    def _read(self, ref: ShardRef, allowed: set[str] | None) -> Iterator[Sample]:
        def finish(key: str, members: dict[str, bytes]) -> Sample | None:
            try:
                return self._sample(key, ref, members)
            except SampleIncomplete as e:
                self._count("samples_incomplete")
                log.warning("shard %s: sample %s lacks %s; skipped", ref.url, key, e)
            except _decode_errors() as e:
                self._count("samples_failed")
                log.warning("shard %s: sample %s unreadable (%s: %s); skipped", ref.url, key, type(e).__name__, e)
            return None

        def select(key: str) -> frozenset[str]:
            return NEEDED if allowed is None or key in allowed else frozenset()

        with open_read(ref.url) as f:  # a shard at a URL: ranged reads, each retried on its own
            for key, members in read_samples(f, select=select, where=ref.url):
                if allowed is not None and key not in allowed:
                    self._count("samples_filtered")
                elif (s := finish(key, members)) is not None:
                    yield s

    def _sample(self, key: str, ref: ShardRef, members: dict[str, bytes]) -> Sample:
        need = [m for m in (META, MP4, AUDIO_EMB, REFS[0], REFS[1]) if m not in members]
        if ROUTE not in members and MASKS not in members:
            need.append("route.npy/masks.rle.json")
        if need:
            raise SampleIncomplete(", ".join(need))
        meta = json.loads(members[META])
        s = Sample(key, ref.url, members, meta)
        audio = s.audio()
        if audio.ndim != 4:
            raise ValueError(f"audio_emb.npy has shape {audio.shape}, expected [characters, T, layers, dim]")
        s.n_frames = int(audio.shape[1])
        self._count("samples_read")
        return s

    def _windows(self, sample: Sample) -> list[Window]:
        try:
            wins = training_windows(sample, self.geo)
        except SampleIncomplete as e:
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
