"""Where a build's output goes, behind one interface: a local folder (:class:`OutFolder`) or an fsspec URL
(:class:`OutURL`, built in a local staging folder and published shard by shard, see pipeline/remote.py).

The build asks an ``Out`` the same questions whatever it is: take it (``enter``: a remote lock, the plan
pulled), which shards are still to do (``todo``, which changes nothing, so a run refused when its stages start
leaves OUT as it was), the plan is settled (``plan_ready``), clear what the shards to redo left (``clear``), how
a committed shard is published (``publisher``: None where committing is publishing), and refresh the report
(``report``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from mtcc.manifests import funnel
from mtcc.manifests.paths import OutPaths
from mtcc.manifests.report_data import read_manifests, run_config, stage_order
from mtcc.storage.remote_io import RemoteIO

from .remote import RemoteLock, RemoteOut, claim_staging, default_staging, is_remote_out, local_root
from .shard import check_shard, remove_shard

Log = Callable[[str], None]


class Out(Protocol):
    layout: OutPaths  # where shards are built and committed on this machine
    name: str  # how messages name OUT (the folder, or the URL)
    location: Path | str  # what a BuildResult reports as OUT

    def prepare(self) -> None:
        """Make the local folder, refusing one that belongs to another OUT."""

    def enter(self, stack: ExitStack, log: Log) -> None:
        """Take OUT for this run (the local run lock is the build's), holding it until ``stack`` closes."""

    def plan_ready(self, log: Log) -> None:
        """The plan is frozen: make it visible where OUT is."""

    def todo(self, shards: list[int], config_hash: str, result: Any, log: Log) -> list[int]:
        """The shards to build; the ones already done go into ``result.shards_skipped``. Changes nothing: what
        the shards to redo left behind is removed by ``clear``, once the run has started."""

    def clear(self, result: Any, log: Log) -> None:
        """The run has started (stages up, config saved, plan published): remove what the shards ``todo``
        chose left behind (an old config's shard, a broken one), and publish shards finished in staging."""

    def publisher(self, result: Any, log: Log) -> Callable[[int], bool] | None:
        """``publish(shard)`` for a shard committed locally, or None where the commit is the publication."""

    def report(self, last_run: Path, log: Log) -> None:
        """Refresh OUT's report (and its ``last_run.json``) after the run."""


def open_out(out: str | Path, rio: RemoteIO, staging: str | Path | None = None) -> Out:
    """The ``Out`` for OUT: a URL's (raises RemoteError when its store cannot be reached), or a folder's."""
    if is_remote_out(out):
        return OutURL(RemoteOut(str(out), rio), Path(staging) if staging is not None else None)
    return OutFolder(local_root(out))


class OutFolder:
    """A local OUT: shards are committed in place; nothing to publish."""

    def __init__(self, root: Path):
        self.layout = OutPaths(root.absolute())
        self.name = str(self.layout.root)
        self.location: Path | str = self.layout.root
        self._redo: list[int] = []

    def prepare(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)

    def enter(self, stack: ExitStack, log: Log) -> None:
        return None

    def plan_ready(self, log: Log) -> None:
        return None

    def todo(self, shards: list[int], config_hash: str, result: Any, log: Log) -> list[int]:
        todo = []
        for s in shards:
            problem = check_shard(self.layout, s, config_hash)
            if problem is None:
                result.shards_skipped.append(s)
                continue
            if problem != "not committed":
                log(f"shard {s:06d}: {problem}; rebuilding it")
            todo.append(s)
        self._redo = todo
        return todo

    def clear(self, result: Any, log: Log) -> None:
        for s in self._redo:
            remove_shard(self.layout, s)

    def publisher(self, result: Any, log: Log) -> Callable[[int], bool] | None:
        return None

    def report(self, last_run: Path, log: Log) -> None:
        from mtcc.manifests.report import write_report

        write_report(self.layout.root, warn=log)


class OutURL:
    """A remote OUT: shards are committed in a local staging folder (one per URL unless given) and each
    published as it commits (tar, manifest, commit last), under a lock object in OUT."""

    def __init__(self, remote: RemoteOut, staging: Path | None = None):
        self.remote = remote
        self.layout = OutPaths((staging or default_staging(remote.url)).absolute())
        self.name = remote.url
        self.location: Path | str = remote.url
        self.lock: RemoteLock | None = None
        self._publish: Callable[[int], bool] | None = None
        self._staged_copies: list[int] = []  # published already: their staged copy only takes disk
        self._remote_stale: list[int] = []  # to redo: their objects on OUT go
        self._staged_done: list[int] = []  # committed in staging by an earlier run, never published
        self._redo: list[int] = []

    def prepare(self) -> None:
        claim_staging(self.layout.root, self.remote.url)
        self.layout.root.mkdir(parents=True, exist_ok=True)

    def enter(self, stack: ExitStack, log: Log) -> None:
        self.lock = stack.enter_context(RemoteLock(self.remote))
        if self.lock.took_over:
            held = self.lock.took_over
            log(f"taking over the stale lock on {self.remote.url} of pid {held.get('pid')} on {held.get('host')}")
        self.remote.pull_plan(self.layout, log)

    def plan_ready(self, log: Log) -> None:
        self.remote.publish_plan(self.layout, log)

    def publisher(self, result: Any, log: Log) -> Callable[[int], bool] | None:
        """``publish(shard)``: upload a shard committed in staging. When the upload fails for good (OUT
        unreachable once the retry policy is spent) or the lock was taken over, the shard is recorded as failed
        and the error raised: the build stops, since every later shard would fail the same way. The shard stays
        committed in staging, and OUT holds no commit of it: the next run publishes it without building it."""
        if self._publish is not None:
            return self._publish
        lock, remote, layout = self.lock, self.remote, self.layout
        if lock is None:
            raise RuntimeError("OutURL.publisher before enter(): the run holds no lock on OUT")

        def publish(shard: int) -> bool:
            from .errors import RemoteError

            try:
                lock.check()  # a run whose lock was taken over must not overwrite the new owner's shards
                remote.publish_shard(layout, shard)
            except RemoteError as e:
                result.shards_failed[shard] = f"publish failed: {e}"
                log(f"shard {shard:06d}: publish to {remote.url} failed ({e}); the next run publishes it from "
                    f"staging")
                raise
            return True

        self._publish = publish
        return publish

    def todo(self, shards: list[int], config_hash: str, result: Any, log: Log) -> list[int]:
        """Done iff OUT holds its commit and a tar and manifest of the sizes the commit records; a shard
        committed in staging but never published (the run died in between) is published by ``clear`` instead of
        rebuilt; the objects on OUT of every other shard are removed by ``clear`` first."""
        remote, layout = self.remote, self.layout
        sizes = remote.sizes()
        problems = remote.problems(shards, config_hash, sizes)
        self._staged_copies, self._remote_stale, self._staged_done, self._redo = [], [], [], []
        for s in shards:
            problem = problems[s]
            if problem is None:
                result.shards_skipped.append(s)
                self._staged_copies.append(s)
                continue
            if problem != "not committed":
                log(f"shard {s:06d} on {remote.url}: {problem}; redoing it")
            if remote.has_objects(s, sizes):
                self._remote_stale.append(s)
            if check_shard(layout, s, config_hash) is None:
                self._staged_done.append(s)
            else:
                self._redo.append(s)
        return list(self._redo)

    def clear(self, result: Any, log: Log) -> None:
        publish = self.publisher(result, log)
        assert publish is not None
        for s in self._staged_copies:
            remove_shard(self.layout, s)
        for s in self._remote_stale:
            self.remote.remove_shard(s)
        for s in self._staged_done:
            if publish(s):
                log(f"shard {s:06d}: committed in staging by an earlier run, published to {self.remote.url}")
                result.shards_built.append(s)
        for s in self._redo:
            remove_shard(self.layout, s)

    def report(self, last_run: Path, log: Log) -> None:
        if self.lock is not None:
            self.lock.check()  # OUT taken over by another run: its report is not ours to write
        self.remote.write("report/last_run.json", last_run.read_bytes())
        self.remote.write_report(warn=log)


def build_funnel(out: str | Path, rio: RemoteIO | None = None) -> list:
    """How many candidates each stage of OUT's build took in, kept and rejected (by reason)."""
    if is_remote_out(out):
        with RemoteOut(str(out), rio).view() as view:
            return build_funnel(view.root)
    root = local_root(out)
    table = read_manifests(root)
    if table is None:
        return []
    return funnel(table, stage_order(run_config(OutPaths(root)), table))
