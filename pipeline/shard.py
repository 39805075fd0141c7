"""ShardCommit: write one shard's tar and manifest atomically, then its commit file, last.

A shard is done iff ``commits/NNNNNN.json`` exists and the sha256 of the tar and the manifest it
records match the files. Partial files carry a leading '.' (WebDataset and Parquet readers ignore
them) and are renamed into place only after fsync.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mtcc.manifests import status_counts, to_table
from mtcc.manifests.paths import OutPaths
from mtcc.manifests.shard_tar import read_samples
from mtcc.stages.base import Candidate, Stage
from mtcc.storage.files import fsync_dir, fsync_file
from mtcc.storage.hashing import sha256_file, sha256_stream
from mtcc.storage.remote_io import RemoteIO

from .sample_tar import write_tar

COMMIT_VERSION = 1


def _publish(tmp: Path, final: Path) -> None:
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def commit_shard(layout: OutPaths, shard: int, cands: list[Candidate], stages: Sequence[Stage],
                 run_info: dict[str, Any]) -> dict[str, Any]:
    tar_path, man_path, com_path = layout.tar(shard), layout.manifest(shard), layout.commit(shard)
    kept = [c for c in cands if c.status == "kept"]
    for c in cands:
        c.members = c.members if c.status == "kept" else {}
    tmp_tar = layout.temp(tar_path)
    n = write_tar(tmp_tar, kept, run_info, stages)
    table = to_table(cands, stages)
    tmp_man = layout.temp(man_path)
    pq.write_table(table, tmp_man, compression="zstd")
    _publish(tmp_tar, tar_path)
    _publish(tmp_man, man_path)
    commit = {
        "commit_version": COMMIT_VERSION,
        "shard": shard,
        "samples": n,
        "candidates": table.num_rows,
        "counts": status_counts(table),
        "tar": {"name": tar_path.name, "sha256": sha256_file(tar_path), "bytes": tar_path.stat().st_size},
        "manifest": {"name": man_path.name, "sha256": sha256_file(man_path), "bytes": man_path.stat().st_size},
        **run_info,
    }
    tmp_com = layout.temp(com_path)
    tmp_com.write_text(json.dumps(commit, indent=2, sort_keys=True) + "\n")
    _publish(tmp_com, com_path)
    return commit


def check_shard(layout: OutPaths, shard: int, config_hash: str | None = None, deep: bool = False) -> str | None:
    """None if the shard is committed and intact; otherwise what is wrong with it."""
    from fsspec.implementations.local import LocalFileSystem

    return check_shard_at(LocalFileSystem(), layout, shard, config_hash, deep, show=str)


def check_shard_at(fs: Any, layout: OutPaths, shard: int, config_hash: str | None = None, deep: bool = False,
                   show: Callable[[str], str] = str, rio: RemoteIO | None = None) -> str | None:
    """check_shard on any fsspec filesystem (``layout.root`` a path of ``fs``); ``show`` turns a path into
    what a message names (a URL for a remote OUT); ``rio``: the retry policy of a remote store's reads."""
    if rio is None:
        exists, cat, open_ = fs.exists, fs.cat_file, (lambda p: fs.open(p, "rb"))
    else:
        def exists(p: str) -> bool:
            return rio.call("read", f"looking for {show(p)}", fs.exists, p)

        def cat(p: str) -> bytes:
            return rio.call("read", f"reading {show(p)}", fs.cat_file, p)

        def open_(p: str) -> Any:
            return rio.open(fs, p, "read")
    com = str(layout.commit(shard))
    if not exists(com):
        return "not committed"
    try:
        commit = json.loads(cat(com))
    except (OSError, ValueError) as e:
        return f"commit file unreadable: {e}"
    if config_hash is not None and commit.get("config_hash") != config_hash:
        return f"built with config {commit.get('config_hash')}, current config is {config_hash}"
    for kind, path in (("tar", str(layout.tar(shard))), ("manifest", str(layout.manifest(shard)))):
        if not exists(path):
            return f"{kind} missing: {show(path)}"
        with open_(path) as f:
            digest = sha256_stream(f)
        if digest != commit[kind]["sha256"]:
            return f"{kind} checksum mismatch: {show(path)} (truncated or modified after commit)"
    if deep:
        try:
            with open_(str(layout.tar(shard))) as f:
                keys = {key for key, _ in read_samples(f, select=lambda _: (), seek=True)}
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            return f"tar unreadable: {e}"
        if len(keys) != commit["samples"]:
            return f"tar holds {len(keys)} samples, commit says {commit['samples']}"
    return None


def remove_shard(layout: OutPaths, shard: int) -> None:
    """Drop everything of an uncommitted or broken shard; the commit file goes first, so a crash in
    between never leaves a commit pointing at missing files."""
    for p in (layout.commit(shard), layout.tar(shard), layout.manifest(shard)):
        for q in (p, layout.temp(p)):
            if q.exists():
                q.unlink()


def remove_temporaries(layout: OutPaths) -> list[Path]:
    removed = []
    for d in layout.dirs():
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp"):
                    p.unlink()
                    removed.append(p)
    return removed
