"""``mtcc index OUT``: who is in a build and what is in it twice, a layer over the committed shards (which
it never changes), from their manifests alone (no tar is opened).

Under ``OUT/index/``:

  * ``identities.parquet``: one row per kept clip and character: ``shard``, ``key``, ``character``,
    ``identity`` (a person id, dense from 0), ``distance`` (to the identity's centre when it joined);
    ``identity_centres.parquet`` holds each identity's centre and size (pipeline/identity_clusters.py);
  * ``duplicates.parquet``: one row per kept clip that has a near-duplicate: ``group``, ``shard``, ``key``,
    ``kept`` (one member per group, chosen deterministically: the largest source picture, then the longest
    clip, then the first by shard and key); ``duplicate_pairs.parquet`` the pairs the groups were made of
    with their evidence (audio offset and bit error rate, frame hash distance, overlap);
  * ``state.json`` (written last): which shards are indexed, by their manifest's sha256.

Incremental: a run indexes only the shards committed since the last one, and identities already found keep
their ids. A shard whose commit changed (redone by a later build) makes the index start over, and says so.

Two clips are near-duplicates when their mixtures share enough identical audio sub-fingerprints at one
offset to be proposed (no all-pairs comparison: media/fingerprint.py), the sub-fingerprints agree at that
offset (bit error rate at most ``max_ber``; unrelated speech is near 0.5), the frames at the aligned
times look alike (median perceptual-hash distance at most ``max_frame_distance`` of 64 bits), and the
shared span covers at least ``min_overlap`` of the shorter clip. A silent clip is never grouped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtcc.manifests.paths import OutPaths
from mtcc.media.clip import CHARACTERS
from mtcc.media.fingerprint import AUDIO_HOP_S, QUIET, audio_ber, audio_pair_votes, frame_match

from .identity_clusters import IdentityBook

INDEX_VERSION = 1
DESCRIPTORS = tuple(f"identity.descriptor_{k}" for k in range(CHARACTERS))
FRAME_HASHES, FRAME_TIMES, AUDIO_HASHES = "fingerprint.frame_hashes", "fingerprint.frame_times", "fingerprint.audio_hashes"
CLIP_COLUMNS = ("key", "video_id", "shard", "level", "status", "start", "end")


class NotIndexable(RuntimeError):
    """An OUT that cannot be indexed (no build in it, or a build without the stages the index reads)."""


@dataclass(frozen=True)
class IndexSettings:
    same_person: float = 0.6  # dlib's descriptor: its published operating point (nets/face_identity.py)
    max_ber: float = 0.35
    max_frame_distance: float = 12.0
    min_overlap: float = 0.5
    min_votes: int = 2
    max_clips_per_value: int = 20


@dataclass
class IndexSummary:
    shards_new: list[int] = field(default_factory=list)
    shards_indexed: int = 0
    restarted: str = ""
    clips: int = 0
    characters: int = 0
    identities: int = 0
    identities_new: int = 0
    pairs_new: int = 0
    groups: int = 0
    duplicates_dropped: int = 0
    has_identity: bool = True
    has_fingerprint: bool = True
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"index: {len(self.shards_new)} new shard(s) indexed, {self.shards_indexed} in all"
               + (f" (started over: {self.restarted})" if self.restarted else "")]
        if self.has_identity:
            out.append(f"  identities: {self.identities} ({self.identities_new} new) over {self.characters} "
                       f"characters of {self.clips} kept clips")
        else:
            out.append("  identities: none (the build's profile has no `identity` stage)")
        if self.has_fingerprint:
            out.append(f"  near-duplicates: {self.groups} group(s), {self.duplicates_dropped} clip(s) beyond the "
                       f"one kept per group ({self.pairs_new} new pair(s))")
        else:
            out.append("  near-duplicates: none looked for (the build's profile has no `fingerprint` stage)")
        return out


def write_parquet(table: pa.Table, path: Path) -> None:
    """``table`` at ``path`` by atomic rename: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = OutPaths.temp(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def committed_shards(layout: OutPaths) -> dict[int, str]:
    """Committed shard -> its manifest's sha256 (from the commit file: a shard is done iff it is there)."""
    out = {}
    for path in sorted((layout.root / "commits").glob("[0-9]*.json")):
        try:
            commit = json.loads(path.read_text())
            out[int(commit["shard"])] = str(commit["manifest"]["sha256"])
        except (OSError, ValueError, KeyError) as e:
            raise NotIndexable(f"{path}: unreadable commit ({e}); run `mtcc verify {layout.root}`") from e
    return out


def kept_clips(layout: OutPaths, shards: list[int]) -> pa.Table:
    """The kept clips of ``shards`` (by shard, then key) with the columns the index reads, and ``height``: the
    source picture's height (from the clip's video row), which decides the member a duplicate group keeps."""
    parts = []
    for s in shards:
        names = set(pq.read_schema(layout.manifest(s)).names)
        cols = [c for c in (*CLIP_COLUMNS, *DESCRIPTORS, FRAME_HASHES, FRAME_TIMES, AUDIO_HASHES) if c in names]
        # only the columns read here: the other stats are most of a manifest's bytes
        table = pq.read_table(layout.manifest(s), columns=[*cols, *(["probe.height"] if "probe.height" in names
                                                                  else [])])
        videos = table.filter(pc.equal(table["level"], "video"))
        heights = dict(zip(videos["video_id"].to_pylist(), videos["probe.height"].to_pylist())) \
            if "probe.height" in names else {}
        clips = table.filter(pc.and_(pc.equal(table["level"], "clip"), pc.equal(table["status"], "kept"))).select(cols)
        clips = clips.append_column("height", pa.array([heights.get(v) for v in clips["video_id"].to_pylist()],
                                                       pa.int64()))
        parts.append(clips)
    if not parts:
        return pa.table({})
    table = pa.concat_tables(parts, promote_options="default")
    return table.sort_by([("shard", "ascending"), ("key", "ascending")])


def _column(table: pa.Table, name: str) -> list[Any]:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


# ---- identities ---------------------------------------------------------------------------------------------

def _load_book(layout: OutPaths) -> IdentityBook:
    if not layout.identity_centres.exists():
        return IdentityBook()
    t = pq.read_table(layout.identity_centres).sort_by("identity")
    return IdentityBook(np.asarray(t["centre"].to_pylist(), np.float64), np.asarray(t["count"].to_pylist()))


def index_identities(layout: OutPaths, clips: pa.Table, settings: IndexSettings, summary: IndexSummary) -> None:
    book = _load_book(layout)
    before = book.size
    rows: dict[str, list[Any]] = {"shard": [], "key": [], "character": [], "identity": [], "distance": []}
    descs = [_column(clips, c) for c in DESCRIPTORS]
    for i, (shard, key) in enumerate(zip(_column(clips, "shard"), _column(clips, "key"))):
        got = book.assign_clip([None if d[i] is None else np.asarray(d[i]) for d in descs], settings.same_person)
        for k, (ident, dist) in enumerate(got):
            if ident < 0:
                continue
            for name, v in zip(rows, (shard, key, k, ident, dist)):
                rows[name].append(v)
    new = pa.table({"shard": pa.array(rows["shard"], pa.int32()), "key": pa.array(rows["key"], pa.string()),
                    "character": pa.array(rows["character"], pa.int8()),
                    "identity": pa.array(rows["identity"], pa.int32()),
                    "distance": pa.array(rows["distance"], pa.float32())})
    old = pq.read_table(layout.identities) if layout.identities.exists() else None
    table = new if old is None else pa.concat_tables([old, new])
    write_parquet(table, layout.identities)
    write_parquet(pa.table({"identity": pa.array(range(book.size), pa.int32()),
                             "count": pa.array(book.counts(), pa.int64()),
                             "centre": pa.array(book.centres().astype(np.float32).tolist(), pa.list_(pa.float32()))}),
                   layout.identity_centres)
    summary.identities, summary.identities_new = book.size, book.size - before
    summary.characters = table.num_rows


# ---- near-duplicates ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Clip:
    shard: int
    key: str
    seconds: float
    height: int
    frames: np.ndarray
    times: np.ndarray
    audio: np.ndarray


def _clips(table: pa.Table) -> list[_Clip]:
    out = []
    for shard, key, start, end, height, fh, ft, ah in zip(
            *(_column(table, c) for c in ("shard", "key", "start", "end", "height", FRAME_HASHES, FRAME_TIMES,
                                          AUDIO_HASHES))):
        out.append(_Clip(int(shard), key, float(end - start), int(height or 0),
                         np.asarray(fh or [], np.int64), np.asarray(ft or [], np.float64),
                         np.asarray(ah or [], np.int64)))
    return out


def find_pairs(clips: list[_Clip], new: np.ndarray, settings: IndexSettings) -> pa.Table:
    """The near-duplicate pairs among ``clips`` that involve at least one ``new`` clip, with their evidence."""
    ids, pos, val = [], [], []
    for i, c in enumerate(clips):
        loud = np.flatnonzero(c.audio != QUIET)
        ids.append(np.full(len(loud), i, np.int32))
        pos.append(loud.astype(np.int32))
        val.append(c.audio[loud])
    rows: dict[str, list[Any]] = {k: [] for k in ("a_shard", "a_key", "b_shard", "b_key", "offset_s", "audio_ber",
                                                  "frame_distance", "overlap", "votes")}
    if not ids:
        return _pairs_table(rows)
    votes = audio_pair_votes(np.concatenate(ids), np.concatenate(pos), np.concatenate(val),
                             min_votes=settings.min_votes, max_clips_per_value=settings.max_clips_per_value)
    for a, b, off, n in zip(votes["a"], votes["b"], votes["offset"], votes["votes"]):
        if not (new[a] or new[b]):
            continue  # judged by an earlier run
        ca, cb = clips[a], clips[b]
        ber, _ = audio_ber(ca.audio, cb.audio, int(off))
        shift = float(off) * AUDIO_HOP_S  # b's content sits this much later in a: b(t) = a(t + shift)
        overlap = (min(ca.seconds, shift + cb.seconds) - max(0.0, shift)) / max(min(ca.seconds, cb.seconds), 1e-6)
        fd = frame_match(ca.frames, ca.times, cb.frames, cb.times, shift)
        if ber > settings.max_ber or fd > settings.max_frame_distance or overlap < settings.min_overlap:
            continue
        for name, v in zip(rows, (ca.shard, ca.key, cb.shard, cb.key, shift, ber, fd, overlap, int(n))):
            rows[name].append(v)
    return _pairs_table(rows)


def _pairs_table(rows: dict[str, list[Any]]) -> pa.Table:
    return pa.table({"a_shard": pa.array(rows["a_shard"], pa.int32()), "a_key": pa.array(rows["a_key"], pa.string()),
                     "b_shard": pa.array(rows["b_shard"], pa.int32()), "b_key": pa.array(rows["b_key"], pa.string()),
                     "offset_s": pa.array(rows["offset_s"], pa.float64()),
                     "audio_ber": pa.array(rows["audio_ber"], pa.float64()),
                     "frame_distance": pa.array(rows["frame_distance"], pa.float64()),
                     "overlap": pa.array(rows["overlap"], pa.float64()),
                     "votes": pa.array(rows["votes"], pa.int64())})


def duplicate_groups(pairs: pa.Table, clips: list[_Clip]) -> pa.Table:
    """Groups (connected pairs) with the one member each keeps: the largest source picture, then the longest
    clip, then the first by (shard, key). Groups are numbered by their first member."""
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def root(x: tuple[int, str]) -> tuple[int, str]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a_s, a_k, b_s, b_k in zip(*(pairs[c].to_pylist() for c in ("a_shard", "a_key", "b_shard", "b_key"))):
        ra, rb = root((a_s, a_k)), root((b_s, b_k))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[tuple[int, str], list[tuple[int, str]]] = {}
    for x in sorted(parent):
        members.setdefault(root(x), []).append(x)
    info = {(c.shard, c.key): c for c in clips}
    rows: dict[str, list[Any]] = {"group": [], "shard": [], "key": [], "kept": []}
    for g, (_, group) in enumerate(sorted(members.items())):
        def rank(x: tuple[int, str]) -> tuple:
            c = info.get(x)
            return (-(c.height if c else 0), -(c.seconds if c else 0.0), x)
        keep = min(group, key=rank)
        for x in group:
            for name, v in zip(rows, (g, x[0], x[1], x == keep)):
                rows[name].append(v)
    return pa.table({"group": pa.array(rows["group"], pa.int32()), "shard": pa.array(rows["shard"], pa.int32()),
                     "key": pa.array(rows["key"], pa.string()), "kept": pa.array(rows["kept"], pa.bool_())})


def index_duplicates(layout: OutPaths, every: pa.Table, new_shards: set[int], settings: IndexSettings,
                     summary: IndexSummary) -> None:
    clips = _clips(every)
    new = np.array([c.shard in new_shards for c in clips], bool)
    found = find_pairs(clips, new, settings)
    old = pq.read_table(layout.duplicate_pairs) if layout.duplicate_pairs.exists() else None
    pairs = found if old is None else pa.concat_tables([old, found])
    groups = duplicate_groups(pairs, clips)
    write_parquet(pairs, layout.duplicate_pairs)
    write_parquet(groups, layout.duplicates)
    summary.pairs_new = found.num_rows
    summary.groups = len(set(groups["group"].to_pylist()))
    summary.duplicates_dropped = groups.num_rows - summary.groups


# ---- the command --------------------------------------------------------------------------------------------

def read_state(layout: OutPaths) -> dict[str, Any]:
    try:
        return json.loads(layout.index_state.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise NotIndexable(f"{layout.index_state}: unreadable ({e}); delete {layout.index_dir} to index anew") from e


def _start_over(layout: OutPaths) -> None:
    for p in layout.index_files():
        p.unlink(missing_ok=True)


def index_out(root: Path, settings: IndexSettings | None = None, log: Callable[[str], None] = print) -> IndexSummary:
    """Index the committed shards of the local OUT ``root`` not indexed yet (see the module's docstring)."""
    settings = settings or IndexSettings()
    t0 = time.monotonic()
    layout = OutPaths(Path(root))
    if not layout.plan.exists():
        raise NotIndexable(f"{root} holds no MTCC build (no plan.parquet): run `mtcc run PROFILE --output {root}` first")
    committed = committed_shards(layout)
    state = read_state(layout)
    summary = IndexSummary()
    done = {int(s): sha for s, sha in state.get("shards", {}).items()}
    changed = sorted(s for s, sha in done.items() if committed.get(s) != sha)
    if state and (state.get("version") != INDEX_VERSION or state.get("settings") != asdict(settings)):
        summary.restarted = "the index was made with other settings"
    elif changed:
        summary.restarted = f"shard(s) {', '.join(f'{s:06d}' for s in changed)} were committed again since"
    if summary.restarted:
        _start_over(layout)
        done = {}
    new_shards = sorted(s for s in committed if s not in done)
    summary.shards_new = new_shards
    summary.shards_indexed = len(done) + len(new_shards)
    if new_shards:
        fresh = kept_clips(layout, new_shards)
        names = set(fresh.column_names)
        summary.has_identity = all(c in names for c in DESCRIPTORS)
        summary.has_fingerprint = all(c in names for c in (FRAME_HASHES, FRAME_TIMES, AUDIO_HASHES))
        if summary.has_identity:
            index_identities(layout, fresh, settings, summary)
        if summary.has_fingerprint:  # new clips are matched against every clip: the old shards' are read too
            every = pa.concat_tables([kept_clips(layout, sorted(done)), fresh], promote_options="default") \
                if done else fresh
            every = every.sort_by([("shard", "ascending"), ("key", "ascending")])
            index_duplicates(layout, every, set(new_shards), settings, summary)
    summary.clips = _kept_count(layout, committed)
    layout.index_dir.mkdir(parents=True, exist_ok=True)
    tmp = OutPaths.temp(layout.index_state)
    tmp.write_text(json.dumps({"version": INDEX_VERSION, "settings": asdict(settings),
                               "shards": {str(s): committed[s] for s in sorted({*done, *new_shards})}},
                              indent=1, sort_keys=True) + "\n")
    os.replace(tmp, layout.index_state)
    _fill_totals(layout, summary)
    summary.seconds = time.monotonic() - t0
    for line in summary.lines():
        log(line)
    return summary


def _kept_count(layout: OutPaths, committed: dict[int, str]) -> int:
    """Kept clips of the committed shards: each commit counts its samples (no manifest is read again)."""
    return sum(int(json.loads(layout.commit(s).read_text())["samples"]) for s in committed)


def _fill_totals(layout: OutPaths, summary: IndexSummary) -> None:
    """The totals of the whole index (a run with nothing new still reports what the index holds)."""
    if layout.identities.exists():
        summary.characters = pq.read_metadata(layout.identities).num_rows
    if layout.identity_centres.exists():
        summary.identities = pq.read_metadata(layout.identity_centres).num_rows
    if layout.duplicates.exists():
        groups = pq.read_table(layout.duplicates, columns=["group"])["group"].to_pylist()
        summary.groups = len(set(groups))
        summary.duplicates_dropped = len(groups) - summary.groups
