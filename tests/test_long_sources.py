"""A long source is scanned in parts by several `faces` actors (FaceTrack.chunks), and the shards are the bytes
of a whole scan: the parts own the shots that start in their stretch, their cut detectors see the video
before it first, and the merge checks the overlaps (a disagreement would mean one whole scan instead)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mtcc.pipeline.build import build
from mtcc.pipeline.config import load_config, resolve_config

pytestmark = pytest.mark.slow

# the stages after the cut that only score its clips: a scan split differently would already show in the
# tracks, clips and media the shards hold
SCORING_STAGES = ("picture", "text", "separate", "sound", "asd", "sync", "masks", "audio_emb", "identity",
                  "fingerprint", "caption")
# detection at a smaller size: the comparison is between two scans of the same settings
QUICK = ["stages.faces.input_size=320", "stages.prescore.reject=false",
         *[f"stages.{s}.enabled=false" for s in SCORING_STAGES]]


def digests(out: Path) -> dict[str, str]:
    files = sorted([*out.glob("shards/*"), *out.glob("manifests/*"), *out.glob("commits/*")])
    return {f.relative_to(out).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def long_source(tmp_path_factory) -> Path:
    from mtcc.sampledata import generate_long

    d = tmp_path_factory.mktemp("long")
    generate_long(d / "long_1.5min.mp4", minutes=1.5, seed=1)  # cuts at 36, 54 and 71 s: no cut after 75 s
    return d


def test_a_long_source_scanned_in_parts_gives_the_shards_of_a_whole_scan(long_source, tiny_overrides, ray_local,
                                                                         tmp_path):
    whole = load_config(resolve_config("offline"), [*tiny_overrides, *QUICK, "stages.faces.part_seconds=0"])
    parted = load_config(resolve_config("offline"), [*tiny_overrides, *QUICK, "stages.faces.part_seconds=25",
                                                     "stages.faces.part_overlap_seconds=6"])
    assert whole.config_hash() == parted.config_hash()  # how a scan is split is no setting of the dataset
    a = build(whole, [str(long_source)], tmp_path / "whole", runner="inprocess", progress=False)
    b = build(parted, [str(long_source)], tmp_path / "parted", runner="ray", progress=False)
    assert not a.shards_failed and not b.shards_failed
    assert a.stage_timing["faces"]["parts"] == 0 and b.stage_timing["faces"]["parts"] == 4  # 90 s in 25 s parts
    assert b.stage_timing["faces"]["rescans"] == 0  # the parts joined: the bytes below are the merge's
    assert digests(tmp_path / "parted") == digests(tmp_path / "whole")
    rows = pq_rows(tmp_path / "whole")
    assert sum(r["level"] == "clip" for r in rows) >= 4  # the long video's shots made clips, not a lone row


def pq_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.ParquetDataset(out / "manifests").read().to_pylist()
