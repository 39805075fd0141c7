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

The stream that feeds it is :mod:`mtcc.training.stream`: how shards are read, shared among workers and
skipped when corrupt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import DataConfig
from .filters import check_columns, parse_filters
from .items import to_unit
from .shards import ShardRef, choose_split, resolve_shards
from .stream import STATS, ShardStream

log = logging.getLogger("mtcc.training")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _agreed(shards: list[ShardRef], world_size: int) -> list[ShardRef]:
    """Rank 0's shards on every rank, for a loader split over the ranks of an initialised process group. Each
    rank lists OUT itself, at slightly different moments: a shard committed in between (training while a build
    still writes) gave the ranks orders over different lists, so some shards were read twice in an epoch and
    others never. A loader of one rank alone (``world_size=1``, a validation loader on rank 0, say) lists for
    itself: the other ranks make no such loader to agree with. (With NCCL the list travels through the rank's
    current CUDA device, as every collective of a DDP script does.)"""
    dist = torch.distributed
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != world_size:
        return shards
    box: list[Any] = [shards]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
        self.shards = _agreed(self.shards, self.world_size)
        self.epoch = int(epoch)
        self.conditions = parse_filters(config.filters)
        if self.conditions:
            self._check_filters()
        self.selected = self._selection() if config.selection else None
        workers = max(1, config.num_workers)
        self.split = choose_split(config.split, len(self.shards), self.world_size * workers)
        if config.split == "auto" and self.split == "window" and not config.resampled:
            log.info("%d shard(s) for %d rank(s) x %d worker(s): splitting by window (every worker scans every "
                     "shard)", len(self.shards), self.world_size, workers)
        self._stats = torch.zeros(workers, len(STATS), dtype=torch.int64).share_memory_()
        self._epoch_t = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._dl: DataLoader | None = None

    def _check_filters(self) -> None:
        import pyarrow.parquet as pq

        from mtcc.storage.remote_io import open_read

        with_manifest = [s for s in self.shards if s.manifest is not None]
        if not with_manifest:
            raise ValueError("data.filters need manifests, and none of the shards is inside an MTCC output")
        with open_read(with_manifest[0].manifest) as f:
            check_columns(self.conditions, pq.read_schema(f))

    def _selection(self) -> dict[int, frozenset[str]]:
        """The selection's samples by shard; the loader's shards narrowed to the ones it names."""
        from mtcc.manifests.selections import SelectionError, load_selected, selection_url

        def out_of(ref: ShardRef) -> str | None:  # the MTCC output a shard is in (None: a bare tar)
            return ref.manifest.rsplit("/manifests/", 1)[0] if ref.manifest else None

        outs = sorted({o for o in map(out_of, self.shards) if o})
        name = self.cfg.selection
        if not name.endswith(".parquet") and len(outs) != 1:
            raise SelectionError(f"data.selection {name!r} names a selection of one MTCC output, and the shards "
                                 f"are in {len(outs)} ({', '.join(outs) or 'none'}): give the path of its .parquet")
        url = selection_url(outs[0] if outs else "", name)
        if len(outs) > 1:
            # a selection names shards of its own output by number: another output's shard of that number
            # holds other samples (or copies of these), so the other outputs' shards are not read
            own = url.rpartition("/selections/")[0]
            own = own if "://" in own else os.path.abspath(own) if own else ""
            if own not in outs:
                raise SelectionError(f"data.selection {name!r}: the shards are in {len(outs)} outputs "
                                     f"({', '.join(outs)}) and the selection is in none of them; give the "
                                     f"selection inside the output it was made of (OUT/selections/NAME.parquet)")
            self.shards = [s for s in self.shards if out_of(s) == own]
        keys = load_selected(url, self.cfg.selection_part)
        have = {s.shard_id for s in self.shards}
        gone = sorted(set(keys) - have)
        if gone:
            log.warning("selection %s names %d shard(s) the loader does not read (first %06d: not committed?)",
                        url, len(gone), gone[0])
        self.shards = [s for s in self.shards if s.shard_id in keys]
        if not self.shards:
            raise SelectionError(f"selection {url}, part {self.cfg.selection_part!r}: none of its shards is among "
                                 f"the loader's")
        return keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def stats(self) -> dict[str, int]:
        """Counters summed over this loader's workers, since it was made."""
        return dict(zip(STATS, self._stats.sum(0).tolist()))

    def dataset(self) -> ShardStream:
        return ShardStream(self.shards, self.cfg, rank=self.rank, world_size=self.world_size, epoch=self._epoch_t,
                           split=self.split, conditions=self.conditions, stats=self._stats, selected=self.selected)

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
