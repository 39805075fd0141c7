"""The whole-build index and selections on real footage: a build of the real debate (cut into its two
halves), a copy of it re-encoded at a low bitrate, rescaled 720p -> 480p and trimmed by half a second, the
real same-scene pair (two other people) and the real single talking head (no clip), through the identity
and fingerprint stages; then `mtcc index` and `mtcc select` on it.

What a user needs from it: the copy's clips are grouped with the original's and dropped from a selection,
nothing unrelated is ever grouped, the debate's two people get the same two ids in both halves and in the
copy and the pair's people other ids, a selection's --where keeps what a rebuild with that threshold keeps,
and a split by identity never puts one person on both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtcc.manifests.paths import OutPaths
from mtcc.manifests.report_data import read_manifests

PROFILE = """\
profile: index_test
run: {videos_per_shard: 2, max_shards_in_flight: 2, max_clips_in_flight: 8}
clip: {fps: 25, audio_rate: 16000, characters: 2}
stages:
  probe: {min_duration: 2.0, require_audio: true}
  faces:
    shots: {detector: content, threshold: 27.0, analysis_width: 192}
    detector: centerface
    sample_fps: 5
    decode_width: 640
    forward_batch: 4
  segment: {min_face_px: 40, min_frames: 49, max_seconds: 3.0}
  layout: {split_screen: keep}
  distance: {size: width, min_ratio: 0.15}
  cut: {preset: veryfast, threads: 2}
  identity: {}
  fingerprint: {}
  write: {}
"""


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def inputs(real_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("index_inputs")
    shutil.copy2(real_dir / "debate_split_screen.avi", d / "debate.avi")
    # the copy a re-upload makes: another bitrate and codec settings, 480 lines, half a second trimmed
    # (-ss after -i: an exact cut of the sound, which AC-3 frames would otherwise round)
    ffmpeg("-i", str(real_dir / "debate_split_screen.avi"), "-ss", "0.5", "-vf", "scale=-2:480", "-c:v", "libx264",
           "-b:v", "400k", "-c:a", "aac", "-b:a", "48k", str(d / "debate_copy.mp4"))
    ffmpeg("-i", str(real_dir / "same_scene_pair_16fps.mp4"), "-t", "6", "-c:v", "libx264", "-crf", "18",
           "-c:a", "aac", str(d / "pair.mp4"))
    shutil.copy2(real_dir / "single_talking_head_2997fps.mp4", d / "head.mp4")
    return d


def run_build(inputs: Path, out: Path, overrides: list[str] = ()) -> Path:
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config

    profile = out.parent / f"{out.name}.yaml"
    profile.write_text(PROFILE)
    res = build(load_config(profile, list(overrides)), [str(inputs)], out, runner="inprocess", progress=False)
    assert not res.shards_failed, res.shards_failed
    return out


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory) -> Path:
    return run_build(inputs, tmp_path_factory.mktemp("index_build") / "out")


@pytest.fixture(scope="module")
def indexed(built, tmp_path_factory) -> Path:
    """``built`` indexed in two runs: first with its last shard not yet committed (a build in progress),
    then again once it is."""
    from mtcc.pipeline.index import index_out

    out = tmp_path_factory.mktemp("index_incremental") / "out"
    shutil.copytree(built, out)
    layout = OutPaths(out)
    last = max(int(p.stem) for p in (out / "commits").glob("*.json"))
    held = layout.commit(last).read_bytes()
    layout.commit(last).unlink()
    first = index_out(out, log=lambda m: None)
    layout.commit(last).write_bytes(held)
    second = index_out(out, log=lambda m: None)
    assert last not in first.shards_new and second.shards_new == [last], (first, second)
    return out


def clips(out: Path) -> list[dict]:
    rows = read_manifests(out).to_pylist()
    return [r for r in rows if r["level"] == "clip" and r["status"] == "kept"]


def source_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def identities(out: Path) -> dict[tuple[str, int], int]:
    t = pq.read_table(OutPaths(out).identities).to_pylist()
    return {(r["key"], r["character"]): r["identity"] for r in t}


def test_build_kept_what_the_index_needs(built):
    kept = clips(built)
    by_source = {}
    for r in kept:
        by_source.setdefault(source_of(r["key"]), []).append(r)
    # the debate in two halves (and its copy in two), the pair in two; the talking head has one face
    assert sorted(by_source) == ["debate", "debate-copy", "pair"], sorted(by_source)
    assert len(by_source["debate"]) == 2 and len(by_source["pair"]) == 2, {k: len(v) for k, v in by_source.items()}
    for r in kept:
        assert len(r["identity.descriptor_0"]) == 128 and len(r["identity.descriptor_1"]) == 128
        assert len(r["fingerprint.frame_hashes"]) == len(r["fingerprint.frame_times"]) >= 5
        assert r["fingerprint.audio_share"] > 0.5, r["key"]


def test_copy_is_grouped_with_its_original_and_nothing_else(indexed):
    groups = pq.read_table(OutPaths(indexed).duplicates).to_pylist()
    pairs = pq.read_table(OutPaths(indexed).duplicate_pairs).to_pylist()
    members: dict[int, list[dict]] = {}
    for r in groups:
        members.setdefault(r["group"], []).append(r)
    copies = [r["key"] for r in clips(indexed) if source_of(r["key"]) == "debate-copy"]
    grouped = {r["key"] for r in groups}
    assert set(copies) <= grouped, (copies, pairs)
    for g in members.values():
        sources = sorted(source_of(r["key"]) for r in g)
        # only the debate and its copy: the pair and the halves of one video are never grouped together
        assert set(sources) == {"debate", "debate-copy"}, (sources, pairs)
        kept = [r for r in g if r["kept"]]
        assert len(kept) == 1 and source_of(kept[0]["key"]) == "debate", g  # the 720p original is kept
    print("duplicate pairs:", [(p["a_key"], p["b_key"], round(p["offset_s"], 3), round(p["audio_ber"], 3),
                               p["frame_distance"]) for p in pairs])
    start = {r["key"]: r["start"] for r in clips(indexed)}
    assert pairs
    for p in pairs:
        assert p["audio_ber"] < 0.2 and p["frame_distance"] <= 6, p
        # offset_s: b's content sits that much later in a, b(t) = a(t + offset_s). The copy's time u is the
        # original's u + 0.5 (it starts half a second in), so from the clips' starts in their own sources:
        a, b = p["a_key"], p["b_key"]
        want = start[b] - start[a] + (0.5 if source_of(a) == "debate" else -0.5)
        assert abs(p["offset_s"] - want) <= 0.05, (p, want)


def test_same_people_get_the_same_ids(indexed):
    ids = identities(indexed)
    by_source: dict[str, set[int]] = {}
    for (key, k), ident in ids.items():
        by_source.setdefault(source_of(key), set()).add(ident)
    # the debate's two halves: the same two people, two ids; the copy: the same two; the pair: two others
    assert len(by_source["debate"]) == 2, ids
    assert by_source["debate-copy"] == by_source["debate"], ids
    assert len(by_source["pair"]) == 2 and not by_source["pair"] & by_source["debate"], ids
    debate = sorted(k for k, _ in ids if source_of(k) == "debate")
    # per character: the left person of the first half is the left person of the second
    assert ids[(debate[0], 0)] == ids[(debate[-1], 0)] and ids[(debate[0], 1)] == ids[(debate[-1], 1)], ids


def test_incremental_index_equals_one_run(indexed, built, tmp_path):
    from mtcc.pipeline.index import index_out

    once = tmp_path / "out"
    shutil.copytree(built, once)
    index_out(once, log=lambda m: None)
    for name in ("identities", "duplicates", "duplicate_pairs"):
        a = pq.read_table(OutPaths(indexed).index_dir / f"{name}.parquet")
        b = pq.read_table(OutPaths(once).index_dir / f"{name}.parquet")
        assert a.sort_by([(c, "ascending") for c in a.column_names if c in ("shard", "key", "a_key", "b_key",
                                                                              "character")]).equals(
            b.sort_by([(c, "ascending") for c in b.column_names if c in ("shard", "key", "a_key", "b_key",
                                                                          "character")])), name
    # nothing new: a rerun reads no shard and changes nothing
    before = {p.name: p.read_bytes() for p in OutPaths(once).index_dir.iterdir()}
    again = index_out(once, log=lambda m: None)
    assert again.shards_new == [] and {p.name: p.read_bytes() for p in OutPaths(once).index_dir.iterdir()} == before


def test_recommitted_shard_restarts_the_index(built, tmp_path):
    from mtcc.pipeline.index import index_out

    out = tmp_path / "out"
    shutil.copytree(built, out)
    index_out(out, log=lambda m: None)
    state = json.loads(OutPaths(out).index_state.read_text())
    shard = int(sorted(state["shards"])[0])
    commit = json.loads(OutPaths(out).commit(shard).read_text())
    commit["manifest"]["sha256"] = "0" * 64  # as a later build that redid the shard would leave it
    OutPaths(out).commit(shard).write_text(json.dumps(commit))
    lines: list[str] = []
    again = index_out(out, log=lines.append)
    assert "committed again" in again.restarted and f"{shard:06d}" in again.restarted, again
    assert len(again.shards_new) == len(state["shards"]) and "started over" in lines[0]


def test_selection_drops_the_copy_and_where_equals_a_rebuild(indexed, inputs, tmp_path):
    from mtcc.manifests.selections import read_selection
    from mtcc.pipeline.selection import select

    bound = 0.55  # the pair's two people lie closer than this (two alike generated faces), the debate's not
    s = select(indexed, "distinct", where=f"identity.between >= {bound}", log=lambda m: None)
    table, meta = read_selection(s.path)
    chosen = set(table["key"].to_pylist())
    assert meta["where"] == f"identity.between >= {bound}" and meta["counts"]["selected"] == len(chosen)
    assert not any(source_of(k) == "debate-copy" for k in chosen), chosen  # duplicates dropped
    with_copies = select(indexed, "distinct_all", where=f"identity.between >= {bound}", keep_duplicates=True,
                         log=lambda m: None)
    rebuilt = run_build(inputs, tmp_path / "strict", [f"stages.identity.min_between={bound}"])
    strict = {r["key"] for r in clips(rebuilt)}
    rows = read_manifests(rebuilt).to_pylist()
    assert any(r["reason"] == "same_person" for r in rows), "the bound must reject something to be a test"
    assert set(read_selection(with_copies.path)[0]["key"].to_pylist()) == strict
    assert chosen == {k for k in strict if source_of(k) != "debate-copy"}


def test_split_by_identity_never_shares_a_person(indexed):
    from mtcc.manifests.selections import read_selection
    from mtcc.pipeline.selection import select

    s = select(indexed, "split", split="val=0.3", by="identity", keep_duplicates=True, log=lambda m: None)
    table, meta = read_selection(s.path)
    ids = identities(indexed)
    side: dict[int, set[str]] = {}
    for key, part in zip(table["key"].to_pylist(), table["part"].to_pylist()):
        for k in range(2):
            side.setdefault(ids[(key, k)], set()).add(part)
    assert all(len(parts) == 1 for parts in side.values()), side
    assert set(table["part"].to_pylist()) == {"train", "val"}, meta
    assert table.num_rows == len(clips(indexed))


def test_max_per_identity(indexed):
    from mtcc.manifests.selections import read_selection
    from mtcc.pipeline.selection import select

    s = select(indexed, "capped", max_per_identity=1, keep_duplicates=True, log=lambda m: None)
    table, _ = read_selection(s.path)
    ids = identities(indexed)
    count: dict[int, int] = {}
    for key in table["key"].to_pylist():
        for k in range(2):
            count[ids[(key, k)]] = count.get(ids[(key, k)], 0) + 1
    assert count and max(count.values()) == 1, count
    assert len(count) == len(set(ids.values())), "every person keeps one clip"


def test_select_cli_refusals(built, tmp_path, capsys):
    from mtcc.pipeline.cli import main

    out = tmp_path / "out"
    shutil.copytree(built, out)
    shutil.rmtree(out / "index", ignore_errors=True)
    assert main(["select", str(out), "--name", "x"]) == 2  # dropping duplicates needs the index
    assert "mtcc index" in capsys.readouterr().err
    assert main(["select", str(out), "--name", "x", "--keep-duplicates", "--where", "identity.betwen > 1"]) == 2
    assert "identity.between" in capsys.readouterr().err  # the near name is suggested
    assert main(["select", str(out), "--name", "x", "--keep-duplicates", "--where", "__import__('os')"]) == 2
    assert main(["select", str(out), "--name", "../x", "--keep-duplicates"]) == 2
    assert not (out / "selections").exists() or not any((out / "selections").iterdir())
    assert main(["index", str(out)]) == 0
    assert main(["select", str(out), "--name", "all"]) == 0
    assert (out / "selections" / "all.parquet").is_file()


def test_identity_descriptors_in_the_sample(built):
    from mtcc.manifests.shard_tar import read_samples
    from mtcc.media.members import IDENTITY, META

    for tar in sorted((built / "shards").glob("*.tar")):
        for key, members in read_samples(tar):
            arr = np.load(__import__("io").BytesIO(members[IDENTITY]))
            meta = json.loads(members[META])
            assert arr.shape[0] == 2 and arr.shape[2] == 128 and arr.dtype == np.float32
            assert [len(f) for f in meta["identity"]["frames"]] == [int(np.isfinite(arr[k, :, 0]).sum())
                                                                    for k in range(2)]
            assert "identity.descriptor_0" not in meta["stats"]  # vectors stay out of the json


def test_bench_index_finds_the_planted_people_and_copies():
    from mtcc.benchmarks.index_speed import index_bench

    doc = index_bench(600, log=lambda m: None)
    assert doc["shards_grown"] >= 1 and doc["index_grown_s"] > 0
    assert doc["identities"] == doc["people_planted"] and doc["impure_identities"] == doc["split_people"] == 0, doc
    assert doc["copies_found"] == doc["copies_planted"] > 0 and doc["mixed_groups"] == 0, doc


def test_a_missing_selection_names_the_command_that_makes_it(tmp_path):
    from mtcc.manifests.selections import SelectionError, load_selected, selection_url

    with pytest.raises(SelectionError) as e:
        load_selected(selection_url(str(tmp_path / "out"), "val_set"))
    assert f"make it with `mtcc select {tmp_path / 'out'} --name val_set`" in str(e.value)
    with pytest.raises(SelectionError) as e:  # a path given as is: OUT and the name are not known
        load_selected(str(tmp_path / "mine.parquet"))
    assert "make it with `mtcc select OUT --name NAME`" in str(e.value)
