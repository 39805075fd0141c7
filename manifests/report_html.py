"""The report page, rendered from ``templates/report.html.j2`` with autoescape on: file names, messages and
captions are user data, and the page must show them as text, never run them."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import numpy as np
import pyarrow.compute as pc
from jinja2 import Environment, PackageLoader, StrictUndefined

from .report_views import fmt, summary

MAX_LISTED_SHARDS = 200  # a plan can hold 100k shards: the page lists the first missing ones and counts the rest

_ENV = Environment(loader=PackageLoader("mtcc.manifests", "templates"), autoescape=True,
                   undefined=StrictUndefined, keep_trailing_newline=False)
_ENV.filters["fmt"] = fmt
_ENV.filters["basename"] = lambda p: PurePath(p).name


def remote_io_kinds(rio: dict[str, Any]) -> str:
    """'fetch.throttled 4, plan.short_read 1' from a run's remote I/O summary (``last_run.json``)."""
    return ", ".join(f"{k} {v}" for k, v in (rio.get("retries_by_kind") or {}).items()) or "none"


def pool_rows(pools: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(resource, share of the cluster's resource-seconds the actors held, peak share) of the last Ray run."""
    if not pools:
        return []
    held, peak = pools.get("held_fraction") or {}, pools.get("peak_fraction") or {}

    def pct(v: Any) -> str:
        return f"{100 * v:.0f} %" if isinstance(v, (int, float)) else "-"

    return [(k.upper(), pct(held.get(k)), pct(peak.get(k))) for k in ("cpu", "gpu") if held.get(k) is not None]


def render_html(ctx: dict[str, Any]) -> str:
    """The page for what ``report._render`` gathered: the numbers are derived here, the markup is the
    template's."""
    states = ctx["states"]
    committed = [s for s in states if s.state == "committed"]
    missing = [s for s in states if s.state != "committed"]
    table = ctx["table"]
    lr = ctx["last_run"] or {}
    samples = sum(int((s.commit or {}).get("samples") or 0) for s in committed)
    cards = [("shards committed", f"{len(committed)} / {len(states)}"),
             ("input videos", str(sum(len(s.inputs) for s in states))),
             ("samples (kept clips)", str(samples))]
    if table is not None:
        by = {d["values"]: d["counts"] for d in pc.value_counts(table.column("status")).to_pylist()}
        cards += [("candidates", str(table.num_rows)), ("rejected", str(by.get("rejected", 0)))]
    if lr:
        cards.append(("last run", f"{fmt(lr.get('wall_s'))} s, {len(lr.get('built') or [])} built, "
                                  f"{len(lr.get('failed') or {})} failed"))
        rio = lr.get("remote_io") or {}
        if rio.get("retries") or rio.get("gave_up"):
            cards.append(("remote I/O retries", f"{rio.get('retries', 0)} ({remote_io_kinds(rio)}), "
                                                f"{rio.get('gave_up', 0)} given up"))
    counts = ctx["counts"]
    hists = ctx["histograms"]
    timing = ctx["timing"]
    kept, rejected = ctx["gallery"]
    return _ENV.get_template("report.html.j2").render(
        title=ctx["title"], out=ctx["out"], generated=ctx["generated"], profile=ctx.get("profile"),
        config_hash=ctx.get("config_hash"), states=states, missing=missing, listed=missing[:MAX_LISTED_SHARDS],
        random=ctx["random"], summary_cards=cards, failed=sorted((lr.get("failed") or {}).items()),
        has_manifest=table is not None,
        funnel_plots=ctx["funnel_plots"],
        funnel_rows=[(c.stage, c.entered, c.passed, sum(c.rejected.values()), c.produced or "") for c in counts],
        reasons=[(c.stage, why, k) for c in counts for why, k in sorted(c.rejected.items())],
        histograms=hists,
        histogram_rows=[(h["title"], ", ".join(h["columns"]), h["n"],
                         *summary(np.concatenate([h["kept"], h["rejected"]])), summary(h["kept"])[1]) for h in hists],
        timing=timing, timing_plot=any(r["s_per"] is not None for r in timing),
        timing_rows=[(r["stage"], r["batches"], r["candidates"], fmt(r["busy_s"]), fmt(r["per_s"]), fmt(r["s_per"]))
                     for r in timing],
        runner=lr.get("runner") or "", wall_s=fmt(lr.get("wall_s")), startup_s=fmt(lr.get("startup_s")),
        pools=ctx.get("pools"), pool_rows=pool_rows(ctx.get("pools")),
        index=ctx.get("index") or {"indexed": False, "selections": []}, samples=samples,
        kept=kept, rejected=rejected)
