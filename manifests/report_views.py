"""The stats the report shows, learned from the stages the build ran: each stage declares its
``report_views`` next to its ``stats_schema`` (title, unit, plot, thresholds, card label), so a new stage's
stats reach the histograms and the gallery cards without this module naming it. The one view not owned
by a stage is the clip's duration (the manifest's own ``start`` / ``end``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtcc.stages import STAGES
from mtcc.stages.base import StatView

from . import report_plots as plots
from .report_data import clip_duration, stage_file, threshold, values

# the clip's own length: computed from the manifest's base columns, shown before every stage's clip stats
CLIP_DURATION = StatView(("@clip_duration",), "duration", plot="duration_clip", title="Clip duration",
                         unit="seconds")


@dataclass(frozen=True)
class View:
    """A stage's view with the manifest columns it reads and the stage whose config holds its thresholds."""

    stage: str
    view: StatView
    columns: tuple[str, ...]


def stat_views(order: Sequence[str]) -> list[View]:
    """The views of the stages in ``order`` (names the registry does not know are skipped: a build of an
    older release), video-level ones first, then the clip's duration, then the clip stats in stage order."""
    views = [View(name, v, tuple(f"{name}.{s}" for s in v.stats))
             for name in order if name in STAGES for v in STAGES[name].report_views]
    clip = View("", CLIP_DURATION, CLIP_DURATION.stats)
    return ([v for v in views if v.view.level == "video"] + [clip]
            + [v for v in views if v.view.level != "video"])


def video_duration_column(views: Sequence[View]) -> str | None:
    """The column holding an input video's length: the first video-level stat measured in seconds (a
    rejected video's gallery frame is taken at its middle)."""
    return next((v.columns[0] for v in views if v.view.level == "video" and v.view.unit == "seconds"), None)


def _column(name: str) -> str | Callable[[pa.Table], pa.Array]:
    return clip_duration if name == "@clip_duration" else name


def histogram_section(table: pa.Table, cfg: dict[str, Any], views: Sequence[View],
                      stage_dir: Path) -> list[dict[str, Any]]:
    """One histogram PNG per plotted view with data (kept vs rejected, the configured thresholds dashed)."""
    out = []
    levels = table.column("level")
    for v in views:
        sv = v.view
        if sv.plot is None:
            continue
        sub = table.filter(pc.equal(levels, sv.level))
        kept, rej = values(sub, [_column(c) for c in v.columns])
        if kept.size + rej.size == 0:
            continue
        lines = []
        for th in sv.thresholds:
            t = threshold(cfg, th.stage_name(v.stage), th.setting)
            if t is not None:
                lines.append((th.label, th.sign * t))
        both = np.concatenate([kept, rej])
        # a threshold far outside the data (max_duration 6 h next to 8 s clips) would squash the bars
        lo, hi = float(both.min()), float(both.max())
        span = max(hi - lo, abs(hi), 1e-9)
        lines = [(lab, x) for lab, x in lines if lo - span <= x <= hi + span]
        path = f"plots/{sv.plot}.png"
        stage_file(stage_dir / path, plots.histogram_png(sv.title, sv.unit, kept, rej, lines, sv.integer))
        out.append({"title": sv.title, "path": path, "n": int(both.size), "kept": kept, "rejected": rej,
                    "columns": v.columns})
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return f"{v:.3g}" if np.isfinite(v) else str(v)
    return str(v)


def card_scores(row: dict[str, Any], views: Sequence[View]) -> list[tuple[str, str]]:
    """(label, "a / b") of each card view the row recorded anything for."""
    out = []
    for v in views:
        if not v.view.card:
            continue
        vals = []
        for c in v.columns:
            if c == "@clip_duration":
                vals.append(row["end"] - row["start"] if row.get("end") is not None and row.get("start") is not None
                            else None)
            else:
                vals.append(row.get(c))
        if any(x is not None for x in vals):
            out.append((v.view.label, " / ".join(fmt(x) for x in vals)))
    return out


def summary(values_: np.ndarray) -> list[str]:
    """min, median, max (dashes when empty)."""
    if values_.size == 0:
        return ["–"] * 3
    return [fmt(float(np.min(values_))), fmt(float(np.median(values_))), fmt(float(np.max(values_)))]
