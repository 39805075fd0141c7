"""The dataset report: ``OUT/report/index.html`` plus the PNG/JPEG files it links, built from OUT alone.

What it shows: shard progress (which planned shards are not committed yet), the funnel per stage and the
rejections by reason, histograms of the stats that decide what is kept with the configured thresholds
(which stats, and how, each stage declares in its ``report_views``), the cost per stage of the last run,
and a gallery of kept clips (middle frame with both masks and face boxes, the two references, who
speaks when, both separated tracks, caption, scores) and rejected candidates (the source frame at the
candidate's middle, reason and message).

The rooms: ``report_data`` reads OUT (shard states, committed manifests, the run config, the few samples
the gallery shows), ``report_views`` turns the stages' declared views into histograms and card scores,
``report_cards`` makes the gallery, ``report_plots`` draws, ``report_html`` renders
``templates/report.html.j2``; this module gathers them and publishes the folder.

The folder opens from disk: no script, no network, inline CSS, images by relative path. Every string that
comes from data (file names, messages, captions) is HTML-escaped (the template autoescapes). Files are
staged and then renamed into place, the page last, so a reader never sees a half-written file or a page
that links a missing one.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mtcc.manifests.funnel import StageCount, funnel
from mtcc.manifests.paths import OutPaths
from mtcc.storage.files import fsync_dir, fsync_file

from . import report_plots as plots
from .report_cards import gallery
from .report_data import (
    PLAN_STAGE,
    committed_manifests,
    evenly,
    last_run,
    pick_kept,
    pick_rejected,
    run_config,
    shard_states,
    stage_file,
    stage_order,
    timing_rows,
)
from .report_html import render_html
from .report_index import index_section
from .report_views import histogram_section, stat_views

DEFAULT_SAMPLES = 4

__all__ = ["DEFAULT_SAMPLES", "ReportError", "evenly", "pick_kept", "pick_rejected", "write_report"]


class ReportError(RuntimeError):
    pass


def funnel_section(counts: list[StageCount], stage_dir: Path) -> dict[str, Any]:
    counts = [c for c in counts if c.entered or c.rejected or c.stage != PLAN_STAGE]
    stage_file(stage_dir / "plots" / "funnel.png",
               plots.funnel_png([c.stage for c in counts], [c.entered for c in counts], [c.passed for c in counts]))
    reasons = [(f"{c.stage}: {why}", k) for c in counts for why, k in sorted(c.rejected.items())]
    out = {"funnel": "plots/funnel.png", "reasons": None}
    if reasons:
        stage_file(stage_dir / "plots" / "rejections.png",
                   plots.reasons_png([r for r, _ in reasons], [k for _, k in reasons]))
        out["reasons"] = "plots/rejections.png"
    return out


def _publish(stage_dir: Path, report_dir: Path) -> None:
    """Rename every staged file into place (the page last), then drop files no page links any more."""
    published = set()
    for sub in ("plots", "gallery"):
        src_dir = stage_dir / sub
        dst_dir = report_dir / sub
        dst_dir.mkdir(exist_ok=True)
        for p in sorted(src_dir.glob("*")) if src_dir.is_dir() else []:
            fsync_file(p)
            os.replace(p, dst_dir / p.name)
            published.add((sub, p.name))
        fsync_dir(dst_dir)
    page = stage_dir / "index.html"
    fsync_file(page)
    os.replace(page, report_dir / "index.html")
    fsync_dir(report_dir)
    for sub in ("plots", "gallery"):
        for p in (report_dir / sub).glob("*"):
            if (sub, p.name) not in published and p.is_file():
                p.unlink()


def write_report(out: str | Path, samples: int = DEFAULT_SAMPLES,
                 warn: Callable[[str], None] = lambda m: None, url: str | None = None) -> Path:
    """Render OUT's report into OUT/report; returns the page's path. Works on an empty, partial or
    complete OUT (no plan, no commit, some shards missing). With ``url`` (an fsspec OUT), ``out`` is a local
    view of that OUT's metadata (pipeline/remote.py): the page names the URL and reads the gallery's tars
    from it."""
    layout = OutPaths(Path(out).absolute())
    if not layout.root.is_dir():
        raise ReportError(f"{layout.root} does not exist")
    report_dir = layout.root / "report"
    report_dir.mkdir(exist_ok=True)
    # one writer at a time (a build's refresh and a `mtcc report` may overlap); the staged files of a
    # writer that died are stale once we hold the lock
    with open(report_dir / ".report.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for p in report_dir.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
        stage_dir = Path(tempfile.mkdtemp(prefix=".staging-", dir=report_dir))
        try:
            page = _render(layout, samples, stage_dir, warn, url)
            stage_file(stage_dir / "index.html", page.encode("utf-8"))
            _publish(stage_dir, report_dir)
        finally:
            shutil.rmtree(stage_dir, ignore_errors=True)
    return report_dir / "index.html"


def _render(layout: OutPaths, samples: int, stage_dir: Path, warn: Callable[[str], None],
            url: str | None = None) -> str:
    states = shard_states(layout)
    table = committed_manifests(layout, states, warn) if states else None
    cfg = run_config(layout)
    last = last_run(layout)
    order = stage_order(cfg, table)
    ctx: dict[str, Any] = {
        "out": url or str(layout.root), "title": url.rsplit("/", 1)[-1] if url else layout.root.name,
        "states": states, "table": table,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "profile": (cfg.get("config") or {}).get("profile"), "config_hash": cfg.get("config_hash"),
        "last_run": last, "random": [], "counts": [], "histograms": [], "timing": [], "gallery": ([], []),
        "funnel_plots": {},
    }
    if table is not None:
        views = stat_views(order)
        ctx["counts"] = funnel(table, order)
        ctx["funnel_plots"] = funnel_section(ctx["counts"], stage_dir)
        ctx["histograms"] = histogram_section(table, cfg, views, stage_dir)
        ctx["timing"] = timing_rows(last, order)
        shown = [r for r in ctx["timing"] if r["s_per"] is not None]
        if shown:
            stage_file(stage_dir / "plots" / "throughput.png",
                       plots.throughput_png([r["stage"] for r in shown], [r["s_per"] for r in shown]))
        pools = (last or {}).get("pools") or {}
        if len(pools.get("timeline") or []) >= 2:
            stage_file(stage_dir / "plots" / "pools.png", plots.pools_png(pools["timeline"]))
            ctx["pools"] = pools
        ctx["random"] = sorted(c.split(".")[0] for c in table.column_names
                               if c.endswith(".random_weights") and pc.any(table.column(c)).as_py())
        ctx["gallery"] = gallery(layout, table, samples, stage_dir, warn, views, url)
        kept = sum(int((s.commit or {}).get("samples") or 0) for s in states if s.state == "committed")
        try:
            ctx["index"] = index_section(layout, kept)
        except (OSError, ValueError, pa.ArrowException) as e:
            warn(f"report: the index under {layout.index_dir} is unreadable ({e}); run `mtcc index` again")
    return render_html(ctx)
