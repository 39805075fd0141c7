"""The per-shard manifest: one row per candidate (video or clip), kept or not, with every stat.

Columns are fixed by the config's stages (each declares its stats), so all shards of one build share
one schema and read as one Parquet dataset. Stats a stage did not declare go to ``extra_json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from mtcc.stages.base import STAT_TYPES, Candidate, Stage

_ARROW = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string(),
          "float32[]": pa.list_(pa.float32()), "int64[]": pa.list_(pa.int64())}

BASE_FIELDS = [
    ("key", pa.string()),
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("shard", pa.int32()),
    ("level", pa.string()),
    ("clip_idx", pa.int32()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    ("status", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("message", pa.string()),
    ("from_stage", pa.string()),
]


def stat_columns(stages: Sequence[Stage]) -> list[tuple[str, pa.DataType]]:
    cols = []
    for s in stages:
        for stat, kind in s.stats_schema.items():
            if kind not in STAT_TYPES:
                raise TypeError(f"stage {s.name}: stat {stat!r} has type {kind!r}; allowed: {', '.join(STAT_TYPES)}")
            cols.append((f"{s.name}.{stat}", _ARROW[kind]))
    return cols


def manifest_schema(stages: Sequence[Stage]) -> pa.Schema:
    return pa.schema(BASE_FIELDS + stat_columns(stages) + [("extra_json", pa.string())])


def _cell(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_list(kind):
        return [_cell(v, kind.value_type) for v in value]
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_integer(kind):
        return int(value)
    if pa.types.is_boolean(kind):
        return bool(value)
    return str(value)


def to_table(cands: Iterable[Candidate], stages: Sequence[Stage]) -> pa.Table:
    """Rows sorted by key (videos before their clips), so a rerun writes the same bytes."""
    schema = manifest_schema(stages)
    stat_types = dict(stat_columns(stages))
    rows: dict[str, list[Any]] = {f.name: [] for f in schema}
    for c in sorted(cands, key=lambda c: (c.key, c.level != "video")):
        for name, _ in BASE_FIELDS:
            rows[name].append(getattr(c, name))
        for col, kind in stat_types.items():
            rows[col].append(_cell(c.stats.get(col), kind))
        extra = {k: v for k, v in c.stats.items() if k not in stat_types}
        rows["extra_json"].append(json.dumps(extra, sort_keys=True, default=str) if extra else None)
    return pa.Table.from_pydict(rows, schema=schema)
