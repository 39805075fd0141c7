"""Comparing a build's manifest rows with the corpus, and the state of a tree a run must leave untouched."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .case import Case, Corpus


def expectation(case: Case, euid: int | None = None) -> dict[str, Any]:
    """The outcome ``case`` promises to a run by user ``euid`` (default: this process's)."""
    if "if_root" in case.expect:
        euid = os.geteuid() if euid is None else euid
        return case.expect["if_root" if euid == 0 else "if_not_root"]
    return case.expect


def observe(video_row: dict[str, Any], clip_rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One input's outcome from its manifest rows: ``kept`` when any clip of it was kept, else the
    rejection that ended it (the video row's own, or the first clip's when every clip was rejected)."""
    clips = sorted(clip_rows, key=lambda r: (r.get("clip_idx") or 0))
    if video_row["status"] == "kept" or any(r["status"] == "kept" for r in clips):
        return {"status": "kept", "stage": None, "reason": None}
    if video_row["status"] == "expanded" and clips:
        first = clips[0]
        return {"status": first["status"], "stage": first["stage"], "reason": first["reason"]}
    return {"status": video_row["status"], "stage": video_row["stage"], "reason": video_row["reason"]}


def matches(outcome: dict[str, Any], expect: dict[str, Any]) -> bool:
    if outcome["reason"] in expect.get("never", []):
        return False
    return all(outcome[k] in expect[k] for k in ("status", "stage", "reason") if k in expect)


def row_source(corpus: Corpus, file: str) -> str:
    """The ``source`` a manifest row of corpus file ``file`` carries (the path as planned, never the
    target of a link)."""
    from mtcc.pipeline.inputs import plan_source

    return plan_source(os.path.abspath(corpus.root / file))


def check(corpus: Corpus, rows: list[dict[str, Any]], euid: int | None = None) -> dict[str, Any]:
    """Compare a build's manifest rows with the corpus. Returns {case: {expect, observed, ok, problem,
    video_id}} (the samples of a kept case are for the caller to read back: they live in the shards)."""
    videos: dict[str, list[dict[str, Any]]] = {}
    clips: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        (videos if r["level"] == "video" else clips).setdefault(
            r["source"] if r["level"] == "video" else r["video_id"], []).append(r)
    report: dict[str, Any] = {}
    for c in corpus.cases:
        src = row_source(corpus, c.file)
        want = expectation(c, euid)
        own = videos.get(src, [])
        entry: dict[str, Any] = {"expect": want, "observed": None, "ok": False, "problem": None, "video_id": None}
        if c.row == "merged":
            target = videos.get(row_source(corpus, c.same_as or ""), [])
            if own:
                entry["problem"] = f"planned on its own ({len(own)} rows) though it is the same file as {c.same_as}"
            elif len(target) != 1:
                entry["problem"] = f"{c.same_as} has {len(target)} video rows, want 1"
            else:
                entry["observed"] = observe(target[0], clips.get(target[0]["video_id"], []))
                entry["video_id"] = target[0]["video_id"]
        elif len(own) != 1:
            entry["problem"] = f"{len(own)} video rows for {src!r}, want exactly 1"
        else:
            entry["observed"] = observe(own[0], clips.get(own[0]["video_id"], []))
            entry["video_id"] = own[0]["video_id"]
        if entry["observed"] is not None:
            entry["ok"] = matches(entry["observed"], want)
            if not entry["ok"]:
                r = own[0] if own else None
                entry["problem"] = f"observed {entry['observed']}" + (f": {r['message']}" if r else "")
        report[c.name] = entry
    return report


def tree_state(root: str | Path) -> dict[bytes, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of every entry under ``root`` by byte path, links not followed: the corpus
    must look exactly the same after a run (no file read, written, created or touched)."""
    out: dict[bytes, tuple[int, int, int]] = {}
    base = os.fsencode(os.path.abspath(root))
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            # a directory's own mtime changes when anything is created in it: compared too
            out[p[len(base):]] = (stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
    return out
