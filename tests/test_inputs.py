from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import under_other_hash_seeds

from mtcc.pipeline.errors import InputError
from mtcc.pipeline.inputs import discover, make_plan, slug


def _touch(p, data=b"x"):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_folder_recursive_by_extension(tmp_path):
    _touch(tmp_path / "a.mp4", b"a")
    _touch(tmp_path / "sub" / "b.MKV", b"b")
    _touch(tmp_path / "sub" / "notes.truth.json", b"{}")
    _touch(tmp_path / "c.wav", b"c")
    d = discover([str(tmp_path)])
    assert [os.path.basename(s) for s in d.sources] == ["a.mp4", "b.MKV"]


def test_list_files_csv_parquet_and_file_urls(tmp_path):
    a = _touch(tmp_path / "v" / "a.mp4", b"a")
    b = _touch(tmp_path / "v" / "b.mp4", b"b")
    (tmp_path / "list.txt").write_text("# comment\nv/a.mp4\n\n" + f"file://{b}\n")
    (tmp_path / "list.csv").write_text("id,path\n1,v/a.mp4\n2,v/b.mp4\n")
    pq.write_table(pa.table({"path": [str(a), str(b)]}), tmp_path / "list.parquet")
    for lst in ("list.txt", "list.csv", "list.parquet"):
        assert discover([str(tmp_path / lst)]).sources == [str(a), str(b)], lst
    assert discover([f"file://{a}"]).sources == [str(a)]


def test_same_file_twice_and_through_symlink_is_planned_once(tmp_path):
    a = _touch(tmp_path / "a.mp4", b"a")
    os.symlink(a, tmp_path / "link.mp4")
    d = discover([str(tmp_path), str(a)])
    assert len(d.sources) == 1
    assert len(d.warnings) == 2 and all("planned once" in w for w in d.warnings)


def test_missing_input_argument_is_an_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover([str(tmp_path / "nope")])


def test_copies_become_duplicates_and_ids_are_safe_and_stable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a shell that saw "$(touch x)" would leave its x
    names = ["$(touch x).mp4", "a;b 'q\".mp4", "new\nline.mp4", "ü..-.mp4", "copy.mp4"]
    data = {n: n.encode() * 100 for n in names}
    data["copy.mp4"] = data[names[0]]
    srcs = sorted(str(_touch(tmp_path / n, data[n])) for n in names)
    plan = make_plan(srcs, videos_per_shard=2)
    ids = plan.column("video_id").to_pylist()
    assert len(set(ids)) == len(ids)
    for vid in ids:
        assert all(ch.isalnum() or ch == "-" for ch in vid) and vid.isascii(), vid
    assert plan.column("shard").to_pylist() == [0, 0, 1, 1, 2]
    dups = [d for d in plan.column("duplicate_of").to_pylist() if d]
    assert len(dups) == 1
    assert make_plan(srcs, 2).equals(plan)
    # stable across reruns: other interpreters, with other seeds of Python's salted string hash, plan the same
    code = ("import json, sys; from mtcc.pipeline.inputs import make_plan; "
            "print(json.dumps(make_plan(json.loads(sys.argv[1]), 2).column('video_id').to_pylist()))")
    assert under_other_hash_seeds(code, json.dumps(srcs)) == [ids, ids]
    assert not (tmp_path / "x").exists()


def test_slug():
    assert slug("../../etc/passwd") == "etc-passwd"
    assert slug("\x00\x1b[31m") == "31m"
    assert slug("....") == "video"
