"""The training loader on synthetic shards with planted ground truth (written by the pipeline's own commit
code, so the sample format is the real one): batch fields, the planted frames / audio rows / routing
masks, exactly-once splitting across ranks x workers, corrupt shards, manifest filters."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mtcc.media.geometry import LatentGeometry
from mtcc.training import loader
from mtcc.training.decode import decode_video, mp4_size, npy_view, route_from_rle
from mtcc.training.filters import FilterError, parse_condition, parse_filters
from mtcc.training.synthetic import CODE_BLOCK, FRAME_CODE_BASE, FRAME_CODE_STEP, planted_masks, write_shards

SHARD_GEO = LatentGeometry(frames=9, height=64, width=96)
SMALL = {"frames": 9, "height": 64, "width": 96}
LENGTHS = [30, 7, 20]  # 7 < 9 frames: a short clip (one padded window)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "out"
    truth = write_shards(out, 7, 2, frames=LENGTHS, size=(192, 128), geometry=SHARD_GEO)
    return out, truth


def expected_items(truth, geo: LatentGeometry = SHARD_GEO) -> Counter:
    return Counter((k, tuple(w)) for k, t in truth.items() for w in geo.windows(t.frames))


def collect(ld) -> list[dict]:
    return list(ld)


def items_of(batches) -> list[tuple[str, tuple[int, int]]]:
    return [(k, tuple(w.tolist())) for b in batches for k, w in zip(b["key"], b["window"])]


def test_batch_fields_shapes_dtypes_and_values(synth):
    out, truth = synth
    geo = LatentGeometry(**SMALL)
    batches = collect(loader(str(out), geometry=SMALL, batch_size=3, num_workers=0, ref_size=40))
    assert sum(len(b["key"]) for b in batches) == sum(expected_items(truth).values())
    for b in batches:
        n = len(b["key"])
        assert n <= 3
        assert b["video"].shape == (n, 3, 9, 64, 96) and b["video"].dtype == torch.float32
        assert b["video"].min() >= -1 and b["video"].max() <= 1
        assert b["audio_emb"].shape == (n, 2, 13, 12, 768) and b["audio_emb"].dtype == torch.float16
        assert b["route"].shape == (n, geo.tokens) and b["route"].dtype == torch.int8
        assert set(b["route"].unique().tolist()) <= {-1, 0, 1}
        assert b["a_ac"].shape == (n, 2, 2) and b["a_ac"].dtype == torch.float32
        assert b["a_ac_known"].dtype == torch.bool and bool(b["a_ac_known"].all())
        assert b["ref"].shape == (n, 2, 3, 40, 40) and b["ref"].dtype == torch.float32
        assert b["valid_frames"].dtype == torch.int64 and b["window"].shape == (n, 2)
        assert b["caption"] == [f"caption of {k}" for k in b["key"]]
        for k, a in zip(b["key"], b["a_ac"]):
            assert a.tolist() == truth[k].a_ac
    # both characters and background are on the grid of every window (the ellipses are large)
    assert all({-1, 0, 1} <= set(r.unique().tolist()) for b in batches for r in b["route"])


def test_windows_hold_the_planted_frames_audio_rows_and_padding(synth):
    out, truth = synth
    ld = loader(str(out), geometry=SMALL, batch_size=1, num_workers=0, video_dtype="uint8")
    seen_short = False
    for b in ld:
        key, (start, end) = b["key"][0], b["window"][0].tolist()
        n = truth[key].frames
        assert (start, end) in SHARD_GEO.windows(n)
        frames = [min(start + i, end - 1) for i in range(9)]
        assert int(b["valid_frames"][0]) == min(end - start, 9)
        seen_short |= end - start < 9
        # the frame-index block: 192x128 letterboxes to 96x64 exactly (scale 0.5), so it is the top-left 12 px
        code = b["video"][0, :, :, 2:CODE_BLOCK // 2 - 2, 2:CODE_BLOCK // 2 - 2].float().mean(dim=(0, 2, 3))
        want = torch.tensor([FRAME_CODE_BASE + FRAME_CODE_STEP * f for f in frames], dtype=torch.float32)
        assert (code - want).abs().max() < FRAME_CODE_STEP / 2, (key, start, code, want)
        # audio rows start-2 .. start+9+2, replicated at the clip's borders; character c adds 1000 c
        rows = np.clip(np.arange(start - 2, start + 11), 0, n - 1)
        emb = b["audio_emb"][0].float()
        for c in range(2):
            assert torch.equal(emb[c, :, 0, 0], torch.tensor(rows + 1000 * c, dtype=torch.float32))
            assert bool((emb[c] == emb[c, :, :1, :1]).all())
    assert seen_short


def test_route_npy_is_used_at_the_shard_geometry_and_equals_the_recomputed_mask(synth, tmp_path, monkeypatch):
    out, truth = synth
    from_npy = {(k, tuple(w.tolist())): r for b in loader(str(out), geometry=SMALL, num_workers=0,
                                                          windows="all", shuffle_buffer=0)
                for k, w, r in zip(b["key"], b["window"], b["route"])}
    # the same shards without route.npy: the loader recomputes every mask from masks.rle.json
    bare = tmp_path / "bare"
    write_shards(bare, 2, 2, frames=LENGTHS, size=(192, 128), geometry=SHARD_GEO, route=False)
    for b in loader(str(bare), geometry=SMALL, num_workers=0):
        for k, w, r in zip(b["key"], b["window"], b["route"]):
            assert torch.equal(r, from_npy[(k, tuple(w.tolist()))])
    # what the loader gives there is route.npy itself: shards whose route.npy was planted with the two
    # characters exchanged (their masks unchanged) give the exchanged routes; a short clip's padded window
    # alone is recomputed from its masks (items.training_windows)
    from mtcc.training import synthetic

    written = synthetic.route_index_mask
    monkeypatch.setattr(synthetic, "route_index_mask", lambda canvas, geo: exchanged(written(canvas, geo)))
    planted = tmp_path / "planted"
    write_shards(planted, 2, 2, frames=LENGTHS, size=(192, 128), geometry=SHARD_GEO)
    monkeypatch.undo()
    seen = 0
    for b in loader(str(planted), geometry=SMALL, num_workers=0):
        for k, w, r in zip(b["key"], b["window"], b["route"]):
            want = from_npy[(k, tuple(w.tolist()))]
            full = int(w[1]) - int(w[0]) >= SHARD_GEO.frames
            assert (want >= 0).any() and torch.equal(r, exchanged(want) if full else want), (k, w)
            seen += full
    assert seen
    # and another geometry recomputes from the masks too: 17 frames at 128x192, windows of that length
    big = {"frames": 17, "height": 128, "width": 192}
    got = items_of(loader(str(out), geometry=big, num_workers=0, ref_size=32))
    assert Counter(got) == expected_items(truth, LatentGeometry(**big))


def exchanged(route):
    """A route map with characters 0 and 1 exchanged (-1, nobody, stays)."""
    if isinstance(route, torch.Tensor):
        return torch.where(route < 0, route, 1 - route)
    return np.where(route < 0, route, 1 - route).astype(route.dtype)


def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: 1-D linear resampling with half-pixel centres (align_corners=False), clamped at the edges."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        a = int(np.floor(x))
        w[i, a] += 1 - (x - a)
        w[i, min(a + 1, n_in - 1)] += x - a
    return w


def recipe_route(masks: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """The authors' routing recipe written out in numpy, apart from the product's torch code: each character's
    [T, H, W] canvas mask resized to the grid by separable linear weights, > 0.5, character 1 over 0, -1 none."""
    out = np.full(grid, -1, np.int8)
    for k in range(len(masks)):
        wt, wh, ww = (linear_weights(n, m) for n, m in zip(masks[k].shape, grid))
        out[np.einsum("ti,hj,wk,ijk->thw", wt, wh, ww, masks[k].astype(np.float64)) > 0.5] = k
    return out


def test_route_npy_and_route_from_rle_follow_the_recipe_on_the_planted_masks(synth):
    """route.npy (the writer's, by the masks stage's functions) and route_from_rle (the loader's, from
    masks.rle.json) both equal the recipe computed here from the planted ellipses themselves, on every window
    of every sample, the 7-frame clip's short window included."""
    from mtcc.manifests.shard_tar import read_samples

    out, truth = synth
    import json

    seen = set()
    for tar in sorted((out / "shards").glob("*.tar")):
        for key, members in read_samples(tar):
            doc = json.loads(members["masks.rle.json"])
            route = npy_view(members["route.npy"])
            w, h = truth[key].size
            assert (w, h) == (192, 128)  # letterboxed to 96x64 at exactly half: nearest keeps the even pixels
            for i, (s, e) in enumerate(SHARD_GEO.windows(truth[key].frames)):
                canvas = np.stack([[planted_masks(f, w, h)[k][::2, ::2] for f in range(s, e)] for k in range(2)])
                want = recipe_route(canvas, SHARD_GEO.grid)
                assert np.array_equal(route[i], want), (key, s, e)
                assert np.array_equal(route_from_rle(doc, list(range(s, e)), SHARD_GEO), want.reshape(-1)), (key, s)
                seen |= set(np.unique(want).tolist())
                seen.add(("short", e - s < SHARD_GEO.frames))
    assert {-1, 0, 1, ("short", True), ("short", False)} <= seen


def test_route_from_rle_letterboxes_with_padding_and_character_1_wins_where_both_are(synth):
    """A 100x60 clip (letterboxed to 96x58 with 3 black rows above and below, not an exact scale) whose two
    planted rectangles overlap: route_from_rle equals the recipe on the canvas built here by nearest-pixel
    lookup, and the cells both characters cover go to character 1."""
    from mtcc.media import rle as rle_codec

    w, h, n = 100, 60, SHARD_GEO.frames
    masks = np.zeros((2, n, h, w), bool)
    for f in range(n):
        masks[0, f, 10:50, 10 + f:60 + f] = True
        masks[1, f, 15:55, 40 + f:90] = True
    doc = {"size": [h, w], "characters": [{"index": k, "rle": [rle_codec.encode(m) for m in masks[k]]}
                                          for k in (1, 0)]}  # listed out of order: the index decides
    rows, cols = (np.minimum(np.floor(np.arange(58) * h / 58).astype(int), h - 1),
                  np.minimum(np.floor(np.arange(96) * w / 96).astype(int), w - 1))
    canvas = np.zeros((2, n, SHARD_GEO.height, SHARD_GEO.width), np.uint8)
    canvas[:, :, 3:61, :] = masks[:, :, rows][:, :, :, cols]
    want = recipe_route(canvas, SHARD_GEO.grid)
    assert np.array_equal(route_from_rle(doc, list(range(n)), SHARD_GEO), want.reshape(-1))
    alone = recipe_route(canvas[:1], SHARD_GEO.grid)
    assert ((alone == 0) & (want == 1)).sum() >= 3  # both cover these cells: character 1's


RANK_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch.distributed as dist
from mtcc.training import loader
rank, out, tmp = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
dist.init_process_group("gloo", init_method=f"file://{tmp / 'group'}", rank=rank, world_size=2)
if rank == 0:
    import mtcc.training.data as data
    agreed = data._agreed

    def listed_then_agreed(shards, world_size):  # rank 0 has listed OUT: the test may commit the next shard
        (tmp / "rank0_lists").touch()
        return agreed(shards, world_size)

    data._agreed = listed_then_agreed
else:
    while not (tmp / "committed").exists():  # lists OUT after one more shard was committed
        time.sleep(0.05)
ld = loader(out, geometry={"frames": 9, "height": 64, "width": 96}, num_workers=0, ref_size=16)
items = [[k, w.tolist()] for b in ld for k, w in zip(b["key"], b["window"])]
print("ITEMS " + json.dumps({"shards": len(ld.shards), "items": items}))
if rank == 0:  # a loader of rank 0 alone (validation, say): nothing to agree with the other rank
    print("ALONE", len(loader(out, num_workers=0, rank=0, world_size=1).shards))
dist.destroy_process_group()
"""


def test_ranks_that_list_out_while_a_build_commits_still_read_each_shard_once(synth, tmp_path):
    """Training on an output a build is still writing: rank 0 lists it, a shard is committed, rank 1 lists it.
    Both ranks use rank 0's list, so every window of its shards is read exactly once in the epoch (with a
    list each, 6 shards against 7 gave orders over different lists)."""
    import json
    import os
    import subprocess
    import sys
    import time

    from mtcc.manifests.shard_tar import read_samples

    out = tmp_path / "out"
    shutil.copytree(synth[0], out)
    held = tmp_path / "000006.json"
    (out / "commits" / "000006.json").rename(held)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, str(script), str(r), str(out), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    deadline = time.monotonic() + 120
    while not (tmp_path / "rank0_lists").exists():
        assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()[1][-3000:]
        time.sleep(0.05)
    held.rename(out / "commits" / "000006.json")
    (tmp_path / "committed").touch()
    results, alone = [], ""
    for r in ranks:
        stdout, stderr = r.communicate(timeout=120)
        alone += stdout
        line = next((ln for ln in stdout.splitlines() if ln.startswith("ITEMS ")), None)
        assert r.returncode == 0 and line, stderr[-3000:]
        results.append(json.loads(line[len("ITEMS "):]))
    assert [res["shards"] for res in results] == [6, 6]
    assert "ALONE 7" in alone  # it listed OUT itself (and did not wait for rank 1 in a collective)
    six = sorted((out / "shards").glob("*.tar"))[:6]
    keys = {k for tar in six for k, _ in read_samples(tar, select=lambda _: ())}
    want = Counter((k, tuple(w)) for k, t in synth[1].items() if k in keys for w in SHARD_GEO.windows(t.frames))
    got = Counter((k, tuple(w)) for res in results for k, w in res["items"])
    assert got == want


def test_every_shard_read_exactly_once_per_epoch_across_2_ranks_x_2_workers(synth):
    out, truth = synth
    want = expected_items(truth)
    orders = []
    for epoch in (0, 1):
        got: list[tuple[str, tuple[int, int]]] = []
        shard_rank: dict[str, set[int]] = {}
        reads = 0
        for rank in (0, 1):
            ld = loader(str(out), geometry=SMALL, rank=rank, world_size=2, epoch=epoch, num_workers=2,
                        batch_size=2, ref_size=16, shuffle_buffer=4)
            assert ld.split == "shard"
            batches = collect(ld)
            got += items_of(batches)
            for b in batches:
                for s in b["shard"]:
                    shard_rank.setdefault(s, set()).add(rank)
            stats = ld.stats()
            reads += stats["shards_read"]
            assert stats["shards_failed"] == 0
            assert ld.epoch == epoch + 1
            if rank == 0:
                orders.append([s for b in batches for s in b["shard"]])
        assert Counter(got) == want, "every window exactly once per epoch"
        assert reads == 7, "every shard read once, by one worker"
        assert all(len(r) == 1 for r in shard_rank.values()), "a shard never split across ranks"
    assert orders[0] != orders[1], "the shard order is reshuffled every epoch"


def test_one_loader_over_epochs_reuses_its_workers_and_reshuffles(synth):
    out, truth = synth
    ld = loader(str(out), geometry=SMALL, num_workers=2, batch_size=2, ref_size=16, shuffle_buffer=4)

    def worker_pids() -> list[int]:  # torch's DataLoader keeps a persistent iterator and its processes
        return [w.pid for w in ld._dl._iterator._workers]

    first = items_of(collect(ld))
    pids = worker_pids()
    second = items_of(collect(ld))
    assert len(pids) == 2 and worker_pids() == pids  # the second epoch ran in the first one's workers
    assert Counter(first) == Counter(second) == expected_items(truth)
    assert first != second and ld.epoch == 2
    assert ld.stats()["shards_read"] == 14


def test_fewer_shards_than_workers_splits_by_window(tmp_path):
    out = tmp_path / "one"
    truth = write_shards(out, 1, 1, frames=[40], size=(96, 64), geometry=SHARD_GEO)  # one sample, 5 windows
    got = []
    for rank in (0, 1):
        ld = loader(str(out), geometry=SMALL, rank=rank, world_size=2, num_workers=0, ref_size=16)
        assert ld.split == "window"
        mine = items_of(collect(ld))
        assert mine, "each rank gets a share"
        got += mine
    assert Counter(got) == expected_items(truth)


def _corrupt(out: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "shards" / "mtcc-000002.tar").write_bytes(b"this is not a tar file" * 100)
    t = bad / "shards" / "mtcc-000005.tar"
    data = t.read_bytes()
    t.write_bytes(data[: len(data) * 2 // 3])  # truncated inside its second sample
    return bad


def test_corrupt_shards_are_skipped_logged_and_counted(synth, tmp_path, caplog):
    out, truth = synth
    bad = _corrupt(out, tmp_path)
    with caplog.at_level(logging.WARNING, logger="mtcc.training"):
        ld = loader(str(bad), geometry=SMALL, num_workers=0, ref_size=16)
        got = items_of(collect(ld))
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("mtcc-000002.tar" in m and "corrupt" in m for m in messages), messages
    assert any("mtcc-000005.tar" in m and "corrupt" in m for m in messages), messages
    assert ld.stats()["shards_failed"] == 2 and ld.stats()["shards_read"] == 5
    good = {k for k, t in truth.items() if t.shard not in (2, 5)}
    keys = {k for k, _ in got}
    assert good <= keys and not any(truth[k].shard == 2 for k in keys)
    # in worker processes too: same counts, the epoch still ends
    ld2 = loader(str(bad), geometry=SMALL, num_workers=2, ref_size=16)
    assert {k for k, _ in items_of(collect(ld2))} == keys
    assert ld2.stats()["shards_failed"] == 2


def test_manifest_filter_selects_samples_without_decoding_the_others(synth, monkeypatch):
    from mtcc.training import stream

    out, truth = synth
    decoded: list[str] = []
    real = stream.decode_item
    monkeypatch.setattr(stream, "decode_item", lambda s, w, c: decoded.append(s.key) or real(s, w, c))
    ld = loader(str(out), geometry=SMALL, num_workers=0, filters=["sync.sync_c_mean >= 4"], ref_size=16)
    keys = {k for k, _ in items_of(collect(ld))}
    want = {k for k, t in truth.items() if t.sync_c >= 4}
    assert keys == want and 0 < len(want) < len(truth)
    assert set(decoded) == want
    stats = ld.stats()
    assert stats["samples_read"] == len(want)
    assert stats["samples_filtered"] == len(truth) - len(want)
    both = loader(str(out), geometry=SMALL, num_workers=0, ref_size=16,
                  filters=["sync.sync_c_mean >= 2", "sync.swapped == true"])
    assert {k for k, _ in items_of(collect(both))} == {k for k, t in truth.items()
                                                      if t.sync_c >= 2 and t.a_ac == [[0, 1], [1, 0]]}


def test_filter_grammar_is_small_and_safe(synth):
    assert parse_condition("sync.sync_c_mean >= 4").value == 4
    assert parse_condition("a.b<-1.5e1").value == -15.0
    assert parse_condition("sync.swapped == false").value is False
    assert parse_condition("sync.audio_source != 'mixture'").value == "mixture"
    for bad in ("__import__('os').system('x') == 1", "a >= 1 or 1", "a => 1", "a == (1)", "sync.x >= 4; rm"):
        with pytest.raises(FilterError):
            parse_condition(bad)
    out, _ = synth
    with pytest.raises(FilterError, match="sync.sync_c_mean"):
        loader(str(out), filters=["sync.c_mean >= 4"])
    with pytest.raises(FilterError, match="cannot compare"):
        loader(str(out), filters=["sync.sync_c_mean >= high"])
    assert [str(c) for c in parse_filters(["x.y < 2"])] == ["x.y < 2"]


def test_filters_compare_like_kinds_only_and_an_unmeasured_stat_never_passes():
    """A stage records a stat it could not measure as NaN (or null): it passes no condition, != included. A
    bool column takes true/false or 0/1 (2 would silently mean true), a number column numbers only (true
    against a float column made pyarrow fail inside a DataLoader worker)."""
    import pyarrow as pa

    from mtcc.training.filters import check_columns, passing_keys

    table = pa.table({"key": ["a", "b", "c", "d"], "status": ["kept"] * 4,
                      "s.x": pa.array([1.0, float("nan"), None, 3.0]), "s.b": [True, False, None, True]})
    kept = {c: passing_keys(table, [parse_condition(c)]) for c in ("s.x != 1", "s.x < 5", "s.x >= 0", "s.b == 1",
                                                                    "s.b == true", "s.b != 0")}
    assert kept == {"s.x != 1": {"d"}, "s.x < 5": {"a", "d"}, "s.x >= 0": {"a", "d"}, "s.b == 1": {"a", "d"},
                    "s.b == true": {"a", "d"}, "s.b != 0": {"a", "d"}}
    for bad in ("s.x == true", "s.b == 2", "s.b != 0.5", "s.b < 1"):
        with pytest.raises(FilterError, match="cannot compare|ordering a bool"):
            check_columns([parse_condition(bad)], table.schema)


def test_a_shard_whose_manifest_lacks_the_filtered_column_stops_the_loader(synth, tmp_path):
    """The loader checks the filters against one manifest; a shard of another output (built without that
    stage) may lack the column: that is the user's filter not fitting, named, not a corrupt shard skipped."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    shutil.copytree(synth[0], out)
    manifest = sorted((out / "manifests").glob("*.parquet"))[3]
    pq.write_table(pq.read_table(manifest).drop_columns(["sync.sync_c_mean"]), manifest)
    ld = loader(str(out), geometry=SMALL, num_workers=0, filters=["sync.sync_c_mean >= 4"], ref_size=16)
    with pytest.raises(FilterError, match=f"{manifest.name}.*no manifest column 'sync.sync_c_mean'"):
        collect(ld)


def test_split_by_window_a_read_that_stops_early_loses_that_workers_windows_only(synth, monkeypatch):
    """Splitting by window, rank 0's read of one shard stops after its first sample (a flaky store): rank 1
    still reads exactly the windows it reads when nothing fails, and no window is read by both."""
    from mtcc.training import stream

    out, truth = synth

    def items(rank: int) -> list[tuple[str, tuple[int, int]]]:
        return items_of(collect(loader(str(out), geometry=SMALL, num_workers=0, ref_size=16, split="window",
                                       rank=rank, world_size=2, shuffle_buffer=1)))

    healthy = [items(r) for r in (0, 1)]
    assert Counter(healthy[0] + healthy[1]) == expected_items(truth)
    real = stream.read_samples

    def stops_after_one(f, *args, where=None, **kwargs):
        for n, sample in enumerate(real(f, *args, where=where, **kwargs)):
            if n == 1 and str(where).endswith("mtcc-000002.tar"):
                raise OSError("connection reset (planted)")
            yield sample

    monkeypatch.setattr(stream, "read_samples", stops_after_one)
    flaky = items(0)
    monkeypatch.setattr(stream, "read_samples", real)
    assert set(flaky) < set(healthy[0])  # it lost some of its own windows of that shard, nothing else
    assert not set(flaky) & set(healthy[1])
    lost = set(healthy[0]) - set(flaky)
    assert {k.split("v")[0] for k, _ in lost} == {"synth002"}


def test_uncommitted_shards_are_skipped_unless_asked(synth, tmp_path, caplog):
    out, _ = synth
    part = tmp_path / "partial"
    shutil.copytree(out, part)
    (part / "commits" / "000003.json").unlink()
    with caplog.at_level(logging.WARNING, logger="mtcc.training"):
        ld = loader(str(part), geometry=SMALL, num_workers=0, ref_size=16)
    assert "uncommitted" in caplog.text and len(ld.shards) == 6
    assert len(loader(str(part), committed_only=False).shards) == 7
    # brace patterns, globs and file:// URLs name the same shards
    brace = str(part / "shards" / "mtcc-{000000..000006}.tar")
    assert [s.name for s in loader(brace, committed_only=True).shards] == [s.name for s in ld.shards]
    assert len(loader(f"file://{part}/shards/*.tar", committed_only=False).shards) == 7
    url = loader(f"file://{part}", geometry=SMALL, num_workers=0, ref_size=16)
    assert Counter(items_of(collect(url))) == Counter(items_of(collect(ld)))


def test_random_window_mode_skip_short_and_resampled_stream(synth):
    out, truth = synth
    rnd = items_of(collect(loader(str(out), geometry=SMALL, num_workers=0, windows="random", ref_size=16)))
    assert Counter(k for k, _ in rnd) == Counter(truth.keys()), "one window per sample"
    skip = loader(str(out), geometry=SMALL, num_workers=0, short_windows="skip", ref_size=16)
    got = items_of(collect(skip))
    assert all(e - s == 9 for _, (s, e) in got)
    assert skip.stats()["windows_skipped_short"] == sum(t.frames < 9 for t in truth.values())
    endless = iter(loader(str(out), geometry=SMALL, num_workers=1, resampled=True, batch_size=4, ref_size=16))
    total = sum(expected_items(truth).values())
    n = sum(len(next(endless)["key"]) for _ in range(total // 4 + 3))
    assert n > total, "a resampled stream goes past one epoch"


def test_stats_names_and_small_decoders(synth):
    out, _ = synth
    from mtcc.manifests.shard_tar import read_samples

    _, members = next(read_samples(out / "shards" / "mtcc-000000.tar"))
    assert mp4_size(members["mp4"]) == (192, 128)
    v = decode_video(members["mp4"], [0, 1, 1], LatentGeometry(frames=9, height=64, width=128))
    assert v.shape == (3, 3, 64, 128) and v.dtype == np.uint8
    assert (v[:, :, :, :16] == 0).all() and (v[:, :, :, -16:] == 0).all(), "letterbox bars are black"
    assert np.array_equal(v[:, 1], v[:, 2])
    assert npy_view(members["audio_emb.npy"]).shape[0] == 2
    # the counters a training script logs, by the names it logs them under, all zero before a read
    assert loader(str(out)).stats() == dict.fromkeys(
        ["shards_read", "shards_failed", "samples_read", "samples_filtered", "samples_incomplete", "samples_failed",
         "windows", "windows_padded", "windows_skipped_short", "batches"], 0)


def test_selection_reads_its_part_only(synth, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtcc.manifests.selections import SelectionError, read_selection
    from mtcc.pipeline.selection import select

    src, truth = synth
    out = tmp_path / "out"
    shutil.copytree(src, out)
    shards = sorted({t.shard for t in truth.values()})
    pq.write_table(pa.table({"shard": pa.array(shards, pa.int32()), "source": [f"s{s}" for s in shards]}),
                   out / "plan.parquet")  # what `mtcc run` plans; select refuses a folder without it
    s = select(out, "strong", where="sync.sync_c_mean >= 2", split="val=0.3", by="clip", keep_duplicates=True,
               log=lambda m: None)
    table, _ = read_selection(s.path)
    parts = {p: {k for k, q in zip(table["key"].to_pylist(), table["part"].to_pylist()) if q == p}
             for p in ("train", "val")}
    assert parts["train"] and parts["val"] and parts["train"] | parts["val"] == {k for k, t in truth.items()
                                                                                   if t.sync_c >= 2}
    for part, want in parts.items():
        ld = loader(str(out), geometry=SMALL, num_workers=0, ref_size=16, selection="strong", selection_part=part)
        assert {k for k, _ in items_of(collect(ld))} == want, part
        assert ld.stats()["shards_read"] == len({truth[k].shard for k in want})  # the others are not opened
    with pytest.raises(SelectionError, match="no part 'test'"):
        loader(str(out), selection="strong", selection_part="test")
    with pytest.raises(SelectionError, match="mtcc select"):
        loader(str(out), selection="missing")
    # with a second output's shards beside, the selection's keys are not applied to that output's shards of
    # the same numbers (they would keep its copies of these samples): its shards are not read
    other = tmp_path / "other"
    shutil.copytree(src, other)
    ld = loader([str(out), str(other)], geometry=SMALL, num_workers=0, ref_size=16, selection=str(s.path),
                selection_part="train")
    assert sorted(items_of(collect(ld))) == sorted(items_of(collect(
        loader(str(out), geometry=SMALL, num_workers=0, ref_size=16, selection="strong", selection_part="train"))))
    shutil.copy(s.path, tmp_path / "elsewhere.parquet")
    with pytest.raises(SelectionError, match="in 2 outputs .* in none of them"):
        loader([str(out), str(other)], selection=str(tmp_path / "elsewhere.parquet"))
