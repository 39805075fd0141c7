"""What the report reads from OUT: the planned shards and their state, the committed manifests, the run's
config and stage order, the gallery's choice of candidates, and the few samples it shows from the tars.

Only committed shards are read (a shard is done iff its commit file exists; checksums are ``mtcc
verify``'s job), so the report is safe to render while a build runs.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtcc.manifests.members import members_except
from mtcc.manifests.paths import OutPaths
from mtcc.manifests.shard_tar import read_samples
from mtcc.media.members import AUDIO_EMB, MIX, ROUTE

PLAN_STAGE = "plan"  # pseudo-stage that rejects inputs before any stage runs (duplicates)
GALLERY_MEMBERS = members_except(MIX, ROUTE, AUDIO_EMB)


@dataclass
class ShardState:
    shard: int
    state: str  # committed | partial | pending | broken (committed, manifest unreadable)
    inputs: list[str]
    commit: dict[str, Any] | None = None


def shard_states(layout: OutPaths) -> list[ShardState]:
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


def committed_manifests(layout: OutPaths, states: Sequence[ShardState],
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


def read_manifests(root: Path | str) -> pa.Table | None:
    """Every manifest under the local OUT ``root`` (committed or not), one table."""
    files = sorted((Path(root) / "manifests").glob("[0-9]*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def run_config(layout: OutPaths) -> dict[str, Any]:
    """The config the last build ran with (``{}`` before the first one)."""
    try:
        return json.loads(layout.run_config.read_text())
    except (OSError, ValueError):
        return {}


def last_run(layout: OutPaths) -> dict[str, Any]:
    try:
        return json.loads((layout.root / "report" / "last_run.json").read_text())
    except (OSError, ValueError):
        return {}


def stage_order(cfg: dict[str, Any], table: pa.Table | None) -> list[str]:
    """The plan pseudo-stage, then the config's enabled stages in order (the funnel needs every stage,
    also those nothing stopped at); falls back to the stages the manifests name."""
    try:
        stages = cfg["config"]["stages"]
        return [PLAN_STAGE] + [n for n in cfg["stage_order"] if stages.get(n, {}).get("enabled", True)]
    except (KeyError, TypeError, AttributeError):
        pass
    names = [PLAN_STAGE]
    if table is not None:
        for n in table.column("stage").to_pylist():
            if n and n not in names:
                names.append(n)
    return names


def threshold(cfg: dict[str, Any], stage: str, name: str) -> float | None:
    """The configured value of ``stages.<stage>.<name>``; None when the stage is off or the value not a number."""
    try:
        st = cfg["config"]["stages"][stage]
    except (KeyError, TypeError):
        return None
    if not st.get("enabled", True):
        return None
    value = st.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def clip_duration(table: pa.Table) -> pa.Array:
    return pc.subtract(table.column("end"), table.column("start")).combine_chunks()


def values(table: pa.Table, columns: Sequence[str | Callable[[pa.Table], pa.Array]]) -> tuple[np.ndarray, np.ndarray]:
    """(values of rows that passed, values of rows rejected somewhere), the columns pooled (both
    characters); a column is a manifest column name, or a function of the table."""
    rejected = pc.equal(table.column("status"), "rejected").combine_chunks()
    kept, rej = [], []
    for name in columns:
        if callable(name):
            col = name(table)
        elif name in table.column_names:
            col = table.column(name).combine_chunks()
        else:
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
            from mtcc.storage.remote_io import open_read

            samples = read_samples(stack.enter_context(open_read(tar_path)), seek=True, where=tar_path,
                                   select=lambda k: members if k in wanted else ())
        stack.enter_context(contextlib.closing(samples))
        for key, got in samples:
            if key in wanted:
                found.setdefault(key, {}).update(got)
                if found.keys() == wanted:
                    break
    return found


def timing_rows(last: dict[str, Any], order: Sequence[str]) -> list[dict[str, Any]]:
    """The last run's busy time per stage, in stage order (stages the config no longer lists last)."""
    timing = last.get("stage_timing") or {}
    rows = []
    for name in [*[s for s in order if s in timing], *sorted(set(timing) - set(order))]:
        t = timing[name]
        cands, busy = int(t.get("candidates") or 0), float(t.get("busy_s") or 0.0)
        rows.append({"stage": name, "batches": int(t.get("batches") or 0), "candidates": cands, "busy_s": busy,
                     "per_s": cands / busy if busy > 0 else None,
                     "s_per": busy / cands if cands else None})
    return rows


def stage_file(path: Path, data: bytes) -> None:
    """Write one file of the report's staging folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
