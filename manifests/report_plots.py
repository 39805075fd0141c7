"""The report's pictures, as PNG/JPEG bytes: plots (matplotlib, no pyplot) and gallery thumbnails.

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so that rendering a
report inside a build (or a notebook) neither needs a display nor touches the process's global
backend. PNGs are written without the software/version metadata so a rerun gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

# one colour per character everywhere in the report (overlay, boxes, waveforms, histograms)
CHAR_RGB = ((230, 120, 20), (30, 120, 230))
KEPT_COLOR = "#2e8b57"
REJECTED_COLOR = "#c0392b"
ENTERED_COLOR = "#b8c7dc"
PASSED_COLOR = "#34587f"
_PNG_META = {"Software": None}


def _figure(width: float, height: float, fit: bool = True):
    """``fit``: constrained layout, for plots whose tick labels (stage and reason names) vary in length;
    fixed-size plots skip it, as it doubles the drawing time."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained" if fit else None)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META)
    return buf.getvalue()


def _hex(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def funnel_png(stages: Sequence[str], entered: Sequence[int], passed: Sequence[int]) -> bytes:
    """Horizontal bars per stage (first at the top): candidates in, and how many went on."""
    fig = _figure(7.5, 0.45 * len(stages) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(stages))
    ax.barh(y, entered, color=ENTERED_COLOR, label="entered")
    ax.barh(y, passed, height=0.5, color=PASSED_COLOR, label="passed")
    for yi, e, p in zip(y, entered, passed):
        ax.text(max(e, 0), yi, f" {p}/{e}", va="center", fontsize=8)
    ax.set_yticks(y, list(stages))
    ax.invert_yaxis()
    ax.set_xlabel("candidates (videos, then clips)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max([*entered, 1]) * 1.2)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Funnel per stage")
    return _png(fig)


def reasons_png(labels: Sequence[str], counts: Sequence[int]) -> bytes:
    fig = _figure(7.5, 0.35 * max(len(labels), 1) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, counts, color=REJECTED_COLOR)
    for yi, c in zip(y, counts):
        ax.text(c, yi, f" {c}", va="center", fontsize=8)
    ax.set_yticks(y, list(labels))
    ax.invert_yaxis()
    ax.set_xlim(0, max([*counts, 1]) * 1.2)
    ax.set_xlabel("rejected candidates")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Rejections by stage and reason")
    return _png(fig)


def histogram_png(title: str, xlabel: str, kept: np.ndarray, rejected: np.ndarray,
                  thresholds: Sequence[tuple[str, float]] = (), integer: bool = False) -> bytes:
    """Stacked histogram of one stat: candidates that went on vs those rejected somewhere."""
    fig = _figure(5.0, 3.0, fit=False)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.17, top=0.9)
    ax = fig.add_subplot()
    # bins span the data and the threshold lines, so a threshold beside the data never squashes the bars
    both = np.concatenate([kept, rejected, np.asarray([v for _, v in thresholds], np.float64)])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if integer:
        bins = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.5, max(1.0, np.ceil((hi - lo + 1) / 40)))
    else:
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
        bins = np.linspace(lo - 0.05 * span, hi + 0.05 * span, 31)
    # one filled outline per group, not a rectangle per bin: the same bars for under half the drawing (every
    # build's report draws one histogram per stat)
    ax.hist([kept, rejected], bins=bins, stacked=True, histtype="stepfilled", color=[KEPT_COLOR, REJECTED_COLOR],
            label=[f"kept / passed ({kept.size})", f"rejected ({rejected.size})"])
    for name, value in thresholds:
        ax.axvline(value, color="black", linestyle="--", linewidth=1)
        ax.text(value, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    return _png(fig)


def throughput_png(stages: Sequence[str], seconds_per_candidate: Sequence[float]) -> bytes:
    """Busy seconds per candidate on a log axis: stages differ by five orders of magnitude."""
    fig = _figure(7.5, 0.4 * len(stages) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(stages))
    vals = np.maximum(np.asarray(seconds_per_candidate, np.float64), 1e-4)
    ax.barh(y, vals, color=PASSED_COLOR)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.3g} s", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(vals.min() / 2, vals.max() * 8)
    ax.set_yticks(y, list(stages))
    ax.invert_yaxis()
    ax.set_xlabel("busy seconds per candidate (last run, submission to result)")
    ax.set_title("Stage cost")
    return _png(fig)


def pools_png(timeline: Sequence[dict]) -> bytes:
    """Two panels over the run's time: actors per stage (steps), and each stage's intake of media seconds
    per wall second between two rebalances (the slope of what it took in)."""
    fig = _figure(7.5, 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    from matplotlib import colormaps

    for ax in (top, bottom):  # up to fourteen stages: twenty colours, none repeated
        ax.set_prop_cycle(color=colormaps["tab20"].colors)
    t = np.asarray([p["t"] for p in timeline], np.float64)
    stages = list(dict.fromkeys(k for p in timeline for k in p["actors"]))
    for name in stages:
        top.step(t, [p["actors"].get(name, 0) for p in timeline], where="post", label=name)
    top.set_ylabel("actors")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_title("Pools over the run")
    top.legend(fontsize=6, ncol=4, loc="upper right")
    ticks = [p for p in timeline if p.get("media")]
    for name in stages:
        pts = [(p["t"], p["media"][name]) for p in ticks if name in p["media"]]
        if len(pts) >= 2:
            tt = np.asarray([a for a, _ in pts])
            mm = np.asarray([b for _, b in pts])
            rate = np.diff(mm) / np.maximum(np.diff(tt), 1e-6)
            bottom.step(tt[1:], rate, where="pre", label=name)
    bottom.set_ylabel("media s / wall s")
    bottom.set_xlabel("seconds since the pools started")
    return _png(fig)


def waveforms_png(tracks: Sequence[np.ndarray], rate: int) -> bytes:
    """One small row per separated track, in its character's colour."""
    fig = _figure(3.2, 1.3, fit=False)
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.25, top=0.97, hspace=0.25)
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, y) in enumerate(zip(axes, tracks)):
        y = np.asarray(y, np.float32)
        t = np.arange(y.size) / rate
        # min/max envelope per pixel column: a plain plot of 100k samples is slow and aliased
        cols = 300
        if y.size > cols * 4:
            edges = np.linspace(0, y.size, cols + 1).astype(int)
            lo = np.minimum.reduceat(y, edges[:-1])
            hi = np.maximum.reduceat(y, edges[:-1])
            tc = t[edges[:-1]]
            ax.fill_between(tc, lo, hi, color=_hex(CHAR_RGB[k % 2]), linewidth=0)
        else:
            ax.plot(t, y, color=_hex(CHAR_RGB[k % 2]), linewidth=0.6)
        peak = float(np.abs(y).max()) if y.size else 0.0
        ax.set_ylim(-max(peak, 1e-3) * 1.05, max(peak, 1e-3) * 1.05)
        ax.set_yticks([])
        ax.text(0.0, 1.0, f"spk{k}", transform=ax.transAxes, fontsize=7, va="top")
        ax.tick_params(labelsize=6)
    axes[-1].set_xlabel("s", fontsize=6, labelpad=0)
    return _png(fig)


def speaking_png(intervals: Sequence[Sequence[Sequence[float]]], duration: float) -> bytes:
    """Who speaks when: one row per character, a bar in its colour over each speaking interval (s)."""
    fig = _figure(3.2, 0.3 + 0.28 * max(1, len(intervals)), fit=False)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.32, top=0.97)
    ax = fig.subplots()
    for k, spans in enumerate(intervals):
        y = len(intervals) - 1 - k
        ax.broken_barh([(a, b - a) for a, b in spans], (y - 0.35, 0.7), color=_hex(CHAR_RGB[k % 2]))
    ax.set_xlim(0, max(duration, 1e-3))
    ax.set_ylim(-0.6, len(intervals) - 0.4)
    ax.set_yticks(range(len(intervals)), [str(len(intervals) - 1 - i) for i in range(len(intervals))], fontsize=6)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("s (speaking, per character)", fontsize=6, labelpad=0)
    return _png(fig)


def overlay(frame: np.ndarray, masks: Sequence[np.ndarray | None], boxes: Sequence[Sequence[float] | None],
            alpha: float = 0.45) -> np.ndarray:
    """``frame`` (H, W, 3 uint8) with each character's mask tinted and its face box outlined."""
    out = frame.astype(np.float32)
    h, w = frame.shape[:2]
    for k, m in enumerate(masks):
        if m is None:
            continue
        if m.shape != (h, w):
            m = _resize_mask(m, h, w)
        colour = np.asarray(CHAR_RGB[k % 2], np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * colour
    img = out.clip(0, 255).astype(np.uint8)
    for k, b in enumerate(boxes):
        if b is not None:
            _outline(img, b, CHAR_RGB[k % 2])
    return img


def _resize_mask(m: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * m.shape[0] / h).astype(int)
    xs = (np.arange(w) * m.shape[1] / w).astype(int)
    return m[ys][:, xs]


def _outline(img: np.ndarray, box: Sequence[float], rgb: Sequence[int]) -> None:
    h, w = img.shape[:2]
    width = max(2, w // 160)  # still visible after the thumbnail is scaled down to ~360 px
    x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
    x0, x1 = sorted((max(0, min(w - 1, x0)), max(0, min(w - 1, x1))))
    y0, y1 = sorted((max(0, min(h - 1, y0)), max(0, min(h - 1, y1))))
    c = np.asarray(rgb, np.uint8)
    img[y0:y0 + width, x0:x1 + 1] = c
    img[max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = c
    img[y0:y1 + 1, x0:x0 + width] = c
    img[y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = c


def jpeg(rgb: np.ndarray, max_width: int = 360, quality: int = 85) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb[..., :3].astype(np.uint8)), "RGB")
    if img.width > max_width:
        img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def reencode_jpeg(data: bytes, max_width: int = 160) -> bytes:
    """A sample's JPEG re-encoded by PIL: the page only ever links images we wrote ourselves."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return jpeg(np.asarray(img.convert("RGB")), max_width=max_width)
