"""Input discovery and the frozen plan (input video -> shard).

``--input`` takes folders (searched recursively by video extension), list files (.txt, .csv, .parquet)
and fsspec URLs. Each input gets an id from its path and a content fingerprint; the same file listed
twice (or reached through a symlink) is planned once; the same content at two paths is planned once
and the copy becomes a ``duplicate`` manifest row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mtcc.stages.probe import NOT_UTF8_NAME
from mtcc.storage.files import is_remote_source, local_source
from mtcc.storage.remote_io import RemoteIO, describe, fingerprint_digest

from .errors import InputError

VIDEO_EXTS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
LIST_EXTS = {".txt", ".lst", ".csv", ".parquet"}
FINGERPRINT_BYTES = 1 << 20
REMOTE_FINGERPRINT_BYTES = 16 << 10  # enough to tell copies from re-encodes: their first bytes differ

PLAN_SCHEMA = pa.schema([
    ("shard", pa.int32()),
    ("video_id", pa.string()),
    ("source", pa.string()),
    ("size", pa.int64()),
    ("fingerprint", pa.string()),
    ("duplicate_of", pa.string()),
])



@dataclass
class Discovery:
    sources: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def slug(text: str, max_len: int = 40) -> str:
    """A key-safe name: ASCII letters, digits and single dashes only (no '/', '..', '.', control chars)."""
    norm = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    parts = re.findall(r"[a-z0-9]+", norm)
    out = "-".join(parts)[:max_len].strip("-")
    return out or "video"


def _read_list(path: str, rio: RemoteIO) -> list[str]:
    import fsspec

    base = os.path.dirname(local_source(path)) if not is_remote_source(path) else path.rsplit("/", 1)[0]
    ext = Path(path.split("?")[0]).suffix.lower()
    if is_remote_source(path):
        fs, p = fsspec.core.url_to_fs(path)
        data = rio.call("plan", f"list {path}", fs.cat_file, p)
    else:
        data = Path(local_source(path)).read_bytes()
    entries: list[str] = []
    if ext == ".parquet":
        table = pq.read_table(io.BytesIO(data))
        col = "path" if "path" in table.column_names else table.column_names[0]
        entries = [str(v) for v in table.column(col).to_pylist() if v]
    else:
        # a name in the list that is not UTF-8 comes through as the same bytes (surrogates) and gets its
        # own 'unreadable' row (plan_source), instead of one byte failing the whole list
        text = data.decode("utf-8", errors="surrogateescape")
        if ext == ".csv":
            rows = list(csv.reader(io.StringIO(text, newline="")))
            if rows and "path" in rows[0]:
                i = rows[0].index("path")
                entries = [r[i] for r in rows[1:] if len(r) > i and r[i].strip()]
            else:
                entries = [r[0] for r in rows if r and r[0].strip()]
        else:
            entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out = []
    for e in entries:
        if is_remote_source(e) or e.startswith("file://") or os.path.isabs(e):
            out.append(e)
        else:
            out.append(os.path.join(base, e) if not is_remote_source(path) else f"{base}/{e}")
    return out


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in VIDEO_EXTS:
                found.append(os.path.join(root, name))
    return found


def plan_source(source: str) -> str:
    """The text ``source`` is planned and recorded under. Plans and manifests are Parquet text (UTF-8),
    so a name with bytes that are not UTF-8 (which os.walk and argv hand over as surrogates) can be
    neither stored nor hashed as it is: it becomes ``NOT_UTF8_NAME`` + the name with ``\\x`` escapes,
    which no real source starts with (local sources are absolute paths, remote ones URLs), and probe
    rejects it as unreadable, naming the file, instead of the whole plan failing on one name."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UTF8_NAME + os.fsencode(source).decode("utf-8", "backslashreplace")
    return source


def _canonical(source: str) -> str:
    if is_remote_source(source):
        return source
    return os.path.abspath(local_source(source))


def discover(inputs: list[str], rio: RemoteIO | None = None) -> Discovery:
    disc = Discovery()
    rio = rio or RemoteIO()
    raw: list[str] = []
    for item in inputs:
        if is_remote_source(item):
            ext = Path(item.split("?")[0]).suffix.lower()
            if ext in LIST_EXTS:
                raw.extend(_read_list(item, rio))
            elif ext in VIDEO_EXTS:
                raw.append(item)
            else:
                import fsspec

                fs, root = fsspec.core.url_to_fs(item)
                proto = item.split("://", 1)[0]
                found = rio.call("plan", f"listing {item}", fs.find, root)
                raw.extend(f"{proto}://{p}" for p in sorted(found) if Path(p).suffix.lower() in VIDEO_EXTS)
            continue
        path = local_source(item)
        if os.path.isdir(path):
            raw.extend(_walk(path))
        elif os.path.isfile(path) and Path(path).suffix.lower() in LIST_EXTS:
            raw.extend(_read_list(path, rio))
        elif os.path.exists(path) or os.path.islink(path):
            raw.append(path)
        else:
            raise InputError(f"--input {item!r} does not exist (expected a folder, a list file or a video)")
    seen: dict[str, str] = {}
    for src in raw:
        canon = _canonical(src)
        ident = canon if is_remote_source(canon) else os.path.realpath(canon)
        if ident in seen:
            disc.warnings.append(f"input listed more than once, planned once: {canon}")
            continue
        seen[ident] = canon
        planned = plan_source(canon)
        if planned != canon:
            disc.warnings.append(f"file name is not valid UTF-8, it gets an 'unreadable' row: {planned}")
        disc.sources.append(planned)
    disc.sources.sort()
    return disc


def fingerprint(source: str, rio: RemoteIO | None = None) -> tuple[int, str]:
    """(size, digest of size + first and last MiB, 16 KiB for a remote source): cheap enough to plan
    thousands of files, and it tells copies apart from re-encodes. Unreadable inputs get size -1 and a
    description instead; so do FIFOs, devices and directories, which are never opened for reading (a FIFO
    would block the plan), and remote sources that stay unreachable under ``rio``'s retry policy (their
    row then says why: ``unreachable:404 Not Found``)."""
    if source.startswith(NOT_UTF8_NAME):
        return -1, "unreadable:name-not-utf8"
    if is_remote_source(source):
        return _remote_fingerprint(source, rio or RemoteIO())
    try:
        if not stat.S_ISREG(os.stat(source).st_mode):
            return -1, "unreadable:not-a-regular-file"
        # non-blocking, and checked again on the open file: it may have been swapped since the stat
        with open(os.open(source, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                return -1, "unreadable:not-a-regular-file"
            size = st.st_size
            head = f.read(FINGERPRINT_BYTES)
            f.seek(max(0, size - FINGERPRINT_BYTES))
            tail = f.read(FINGERPRINT_BYTES)
    except (OSError, ValueError) as e:
        return -1, f"unreadable:{type(e).__name__}"
    return size, fingerprint_digest(size, head, tail)


def _remote_fingerprint(source: str, rio: RemoteIO) -> tuple[int, str]:
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as e:
        return -1, f"unreadable:{type(e).__name__}"
    try:
        # two exact range reads, each retried on its own: a remote source's bytes cross the network once
        # more, at its fetch
        size = int(rio.call("plan", f"size of {source}", fs.size, p))
        n = min(REMOTE_FINGERPRINT_BYTES, size)
        head = rio.read_range(fs, p, 0, n, "plan", f"first bytes of {source}")
        tail = rio.read_range(fs, p, max(0, size - n), size, "plan", f"last bytes of {source}")
    except Exception as e:  # noqa: BLE001 - a store fails in its own types: the row says why, the plan goes on
        return -1, f"unreachable:{describe(e)}"
    return size, fingerprint_digest(size, head, tail)


def make_plan(sources: list[str], videos_per_shard: int, rio: RemoteIO | None = None) -> pa.Table:
    rows = {name: [] for name in PLAN_SCHEMA.names}
    by_content: dict[str, str] = {}
    used_ids: set[str] = set()
    rio = rio or RemoteIO()
    for i, src in enumerate(sources):
        size, fp = fingerprint(src, rio)
        stem = Path(src.split("?")[0]).stem
        digest = hashlib.sha256(f"{src}\0{fp}".encode()).hexdigest()
        n = 12
        vid = f"{slug(stem)}-{digest[:n]}"
        while vid in used_ids:  # ids stay unique even if 48-bit prefixes ever collide
            n += 4
            vid = f"{slug(stem)}-{digest[:n]}"
        used_ids.add(vid)
        dup = by_content.get(fp) if size > 0 else None
        if size > 0 and dup is None:
            by_content[fp] = vid
        rows["shard"].append(i // videos_per_shard)
        rows["video_id"].append(vid)
        rows["source"].append(src)
        rows["size"].append(size)
        rows["fingerprint"].append(fp)
        rows["duplicate_of"].append(dup)
    return pa.Table.from_pydict(rows, schema=PLAN_SCHEMA)
