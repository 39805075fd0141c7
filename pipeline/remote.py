"""OUT as an fsspec URL (s3://bucket/prefix, gs://..., any fsspec store): a local staging folder, published.

Object stores have no fsync and no rename, so the local commit protocol (pipeline/shard.py) cannot run on
them. The build runs unchanged in a local staging folder; each shard, once committed there, is uploaded
tar first, manifest second and its commit file LAST, then freed locally (a long build never needs the whole
dataset on local disk). Every reader of OUT (resume, ``mtcc status``/``verify``/``report``, the training
loader) trusts a shard only when its commit is there, and resume and verify also check that the tar and
manifest match what the commit records (sizes on resume, sha256 on verify): an upload cut short, or the
objects of a shard being redone, are never taken for a finished shard.

One run per OUT: the staging folder keeps its flock, and OUT gets a ``.lock`` object (host, pid, a token and
a heartbeat the run refreshes). A run refuses a lock whose heartbeat is fresher than ``LOCK_STALE_S`` and
takes over an older one. Object stores offer no atomic create-if-absent everywhere, so two runs starting in
the same second can both write the lock; each reads it back after a moment and the one whose token is gone
stops, but the store decides which write wins, not us (see README, "Running on a cluster").
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from mtcc.manifests.paths import OutPaths
from mtcc.storage.remote_io import RemoteIO, describe

from .errors import LockBusy, OutUnreachable, RemoteError
from .shard import check_shard_at, remove_shard

LOCAL_PROTOCOLS = ("file", "local")
LOCK_STALE_S = 600.0  # a lock whose heartbeat is older than this belongs to a dead run
LOCK_REFRESH_S = 60.0
LOCK_SETTLE_S = 1.0  # how long a new lock is left before it is read back (racing writers)
STAGING_MARKER = ".mtcc-staging"
SHARD_DIRS = ("commits", "shards", "manifests")  # commits first: removing a shard never leaves a commit behind




def is_remote_out(out: str | os.PathLike[str]) -> bool:
    """Whether OUT (the dataset root) is remote: an fsspec URL other than file:// or local://; a plain path
    (str or Path) is local. Not :func:`mtcc.media.ffmpeg.is_remote_source`: OUT may be any fsspec URL."""
    if isinstance(out, os.PathLike):
        return False
    import fsspec

    protocol, _ = fsspec.core.split_protocol(out)
    return protocol is not None and protocol not in LOCAL_PROTOCOLS


def local_root(out: str | os.PathLike[str]) -> Path:
    """OUT as a local path (a file:// URL loses its scheme)."""
    if isinstance(out, os.PathLike):
        return Path(out)
    import fsspec

    protocol, path = fsspec.core.split_protocol(out)
    return Path(path if protocol in LOCAL_PROTOCOLS else out)


def default_staging(url: str) -> Path:
    """Where a build of ``url`` stages its shards unless --staging says otherwise: one folder per OUT, so a
    rerun on the same machine finds what the last one committed but did not publish."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mtcc" / "staging" / hashlib.sha256(url.encode()).hexdigest()[:16]


def claim_staging(staging: Path, url: str) -> None:
    """Refuse a staging folder that belongs to another OUT or is a local OUT itself: the build deletes
    what it finds there."""
    marker = staging / STAGING_MARKER
    if marker.exists():
        owner = marker.read_text().strip()
        if owner != url:
            raise RemoteError(f"staging folder {staging} belongs to {owner}, not {url}; pass another --staging")
        return
    if (staging / "plan.parquet").exists() or (staging / "commits").is_dir():
        raise RemoteError(f"--staging {staging} holds an MTCC output, not a staging folder; pass an empty or "
                          f"new folder for {url}")
    staging.mkdir(parents=True, exist_ok=True)
    marker.write_text(url + "\n")


def _package_for(protocol: str) -> str:
    from fsspec.registry import known_implementations

    return known_implementations.get(protocol, {}).get("class", protocol).split(".")[0]


class RemoteOut:
    """OUT at an fsspec URL: its paths follow the local OutPaths, its writes the publish order above. Every call
    goes through ``rio`` (retries on throttling, server errors, resets; see mtcc.storage.remote_io)."""

    def __init__(self, url: str, rio: RemoteIO | None = None):
        import fsspec

        self.rio = rio or RemoteIO()
        self.url = url.rstrip("/")
        protocol, _ = fsspec.core.split_protocol(self.url)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except ImportError as e:
            pkg = _package_for(protocol or "")
            raise RemoteError(f"cannot open OUT {self.url}: {pkg} not installed ({e}); install it on this "
                              f"machine: pip install {pkg}") from e
        except ValueError as e:
            raise RemoteError(f"cannot open OUT {self.url}: {e}") from e
        self.root = root.rstrip("/")
        self.layout = OutPaths(PurePosixPath(self.root))
        # another process may have written OUT since this filesystem instance (fsspec caches them) listed it
        self.fs.invalidate_cache()

    def show(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.rio.call("out", f"{what} on {self.url}", fn, *args)
        # a store fails in its own exception types (botocore, aiohttp, google.api_core, ...): whatever it
        # raises, once the retry policy gives up or the failure cannot pass, becomes one error that names
        # OUT and the operation
        except Exception as e:  # noqa: BLE001
            raise OutUnreachable(f"{what} failed on {self.url}: {describe(e)}") from e

    def read(self, rel: str) -> bytes | None:
        """The object's bytes, None when it is absent."""
        return self._read_path(self.path(rel))

    def _read_path(self, path: str) -> bytes | None:
        try:
            return self.rio.call("out", f"reading {self.show(path)}", self.fs.cat_file, path)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - see _call
            raise OutUnreachable(f"reading {self.show(path)} failed: {describe(e)}") from e

    def write(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        self._call(f"writing {self.show(path)}", self.fs.pipe_file, path, data)

    def upload(self, local: Path, path: str) -> None:
        self._call(f"uploading {local.name} to {self.show(path)}", self.fs.put_file, str(local), path)

    def sizes(self) -> dict[str, int]:
        """Path -> size of every object in commits/, shards/ and manifests/ (three listings)."""
        self.fs.invalidate_cache()
        out: dict[str, int] = {}
        for d in SHARD_DIRS:
            where = self.show(self.path(d))
            try:
                entries = self.rio.call("out", f"listing {where}", self.fs.ls, self.path(d), detail=True)
            except FileNotFoundError:
                continue
            except Exception as e:  # noqa: BLE001 - see _call
                raise OutUnreachable(f"listing {where} failed: {describe(e)}") from e
            out.update({e["name"].rstrip("/"): int(e.get("size") or 0) for e in entries if e.get("type") == "file"})
        return out

    def shard_objects(self, shard: int) -> list[str]:
        lay = self.layout
        return [str(lay.commit(shard)), str(lay.tar(shard)), str(lay.manifest(shard))]

    # ------------------------------------------------------------------------------------------ state

    def commits(self, shards: list[int], sizes: dict[str, int]) -> dict[int, dict[str, Any] | str]:
        """Shard -> its commit, or why it cannot be read; shards without a commit object are left out."""
        paths = {str(self.layout.commit(s)): s for s in shards if str(self.layout.commit(s)) in sizes}
        if not paths:
            return {}
        # one concurrent fetch: a plan of thousands of shards must not cost thousands of round trips in a row
        raw = self._call("reading commits", lambda: self.fs.cat(list(paths), on_error="return"))
        out: dict[int, dict[str, Any] | str] = {}
        for path, shard in paths.items():
            data = raw.get(path)
            if isinstance(data, BaseException) or data is None:
                data = self._read_path(path)  # that one alone again, under the retry policy
            try:
                if data is None:
                    raise OSError("it vanished while being read")
                out[shard] = json.loads(data)
            except (OSError, ValueError) as e:
                out[shard] = f"commit file unreadable: {e}"
        return out

    def problems(self, shards: list[int], config_hash: str | None, sizes: dict[str, int]) -> dict[int, str | None]:
        """Per shard: None when OUT holds it committed with a tar and manifest of the sizes its commit
        records; otherwise what is missing (the quick check of resume; ``verify_shard`` hashes)."""
        commits = self.commits(shards, sizes)
        out: dict[int, str | None] = {}
        for s in shards:
            commit = commits.get(s)
            out[s] = commit if isinstance(commit, str) else _size_problem(self, s, commit, sizes, config_hash)
        return out

    def uncommit(self, shard: int) -> None:
        """Drop a shard's commit (``mtcc verify --uncommit``): resume checks sizes only, so a shard whose bytes
        changed at the same size is redone only once its commit is gone."""
        path = str(self.layout.commit(shard))
        self._call(f"deleting {self.show(path)}", self.fs.rm_file, path)

    def has_objects(self, shard: int, sizes: dict[str, int]) -> bool:
        return any(p in sizes for p in self.shard_objects(shard))

    def verify_shard(self, shard: int, config_hash: str | None = None) -> str | None:
        """The deep check of ``mtcc verify``: sha256 of the tar and manifest against the commit, tar readable."""
        try:
            return check_shard_at(self.fs, self.layout, shard, config_hash, deep=True, show=self.show, rio=self.rio)
        except Exception as e:  # noqa: BLE001 - see _call; one unreadable shard must not hide the others
            return f"unreadable on {self.url}: {type(e).__name__}: {e}"

    def planned_shards(self) -> list[int]:
        import io

        import pyarrow.parquet as pq

        data = self.read("plan.parquet")
        if data is None:
            raise RemoteError(f"{self.url} has no plan.parquet; is it an MTCC output (mtcc run ... -o {self.url})?")
        table = pq.read_table(io.BytesIO(data), columns=["shard"])
        return sorted(set(table.column("shard").to_pylist()))

    # ---------------------------------------------------------------------------------------- writing

    def remove_shard(self, shard: int) -> None:
        """Delete a shard's objects, its commit first (readers then ignore the rest at once)."""
        for path in self.shard_objects(shard):
            if self._call(f"looking for {self.show(path)}", self.fs.exists, path):
                self._call(f"deleting {self.show(path)}", self.fs.rm_file, path)

    def remove_all_shards(self) -> int:
        sizes = self.sizes()
        paths = sorted(sizes, key=lambda p: SHARD_DIRS.index(p.rsplit("/", 2)[-2]))
        for path in paths:
            self._call(f"deleting {self.show(path)}", self.fs.rm_file, path)
        return len(paths)

    def publish_shard(self, layout: OutPaths, shard: int) -> None:
        """Upload a shard committed in ``layout`` (staging): tar, manifest, then the commit; free it locally."""
        tar, man, com = self.layout.tar(shard), self.layout.manifest(shard), self.layout.commit(shard)
        self.upload(layout.tar(shard), str(tar))
        self.upload(layout.manifest(shard), str(man))
        for local, remote in ((layout.tar(shard), str(tar)), (layout.manifest(shard), str(man))):
            size = self._call(f"checking {self.show(remote)}", self.fs.size, remote)
            if size != local.stat().st_size:
                raise RemoteError(f"{self.show(remote)} holds {size} bytes after upload, {local.stat().st_size} "
                                  f"expected; shard {shard:06d} is not committed on {self.url}")
        self.upload(layout.commit(shard), str(com))
        remove_shard(layout, shard)

    def pull_plan(self, layout: OutPaths, log: Callable[[str], None]) -> None:
        """Make the staging's plan and config OUT's: OUT is the truth, the staging a cache of one run."""
        for rel, local in (("plan.parquet", layout.plan), ("config.json", layout.run_config)):
            data = self.read(rel)
            before = local.read_bytes() if local.exists() else None
            if data == before:
                continue
            if rel == "plan.parquet" and before is not None:
                # shards committed in staging under another plan would be published under the wrong one
                n = _clear_local_shards(layout)
                log(f"staging {layout.root}: plan differs from {self.url}'s; dropped {n} staged file(s)")
            if data is None:
                local.unlink()
            else:
                tmp = local.with_name(f".{local.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, local)

    def publish_plan(self, layout: OutPaths, log: Callable[[str], None]) -> None:
        """plan.parquet and config.json before any shard; a new plan invalidates every shard of OUT."""
        plan = layout.plan.read_bytes()
        if self.read("plan.parquet") != plan:
            n = self.remove_all_shards()
            if n:
                log(f"{self.url}: new plan, removed {n} object(s) of the old one")
            self.write("plan.parquet", plan)
        config = layout.run_config.read_bytes()
        if self.read("config.json") != config:
            self.write("config.json", config)

    # ----------------------------------------------------------------------------------------- reading

    def pull_view(self, dst: Path) -> OutPaths:
        """A local copy of what the report and the funnel read: plan, config, last run, and the commits and
        manifests of committed shards (never the tars: the report streams the few it shows from OUT)."""
        layout = OutPaths(dst)
        for d in layout.dirs():
            d.mkdir(parents=True, exist_ok=True)
        for rel, local in (("plan.parquet", layout.plan), ("config.json", layout.run_config),
                           ("report/last_run.json", layout.root / "report" / "last_run.json"),
                           # the report's people and duplicates (mtcc index)
                           *((p.relative_to(dst).as_posix(), p) for p in layout.index_files())):
            data = self.read(rel)
            if data is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
        self._pull_selections(layout)
        if not layout.plan.exists():
            return layout
        shards = self.planned_shards()
        sizes = self.sizes()
        commits = self.commits(shards, sizes)
        done = [s for s, c in commits.items() if isinstance(c, dict)]
        remote = [p for s in done for p in (str(self.layout.commit(s)), str(self.layout.manifest(s)))
                  if p in sizes]
        local = [str(layout.root / PurePosixPath(p).relative_to(self.root)) for p in remote]
        if remote:
            self._call("downloading commits and manifests", self.fs.get, remote, local)
        return layout

    def _pull_selections(self, layout: OutPaths) -> None:
        pattern = f"{self.layout.selections_dir}/*.parquet"
        found = self._call(f"listing {self.show(pattern)}", self.fs.glob, pattern)
        for path in sorted(found):
            name = PurePosixPath(path).name
            if not name.startswith((".", "_")):
                dst = layout.selections_dir / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(self._call(f"reading {self.show(path)}", self.fs.cat_file, path))

    @contextmanager
    def view(self) -> Iterator[OutPaths]:
        with tempfile.TemporaryDirectory(prefix="mtcc-view-") as d:
            yield self.pull_view(Path(d))

    def states(self, shards: list[int]) -> dict[int, tuple[str, dict[str, Any] | None]]:
        """Shard -> (committed | partial | pending, its commit) as ``mtcc status`` shows them."""
        sizes = self.sizes()
        commits = self.commits(shards, sizes)
        out: dict[int, tuple[str, dict[str, Any] | None]] = {}
        for s in shards:
            c = commits.get(s)
            if isinstance(c, dict):
                out[s] = ("committed", c)
            else:
                out[s] = ("partial" if self.has_objects(s, sizes) else "pending", None)
        return out

    def write_report(self, samples: int | None = None, warn: Callable[[str], None] = lambda m: None) -> str:
        """Render the report from a local view of OUT and publish it: files first, the page last, then drop
        what the page no longer links."""
        from mtcc.manifests.report import DEFAULT_SAMPLES, write_report

        samples = DEFAULT_SAMPLES if samples is None else samples
        with self.view() as layout:
            page = write_report(layout.root, samples=samples, warn=warn, url=self.url)
            report = page.parent
            files = sorted(p for p in report.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p != page and p.name != "last_run.json")
            for p in files:
                self.upload(p, self.path(f"report/{p.relative_to(report).as_posix()}"))
            self.upload(page, self.path("report/index.html"))
            keep = {self.path(f"report/{p.relative_to(report).as_posix()}") for p in files}
            for sub in ("plots", "gallery"):
                try:
                    old = self.rio.call("out", f"listing report/{sub} of {self.url}", self.fs.ls,
                                        self.path(f"report/{sub}"), detail=False)
                except FileNotFoundError:
                    continue
                for path in old:
                    if path.rstrip("/") not in keep:
                        self._call(f"deleting {self.show(path)}", self.fs.rm_file, path)
        return self.show(self.path("report/index.html"))


def _size_problem(remote: RemoteOut, shard: int, commit: dict[str, Any] | None, sizes: dict[str, int],
                  config_hash: str | None) -> str | None:
    if commit is None:
        return "not committed"
    if config_hash is not None and commit.get("config_hash") != config_hash:
        return f"built with config {commit.get('config_hash')}, current config is {config_hash}"
    for kind, path in (("tar", str(remote.layout.tar(shard))), ("manifest", str(remote.layout.manifest(shard)))):
        if path not in sizes:
            return f"{kind} missing: {remote.show(path)}"
        want = (commit.get(kind) or {}).get("bytes")
        if sizes[path] != want:
            return f"{kind} is {sizes[path]} bytes, its commit says {want}: {remote.show(path)}"
    return None


def _clear_local_shards(layout: OutPaths) -> int:
    n = 0
    for d in SHARD_DIRS:
        folder = layout.root / d
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if p.is_file():
                p.unlink()
                n += 1
    return n


def _dead_here(held: dict[str, Any]) -> bool:
    """A lock written by a process of this machine that no longer runs (a killed run): stale at once, no
    need to wait out the heartbeat. A pid reused since then keeps the lock until its heartbeat ages."""
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class RemoteLock:
    """OUT/.lock with a heartbeat: refused while fresh, taken over when stale; released on exit."""

    def __init__(self, remote: RemoteOut, stale_after_s: float = LOCK_STALE_S, refresh_s: float = LOCK_REFRESH_S,
                 settle_s: float = LOCK_SETTLE_S):
        self.remote = remote
        self.stale_after_s, self.refresh_s, self.settle_s = stale_after_s, refresh_s, settle_s
        self.token = uuid.uuid4().hex
        self.took_over: dict[str, Any] | None = None
        self.lost: dict[str, Any] | None = None
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any]:
        data = self.remote.read(".lock")
        try:
            return json.loads(data) if data else {}
        except ValueError:
            return {}

    def _write(self) -> None:
        self.remote.write(".lock", json.dumps({**self.info, "heartbeat": time.time()}).encode())

    def __enter__(self) -> RemoteLock:
        held = self.holder()
        if held:
            age = time.time() - float(held.get("heartbeat") or 0)
            if age < self.stale_after_s and not _dead_here(held):
                raise LockBusy(
                    f"{self.remote.url} is being written by pid {held.get('pid')} on {held.get('host')} since "
                    f"{held.get('started')} (its lock heartbeat is {age:.0f}s old; a lock is stale after "
                    f"{self.stale_after_s:.0f}s); wait for it to finish or use another --output. If that run "
                    f"is gone, delete {self.remote.url}/.lock")
            self.took_over = held
        self._write()
        time.sleep(self.settle_s)
        now = self.holder()
        if now.get("token") != self.token:
            raise LockBusy(f"{self.remote.url}: another run (pid {now.get('pid')} on {now.get('host')}) took the "
                           f"lock at the same moment; it goes on, this one stops")
        self._thread = threading.Thread(target=self._beat, name="mtcc-remote-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> None:
        """Renew the heartbeat, unless another run took the lock over (this one was thought dead)."""
        if self.lost:
            return
        try:
            held = self.holder()
            if held and held.get("token") != self.token:
                self.lost = held
                return
            self._write()
        except RemoteError:
            return  # a store hiccup: the next beat tries again, well within the stale timeout

    def check(self) -> None:
        """Before each publish: renew the heartbeat, and stop publishing once another run owns OUT."""
        self.refresh()
        if self.lost:
            raise RemoteError(f"the lock on {self.remote.url} was taken over by pid {self.lost.get('pid')} on "
                              f"{self.lost.get('host')} (this run's heartbeat was thought stale); not publishing")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if not self.lost and self.holder().get("token") == self.token:
                self.remote._call(f"deleting {self.remote.url}/.lock", self.remote.fs.rm_file,
                                  self.remote.path(".lock"))
        except RemoteError:
            return  # left behind, it goes stale and the next run takes it over
