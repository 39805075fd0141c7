"""The report's section on the whole-build layers: who is in the build (the index's identities, clips per
person), what is in it twice (near-duplicate groups) and the selections made from it. Read from the files
`mtcc index` and `mtcc select` leave under OUT; a build never indexed says how to index it."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq

from .paths import OutPaths
from .selections import read_selection

TOP_IDENTITIES = 15
TOP_GROUPS = 10


def index_section(layout: OutPaths, kept_clips: int) -> dict[str, Any]:
    """What the template shows: ``indexed`` (bool), the counts, the top identities by clips, the first
    duplicate groups, and one row per selection."""
    out: dict[str, Any] = {"indexed": layout.index_state.exists(), "selections": _selections(layout)}
    if not out["indexed"]:
        return out
    state = json.loads(layout.index_state.read_text())
    out["shards_indexed"] = len(state.get("shards", {}))
    if layout.identities.exists():
        rows = pq.read_table(layout.identities, columns=["shard", "key", "identity"]).to_pylist()
        clips: dict[int, set[tuple[int, str]]] = {}
        for r in rows:
            clips.setdefault(r["identity"], set()).add((r["shard"], r["key"]))
        ranked = sorted(clips.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        total = max(kept_clips, 1)
        out["identities"] = len(clips)
        out["identity_rows"] = [(f"#{i}", len(c), f"{len(c) / total:.1%}") for i, c in ranked[:TOP_IDENTITIES]]
        top3 = set().union(*(c for _, c in ranked[:3])) if ranked else set()
        out["top3_share"] = f"{len(top3) / total:.1%}"
    if layout.duplicates.exists():
        rows = pq.read_table(layout.duplicates).to_pylist()
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["group"], []).append(r)
        out["groups"] = len(groups)
        out["dropped"] = len(rows) - len(groups)
        out["group_rows"] = [(g, next(f"{r['shard']:06d}/{r['key']}" for r in m if r["kept"]),
                              ", ".join(f"{r['shard']:06d}/{r['key']}" for r in m if not r["kept"]))
                             for g, m in sorted(groups.items())[:TOP_GROUPS]]
    return out


def _selections(layout: OutPaths) -> list[tuple[str, str, int, str]]:
    d = layout.selections_dir
    rows = []
    for path in sorted(d.glob("*.parquet")) if d.is_dir() else []:
        try:
            table, meta = read_selection(path)
        except (OSError, ValueError) as e:
            rows.append((path.stem, f"unreadable: {e}", 0, ""))
            continue
        parts = meta.get("counts", {}).get("parts") or {}
        how = "; ".join(x for x in (f"where {meta['where']}" if meta.get("where") else "",
                                    f"at most {meta['max_per_identity']} per person"
                                    if meta.get("max_per_identity") else "",
                                    "duplicates kept" if meta.get("keep_duplicates") else "duplicates dropped") if x)
        rows.append((path.stem, how, table.num_rows, ", ".join(f"{k} {v}" for k, v in parts.items())))
    return rows
