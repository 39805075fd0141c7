"""The hostile-input corpus (``mtcc sample-data --bad``) through one offline build on real Ray: every case
ends as the manifest row its expect.json promises, good videos beside the broken ones are fully written,
the corpus is not touched, nothing appears outside OUT and no file name is ever run as code. Plus fast
unit tests of the input fixes the corpus needed (names that are not UTF-8, FIFOs, MP4s cut mid-stream)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtcc.media.ffmpeg import encoders
from mtcc.sampledata.bad.case import Case, expect_path
from mtcc.sampledata.bad.check import check, expectation, tree_state
from mtcc.sampledata.bad.corpus import case_list, load_corpus

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow
CASES = case_list()
# the kinds of hostile input the corpus promises (the issue's list); each must be a case
REQUIRED = {
    "truncated_no_moov", "truncated_mid_stream", "zero_bytes", "text_named_mp4", "audio_only", "video_only",
    "frames_1x1", "frames_8k_static", "fps_1", "fps_240", "variable_frame_rate", "rotation_90", "odd_dimensions",
    "audio_8khz_mono", "audio_48khz", "audio_5_1", "audio_silent", "duration_0_2s", "duration_header_3h",
    "audio_shorter_than_video", "h264_bframes_open_gop", "container_mkv", "container_webm_vp9",
    "container_avi_mpeg4", "container_mov", "codec_hevc", "codec_av1", "name_not_utf8",
    "name_shell_substitution", "name_semicolon_pipe_glob", "name_quotes", "name_newline", "symlink_outside",
    "symlink_to_listed", "permission_000", "missing_file", "directory_in_list", "duplicate_copy", "listed_twice",
} - {name for name, need in (("codec_hevc", {"libx265"}), ("container_webm_vp9", {"libvpx-vp9", "libopus"}))
     if not need <= encoders()} - (set() if {"libsvtav1", "libaom-av1"} & encoders() else {"codec_av1"})


def _shell_marks(*roots: Path) -> list[str]:
    """Files named ``x`` or ``y``: what ``$(touch x)`` / backticks in a name would leave if a shell ever saw it."""
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files if f in ("x", "y")]
    return found


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """The corpus as the CLI writes it (so the CLI itself is under test), from an empty working dir."""
    work = tmp_path_factory.mktemp("bad")
    (work / "gen_cwd").mkdir()
    proc = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "sample-data", "--bad", str(work / "corpus")],
                          cwd=work / "gen_cwd", capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    assert list((work / "gen_cwd").iterdir()) == []
    return work / "corpus"


@pytest.fixture(scope="module")
def bad_build(corpus_dir, tmp_path_factory, ray_local, tiny_overrides):
    from mtcc.manifests.report_data import read_manifests
    from mtcc.manifests.shard_tar import read_samples
    from mtcc.pipeline.build import build
    from mtcc.pipeline.config import load_config, resolve_config

    corpus = load_corpus(corpus_dir)
    work = corpus_dir.parent
    out, run_cwd = work / "out", work / "run_cwd"
    out.mkdir()
    run_cwd.mkdir()
    base = tmp_path_factory.getbasetemp()
    home = Path.cwd()  # Ray workers started by ray_local keep the directory pytest runs in
    watched = [home / "x", home / "y", REPO / "x", REPO / "y", Path("/tmp/x"), Path("/tmp/y")]
    marks_before = {p for p in watched if os.path.lexists(p)}
    corpus_before, base_before = tree_state(corpus_dir), tree_state(base)
    cfg = load_config(resolve_config("offline"), [*tiny_overrides, *corpus.overrides])
    os.chdir(run_cwd)
    try:
        res = build(cfg, [str(p) for p in corpus.inputs], out, runner="ray", progress=False)
    finally:
        os.chdir(home)
    rows = read_manifests(out).to_pylist()
    report = check(corpus, rows)
    samples = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        samples.update(dict(read_samples(tar)))
    for name, e in report.items():  # the table of the run, in the log of a failing test
        print(f"{name:28s} {'ok ' if e['ok'] else 'BAD'} {e['observed']} {e['problem'] or ''}")
    return SimpleNamespace(
        corpus=corpus, out=out, rows=rows, res=res, report=report, samples=samples, run_cwd=run_cwd, base=base,
        corpus_before=corpus_before, corpus_after=tree_state(corpus_dir),
        base_before=base_before, base_after=tree_state(base),
        marks_new=[str(p) for p in watched if os.path.lexists(p) and p not in marks_before],
    )


# -- the corpus as the CLI writes it -------------------------------------------------------------------

@slow
def test_cli_writes_at_least_30_cases_each_with_its_expectation(corpus_dir):
    index = json.loads((corpus_dir / "expected.json").read_text(encoding="utf-8"))
    corpus = load_corpus(corpus_dir)
    assert len(corpus.cases) >= 30
    assert [c.name for c in corpus.cases] == [c.name for c in CASES]
    assert REQUIRED <= {c.name for c in corpus.cases}
    assert index["inputs"] == ["inputs.txt", "odd_names"]
    for c in corpus.cases:
        doc = json.loads(expect_path(corpus_dir, c).read_text(encoding="utf-8"))
        assert doc["case"] == c.name and doc["file"] == c.file
        for want in (c.expect.values() if "if_root" in c.expect else [c.expect]):
            assert "error" in want["never"], c.name
        exists = os.path.lexists(corpus.path(c))
        assert exists == (c.name != "missing_file"), c.name
    listed = (corpus_dir / "inputs.txt").read_text(encoding="utf-8").splitlines()
    assert "videos/missing.mp4" in listed and "videos/folder.mp4" in listed
    assert sum(line.endswith("listed_twice.mp4") for line in listed) == 3
    assert not any("\n" in c.file or "\udce9" in c.file for c in corpus.cases if c.listed)


@slow
def test_a_second_generation_into_the_same_folder_is_refused(corpus_dir):
    proc = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "sample-data", "--bad", str(corpus_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "already holds" in proc.stderr


# -- one build over all of it --------------------------------------------------------------------------

def _case_param(c: Case):
    marks = [slow]
    if c.known_issue:
        marks.append(pytest.mark.xfail(strict=True, reason=c.known_issue))
    return pytest.param(c.name, marks=marks, id=c.name)


NEED = ("mp4", "mix.flac", "faces.json", "ref0.jpg", "ref1.jpg", "json")


@pytest.mark.parametrize("name", [_case_param(c) for c in CASES])
def test_each_case_ends_as_its_documented_row(bad_build, name):
    """The case's one row matches its expect.json; a kept case's samples read back whole (a clip is only
    kept if it really holds the pictures and the sound)."""
    from mtcc.manifests.sample import check_sample

    entry = bad_build.report[name]
    assert entry["ok"], f"{name}: expected {entry['expect']}, {entry['problem']}"
    if entry["observed"]["status"] == "kept":
        kept = [r for r in bad_build.rows if r["video_id"] == entry["video_id"] and r["status"] == "kept"]
        assert kept
        for r in kept:
            members = bad_build.samples[r["key"]]
            assert check_sample(members, require=NEED) == [], r["key"]
            assert json.loads(members["json"])["source"] == r["source"]


@slow
def test_no_error_rows_and_every_shard_committed(bad_build):
    from mtcc.manifests.paths import OutPaths
    from mtcc.pipeline.shard import check_shard

    assert not bad_build.res.shards_failed
    known = {bad_build.corpus.path(c).name for c in bad_build.corpus.cases if c.known_issue}
    errors = [(r["source"], r["message"]) for r in bad_build.rows
              if r["reason"] == "error" and Path(r["source"]).name not in known]
    assert errors == []
    layout = OutPaths(bad_build.out)
    for s in bad_build.res.shards_built:
        assert check_shard(layout, s, deep=True) is None


@slow
def test_every_planned_input_has_exactly_one_video_row(bad_build):
    videos = [r["source"] for r in bad_build.rows if r["level"] == "video"]
    assert len(videos) == len(set(videos))
    own = [c for c in bad_build.corpus.cases if c.row == "own"]
    assert len(videos) == len(own)


@slow
def test_kept_cases_are_fully_written(bad_build):
    """Every clip kept from a good variant is in a shard with the visual stages' members, and reads back
    as the schema says (frame counts, 25 fps H.264, 16 kHz mono sound, two characters)."""
    from mtcc.manifests.sample import check_sample

    kept = [r for r in bad_build.rows if r["status"] == "kept"]
    assert {r["key"] for r in kept} == set(bad_build.samples)
    kept_cases = [n for n, e in bad_build.report.items() if e["observed"] and e["observed"]["status"] == "kept"]
    assert len(kept_cases) >= 25
    known = {bad_build.corpus.path(c).name for c in bad_build.corpus.cases if c.known_issue}
    for r in kept:
        if Path(r["source"]).name not in known:
            assert check_sample(bad_build.samples[r["key"]], require=NEED) == [], r["source"]


@slow
def test_an_8k_source_is_cut_at_the_offline_profiles_1080_line_cap(bad_build, tmp_path):
    """The 8K still is decoded at full size by the scan, and its kept clip is written at the offline profile's
    ``cut.max_short_side`` (1080): a 1920x1080 mp4 whose faces.json still holds the 8K source's boxes."""
    import cv2

    (r,) = [r for r in bad_build.rows if r["level"] == "clip" and "frames_8k_static" in r["source"]]
    assert r["status"] == "kept", r
    members = bad_build.samples[r["key"]]
    (tmp_path / "clip.mp4").write_bytes(members["mp4"])
    cap = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    try:
        size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        cap.release()
    assert size == (1920, 1080)
    boxes = [b for ch in json.loads(members["faces.json"])["characters"] for b in ch["boxes"]]
    assert max(b[2] for b in boxes) > 1920  # source pixels: the faces sit in the 7680-wide picture


@slow
def test_the_corpus_is_not_touched_and_nothing_appears_outside_out(bad_build):
    assert bad_build.corpus_after == bad_build.corpus_before
    out = os.fsencode("/" + str(bad_build.out.relative_to(bad_build.base)))
    changed = {p for p in set(bad_build.base_before) | set(bad_build.base_after)
               if not (p == out or p.startswith(out + b"/"))
               and bad_build.base_before.get(p) != bad_build.base_after.get(p)}
    assert changed == set()
    assert list(bad_build.run_cwd.iterdir()) == []


@slow
def test_no_file_name_was_ever_run_by_a_shell(bad_build):
    assert bad_build.marks_new == []
    assert _shell_marks(bad_build.corpus.root.parent) == []


# -- the input fixes, without a build -------------------------------------------------------------------

def test_a_name_that_is_not_utf8_gets_its_own_unreadable_row_from_a_folder_or_a_list(tmp_path):
    from mtcc.pipeline.inputs import discover, make_plan, plan_source
    from mtcc.stages.base import Candidate
    from mtcc.stages.probe import NOT_UTF8_NAME, Probe

    d = tmp_path / "in"
    d.mkdir()
    bad = os.fsdecode(os.fsencode(str(d)) + b"/caf\xe9.mp4")
    Path(bad).write_bytes(b"not read")
    (d / "fine.mp4").write_bytes(b"also not read")
    # a Latin-1 list: one byte that is not UTF-8 must not fail the whole list
    (tmp_path / "list.txt").write_bytes(b"in/caf\xe9.mp4\nin/fine.mp4\n")
    for inputs in ([str(d)], [str(tmp_path / "list.txt")]):
        disc = discover(inputs)
        assert disc.sources == sorted([str(d / "fine.mp4"), NOT_UTF8_NAME + f"{d}/caf\\xe9.mp4"])
        assert any("not valid UTF-8" in w for w in disc.warnings)
        plan = make_plan(disc.sources, 4)  # Parquet text: this raised UnicodeEncodeError before
        assert plan.column("size").to_pylist()[disc.sources.index(plan_source(bad))] == -1
    cand = Candidate(key="k", video_id="k", source=plan_source(bad), shard=0)
    [cand] = Probe().run_batch([cand])
    assert (cand.status, cand.reason) == ("rejected", "unreadable")
    assert "caf\\xe9.mp4" in cand.message and "rename" in cand.message
    assert plan_source(str(d / "fine.mp4")) == str(d / "fine.mp4")


def test_a_fifo_is_neither_opened_by_the_plan_nor_probed(tmp_path):
    """Opening a FIFO for reading waits for a writer forever: planning and probing must not try. Run in a
    child process so that a regression fails on the timeout instead of hanging the suite."""
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    code = ("import sys; from mtcc.pipeline.inputs import fingerprint; from mtcc.stages.probe import Probe; "
            "from mtcc.stages.base import Candidate; p = sys.argv[1]; print(fingerprint(p)); "
            "[c] = Probe().run_batch([Candidate(key='k', video_id='k', source=p, shard=0)]); "
            "print(c.reason, c.message)")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    plan_line, probe_line = proc.stdout.strip().splitlines()
    assert plan_line == "(-1, 'unreadable:not-a-regular-file')"
    assert probe_line.startswith("unreadable not a regular file")


def test_an_mp4_cut_after_its_header_is_unreadable_but_padding_is_not_a_cut(tmp_path):
    import struct

    from mtcc.stages.probe import truncated_box

    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    whole = box(b"ftyp", b"isom" * 3) + box(b"moov", b"\0" * 40) + box(b"mdat", b"\1" * 1000)
    (tmp_path / "whole.mp4").write_bytes(whole)
    (tmp_path / "cut.mp4").write_bytes(whole[:600])
    (tmp_path / "padded.mp4").write_bytes(whole + b"\xff" * 12)
    assert truncated_box(str(tmp_path / "whole.mp4")) is None
    assert "'mdat'" in truncated_box(str(tmp_path / "cut.mp4"))
    assert truncated_box(str(tmp_path / "padded.mp4")) is None


def test_a_matroska_cut_short_is_unreadable_a_live_one_cannot_be_told(tmp_path):
    from mtcc.stages.probe import truncated, truncated_segment

    header = b"\x1a\x45\xdf\xa3" + b"\x84" + b"\x42\x86\x81\x01"  # EBML header holding EBMLVersion 1
    whole = header + b"\x18\x53\x80\x67" + b"\x01\x00\x00\x00\x00\x00\x03\xe8" + b"\0" * 1000
    live = header + b"\x18\x53\x80\x67" + b"\x01\xff\xff\xff\xff\xff\xff\xff" + b"\0" * 300
    for name, data in {"whole": whole, "cut": whole[:500], "live": live, "text": b"plain text"}.items():
        (tmp_path / f"{name}.mkv").write_bytes(data)
    assert truncated_segment(str(tmp_path / "whole.mkv")) is None
    assert "Segment" in truncated(str(tmp_path / "cut.mkv"), "matroska,webm")
    assert truncated_segment(str(tmp_path / "live.mkv")) is None
    assert truncated_segment(str(tmp_path / "text.mkv")) is None
    assert truncated(str(tmp_path / "cut.mkv"), "avi") is None


def test_a_missing_symlink_target_is_named_as_such(tmp_path):
    from mtcc.stages.base import Candidate
    from mtcc.stages.probe import Probe

    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    [c] = Probe().run_batch([Candidate(key="k", video_id="k", source=str(tmp_path / "loop.mp4"), shard=0)])
    assert c.reason == "unreadable" and "broken symlink" in c.message


def test_expectations_pick_by_user():
    perm = next(c for c in CASES if c.name == "permission_000")
    assert expectation(perm, euid=0)["status"] == ["kept"]
    assert expectation(perm, euid=1000)["reason"] == ["unreadable"]
