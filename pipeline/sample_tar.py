"""What a shard's tar holds: each kept sample's members in schema order and its json (where it comes from,
its stats, the facts its stages declare as sample meta, the run's info), written deterministically (samples
by key, fixed mtime/uid/gid/mode) so that the same inputs give the same bytes. The commit around it is
pipeline/shard.py."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtcc.facts import ProbeResult, SourceHash
from mtcc.manifests.members import member_rank
from mtcc.media.members import META
from mtcc.stages.base import LIST_STAT_TYPES, RANDOM_WEIGHTS, Candidate, Stage

FIXED_MTIME = 0


def _safe_member(name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"unsafe tar member name {name!r}")


def stages_on_random_weights(c: Candidate, stages: Sequence[type[Stage] | Stage]) -> list[str]:
    """The stages of ``stages`` that ran on ``c`` with random-initialised weights (each says so in its own
    ``random_weights`` stat)."""
    return sorted(s.name for s in stages if RANDOM_WEIGHTS in s.stats_schema and c.stats.get(s.stat_column(RANDOM_WEIGHTS)))


def sample_meta(c: Candidate, run_info: dict[str, Any], stages: Sequence[type[Stage] | Stage] = ()) -> dict[str, Any]:
    """The sample's json: where it comes from, its stats, the facts ``stages`` declare as sample meta (under
    their keys), which of them ran on random weights, and the run's info."""
    sha = c.maybe(SourceHash)
    probe = c.maybe(ProbeResult)
    present = [f for s in stages for f in s.sample_facts() if f in c.facts]
    # vectors (descriptors, fingerprints) are the manifest's and their own members', not the json's
    vectors = {s.stat_column(k) for s in stages for k, kind in s.stats_schema.items() if kind in LIST_STAT_TYPES}
    return {
        "key": c.key,
        "source": c.source,
        "source_sha256": sha.sha256 if sha else None,
        "start": c.start,
        "end": c.end,
        "probe": probe.to_json() if probe else None,
        # stages that ran on random-initialised weights (offline profile): this sample is plumbing only
        "random_weights": stages_on_random_weights(c, stages),
        "stats": {k: v for k, v in c.stats.items() if k not in vectors},
        **{f.key: c.fact(f).to_json() for f in present},
        **run_info,
    }


def write_tar(path: Path, samples: Sequence[Candidate], run_info: dict[str, Any],
              stages: Sequence[type[Stage] | Stage] = ()) -> int:
    """Deterministic tar: samples by key, members in schema order, fixed mtime/uid/gid/mode; each sample's
    json as :func:`sample_meta` makes it from ``stages``."""
    n = 0
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for c in sorted(samples, key=lambda c: c.key):
            members = dict(c.members)
            members[META] = json.dumps(sample_meta(c, run_info, stages), sort_keys=True, default=str).encode()
            for name in sorted(members, key=member_rank):
                _safe_member(c.key)
                _safe_member(name)
                data = members[name]
                info = tarfile.TarInfo(f"{c.key}.{name}")
                info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            n += 1
        raw.flush()
        os.fsync(raw.fileno())
    return n
