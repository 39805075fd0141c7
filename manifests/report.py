"""The dataset report: ``OUT/report/index.html`` plus the PNG/JPEG files it links, built from OUT alone.

What it shows: shard progress (which planned shards are not committed yet), the funnel per stage and the
rejections by reason, histograms of the stats that decide what is kept (duration, face size, distance
ratio, Sync-C/Sync-D, offsets, mask area) with the configured thresholds, the cost per stage of the last
run, and a gallery of kept clips (middle frame with both masks and face boxes, the two references, both
separated tracks, caption, scores) and rejected candidates (the source frame at the candidate's middle,
reason and message).

Only committed shards are read (a shard is done iff its commit file exists; checksums are ``mtcc
verify``'s job), so the report is safe to render while a build runs. The folder opens from disk: no
script, no network, inline CSS, images by relative path. Every string that comes from data (file
names, messages, captions) is HTML-escaped. Files are staged and then renamed into place, the page
last, so a reader never sees a half-written file or a page that links a missing one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import html
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtcc.manifests.funnel import StageCount, funnel
from mtcc.manifests.members import members_except
from mtcc.manifests.shard_tar import ShardTarError, read_samples
from mtcc.pipeline.shard import Layout
from mtcc.stages.media import (MediaError, ff_input, fsync_dir, fsync_file, is_remote_source, local_source,
                               run_tool)

from . import report_plots as plots

DEFAULT_SAMPLES = 4
MAX_LISTED_SHARDS = 200  # a plan can hold 100k shards: the page lists the first missing ones and counts the rest
PLAN_STAGE = "plan"
GALLERY_MEMBERS = members_except("mix.flac", "route.npy", "audio_emb.npy")
FRAME_TIMEOUT_S = 120.0

# (file stem, title, x label, manifest columns, level, integer-valued, config thresholds as
# (label, "stage.field", sign)); columns of one plot are pooled (both characters)
HISTOGRAMS: tuple[tuple[str, str, str, tuple[str, ...], str, bool, tuple[tuple[str, str, int], ...]], ...] = (
    ("duration_video", "Input video duration", "seconds", ("probe.duration",), "video", False,
     (("min_duration", "probe.min_duration", 1), ("max_duration", "probe.max_duration", 1))),
    ("duration_clip", "Clip duration", "seconds", ("@clip_duration",), "clip", False, ()),
    ("face_size", "Face size (mean box width, source px)", "pixels", ("distance.face_px",), "clip", False,
     (("min_face_px", "segment.min_face_px", 1),)),
    ("distance_ratio", "Distance ratio (face size / centre distance)", "ratio", ("distance.ratio",), "clip", False,
     (("min_ratio", "distance.min_ratio", 1),)),
    ("sync_c", "Sync-C (both characters)", "confidence", ("sync.sync_c_0", "sync.sync_c_1"), "clip", False,
     (("min_sync_c (mean)", "sync.min_sync_c", 1),)),
    ("sync_d", "Sync-D (both characters)", "distance", ("sync.sync_d_0", "sync.sync_d_1"), "clip", False, ()),
    ("offset", "AV offset (both characters)", "frames at 25 fps", ("sync.offset_0", "sync.offset_1"), "clip", True,
     (("-max_abs_offset", "sync.max_abs_offset", -1), ("+max_abs_offset", "sync.max_abs_offset", 1))),
    ("mask_area", "Mask area (both characters)", "fraction of the frame", ("masks.area_0", "masks.area_1"), "clip",
     False, (("min_area", "masks.min_area", 1),)),
)

# scores shown on a gallery card, when the build recorded them
CARD_SCORES = (
    ("duration", "@clip_duration"), ("face px", "distance.face_px"), ("distance ratio", "distance.ratio"),
    ("Sync-C 0/1", ("sync.sync_c_0", "sync.sync_c_1")), ("Sync-D 0/1", ("sync.sync_d_0", "sync.sync_d_1")),
    ("offset 0/1", ("sync.offset_0", "sync.offset_1")), ("mask area 0/1", ("masks.area_0", "masks.area_1")),
    ("mask overlap", "masks.overlap"), ("speech s 0/1", ("separate.speech_s_0", "separate.speech_s_1")),
    ("speaking 0/1", ("asd.speaking_0", "asd.speaking_1")), ("both speaking", "asd.both_speaking"),
    ("turns", "asd.turns"), ("split screen", "layout.split_screen"),
)


class ReportError(RuntimeError):
    pass


@dataclass
class ShardState:
    shard: int
    state: str  # committed | partial | pending | broken (committed, manifest unreadable)
    inputs: list[str]
    commit: dict[str, Any] | None = None


@dataclass
class Card:
    kind: str  # kept | rejected
    key: str
    source: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative path, alt text)
    placeholder: str | None = None
    caption: str | None = None
    scores: list[tuple[str, str]] = field(default_factory=list)
    stage: str | None = None
    reason: str | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- data


def shard_states(layout: Layout) -> list[ShardState]:
    """Every planned shard with its state; empty when OUT has no plan yet."""
    if not layout.plan.exists():
        return []
    plan = pq.read_table(layout.plan, columns=["shard", "source"])
    inputs: dict[int, list[str]] = {}
    for s, src in zip(plan.column("shard").to_pylist(), plan.column("source").to_pylist()):
        inputs.setdefault(int(s), []).append(src)
    out = []
    for s in sorted(inputs):
        commit = None
        if layout.commit(s).exists():
            try:
                commit = json.loads(layout.commit(s).read_text())
            except (OSError, ValueError):
                commit = None
        if commit is not None:
            state = "committed"
        elif any(p.exists() for p in (layout.tar(s), layout.temp(layout.tar(s)), layout.manifest(s),
                                      layout.temp(layout.manifest(s)))):
            state = "partial"
        else:
            state = "pending"
        out.append(ShardState(s, state, inputs[s], commit))
    return out


def committed_manifests(layout: Layout, states: Sequence[ShardState],
                        warn: Callable[[str], None] = lambda m: None) -> pa.Table | None:
    """The manifests of committed shards only: an uncommitted shard's manifest may be stale or partial.
    A committed shard whose manifest cannot be read is marked ``broken`` (``mtcc verify`` says more)."""
    tables = []
    for st in states:
        if st.state != "committed":
            continue
        path = layout.manifest(st.shard)
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as e:
            st.state = "broken"
            warn(f"report: shard {st.shard:06d} is committed but its manifest is unreadable: {e}")
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    return table.drop_columns([c for c in ("extra_json",) if c in table.column_names])


def stage_order(layout: Layout, table: pa.Table | None) -> list[str]:
    """The plan pseudo-stage, then the config's enabled stages in order (the funnel needs every stage,
    also those nothing stopped at); falls back to the stages the manifests name."""
    try:
        cfg = json.loads(layout.run_config.read_text())
        stages = cfg["config"]["stages"]
        return [PLAN_STAGE] + [n for n in cfg["stage_order"] if stages.get(n, {}).get("enabled", True)]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names = [PLAN_STAGE]
    if table is not None:
        for n in table.column("stage").to_pylist():
            if n and n not in names:
                names.append(n)
    return names


def _config(layout: Layout) -> dict[str, Any]:
    try:
        return json.loads(layout.run_config.read_text())
    except (OSError, ValueError):
        return {}


def _threshold(cfg: dict[str, Any], dotted: str) -> float | None:
    stage, _, name = dotted.partition(".")
    try:
        st = cfg["config"]["stages"][stage]
    except (KeyError, TypeError):
        return None
    if not st.get("enabled", True):
        return None
    value = st.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _column(table: pa.Table, name: str) -> pa.Array | None:
    if name == "@clip_duration":
        return pc.subtract(table.column("end"), table.column("start")).combine_chunks()
    if name not in table.column_names:
        return None
    return table.column(name).combine_chunks()


def _values(table: pa.Table, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(values of rows that passed, values of rows rejected somewhere), both characters pooled."""
    rejected = pc.equal(table.column("status"), "rejected").combine_chunks()
    kept, rej = [], []
    for name in columns:
        col = _column(table, name)
        if col is None:
            continue
        valid = pc.is_valid(col)
        kept.append(pc.filter(col, pc.and_(valid, pc.invert(rejected))).to_numpy(zero_copy_only=False))
        rej.append(pc.filter(col, pc.and_(valid, rejected)).to_numpy(zero_copy_only=False))
    k, r = _concat(kept), _concat(rej)
    return k[np.isfinite(k)], r[np.isfinite(r)]


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def _rows_of(table: pa.Table, keys: Sequence[str]) -> list[dict[str, Any]]:
    """Full rows of the chosen keys only, in the order given: converting every kept row of a big
    dataset to Python just to show four of them would take minutes."""
    rows = table.filter(pc.is_in(table.column("key"), value_set=pa.array(list(keys), pa.string()))).to_pylist()
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(r["key"], r)
    return [first[k] for k in keys if k in first]


def evenly(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (first and last included), order kept."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[0]]
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def pick_kept(table: pa.Table, n: int) -> list[dict[str, Any]]:
    """``n`` kept clips evenly spread over the keys in sorted order (deterministic)."""
    mask = pc.and_(pc.equal(table.column("status"), "kept"), pc.equal(table.column("level"), "clip"))
    keys = sorted(table.filter(mask).column("key").to_pylist())
    return _rows_of(table, evenly(keys, n))


def pick_rejected(table: pa.Table, n: int) -> list[dict[str, Any]]:
    """Round robin over reasons (sorted), by key within a reason: the gallery shows many kinds of
    rejection rather than n of the most common one."""
    rejected = table.filter(pc.equal(table.column("status"), "rejected")).select(["key", "reason"])
    by_reason: dict[str, list[str]] = {}
    for key, reason in sorted(zip(rejected.column("key").to_pylist(), rejected.column("reason").to_pylist()),
                              key=lambda kr: (kr[1] or "", kr[0])):
        by_reason.setdefault(reason or "", []).append(key)
    out: list[str] = []
    queues = [by_reason[k] for k in sorted(by_reason)]
    depth = 0
    while len(out) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return _rows_of(table, out)


def read_some(tar_path: Path | str, keys: Iterable[str], members: Sequence[str] = GALLERY_MEMBERS
              ) -> dict[str, dict[str, bytes]]:
    """The named members of the wanted samples of one shard tar. Members of other samples (and big
    ones the report does not need, like audio_emb.npy) are skipped without being read, and the scan
    stops after the last wanted sample: shards can be gigabytes. ``tar_path`` may be an fsspec URL (a
    remote OUT): the tar is then read by ranges, never downloaded whole."""
    wanted = set(keys)
    found: dict[str, dict[str, bytes]] = {}
    with contextlib.ExitStack() as stack:
        if isinstance(tar_path, Path):
            samples = read_samples(tar_path, select=lambda k: members if k in wanted else ())
        else:
            import fsspec

            samples = read_samples(stack.enter_context(fsspec.open(tar_path, "rb")), seek=True, where=tar_path,
                                   select=lambda k: members if k in wanted else ())
        stack.enter_context(contextlib.closing(samples))
        for key, got in samples:
            if key in wanted:
                found.setdefault(key, {}).update(got)
                if found.keys() == wanted:
                    break
    return found


# --------------------------------------------------------------------------------------- pictures


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def clip_frame(mp4: bytes, index: int) -> np.ndarray:
    """Frame ``index`` of a clip given as bytes (the write stage puts the moov atom first, so ffmpeg
    reads it from a pipe: no temp file)."""
    png = run_tool(["ffmpeg", "-v", "error", "-i", "pipe:0", "-vf", f"select=eq(n\\,{int(index)})",
                    "-fps_mode", "passthrough", "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "pipe:1"],
                   what=f"clip frame {index}", stdin=mp4, timeout=FRAME_TIMEOUT_S)
    if not png:
        raise MediaError(f"ffmpeg returned no frame {index}")
    return _decode_png(png)


def source_frame(source: str, t: float, width: int = 480) -> np.ndarray:
    path = local_source(source)
    png = run_tool(["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{max(t, 0.0):.3f}", "-i", ff_input(path),
                    "-frames:v", "1", "-vf", f"scale={width}:-2", "-f", "image2pipe", "-c:v", "png", "pipe:1"],
                   what=path, timeout=FRAME_TIMEOUT_S)
    if not png:
        raise MediaError(f"ffmpeg found no frame at {t:.2f}s")
    return _decode_png(png)


def _flac(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    y, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return y.mean(axis=1), rate


def _masks_at(rle: dict[str, Any], frame: int) -> list[np.ndarray | None]:
    from mtcc.stages import rle as rle_mod

    out: list[np.ndarray | None] = []
    for ch in sorted(rle.get("characters", []), key=lambda c: c.get("index", 0)):
        seq = ch.get("rle") or []
        out.append(rle_mod.decode(seq[frame]) if frame < len(seq) else None)
    return out


def _boxes_at(faces: dict[str, Any], frame: int, sx: float, sy: float) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for ch in sorted(faces.get("characters", []), key=lambda c: c.get("index", 0)):
        boxes = ch.get("boxes") or []
        if frame < len(boxes) and boxes[frame] is not None:
            x0, y0, x1, y1 = boxes[frame][:4]
            out.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
        else:
            out.append(None)
    return out


# --------------------------------------------------------------------------------------- the cards


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if np.isfinite(v) else str(v)
    return str(v)


def _scores(row: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for label, cols in CARD_SCORES:
        names = (cols,) if isinstance(cols, str) else cols
        vals = []
        for c in names:
            if c == "@clip_duration":
                vals.append(row["end"] - row["start"] if row.get("end") is not None and row.get("start") is not None
                            else None)
            else:
                vals.append(row.get(c))
        if any(v is not None for v in vals):
            out.append((label, " / ".join(_fmt(v) for v in vals)))
    return out


def _random_stages(row: dict[str, Any]) -> list[str]:
    return sorted(k.split(".")[0] for k, v in row.items() if k.endswith(".random_weights") and v)


def kept_card(row: dict[str, Any], sample: dict[str, bytes] | None, idx: int, stage_dir: Path,
              warn: Callable[[str], None]) -> Card:
    card = Card("kept", row["key"], row["source"] or "", scores=_scores(row))
    if sample is None:
        card.placeholder = "sample not found in its shard tar"
        return card
    meta: dict[str, Any] = {}
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        card.warnings.append("the sample's json member is not valid JSON")
    if meta.get("random_weights"):
        card.warnings.append("made with RANDOM weights in " + ", ".join(map(str, meta["random_weights"]))
                             + ": plumbing only, not training data")
    name = f"kept_{idx:02d}"
    try:
        card.images.append((_thumbnail(sample, meta, stage_dir / "gallery" / f"{name}.jpg"),
                            "middle frame with both characters' masks and face boxes"))
    except (MediaError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        warn(f"report: no thumbnail for {row['key']}: {e}")
        card.placeholder = f"no frame: {e}"
    for k in (0, 1):
        ref = sample.get(f"ref{k}.jpg")
        if ref:
            try:
                _write(stage_dir / "gallery" / f"{name}_ref{k}.jpg", plots.reencode_jpeg(ref))
                card.images.append((f"gallery/{name}_ref{k}.jpg", f"reference image of character {k}"))
            except (OSError, ValueError) as e:
                warn(f"report: unreadable ref{k}.jpg in {row['key']}: {e}")
    asd = meta.get("asd") or {}
    if asd.get("intervals") is not None:
        try:
            duration = float(row["end"] - row["start"]) if row.get("end") is not None else 0.0
            _write(stage_dir / "gallery" / f"{name}_speaking.png", plots.speaking_png(asd["intervals"], duration))
            said = "; ".join(f"character {k} speaks on {f:.0%} of frames"
                             for k, f in enumerate(asd.get("speaking_fraction") or []))
            card.images.append((f"gallery/{name}_speaking.png", f"speaking timeline: {said}"))
        except (OSError, ValueError, TypeError) as e:
            warn(f"report: no speaking timeline for {row['key']}: {e}")
    tracks = [sample[f"spk{k}.flac"] for k in (0, 1) if f"spk{k}.flac" in sample]
    if tracks:
        try:
            decoded = [_flac(t) for t in tracks]
            _write(stage_dir / "gallery" / f"{name}_wave.png",
                   plots.waveforms_png([y for y, _ in decoded], decoded[0][1]))
            card.images.append((f"gallery/{name}_wave.png", "separated speech of each character"))
        except (OSError, ValueError, RuntimeError) as e:
            warn(f"report: unreadable speech tracks in {row['key']}: {e}")
    if "caption.txt" in sample:
        card.caption = sample["caption.txt"].decode("utf-8", "replace")
    return card


def _thumbnail(sample: dict[str, bytes], meta: dict[str, Any], dst: Path) -> str:
    faces = json.loads(sample["faces.json"]) if "faces.json" in sample else {}
    rle = json.loads(sample["masks.rle.json"]) if "masks.rle.json" in sample else {}
    n = int(rle.get("frames") or faces.get("frames") or len((faces.get("characters") or [{}])[0].get("boxes", []))
            or 1)
    mid = n // 2
    frame = clip_frame(sample["mp4"], mid)
    h, w = frame.shape[:2]
    probe = meta.get("probe") or {}
    pw, ph = probe.get("width"), probe.get("height")
    if probe.get("rotation") in (90, -90, 270, -270):
        pw, ph = ph, pw
    # face boxes are in source pixels; the clip may have been scaled to even dimensions
    sx = w / pw if pw else 1.0
    sy = h / ph if ph else 1.0
    img = plots.overlay(frame, _masks_at(rle, mid) if rle else [], _boxes_at(faces, mid, sx, sy) if faces else [])
    _write(dst, plots.jpeg(img))
    return f"gallery/{dst.name}"


def rejected_card(row: dict[str, Any], idx: int, stage_dir: Path, warn: Callable[[str], None]) -> Card:
    card = Card("rejected", row["key"], row["source"] or "", scores=_scores(row), stage=row.get("stage"),
                reason=row.get("reason"), message=row.get("message"))
    rnd = _random_stages(row)
    if rnd:
        card.warnings.append("scores from RANDOM weights in " + ", ".join(rnd))
    if row.get("start") is not None and row.get("end") is not None:
        t = (row["start"] + row["end"]) / 2
    else:
        t = (row.get("probe.duration") or 0.0) / 2
    source = row["source"] or ""
    if not source:
        card.placeholder = "no source recorded"
    elif is_remote_source(source):
        card.placeholder = "remote source: not fetched for the report"
    elif not Path(local_source(source)).is_file():
        card.placeholder = "source file not found (moved or deleted since the build)"
    else:
        try:
            frame = source_frame(source, t)
            name = f"gallery/rejected_{idx:02d}.jpg"
            _write(stage_dir / name, plots.jpeg(frame))
            card.images.append((name, f"source frame at {t:.2f} s"))
        except (MediaError, OSError, ValueError) as e:
            card.placeholder = f"no frame: {e}"
    return card


def gallery(layout: Layout, table: pa.Table, n: int, stage_dir: Path,
            warn: Callable[[str], None], url: str | None = None) -> tuple[list[Card], list[Card]]:
    kept_rows = pick_kept(table, n)
    by_shard: dict[int, list[str]] = {}
    for r in kept_rows:
        by_shard.setdefault(int(r["shard"]), []).append(r["key"])
    samples: dict[str, dict[str, bytes]] = {}
    for shard, keys in sorted(by_shard.items()):
        try:
            # a remote OUT's tars stay remote: ``layout`` is only a local view of its metadata
            tar = f"{url}/shards/{layout.tar(shard).name}" if url else layout.tar(shard)
            samples.update(read_some(tar, keys))
        except (OSError, tarfile.TarError, ShardTarError) as e:
            warn(f"report: cannot read {layout.tar(shard).name}: {e}")
    kept = [kept_card(r, samples.get(r["key"]), i, stage_dir, warn) for i, r in enumerate(kept_rows)]
    rejected = [rejected_card(r, i, stage_dir, warn) for i, r in enumerate(pick_rejected(table, n))]
    return kept, rejected


# --------------------------------------------------------------------------------------- the plots


def funnel_section(counts: list[StageCount], stage_dir: Path) -> dict[str, Any]:
    counts = [c for c in counts if c.entered or c.rejected or c.stage != PLAN_STAGE]
    _write(stage_dir / "plots" / "funnel.png",
           plots.funnel_png([c.stage for c in counts], [c.entered for c in counts], [c.passed for c in counts]))
    reasons = [(f"{c.stage}: {why}", k) for c in counts for why, k in sorted(c.rejected.items())]
    out = {"funnel": "plots/funnel.png", "reasons": None}
    if reasons:
        _write(stage_dir / "plots" / "rejections.png",
               plots.reasons_png([r for r, _ in reasons], [k for _, k in reasons]))
        out["reasons"] = "plots/rejections.png"
    return out


def histogram_section(table: pa.Table, cfg: dict[str, Any], stage_dir: Path) -> list[dict[str, Any]]:
    out = []
    levels = table.column("level")
    for stem, title, xlabel, columns, level, integer, thresholds in HISTOGRAMS:
        sub = table.filter(pc.equal(levels, level))
        kept, rej = _values(sub, columns)
        if kept.size + rej.size == 0:
            continue
        lines = []
        for label, dotted, sign in thresholds:
            v = _threshold(cfg, dotted)
            if v is not None:
                lines.append((label, sign * v))
        both = np.concatenate([kept, rej])
        # a threshold far outside the data (max_duration 6 h next to 8 s clips) would squash the bars
        lo, hi = float(both.min()), float(both.max())
        span = max(hi - lo, abs(hi), 1e-9)
        lines = [(lab, v) for lab, v in lines if lo - span <= v <= hi + span]
        path = f"plots/{stem}.png"
        _write(stage_dir / path, plots.histogram_png(title, xlabel, kept, rej, lines, integer))
        out.append({"title": title, "path": path, "n": int(both.size), "kept": kept, "rejected": rej,
                    "columns": columns})
    return out


def timing_section(last_run: dict[str, Any], order: Sequence[str], stage_dir: Path) -> list[dict[str, Any]]:
    timing = last_run.get("stage_timing") or {}
    rows = []
    for name in [*[s for s in order if s in timing], *sorted(set(timing) - set(order))]:
        t = timing[name]
        cands, busy = int(t.get("candidates") or 0), float(t.get("busy_s") or 0.0)
        rows.append({"stage": name, "batches": int(t.get("batches") or 0), "candidates": cands, "busy_s": busy,
                     "per_s": cands / busy if busy > 0 else None,
                     "s_per": busy / cands if cands else None})
    shown = [r for r in rows if r["s_per"] is not None]
    if shown:
        _write(stage_dir / "plots" / "throughput.png",
               plots.throughput_png([r["stage"] for r in shown], [r["s_per"] for r in shown]))
    return rows


# ---------------------------------------------------------------------------------------------- html

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:0 24px 48px;color:#1d2733;
background:#f6f7f9;line-height:1.4}
header{padding:18px 0 6px}h1{margin:0 0 4px;font-size:24px}h2{margin-top:34px;border-bottom:1px solid #d5dbe3;
padding-bottom:4px}.muted{color:#5d6b7b;font-size:13px}.banner{background:#fff4ce;border:1px solid #e0c050;
padding:10px 14px;border-radius:6px;margin:12px 0}.banner.bad{background:#fde2e1;border-color:#d9534f}
.cards{display:flex;flex-wrap:wrap;gap:10px}.stat{background:#fff;border:1px solid #dde3ea;border-radius:8px;
padding:10px 14px;min-width:130px}.stat b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0}td,th{border:1px solid #dde3ea;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}td.n{text-align:right;
font-variant-numeric:tabular-nums}img.plot{max-width:100%;background:#fff;border:1px solid #dde3ea;border-radius:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:10px}.card.rejected{border-left:4px solid
#c0392b}.card.kept{border-left:4px solid #2e8b57}.card img{max-width:100%;display:block;margin:4px 0}
.refs{display:flex;gap:6px;align-items:flex-start}.refs img{max-width:48%;border:1px solid #dde3ea}.key{font-family:ui-monospace,monospace;
font-size:12px;word-break:break-all}.caption{font-style:italic;white-space:pre-wrap;overflow-wrap:anywhere}
.placeholder{background:#eceff3;color:#5d6b7b;padding:40px 10px;text-align:center;border-radius:6px;
overflow-wrap:anywhere}.warn{color:#8a5a00;font-size:12px}.msg{overflow-wrap:anywhere}
.src{font-size:12px;color:#5d6b7b;overflow-wrap:anywhere}
"""


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _img(path: str, alt: str, cls: str = "") -> str:
    c = f' class="{e(cls)}"' if cls else ""
    return f'<img{c} src="{e(path)}" alt="{e(alt)}" loading="eager">'


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = ' class="n"' if i in numeric else ""
            cells.append(f"<td{cls}>{v if isinstance(v, _Raw) else e(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


class _Raw(str):
    """Markup this module built itself (already escaped); every other cell value is escaped."""


def _card_html(c: Card) -> str:
    parts = [f'<div class="card {e(c.kind)}"><div class="key">{e(c.key)}</div>',
             f'<div class="src">source: {e(c.source)}</div>']
    if c.reason:
        parts.append(f"<div><b>rejected at {e(c.stage)}: {e(c.reason)}</b></div>")
    if c.message:
        parts.append(f'<div class="msg">{e(c.message)}</div>')
    for w in c.warnings:
        parts.append(f'<div class="warn">&#9888; {e(w)}</div>')
    side = ("_wave.png", "_speaking.png")
    main = [(p, a) for p, a in c.images if "_ref" not in p and not p.endswith(side)]
    refs = [(p, a) for p, a in c.images if "_ref" in p]
    waves = [(p, a) for p, a in c.images if p.endswith("_wave.png")]
    for p, a in main:
        parts.append(_img(p, a))
    if c.placeholder:
        parts.append(f'<div class="placeholder">{e(c.placeholder)}</div>')
    if refs:
        parts.append('<div class="refs">' + "".join(_img(p, a) for p, a in refs) + "</div>")
    for p, a in c.images:
        if p.endswith("_speaking.png"):
            parts.append(_img(p, a, "speaking"))
    for p, a in waves:
        parts.append(_img(p, a))
    if c.caption is not None:
        parts.append(f'<div class="caption">{e(c.caption)}</div>')
    if c.scores:
        parts.append(_table(["score", "value"], c.scores, numeric=(1,)))
    parts.append("</div>")
    return "".join(parts)


def _summary_stats(values: np.ndarray) -> list[str]:
    if values.size == 0:
        return ["–"] * 3
    return [_fmt(float(np.min(values))), _fmt(float(np.median(values))), _fmt(float(np.max(values)))]


def render_html(ctx: dict[str, Any]) -> str:
    states: list[ShardState] = ctx["states"]
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>MTCC report: {e(ctx['title'])}</title><style>{CSS}</style></head><body>",
             f"<header><h1>MTCC dataset report</h1><div class=\"muted\">{e(ctx['out'])}<br>generated "
             f"{e(ctx['generated'])}"]
    if ctx.get("profile") or ctx.get("config_hash"):
        parts.append(f" &middot; profile {e(ctx.get('profile') or '?')} &middot; config {e(ctx.get('config_hash') or '?')}")
    parts.append("</div></header>")

    if not states:
        parts.append('<div class="banner">No plan yet: nothing has been built in this folder. Run '
                     "<code>mtcc run CONFIG --input VIDEOS --output OUT</code>.</div></body></html>")
        return "".join(parts)

    committed = [s for s in states if s.state == "committed"]
    missing = [s for s in states if s.state != "committed"]
    if ctx["random"]:
        parts.append('<div class="banner bad">&#9888; Stages ' + e(", ".join(ctx["random"])) +
                     " ran with RANDOM weights: their outputs (separated speech, sync scores, masks, embeddings, "
                     "captions) are plumbing only, not training data.</div>")
    if missing:
        parts.append(f'<div class="banner">{len(missing)} of {len(states)} planned shards are not committed yet: '
                     "the numbers below cover committed shards only.</div>")
    table: pa.Table | None = ctx["table"]
    counts = ctx["counts"]
    samples = sum(int((s.commit or {}).get("samples") or 0) for s in committed)
    cards = [("shards committed", f"{len(committed)} / {len(states)}"),
             ("input videos", str(sum(len(s.inputs) for s in states))),
             ("samples (kept clips)", str(samples))]
    if table is not None:
        st = pc.value_counts(table.column("status")).to_pylist()
        by = {d["values"]: d["counts"] for d in st}
        cards += [("candidates", str(table.num_rows)), ("rejected", str(by.get("rejected", 0)))]
    lr = ctx["last_run"]
    if lr:
        cards.append(("last run", f"{_fmt(lr.get('wall_s'))} s, {len(lr.get('built') or [])} built, "
                                  f"{len(lr.get('failed') or {})} failed"))
    parts.append('<div class="cards">' + "".join(f'<div class="stat"><b>{e(v)}</b>{e(k)}</div>' for k, v in cards)
                 + "</div>")

    parts.append("<h2>Shards</h2>")
    if missing:
        listed = missing[:MAX_LISTED_SHARDS]
        parts.append(_table(["shard", "state", "inputs"],
                            [(f"{s.shard:06d}", s.state, _Raw("<br>".join(e(Path(i).name) for i in s.inputs)))
                             for s in listed]))
        if len(missing) > len(listed):
            parts.append(f'<p class="muted">… and {len(missing) - len(listed)} more not committed.</p>')
        parts.append('<p class="muted">partial: files of an interrupted or running attempt exist; pending: not '
                     "started; broken: committed, but its manifest is unreadable (run <code>mtcc verify</code>). "
                     "Rerunning the same <code>mtcc run</code> command builds them.</p>")
    else:
        parts.append(f"<p>All {len(states)} planned shards are committed.</p>")
    failed = (lr or {}).get("failed") or {}
    if failed:
        parts.append("<p>Failed in the last run:</p>" + _table(["shard", "why"], sorted(failed.items())))

    if table is None:
        parts.append("<h2>Funnel</h2><p>No shard is committed yet: no manifest to report on.</p></body></html>")
        return "".join(parts)

    parts.append("<h2>Funnel</h2>" + _img(ctx["funnel_plots"]["funnel"], "funnel: candidates per stage", "plot"))
    parts.append(_table(["stage", "in", "passed", "rejected", "clips made"],
                        [(c.stage, c.entered, c.passed, sum(c.rejected.values()), c.produced or "")
                         for c in counts], numeric=(1, 2, 3, 4)))
    parts.append("<h2>Rejections by reason</h2>")
    reasons = [(c.stage, why, k) for c in counts for why, k in sorted(c.rejected.items())]
    if reasons:
        parts.append(_img(ctx["funnel_plots"]["reasons"], "rejections by stage and reason", "plot"))
        parts.append(_table(["stage", "reason", "count"], reasons, numeric=(2,)))
    else:
        parts.append("<p>Nothing was rejected.</p>")

    parts.append("<h2>Distributions</h2>")
    hists = ctx["histograms"]
    if hists:
        parts.append('<p class="muted">green: candidates that passed (kept clips, or videos that went on); red: '
                     "rejected at some stage; dashed: the configured threshold.</p>")
        parts.append('<div class="grid">' + "".join(_img(h["path"], h["title"], "plot") for h in hists) + "</div>")
        parts.append(_table(["stat", "columns", "n", "min", "median", "max", "median (kept)"],
                            [(h["title"], ", ".join(h["columns"]), h["n"],
                              *_summary_stats(np.concatenate([h["kept"], h["rejected"]])),
                              _summary_stats(h["kept"])[1]) for h in hists], numeric=(2, 3, 4, 5, 6)))
    else:
        parts.append("<p>No stats recorded yet.</p>")

    parts.append("<h2>Throughput</h2>")
    timing = ctx["timing"]
    if timing:
        if any(r["s_per"] is not None for r in timing):
            parts.append(_img("plots/throughput.png", "busy seconds per candidate per stage", "plot"))
        parts.append(_table(["stage", "batches", "candidates", "busy s", "candidates/s", "s/candidate"],
                            [(r["stage"], r["batches"], r["candidates"], _fmt(r["busy_s"]), _fmt(r["per_s"]),
                              _fmt(r["s_per"])) for r in timing], numeric=(1, 2, 3, 4, 5)))
        parts.append(f'<p class="muted">last run: runner {e(lr.get("runner"))}, wall {_fmt(lr.get("wall_s"))} s, '
                     f"startup {_fmt(lr.get('startup_s'))} s. Busy time runs from a batch's submission to its "
                     "result, so it includes queueing inside the stage's actors.</p>")
    else:
        parts.append("<p>No stage timing: the last run built no shard (or OUT has no last_run.json).</p>")

    kept, rejected = ctx["gallery"]
    parts.append(f"<h2>Gallery: kept clips ({len(kept)})</h2>")
    parts.append('<p class="muted">middle frame, character 0 in orange, character 1 in blue (mask tint and face '
                 "box); the reference images; each character's separated speech.</p>")
    parts.append('<div class="gallery">' + "".join(_card_html(c) for c in kept) + "</div>" if kept
                 else "<p>No kept clip yet.</p>")
    parts.append(f"<h2>Gallery: rejected ({len(rejected)})</h2>")
    parts.append('<div class="gallery">' + "".join(_card_html(c) for c in rejected) + "</div>" if rejected
                 else "<p>Nothing rejected.</p>")
    parts.append("</body></html>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------- writing


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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
    layout = Layout(Path(out).absolute())
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
            _write(stage_dir / "index.html", page.encode("utf-8"))
            _publish(stage_dir, report_dir)
        finally:
            shutil.rmtree(stage_dir, ignore_errors=True)
    return report_dir / "index.html"


def _render(layout: Layout, samples: int, stage_dir: Path, warn: Callable[[str], None],
            url: str | None = None) -> str:
    states = shard_states(layout)
    table = committed_manifests(layout, states, warn) if states else None
    cfg = _config(layout)
    try:
        last_run = json.loads((layout.root / "report" / "last_run.json").read_text())
    except (OSError, ValueError):
        last_run = {}
    order = stage_order(layout, table)
    ctx: dict[str, Any] = {
        "out": url or str(layout.root), "title": url.rsplit("/", 1)[-1] if url else layout.root.name,
        "states": states, "table": table,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "profile": (cfg.get("config") or {}).get("profile"), "config_hash": cfg.get("config_hash"),
        "last_run": last_run, "random": [], "counts": [], "histograms": [], "timing": [], "gallery": ([], []),
        "funnel_plots": {},
    }
    if table is not None:
        ctx["counts"] = funnel(table, order)
        ctx["funnel_plots"] = funnel_section(ctx["counts"], stage_dir)
        ctx["histograms"] = histogram_section(table, cfg, stage_dir)
        ctx["timing"] = timing_section(last_run, order, stage_dir)
        ctx["random"] = sorted(c.split(".")[0] for c in table.column_names
                               if c.endswith(".random_weights") and pc.any(table.column(c)).as_py())
        ctx["gallery"] = gallery(layout, table, samples, stage_dir, warn, url)
    return render_html(ctx)
