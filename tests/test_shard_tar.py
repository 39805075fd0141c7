"""The shard tar reader (mtcc.manifests.shard_tar) and the sample member schema (mtcc.manifests.members)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from mtcc.manifests.members import MEMBERS, member_rank, members_except
from mtcc.manifests.shard_tar import ShardTarError, read_samples
from mtcc.pipeline.sample_tar import write_tar
from mtcc.stages.base import Candidate

BIG = 1 << 20


def make_tar(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    """A tar of (name, bytes) files; bytes None makes a folder."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


SAMPLES = [("a.mp4", b"A" * 10), ("a.audio_emb.npy", b"E" * BIG), ("a.json", b"{}"),
           ("b.mp4", b"B" * 20), ("b.audio_emb.npy", b"F" * BIG), ("b.json", b'{"b": 1}')]


class CountingFile(io.BytesIO):
    """Counts the bytes read, to tell members skipped unread from members read and dropped."""

    read_bytes = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.read_bytes += len(out)
        return out


def test_samples_are_grouped_by_key_with_members_in_tar_order(tmp_path):
    tar = make_tar(tmp_path / "s.tar", SAMPLES)
    want = [("a", {"mp4": b"A" * 10, "audio_emb.npy": b"E" * BIG, "json": b"{}"}),
            ("b", {"mp4": b"B" * 20, "audio_emb.npy": b"F" * BIG, "json": b'{"b": 1}'})]
    got = list(read_samples(tar))
    assert got == want and [list(m) for _, m in got] == [["mp4", "audio_emb.npy", "json"]] * 2
    with open(tar, "rb") as f:
        assert list(read_samples(f)) == want  # a stream
    with open(tar, "rb") as f:
        assert list(read_samples(f, seek=True)) == want


@pytest.mark.parametrize("seek", [False, True])
def test_unselected_members_and_samples_are_skipped_unread(tmp_path, seek):
    data = make_tar(tmp_path / "s.tar", SAMPLES).read_bytes()
    f = CountingFile(data)
    got = list(read_samples(f, select=lambda k: {"mp4", "json"} if k == "a" else (), seek=seek))
    assert got == [("a", {"mp4": b"A" * 10, "json": b"{}"}), ("b", {})]
    if seek:  # seeking past the embeddings: only headers and the two small members are read
        assert f.read_bytes < BIG // 4
    else:
        assert f.read_bytes >= 2 * BIG  # a stream reads through what it skips, but keeps none of it


@pytest.mark.parametrize("mode", ["path", "stream", "seek"])
def test_a_truncated_tar_raises_after_the_samples_before_the_damage(tmp_path, mode):
    data = make_tar(tmp_path / "s.tar", SAMPLES).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) - BIG // 2 - 4096])  # inside b's embeddings
    got = []
    with pytest.raises((tarfile.TarError, EOFError)), open(cut, "rb") as f:
        src = cut if mode == "path" else f
        for key, members in read_samples(src, seek=mode == "seek"):
            got.append(key)
            members.clear()
    assert got == ["a"]


@pytest.mark.parametrize("mode", ["path", "stream", "seek"])
@pytest.mark.parametrize("extra", [0, 100, 512], ids=["at_a_header", "inside_a_header", "after_a_header"])
def test_a_tar_cut_at_or_inside_a_header_raises_instead_of_ending_early(tmp_path, mode, extra):
    """tarfile itself ends quietly where a header is missing or cut (only the first header's absence is an
    error): a shard cut there must not read as a whole shard with fewer samples. Sample a, whose last member
    may or may not have been the cut one, is not yielded either: no header of b said a had ended. (Cut after
    b's whole header, tarfile finds b's data missing itself.)"""
    data = make_tar(tmp_path / "s.tar", SAMPLES).read_bytes()
    end_of_a = 3 * 512 + 512 + BIG + 512  # a.mp4 and a.json take a block each, the embeddings BIG
    assert data[end_of_a + 257:end_of_a + 262] == b"ustar"  # b.mp4's header starts here
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:end_of_a + extra])
    got = []
    said = "cut.tar.*ends without its end-of-archive block" if extra < 512 else "unexpected end of data"
    with pytest.raises(tarfile.ReadError, match=said), open(cut, "rb") as f:
        for key, _ in read_samples(cut if mode == "path" else f, seek=mode == "seek", where=str(cut)):
            got.append(key)
    assert got == ([] if extra < 512 else ["a"])  # a whole header of b says a has ended
    with open(tmp_path / "s.tar", "rb") as f:
        assert [k for k, _ in read_samples(tmp_path / "s.tar" if mode == "path" else f, seek=mode == "seek")] == [
            "a", "b"]


@pytest.mark.parametrize("entries, message", [
    ([("a.mp4", b"x"), ("a", None)], "unexpected non-file member 'a'"),
    ([("a.mp4", b"x"), ("d/a.json", b"{}")], "bad member name 'd/a.json'"),
    ([("a.mp4", b"x"), ("a", b"{}")], "bad member name 'a'"),
    ([("a.", b"x")], "bad member name 'a.'"),
])
def test_a_member_no_sample_can_hold_is_an_error(tmp_path, entries, message):
    tar = make_tar(tmp_path / "bad.tar", entries)
    with pytest.raises(ShardTarError, match=message.replace(".", r"\.")):
        list(read_samples(tar))
    with pytest.raises(ValueError, match=f"{tar}: "):  # the training loader and the export catch ValueError
        list(read_samples(tar, select=lambda _: ()))


def test_written_shards_read_back_in_schema_order(tmp_path):
    members = {name: name.encode() * 3 for name in reversed(MEMBERS) if name != "json"}
    members["extra.bin"] = b"x"
    cands = [Candidate(key=k, video_id=k, source=f"/in/{k}.mp4", shard=0, level="clip", members=dict(members))
             for k in ("k1", "k0")]
    assert write_tar(tmp_path / "s.tar", cands, {"config_hash": "h"}) == 2
    got = list(read_samples(tmp_path / "s.tar"))
    assert [k for k, _ in got] == ["k0", "k1"]
    for _, m in got:
        assert list(m) == [*MEMBERS, "extra.bin"]
        assert {k: v for k, v in m.items() if k != "json"} == members


def test_member_subsets_name_schema_members():
    assert members_except("mix.flac", "route.npy") == tuple(m for m in MEMBERS if m not in ("mix.flac", "route.npy"))
    with pytest.raises(ValueError, match="not sample members: mix.wav"):
        members_except("mix.wav")
    assert sorted(["json", "zz", "mp4", "aa"], key=member_rank) == ["mp4", "json", "aa", "zz"]


def test_sample_json_carries_the_facts_its_stages_declare(tmp_path):
    """The json of a sample holds the facts its stages declare as sample meta, and no other: the writer
    learns them from the stages, and an undeclared fact stays out of the shard."""
    from mtcc.facts import ClipFaces, ProbeResult, Speakers, SyncResult
    from mtcc.manifests.paths import OutPaths
    from mtcc.pipeline.shard import commit_shard
    from mtcc.stages import SAMPLE_META, STAGES

    assert {"text", "separate", "asd", "sync", "masks", "audio_emb", "identity", "fingerprint", "caption"} == \
        set(SAMPLE_META)
    assert STAGES["sync"].sample_meta() == ("sync",) and STAGES["faces"].sample_meta() == ()
    sync = SyncResult(model="m", random_weights=False, audio_source="separated", vshift=15, windows=3, cross=None,
                      a_ac=[[1, 0], [0, 1]], binding_margin=1.0, swapped=False, axes="")
    asd = Speakers(model="m", random_weights=False, fps=25, dtype="float32", speaking_fraction=[0.5, 0.5],
                   intervals=[[], []], both_speaking=0.0, turns=3, track_face=None, speech=None, axes="")
    probe = ProbeResult(duration=2.0, has_video=True, has_audio=False, fps=25.0)
    c = Candidate(key="k0", video_id="k0", source="/in/k0.mp4", shard=0, level="clip", status="kept",
                  members={"mp4": b"v"})
    for fact in (sync, asd, probe, ClipFaces(25, 9, "left_to_right_at_first_frame", ())):
        c.put(fact)
    layout = OutPaths(tmp_path)
    for d in layout.dirs():
        d.mkdir(parents=True)
    commit_shard(layout, 0, [c], [STAGES["sync"], STAGES["faces"]], {"config_hash": "h"})
    (_, members), = read_samples(layout.tar(0))
    meta = json.loads(members["json"])
    assert meta["sync"] == sync.to_json() and meta["sync"]["a_ac"] == [[1, 0], [0, 1]]
    assert "shifted_frames" not in meta["sync"]  # left out while None, as the stage leaves it out
    assert meta["probe"] == {"duration": 2.0, "has_video": True, "has_audio": False, "fps": 25.0}
    assert "asd" not in meta and "clip_faces" not in meta  # asd is not among the stages; clip_faces is not meta
