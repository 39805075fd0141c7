"""``mtcc export bya OUT DEST``: an MTCC build in the folder layout of the Bind-Your-Avatar trainer.

OUT is an output folder or an fsspec URL; only committed shards are read (the training loader's shard
resolution). The driver streams each shard's tar once and hands the samples to ``--workers`` processes,
each of which writes whole clips (:mod:`.bya_clip`). Resume: a clip whose entry and files are complete
(:func:`.bya_layout.is_complete`) is skipped; anything else of it is removed and redone. ``anno.json`` and
``instance_data_root.txt`` are rewritten at the end of every run from the complete clips in DEST.
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtcc.storage.remote_io import open_read

from .bya_clip import NEEDED, ClipJob, ClipResult, ExportOptions, convert
from .bya_layout import (
    BYAFolder,
    LayoutError,
    check_name,
    is_complete,
    json_bytes,
    remove_temporaries,
    write_atomic,
    write_if_changed,
)


class ExportError(RuntimeError):
    pass


@dataclass
class ExportSummary:
    dest: Path
    exported: int = 0
    already: int = 0
    kept_unbound: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    shards: int = 0
    shards_failed: dict[str, str] = field(default_factory=dict)
    clips_in_dest: int = 0
    wall_s: float = 0.0
    skipped_clips: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        return self.exported + self.already + sum(self.skipped.values()) + len(self.errors)

    def format(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "-"
        rate = self.exported / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            f"{self.seen} clips in {self.shards} committed shard(s): {self.exported} exported "
            f"({rate:.2f} clips/s), {self.already} already exported, {sum(self.skipped.values())} skipped "
            f"({why}), {len(self.errors)} failed",
        ]
        if self.kept_unbound:
            lines.append(f"{self.kept_unbound} exported with a binding that is not measured (--keep-unbound; "
                         f"their anno entries say mtcc.binding unknown/contradicted)")
        if self.clips_in_dest:
            lines.append(f"{self.clips_in_dest} clips in {self.dest / 'anno.json'}; train with "
                         f"--instance_data_root {self.dest / 'instance_data_root.txt'}")
        else:
            lines.append(f"NOTHING TO TRAIN ON: {self.dest / 'anno.json'} lists no clip ({why}; "
                         f"{self.dest / 'export_report.json'} names every clip and why)")
        return "\n".join(lines)

    def record(self, res: ClipResult) -> None:
        if res.status == "exported":
            self.exported += 1
            self.kept_unbound += not res.bound
        elif res.status == "skipped":
            self.skipped[res.reason or "skipped"] += 1
            self.skipped_clips[res.name] = {"reason": res.reason or "", "message": res.message or ""}
        else:
            self.errors.append(res.message or res.name)
            self.skipped_clips[res.name] = {"reason": "error", "message": res.message or ""}


def export_bya(out: str | Path, dest: str | Path, *, options: ExportOptions | None = None, workers: int = 1,
               index_root: str | None = None, progress: bool = True, selection: str | None = None,
               selection_part: str = "train",
               log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> ExportSummary:
    """Export every committed clip of ``out`` into ``dest`` (see the module docstring); with ``selection`` (a
    name `mtcc select` made, or the path of its .parquet), only the clips of its part ``selection_part``
    (use a DEST of its own: anno.json lists every complete clip in DEST)."""
    from mtcc.pipeline.errors import LockBusy
    from mtcc.pipeline.lock import RunLock

    options = options or ExportOptions()
    if workers < 1:
        raise ExportError(f"--workers must be at least 1, got {workers}")
    layout = BYAFolder(Path(dest).expanduser().resolve())
    try:
        line = layout.index_line(index_root)
    except LayoutError as e:
        raise ExportError(str(e)) from e
    summary = ExportSummary(layout.root)
    shards = _committed_shards(out)  # before DEST is touched: an OUT with nothing to export leaves no DEST
    chosen = _selection(out, selection, selection_part) if selection else None
    if chosen is not None:
        shards = [r for r in shards if r.shard_id in chosen]
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(layout.lock):
            _export_locked(out, shards, layout, line, options, workers, summary, progress, log, chosen)
    except LockBusy as e:
        raise ExportError(f"another export is writing {layout.root}: {e}") from e
    for url, why in summary.shards_failed.items():
        log(f"shard {url} could not be read completely: {why}")
    return summary


def _selection(out: str | Path, name: str, part: str) -> dict[int, frozenset[str]]:
    from mtcc.manifests.selections import SelectionError, load_selected, selection_url

    try:
        return load_selected(selection_url(str(out), name), part)
    except SelectionError as e:
        raise ExportError(str(e)) from e


def _export_locked(out: str | Path, shards: list[Any], layout: BYAFolder, line: str, options: ExportOptions,
                   workers: int, summary: ExportSummary, progress: bool, log: Callable[[str], None],
                   chosen: dict[int, frozenset[str]] | None = None) -> None:
    t0 = time.monotonic()
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    n = remove_temporaries(layout)
    if n:
        log(f"removed {n} temporary leftover(s) of an interrupted export in {layout.root}")
    summary.shards = len(shards)
    done: set[str] = set()
    _run(shards, layout, options, workers, summary, done, progress, chosen)
    entries = _complete_entries(layout, done)
    write_if_changed(layout.anno, json.dumps(entries, indent=1, ensure_ascii=False).encode() + b"\n")
    write_if_changed(layout.index, (line + "\n").encode())
    summary.clips_in_dest = len(entries)
    summary.wall_s = time.monotonic() - t0
    write_atomic(layout.report, json_bytes({
        "out": str(out), "options": options.model_dump(), "shards": summary.shards,
        "shards_failed": summary.shards_failed, "exported": summary.exported, "already": summary.already,
        "kept_unbound": summary.kept_unbound, "skipped": dict(summary.skipped), "errors": summary.errors,
        "clips_in_dest": summary.clips_in_dest, "wall_s": round(summary.wall_s, 3),
        "skipped_clips": summary.skipped_clips}))


def _committed_shards(out: str | Path) -> list[Any]:
    from mtcc.training.shards import resolve_shards

    try:
        return resolve_shards([str(out)], committed_only=True)
    except ImportError as e:
        raise ExportError(f"cannot open {out}: {e} (install the fsspec backend for its URL scheme, e.g. s3fs)") \
            from e
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"{out}: {e}") from e


def _shard_total(ref: Any) -> int | None:
    """Samples in a committed shard, from its commit file (for the progress bar)."""
    if ref.manifest is None or ref.shard_id is None:
        return None
    root = ref.manifest.rsplit("/manifests/", 1)[0]
    try:
        with open_read(f"{root}/commits/{ref.shard_id:06d}.json") as f:
            return int(json.load(f)["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jobs(shards: list[Any], layout: BYAFolder, options: ExportOptions, summary: ExportSummary, done: set[str],
          tick: Callable[[], None], chosen: dict[int, frozenset[str]] | None = None) -> Iterator[ClipJob]:
    from mtcc.manifests.shard_tar import read_samples

    wanted = options.model_dump()
    names: set[str] = set()
    for ref in shards:
        allowed = None if chosen is None else chosen.get(ref.shard_id, frozenset())

        def select(key: str, allowed: frozenset[str] | None = allowed) -> frozenset[str]:
            return NEEDED if allowed is None or key in allowed else frozenset()  # others are not read

        try:
            with open_read(ref.url) as f:
                for key, members in read_samples(f, select=select):
                    if allowed is not None and key not in allowed:
                        tick()
                        continue
                    try:
                        name = check_name(key)
                    except LayoutError as e:
                        summary.record(ClipResult(key, "error", "bad_key", f"{ref.url}: {e}"))
                        tick()
                        continue
                    if name in names:
                        summary.record(ClipResult(name, "skipped", "duplicate_key",
                                                  f"{ref.url}: {name} was already read from another shard"))
                        tick()
                        continue
                    names.add(name)
                    if is_complete(layout, name, wanted):
                        summary.already += 1
                        done.add(name)
                        tick()
                        continue
                    yield ClipJob(layout.root, name, ref.url, {k: v for k, v in members.items() if k in NEEDED},
                                  options)
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as e:
            # a corrupt shard: what was read of it counts, the rest is named in the summary
            summary.shards_failed[ref.url] = f"{type(e).__name__}: {e}"


def _run(shards: list[Any], layout: BYAFolder, options: ExportOptions, workers: int, summary: ExportSummary,
         done: set[str], progress: bool, chosen: dict[int, frozenset[str]] | None = None) -> None:
    from tqdm import tqdm

    totals = [_shard_total(r) for r in shards]
    bar = tqdm(total=sum(totals) if None not in totals else None, desc="clips", unit="clip",
               disable=not progress, file=sys.stderr)

    def tick() -> None:
        bar.set_postfix(exported=summary.exported, already=summary.already, skipped=sum(summary.skipped.values()),
                        refresh=False)
        bar.update(1)

    def take(res: ClipResult) -> None:
        summary.record(res)
        if res.status == "exported":
            done.add(res.name)
        tick()

    jobs = _jobs(shards, layout, options, summary, done, tick, chosen)
    try:
        if workers == 1:
            for job in jobs:
                take(convert(job))
            return
        import multiprocessing

        # forkserver: never fork a driver that holds fsspec's event-loop threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            pending: dict[Future, str] = {}
            try:
                for job in jobs:
                    pending[pool.submit(convert, job)] = job.name
                    if len(pending) >= 2 * workers:  # bounded: samples in flight hold their media in memory
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            pending.pop(fut)
                            take(fut.result())
                for fut in list(pending):
                    pending.pop(fut)
                    take(fut.result())
            except BrokenProcessPool as e:
                # a worker died (killed, out of memory): its clips are named, the rest is left for the rerun
                for name in pending.values():
                    summary.record(ClipResult(name, "error", "worker_died",
                                              f"{name}: a worker process died ({e}); rerun the same command to "
                                              f"resume (fewer --workers if it ran out of memory)"))
    finally:
        bar.close()


def _complete_entries(layout: BYAFolder, done: set[str]) -> list[dict[str, Any]]:
    """The anno entries of every complete clip in DEST: those of this run, and any other export's into the
    same DEST whose files are all there."""
    from .bya_layout import read_entry

    entries = []
    for p in sorted(layout.entries.glob("*.json")):
        name = p.stem
        if p.name.startswith("."):
            continue
        if name in done or is_complete(layout, name, None):
            doc = read_entry(layout, name)
            if doc is not None:
                entries.append(doc["entry"])
    return entries
