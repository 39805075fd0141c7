"""``mtcc select OUT --where EXPR --name NAME``: a subset of what a build kept, chosen from the manifests and
the index in seconds, without recomputing a clip. A selection is a list of samples (``shard``, ``key``) with
the part each belongs to (``train``, or a part ``--split`` names), at ``OUT/selections/NAME.parquet``; its
Parquet metadata records how it was made. The training loader and ``mtcc export bya`` read it by name.

In order: the kept clips of every committed shard; those for which ``--where`` holds (pipeline/where.py: a
stat no stage measured fails every comparison); without ``--keep-duplicates``, every near-duplicate but the
one its group keeps (``mtcc index``); at most ``--max-per-identity`` clips per person (a clip counts for
both its characters; clips are visited in a fixed pseudo-random order, so the ones a busy host keeps are
spread over the build); then ``--split val=0.05 --by identity`` puts whole groups of people (people who
share a clip are one group) on one side, so no face is seen by both training and validation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtcc.manifests.paths import OutPaths
from mtcc.manifests.selections import META_KEY, NAME_RE, TRAIN, SelectionError

from .index import FRAME_HASHES, committed_shards, read_state, write_parquet
from .where import parse_where

SPLIT_BY = ("identity", "video", "clip")


@dataclass
class SelectionSummary:
    name: str
    path: Path
    kept: int = 0
    where: int = 0
    after_duplicates: int = 0
    after_cap: int = 0
    parts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        parts = ", ".join(f"{k} {v}" for k, v in self.parts.items())
        return [f"selection {self.name}: {self.after_cap} of {self.kept} kept clips ({parts}) -> {self.path}",
                f"  --where {self.where}, without duplicates {self.after_duplicates}, per-identity cap "
                f"{self.after_cap} ({self.seconds:.1f} s)"]


def parse_split(text: str | None) -> dict[str, float]:
    """``"val=0.05,test=0.05"`` -> part -> share of the selected clips (what is left is ``train``)."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for item in text.split(","):
        name, _, share = item.partition("=")
        name = name.strip()
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not NAME_RE.match(name) or name == TRAIN or not 0 < value < 1:
            raise SelectionError(f"--split {text!r}: expected PART=SHARE[,PART=SHARE] with SHARE in (0, 1) and "
                                 f"PART a name other than '{TRAIN}' (what is left is {TRAIN}), e.g. val=0.05")
        out[name] = value
    if sum(out.values()) >= 1:
        raise SelectionError(f"--split {text!r}: the shares add up to {sum(out.values()):g}; leave some for {TRAIN}")
    return out


def stable_rank(text: str) -> int:
    """A fixed pseudo-random order (the same on every machine and run: not Python's salted hash)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _kept_rows(layout: OutPaths, shards: list[int], columns: list[str]) -> pa.Table:
    tables = []
    for s in shards:
        t = pq.read_table(layout.manifest(s), columns=columns)
        tables.append(t.filter(pc.and_(pc.equal(t["level"], "clip"), pc.equal(t["status"], "kept"))))
    if not tables:
        return pa.table({"shard": pa.array([], pa.int32()), "key": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default").sort_by([("shard", "ascending"), ("key", "ascending")])


def _index_ready(layout: OutPaths, committed: dict[int, str], why: str) -> dict[str, Any]:
    state = read_state(layout)
    indexed = {int(s): sha for s, sha in state.get("shards", {}).items()}
    stale = sorted(s for s, sha in committed.items() if indexed.get(s) != sha)
    if stale:
        raise SelectionError(f"{why} needs the index of every committed shard, and {len(stale)} shard(s) are not "
                             f"indexed (first {stale[0]:06d}): run `mtcc index {layout.root}` first")
    return state


def _identities(layout: OutPaths) -> dict[tuple[int, str], list[int]]:
    if not layout.identities.exists():
        return {}
    t = pq.read_table(layout.identities)
    out: dict[tuple[int, str], list[int]] = {}
    for s, k, ident in zip(t["shard"].to_pylist(), t["key"].to_pylist(), t["identity"].to_pylist()):
        out.setdefault((s, k), []).append(int(ident))
    return out


def split_groups(clips: list[tuple[int, str]], people: dict[tuple[int, str], list[int]], videos: list[str],
            by: str) -> list[str]:
    """Per clip, the group that must stay on one side of a split."""
    if by == "clip":
        return [f"{s}/{k}" for s, k in clips]
    if by == "video":
        return list(videos)
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in clips:
        ids = people.get(c, [])
        for other in ids[1:]:
            ra, rb = root(ids[0]), root(other)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    # a clip nobody was described in stands alone
    return [f"id{root(people[c][0])}" if people.get(c) else f"clip:{c[0]}/{c[1]}" for c in clips]


def assign_parts(groups: list[str], split: dict[str, float]) -> list[str]:
    """Whole groups to parts: groups in a fixed pseudo-random order, each part taking a group while that
    brings its clip count nearer its share; what no part takes is ``train``."""
    sizes: dict[str, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    order = sorted(sizes, key=lambda g: (stable_rank(g), g))
    owner: dict[str, str] = {}
    total = len(groups)
    for part, share in split.items():
        target, have = share * total, 0
        for g in order:
            if g in owner:
                continue
            if abs(have + sizes[g] - target) < abs(have - target):
                owner[g] = part
                have += sizes[g]
    return [owner.get(g, TRAIN) for g in groups]


def _drop_duplicates(layout: OutPaths, clips: list[tuple[int, str]], keep: np.ndarray) -> None:
    d = pq.read_table(layout.duplicates)
    dropped = {(s, k) for s, k, kept in zip(d["shard"].to_pylist(), d["key"].to_pylist(), d["kept"].to_pylist())
               if not kept}
    keep &= np.array([c not in dropped for c in clips], bool)


def _cap_per_identity(clips: list[tuple[int, str]], keep: np.ndarray, people: dict[tuple[int, str], list[int]],
                      cap: int) -> None:
    count: dict[int, int] = {}
    for i in sorted(np.flatnonzero(keep), key=lambda i: (stable_rank(f"{clips[i][0]}/{clips[i][1]}"), i)):
        ids = people.get(clips[i], [])
        if any(count.get(p, 0) >= cap for p in ids):
            keep[i] = False
            continue
        for p in ids:
            count[p] = count.get(p, 0) + 1


def _warn_far_parts(groups: list[str], labels: list[str], parts: dict[str, float], by: str,
                    log: Callable[[str], None]) -> None:
    if not groups:
        return
    sizes = sorted((groups.count(g) for g in set(groups)), reverse=True)
    for part, share in parts.items():
        got = labels.count(part) / len(groups)
        if abs(got - share) > share / 2:
            log(f"warning: part {part} has {labels.count(part)} clip(s) ({got:.1%}) for a share of {share:.1%}: by "
                f"{by}, the {len(groups)} clips fall into {len(sizes)} group(s) that cannot be divided, the largest "
                f"holding {sizes[0]}" + (" (people who share a clip are one group)" if by == "identity" else ""))


def _write(path: Path, chosen: list[tuple[int, str]], labels: list[str], meta: dict[str, Any]) -> None:
    out = pa.table({"shard": pa.array([c[0] for c in chosen], pa.int32()),
                    "key": pa.array([c[1] for c in chosen], pa.string()),
                    "part": pa.array(labels, pa.string())})
    write_parquet(out.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)}), path)


def _check_arguments(root: Path, name: str, by: str) -> OutPaths:
    if not NAME_RE.match(name):
        raise SelectionError(f"--name {name!r}: letters, digits, '_', '.', '-' (up to 64, not starting with a "
                             f"punctuation mark)")
    if by not in SPLIT_BY:
        raise SelectionError(f"--by {by!r}: one of {', '.join(SPLIT_BY)}")
    layout = OutPaths(Path(root))
    if not layout.plan.exists():
        raise SelectionError(f"{root} holds no MTCC build (no plan.parquet)")
    return layout


def select(root: Path, name: str, *, where: str | None = None, max_per_identity: int | None = None,
           split: str | None = None, by: str = "identity", keep_duplicates: bool = False,
           log: Callable[[str], None] = print) -> SelectionSummary:
    """Write selection ``name`` of the build at ``root`` (see the module's docstring)."""
    t0 = time.monotonic()
    layout = _check_arguments(root, name, by)
    parts = parse_split(split)
    committed = committed_shards(layout)
    if not committed:
        raise SelectionError(f"{root} has no committed shard yet: nothing to select from")
    schema = pq.read_schema(layout.manifest(min(committed)))  # one schema for every shard of a build
    condition = parse_where(where, schema) if where else None
    if not keep_duplicates and FRAME_HASHES not in schema.names:
        log("note: the build's profile has no `fingerprint` stage: its near-duplicates are unknown, none dropped")
        keep_duplicates = True
    needs = [why for why, on in (("dropping near-duplicates (leave it with --keep-duplicates)", not keep_duplicates),
                                 ("--max-per-identity", max_per_identity is not None),
                                 ("--split --by identity", bool(parts) and by == "identity")) if on]
    state = _index_ready(layout, committed, needs[0]) if needs else {}
    # only the columns the condition reads: the vectors and other stats are most of a manifest's bytes
    columns = sorted({"shard", "key", "video_id", "level", "status", *(condition.columns if condition else ())})
    table = _kept_rows(layout, sorted(committed), columns)
    summary = SelectionSummary(name, layout.selection(name), kept=table.num_rows)
    if condition is not None:
        table = table.filter(pa.array(np.asarray(condition.mask(table), bool)))
    summary.where = table.num_rows
    clips = list(zip(table["shard"].to_pylist(), table["key"].to_pylist()))
    keep = np.ones(len(clips), bool)
    if not keep_duplicates and layout.duplicates.exists():
        _drop_duplicates(layout, clips, keep)
    summary.after_duplicates = int(keep.sum())
    people = _identities(layout) if (max_per_identity is not None or by == "identity") else {}
    if max_per_identity is not None:
        _cap_per_identity(clips, keep, people, max_per_identity)
    summary.after_cap = int(keep.sum())
    chosen = [c for c, k in zip(clips, keep) if k]
    groups = split_groups(chosen, people, [v for v, k in zip(table["video_id"].to_pylist(), keep) if k], by)
    labels = assign_parts(groups, parts) if parts else [TRAIN] * len(chosen)
    summary.parts = {p: labels.count(p) for p in (TRAIN, *parts)}
    _warn_far_parts(groups, labels, parts, by, log)
    _write(layout.selection(name), chosen, labels, {
        "name": name, "where": where, "max_per_identity": max_per_identity, "split": parts, "by": by,
        "keep_duplicates": keep_duplicates, "counts": {"kept": summary.kept, "where": summary.where,
                                                       "after_duplicates": summary.after_duplicates,
                                                       "selected": summary.after_cap, "parts": summary.parts},
        "shards": {str(s): committed[s] for s in sorted(committed)}, "index_shards": len(state.get("shards", {}))})
    summary.seconds = time.monotonic() - t0
    for line in summary.lines():
        log(line)
    return summary
