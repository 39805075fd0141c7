"""Reading a selection (``OUT/selections/NAME.parquet``, written by ``mtcc select``): which samples of which
shards, and the part each belongs to. The training loader and the export read selections through here, so
they need neither the index nor the pipeline."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .paths import SELECTIONS_DIR

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRAIN = "train"
META_KEY = b"mtcc.selection"


class SelectionError(ValueError):
    """A selection that cannot be made or read as asked; the message says why and what to do."""


def selection_url(out: str, name: str) -> str:
    """Where selection ``name`` of the OUT at ``out`` (a folder or a URL) lives; ``name`` may itself be a
    path or URL ending in .parquet."""
    if name.endswith(".parquet"):
        return name
    if not NAME_RE.match(name):
        raise SelectionError(f"selection {name!r}: a name made by `mtcc select --name`, or a path to its .parquet")
    return f"{out.rstrip('/')}/{SELECTIONS_DIR}/{name}.parquet"


def make_command(url: str) -> str:
    """The ``mtcc select`` command that writes ``url``: with its OUT and name where ``url`` is where
    :func:`selection_url` puts a named selection, the generic form for a path given as is."""
    out, _, file = url.rpartition(f"/{SELECTIONS_DIR}/")
    name = file.removesuffix(".parquet")
    if out and NAME_RE.match(name) and selection_url(out, name) == url:
        return f"mtcc select {out} --name {name}"
    return "mtcc select OUT --name NAME"


def read_selection(source: Any) -> tuple[pa.Table, dict[str, Any]]:
    """A selection's rows (``shard``, ``key``, ``part``) and how it was made; ``source`` is a path or an
    open file."""
    table = pq.read_table(source)
    missing = {"shard", "key", "part"} - set(table.column_names)
    if missing:
        raise SelectionError(f"{source}: not a selection (no {', '.join(sorted(missing))} column)")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    return table, meta


def selected_keys(table: pa.Table, part: str | None = TRAIN, where: str = "selection") -> dict[int, frozenset[str]]:
    """Shard -> the keys of ``part`` (``None``: every part)."""
    parts = sorted(set(table["part"].to_pylist()))
    if part is not None and part not in parts and table.num_rows:
        raise SelectionError(f"{where} has no part {part!r} (it has {', '.join(parts)})")
    out: dict[int, set[str]] = {}
    for s, k, p in zip(table["shard"].to_pylist(), table["key"].to_pylist(), table["part"].to_pylist()):
        if part is None or p == part:
            out.setdefault(int(s), set()).add(k)
    return {s: frozenset(v) for s, v in out.items()}


def load_selected(url: str, part: str | None = TRAIN) -> dict[int, frozenset[str]]:
    """Shard -> the keys of ``part`` of the selection at ``url`` (a path or an fsspec URL, read under the
    remote retry policy); a missing file is named with the command that makes it."""
    from mtcc.storage.remote_io import open_read

    try:
        with open_read(url) as f:
            table, _ = read_selection(f)
    except FileNotFoundError:
        raise SelectionError(f"no selection at {url}: make it with `{make_command(url)}`") from None
    return selected_keys(table, part, where=url)
