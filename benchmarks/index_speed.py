"""``mtcc bench --index CLIPS``: `mtcc index` and `mtcc select` over a generated build of that many kept
clips, no video involved: manifests written as the identity and fingerprint stages would (two 128-d
descriptors a clip, 2 frame hashes a second, 62.5 audio sub-fingerprints a second of 10 s clips), with
planted truth: clips drawn from ``people`` people (each clip two different ones, a descriptor their
centre plus noise) and ``copies`` of a share of the clips (other bits flipped in the hashes, shifted by up
to half a second). Measures the index's wall time and peak memory in one run and over a build that grows
by a tenth, how well the identities and groups match the planted ones, and a selection's time.
"""

from __future__ import annotations

import hashlib
import json
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtcc.manifests.paths import OutPaths

CLIP_S = 10.0
FRAMES = int(CLIP_S * 2)
AUDIO = int((CLIP_S - 0.256) / 0.016)


def _person_centres(rng: np.random.Generator, people: int) -> np.ndarray:
    # dlib descriptors of different people lie ~0.8-1.0 apart; scaled unit vectors give that spread
    c = rng.normal(size=(people, 128))
    return c / np.linalg.norm(c, axis=1, keepdims=True) * 0.62


def _noisy_bits(rng: np.random.Generator, values: np.ndarray, bits: int, rate: float) -> np.ndarray:
    flips = (rng.random((len(values), bits)) < rate) @ (1 << np.arange(bits, dtype=np.uint64))
    return (values.astype(np.uint64) ^ flips.astype(np.uint64)).view(np.int64)


def generate(root: Path, clips: int, per_shard: int = 100, people: int = 1000, copy_share: float = 0.02,
             seed: int = 0) -> dict[str, Any]:
    """A build under ``root`` (plan, manifests, commits) of ``clips`` kept clips; returns the planted truth."""
    rng = np.random.default_rng(seed)
    centres = _person_centres(rng, people)
    layout = OutPaths(root)
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    n_copies = int(clips * copy_share)
    originals = clips - n_copies
    who = np.array([rng.choice(people, 2, replace=False) for _ in range(originals)])
    # a picture that changes every 2 s (a shot), hashed twice a second: frame j of a copy trimmed by
    # ``trim`` hops shows the scene at j/2 s + trim x 16 ms of its original
    scenes = rng.integers(0, 2**63, size=(originals, int(CLIP_S / 2) + 1), dtype=np.int64)
    audio = rng.integers(0, 2**32, size=(originals, AUDIO), dtype=np.int64)
    copy_of = rng.choice(originals, n_copies, replace=False)
    rows: list[dict[str, Any]] = []
    for i in range(clips):
        src = i if i < originals else int(copy_of[i - originals])
        trim = int(rng.integers(0, 31)) if i >= originals else 0
        a = audio[src][trim:]
        f = scenes[src][((np.arange(FRAMES) * 0.5 + trim * 0.016) // 2).astype(int)]
        if i >= originals:  # a re-upload: bits flipped, the start trimmed by up to half a second
            a = _noisy_bits(rng, a.astype(np.uint64), 32, 0.08).view(np.int64) & 0xFFFFFFFF
            f = _noisy_bits(rng, f.view(np.uint64), 64, 0.03)
        desc = [centres[p] + rng.normal(scale=0.2 / np.sqrt(128), size=128) for p in who[src]]
        rows.append({"key": f"v{i:06d}_0000", "video_id": f"v{i:06d}", "level": "clip", "status": "kept",
                     "start": 0.0, "end": CLIP_S, "identity.descriptor_0": desc[0].astype(np.float32).tolist(),
                     "identity.descriptor_1": desc[1].astype(np.float32).tolist(),
                     "fingerprint.frame_hashes": f.tolist(),
                     "fingerprint.frame_times": [round(j * 0.5, 3) for j in range(len(f))],
                     "fingerprint.audio_hashes": a.tolist(), "probe.height": None})
    schema = pa.schema([("key", pa.string()), ("video_id", pa.string()), ("shard", pa.int32()),
                        ("level", pa.string()), ("status", pa.string()), ("start", pa.float64()),
                        ("end", pa.float64()), ("probe.height", pa.int64()),
                        ("identity.descriptor_0", pa.list_(pa.float32())),
                        ("identity.descriptor_1", pa.list_(pa.float32())),
                        ("fingerprint.frame_hashes", pa.list_(pa.int64())),
                        ("fingerprint.frame_times", pa.list_(pa.float32())),
                        ("fingerprint.audio_hashes", pa.list_(pa.int64()))])
    shards = (clips + per_shard - 1) // per_shard
    for s in range(shards):
        part = [{**r, "shard": s} for r in rows[s * per_shard:(s + 1) * per_shard]]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), layout.manifest(s), compression="zstd")
    pq.write_table(pa.table({"shard": pa.array(range(shards), pa.int32()),
                             "source": [f"generated/{s}" for s in range(shards)]}), layout.plan)
    for s in range(shards):
        sha = hashlib.sha256(layout.manifest(s).read_bytes()).hexdigest()
        samples = min(per_shard, clips - s * per_shard)
        layout.commit(s).write_text(json.dumps({"shard": s, "samples": samples, "manifest": {"sha256": sha}}))
    return {"people": who.tolist(), "copy_of": copy_of.tolist(), "originals": originals, "shards": shards}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _agreement(root: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """Identities: how many found ids mix planted people (impure) and how many people are split over
    several ids; duplicates: planted copies found, and pairs that are not planted."""
    layout = OutPaths(root)
    ids = pq.read_table(layout.identities).to_pylist()
    planted = truth["people"]
    originals = truth["originals"]
    copy_of = truth["copy_of"]

    def person(key: str, k: int) -> int:
        i = int(key[1:7])
        return planted[i if i < originals else copy_of[i - originals]][k]

    by_id: dict[int, set[int]] = {}
    by_person: dict[int, set[int]] = {}
    for r in ids:
        p = person(r["key"], r["character"])
        by_id.setdefault(r["identity"], set()).add(p)
        by_person.setdefault(p, set()).add(r["identity"])
    groups = pq.read_table(layout.duplicates).to_pylist()
    def origin(i: int) -> int:
        return i if i < originals else copy_of[i - originals]

    member: dict[int, list[int]] = {}
    for r in groups:
        member.setdefault(r["group"], []).append(int(r["key"][1:7]))
    together = {frozenset(m) for m in member.values()}
    hit = sum(1 for j, o in enumerate(copy_of) if any({o, originals + j} <= g for g in together))
    false = sum(1 for m in member.values() if len({origin(i) for i in m}) > 1)
    return {"identities": len(by_id), "people_planted": len({p for pair in planted for p in pair}),
            "impure_identities": sum(len(v) > 1 for v in by_id.values()),
            "split_people": sum(len(v) > 1 for v in by_person.values()),
            "copies_planted": len(copy_of), "copies_found": hit, "mixed_groups": false}


def index_bench(clips: int = 10_000, log: Callable[[str], None] = print) -> dict[str, Any]:
    from mtcc.pipeline.index import index_out
    from mtcc.pipeline.selection import select

    with tempfile.TemporaryDirectory(prefix="mtcc-index-bench-") as d:
        root = Path(d) / "out"
        t = time.monotonic()
        truth = generate(root, clips)
        log(f"generated {clips} clips in {truth['shards']} shards ({time.monotonic() - t:.1f} s)")
        layout = OutPaths(root)
        tenth = max(1, truth["shards"] // 10)
        held = {s: layout.commit(s).read_bytes() for s in range(truth["shards"] - tenth, truth["shards"])}
        for s in held:
            layout.commit(s).unlink()
        mem0 = _peak_mb()
        first = index_out(root, log=log)
        for s, data in held.items():
            layout.commit(s).write_bytes(data)
        grown = index_out(root, log=log)
        t = time.monotonic()
        sel = select(root, "bench", max_per_identity=20, split="val=0.05", log=log)
        select_s = time.monotonic() - t
        doc = {"clips": clips, "shards": truth["shards"], "index_s": round(first.seconds, 2),
               "index_grown_s": round(grown.seconds, 2), "shards_grown": len(grown.shards_new),
               "select_s": round(select_s, 2), "selected": sel.after_cap,
               "peak_rss_mb": round(_peak_mb(), 1), "rss_before_mb": round(mem0, 1), **_agreement(root, truth)}
    return doc
