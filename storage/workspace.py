"""NodeWorkspace: the node-local files of one build, shared by every stage worker on the node.

* ``sources/``: remote inputs, fetched once per node (the sha256 computed on the way) and read from here by
  every stage that needs the source (probe, faces, cut). Local inputs are never copied. The folder holds at
  most ``source_bytes``; an entry goes when the driver says its video is through (:meth:`evict_sources`),
  when room is needed (least recently used first, never one a worker is reading), and with the folder at
  the end of the run.
* ``clips/``: what the ``cut`` stage made of each clip (the clip's mp4, its decoded mixture, the shared face
  crops), read by every later stage on the node instead of the source; removed when the clip is through.
* ``tmp/``: one job's intermediate files (the cut's encoder output before it becomes members), removed when
  the job ends, or with the workspace when the worker was killed first.

Workers on one node coordinate through flock(2) on per-entry lock files: a reader holds a shared lock
while it reads a source, so eviction (which needs the exclusive lock, without waiting) never pulls a file
from under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtcc.storage.files import is_remote_source, local_source
from mtcc.storage.remote_io import RemoteIO, describe, file_fingerprint

# bytes at each end of a remote source that the plan's fingerprint digests (pipeline/inputs.py)
REMOTE_FINGERPRINT_BYTES = 16 << 10
# how long a fetch waits for room held by sources other workers are reading, before it gives up
ROOM_WAIT_S = 600.0


class WorkspaceError(RuntimeError):
    """A source cannot be fetched into the node-local cache (too large for it, or the fetch failed)."""


class SourceUnreachable(WorkspaceError):
    """The store will not give the source: not there (404), forbidden (403), or still failing once the
    retry policy is spent. ``status`` says which, as the manifest row shows it."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


class SourceChanged(WorkspaceError):
    """The source is no longer the object that was planned (another size, other first or last bytes)."""


def planned(fingerprint: str | None) -> bool:
    """Whether a plan fingerprint describes content (not an unreadable or unreachable source)."""
    return bool(fingerprint) and not fingerprint.startswith(("unreadable", "unreachable"))


@dataclass(frozen=True)
class Fetched:
    path: str
    sha256: str | None  # computed while fetching; None for a local source (read in place)
    bytes: int


def source_key(source: str, fingerprint: str | None = None) -> str:
    """The cache name of a source: its planned content fingerprint (size + head + tail digest) when known,
    so the same content is never fetched twice, else a digest of its URL."""
    basis = fingerprint if planned(fingerprint) else source
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


class NodeWorkspace:
    def __init__(self, root: str | os.PathLike, source_bytes: int = 50 << 30, remote: RemoteIO | None = None):
        self.root = Path(root)
        self.source_bytes = int(source_bytes)
        self.remote = remote or RemoteIO()
        self.sources = self.root / "sources"
        self.clips = self.root / "clips"
        self.fetched_bytes = 0  # bytes this process pulled over the network (benchmarks)

    @classmethod
    def scratch(cls) -> NodeWorkspace:
        """A private workspace in a new temporary folder: for a stage used on its own (tests, notebooks);
        builds hand every stage the node's shared one."""
        ws = cls(tempfile.mkdtemp(prefix="mtcc-work-"))
        weakref.finalize(ws, shutil.rmtree, str(ws.root), True)
        return ws

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "source_bytes": self.source_bytes}

    # -- sources --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def source(self, source: str, fingerprint: str | None = None, size: int | None = None) -> Iterator[Fetched]:
        """A local path of ``source`` for the duration of the block: the file itself when local, else the
        node's copy (fetched now if no worker on this node has it yet). ``fingerprint`` and ``size`` are what
        the plan saw: a copy that does not match them is fetched once more, then refused (``SourceChanged``)."""
        if not is_remote_source(source):
            path = local_source(source)
            yield Fetched(path, None, -1)
            return
        key = source_key(source, fingerprint)
        self.sources.mkdir(parents=True, exist_ok=True)
        data, meta = self._data(key), self.sources / f"{key}.json"
        lock = os.open(self.sources / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node: the others wait for it
                if not (data.exists() and meta.exists()):
                    self._fetch(source, key, fingerprint, size)
                # readers share the lock, so eviction cannot take the file while it is read; flock's
                # downgrade is not atomic, so an eviction may slip in between: then fetch again
                fcntl.flock(lock, fcntl.LOCK_SH)
                if data.exists() and meta.exists():
                    break
            info = json.loads(meta.read_text())
            os.utime(meta)  # recency for the least-recently-used choice
            yield Fetched(str(data), info["sha256"], int(info["bytes"]))
        finally:
            os.close(lock)

    def _data(self, key: str) -> Path:
        return self.sources / f"{key}.data"

    def _fetch(self, source: str, key: str, fingerprint: str | None, planned_size: int | None) -> None:
        import fsspec

        rio = self.remote
        try:
            fs, path = fsspec.core.url_to_fs(source)
            size = int(rio.call("fetch", f"size of {source}", fs.size, path) or 0)
        except Exception as e:  # noqa: BLE001 - a store fails in its own types; the manifest row names the status
            raise SourceUnreachable(f"cannot reach {source}: {describe(e)}", describe(e)) from e
        if planned_size is not None and planned_size >= 0 and size != planned_size:
            raise SourceChanged(f"{source} changed since the plan was made: {size} bytes now, {planned_size} "
                                f"planned; plan it again (a new --output) to take the new content")
        if size > self.source_bytes:
            raise WorkspaceError(
                f"{source} is {size / 2**30:.2f} GiB, more than the node-local source cache holds "
                f"(run.source_cache_gb = {self.source_bytes / 2**30:g}); raise run.source_cache_gb")
        self._make_room(size, keep=key)
        part = self.sources / f".{key}.part"
        # a copy whose ends do not match the planned fingerprint is fetched once more: a body damaged on the
        # way reads differently the second time, a replaced object the same
        for attempt in (1, 2):
            digest, n = self._download(source, fs, path, size, part)
            if not planned(fingerprint) or file_fingerprint(str(part), REMOTE_FINGERPRINT_BYTES) == fingerprint:
                break
            if attempt == 2:
                part.unlink(missing_ok=True)
                raise SourceChanged(f"{source} changed since the plan was made: its first and last bytes differ "
                                    f"from the planned fingerprint; plan it again (a new --output) to take the "
                                    f"new content")
        os.replace(part, self._data(key))
        (self.sources / f"{key}.json").write_text(json.dumps({"source": source, "sha256": digest, "bytes": n}))

    def _download(self, source: str, fs: Any, path: str, size: int, part: Path) -> tuple[str, int]:
        """Fetch ``size`` bytes into ``part`` range by range (each retried on its own); (sha256, bytes)."""
        rio = self.remote
        step = rio.policy.range_bytes
        h = hashlib.sha256()
        n = 0
        try:
            with open(part, "wb") as out:
                for start in range(0, size, step):
                    end = min(size, start + step)
                    block = rio.read_range(fs, path, start, end, "fetch", f"bytes {start}-{end} of {source}")
                    h.update(block)
                    out.write(block)
                    n += len(block)
        except Exception as e:  # noqa: BLE001 - see _fetch
            part.unlink(missing_ok=True)
            raise SourceUnreachable(f"fetching {source} failed after {n} of {size} bytes: {describe(e)}",
                                    describe(e)) from e
        self.fetched_bytes += n
        return h.hexdigest(), n

    def _entries(self) -> list[tuple[float, str, int]]:
        """(last use, key, bytes) of every cached source."""
        out = []
        for meta in self.sources.glob("*.json"):
            key = meta.stem
            data = self._data(key)
            try:
                out.append((meta.stat().st_mtime, key, data.stat().st_size))
            except FileNotFoundError:
                continue  # being evicted by another worker
        return sorted(out)

    def _make_room(self, size: int, keep: str) -> None:
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            entries = self._entries()
            used = sum(n for _, k, n in entries if k != keep)
            if used + size <= self.source_bytes:
                return
            for _, k, n in entries:
                if k != keep and self._evict_one(k):
                    used -= n
                    if used + size <= self.source_bytes:
                        return
            # what is left is being read by other workers on this node: they finish, then it can go
            if time.monotonic() > deadline:
                raise WorkspaceError(
                    f"no room for a {size / 2**20:.0f} MiB source in the node-local source cache "
                    f"({used / 2**20:.0f} MiB held by sources being read; run.source_cache_gb = "
                    f"{self.source_bytes / 2**30:g}); raise run.source_cache_gb or lower run.max_shards_in_flight")
            time.sleep(1.0)

    def _evict_one(self, key: str) -> bool:
        """Remove one cached source unless a worker is reading it; True when it is gone."""
        lock_path = self.sources / f"{key}.lock"
        try:
            lock = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            lock = None
        try:
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            (self.sources / f"{key}.json").unlink(missing_ok=True)
            self._data(key).unlink(missing_ok=True)
            return True
        finally:
            if lock is not None:
                os.close(lock)

    def evict_sources(self, keys: list[str]) -> None:
        for key in keys:
            self._evict_one(key)

    def source_usage(self) -> int:
        return sum(n for _, _, n in self._entries()) if self.sources.is_dir() else 0

    # -- clips ----------------------------------------------------------------------------------------
    def temp_dir(self, prefix: str) -> tempfile.TemporaryDirectory:
        """A private folder for one job's intermediate files, removed when the block ends; inside the workspace,
        so that what a killed worker (out of memory, a lost node) could not remove goes with the workspace."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix=prefix, dir=base)

    def clip_dir(self, key: str, digest: str) -> Path:
        """Where a clip's media live on this node: named by the clip key and its mp4's digest, so a folder
        left by another run or config is never taken for this clip's."""
        return self.clips / f"{key}-{digest[:16]}"

    def evict_clips(self, keys: list[str]) -> None:
        try:
            names = os.listdir(self.clips)
        except FileNotFoundError:  # nothing cut on this node, or the run's end already removed the workspace
            return
        wanted = set(keys)
        for name in names:
            if name.rsplit("-", 1)[0] in wanted:  # `{key}-{digest}`: the digest has no '-'
                shutil.rmtree(self.clips / name, ignore_errors=True)

    # -- the whole folder -----------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes on disk under the workspace (sources and clips)."""
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    continue
        return total

    def clear(self) -> None:
        """Remove everything (end of run; start of the next: a killed run's leftovers)."""
        shutil.rmtree(self.root, ignore_errors=True)
