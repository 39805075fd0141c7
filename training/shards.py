"""Which shards a loader reads, and which (rank, worker) reads each.

Shards are named by MTCC output folders, tar paths or fsspec URLs, brace patterns or globs. A tar inside
an MTCC layout (``OUT/shards/mtcc-NNNNNN.tar``) has its manifest at ``OUT/manifests/NNNNNN.parquet`` and
is committed iff ``OUT/commits/NNNNNN.json`` exists; by default only committed shards are read (a build in
progress leaves uncommitted tars that may still change).

Splitting is deterministic: every epoch the shard list is permuted with a generator seeded by
(seed, epoch) and shard ``i`` of that order goes to global worker ``i mod (world_size x num_workers)``,
global worker = ``rank x num_workers + worker_id``. Every rank computes the same order without talking to
the others, so across all ranks and workers each shard is read exactly once per epoch.

With fewer shards than ranks x workers that would leave some idle (and a rank without data stalls DDP), so
``split: auto`` then splits by window: every worker scans every shard and keeps every
``total``-th training window of the epoch (still each window exactly once; the reading is repeated, which
only matters for large datasets, where there are enough shards anyway).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mtcc.storage.remote_io import RemoteIO

log = logging.getLogger("mtcc.training")

SHARD_RE = re.compile(r"^mtcc-(\d+)\.tar$")


@dataclass(frozen=True)
class ShardRef:
    url: str  # what fsspec opens: a local path or a URL
    name: str  # file name, e.g. mtcc-000012.tar
    shard_id: int | None  # NNNNNN of an MTCC layout, else None
    manifest: str | None  # OUT/manifests/NNNNNN.parquet in an MTCC layout, else None


def _fs(spec: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    return fs, path


def _url(fs, path: str) -> str:
    """A string fsspec opens to the same file: plain paths stay plain (readable in error messages)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _visible(path: str) -> bool:
    # leading '.' or '_' marks temporaries (a commit in progress): readers never see them
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith((".", "_"))


def _expand(spec: str) -> list[str]:
    if "{" in spec and ".." in spec:
        from braceexpand import braceexpand

        return list(braceexpand(spec))
    return [spec]


def _tars_of(spec: str, rio: RemoteIO) -> list[tuple[object, str]]:
    fs, path = _fs(spec)

    def call(fn, arg: str):  # listings of a store ride out its throttling like every other remote read
        return rio.call("read", f"{fn.__name__} {arg}", fn, arg)

    if any(ch in path for ch in "*?["):
        return [(fs, p) for p in sorted(call(fs.glob, path)) if p.endswith(".tar") and _visible(p)]
    if call(fs.isdir, path):
        shards = path.rstrip("/") + "/shards"
        where = shards if call(fs.isdir, shards) else path
        return [(fs, p) for p in sorted(call(fs.glob, where.rstrip("/") + "/*.tar")) if _visible(p)]
    if not call(fs.exists, path):
        raise FileNotFoundError(f"shard source {spec!r} does not exist")
    return [(fs, path)]


def resolve_shards(specs: Iterable[str], committed_only: bool = True) -> list[ShardRef]:
    """Every tar the specs name, deduplicated, sorted by URL; uncommitted ones dropped (with a warning)
    when ``committed_only``."""
    specs = [str(s) for s in specs]
    if not specs:
        raise ValueError("no shards given: set data.shards (or pass --shards): an MTCC output folder, tar paths "
                         "or URLs, or a brace pattern such as out/shards/mtcc-{000000..000009}.tar")
    found: dict[str, ShardRef] = {}
    rio = RemoteIO()
    commits_cache: dict[str, set[str] | None] = {}
    uncommitted: list[str] = []
    for spec in specs:
        for one in _expand(spec):
            for fs, path in _tars_of(one, rio):
                url = _url(fs, path)
                if url in found:
                    continue
                parent, _, name = path.rpartition("/")
                m = SHARD_RE.match(name)
                in_layout = m is not None and parent.rsplit("/", 1)[-1] == "shards"
                shard_id = int(m.group(1)) if m else None
                manifest = None
                if in_layout:
                    root = parent.rsplit("/", 1)[0]
                    manifest = _url(fs, f"{root}/manifests/{shard_id:06d}.parquet")
                    if committed_only:
                        if root not in commits_cache:
                            cdir = f"{root}/commits"
                            listed = rio.call("read", f"listing {cdir}", lambda d=cdir: fs.ls(d, detail=False)
                                              if fs.isdir(d) else [])
                            commits_cache[root] = {p.rsplit("/", 1)[-1] for p in listed}
                        if f"{shard_id:06d}.json" not in commits_cache[root]:
                            uncommitted.append(url)
                            continue
                elif committed_only:
                    raise ValueError(f"{url}: not inside an MTCC output (OUT/shards/mtcc-NNNNNN.tar), so whether it "
                                     f"is committed cannot be checked; set data.committed_only=false to read it")
                found[url] = ShardRef(url=url, name=name, shard_id=shard_id, manifest=manifest)
    if uncommitted:
        shown = ", ".join(uncommitted[:5]) + (" ..." if len(uncommitted) > 5 else "")
        log.warning("skipping %d uncommitted shard(s) (no commits/<shard>.json; a build may still be writing "
                    "them): %s", len(uncommitted), shown)
    if not found:
        raise ValueError(f"no committed shards found in {specs}" if uncommitted else f"no shards found in {specs}")
    return sorted(found.values(), key=lambda s: s.url)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard indices in this epoch's order; the same on every rank and worker."""
    if not shuffle:
        return list(range(n))
    return np.random.default_rng([seed, epoch, 0x5A4D]).permutation(n).tolist()


def assigned(order: list[int], gid: int, total: int) -> list[int]:
    """The shards of global worker ``gid`` of ``total``: every ``total``-th of the epoch's order."""
    return order[gid::total]


def choose_split(split: str, n_shards: int, total_workers: int) -> str:
    if split != "auto":
        return split
    return "shard" if n_shards >= total_workers else "window"
