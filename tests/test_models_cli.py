"""`mtcc models make-tiny | fetch | check` and the `models:` include of a profile.

Everything here runs offline: the online paths are exercised against a loopback HTTP server (URL-hosted
models) or an unreachable loopback port (the probe); the Hugging Face download itself is not.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from mtcc.pipeline.cli import main
from mtcc.pipeline.config import config_from_dump, load_config, resolve_config
from mtcc.pipeline.errors import ConfigError
from mtcc.pipeline.weights.archive import extract_members
from mtcc.pipeline.weights.download import download_url
from mtcc.pipeline.weights.modelsfile import MODELS_FILE, load_models_file, write_models_file
from mtcc.pipeline.weights.pins import ModelsError, Pin, every_entry, pinned_table
from mtcc.stages import STAGES
from mtcc.storage.hashing import file_digest

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models_tiny")
    assert main(["models", "make-tiny", str(d)]) == 0
    return d


def run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


# -- make-tiny and check ---------------------------------------------------------------------------------

def test_make_tiny_writes_models_yaml_that_check_passes(tiny, capsys):
    doc = load_models_file(tiny / MODELS_FILE)
    makers = {n for n, cls in STAGES.items() if getattr(cls, "make_tiny", None)}
    assert doc["random_weights"] is True
    assert set(doc["stages"]) == makers and {"separate", "sync"} <= makers
    for stage, s in doc["stages"].items():
        assert s["allow_random_weights"] is True and s["model"].startswith("./"), (stage, s)
    for rel, rec in doc["files"].items():
        assert file_digest(tiny / rel) == (rec["bytes"], rec["sha256"])
    assert (tiny / "overrides.yaml").exists()  # what older callers and the Makefile stamp read

    rc, out = run(["models", "check", str(tiny)], capsys)
    assert rc == 0, out
    assert "RANDOM WEIGHTS" in out
    for stage in makers:
        assert re.search(rf"^{stage}\s+\S+\s+OK \(RANDOM weights\)", out, re.M), out


def _sync_only(tiny: Path, dst: Path) -> Path:
    """A models folder holding only make-tiny's SyncNet (a fast stage to check)."""
    shutil.copytree(tiny / "sync", dst / "sync")
    doc = load_models_file(tiny / MODELS_FILE)
    doc["stages"] = {"sync": doc["stages"]["sync"]}
    doc["files"] = {k: v for k, v in doc["files"].items() if k.startswith("sync/")}
    write_models_file(dst, doc, "test copy")
    return dst / "sync" / "syncnet_v2_random.model"


def test_check_names_a_corrupted_and_a_deleted_file(tiny, tmp_path, capsys):
    model = _sync_only(tiny, tmp_path)
    assert run(["models", "check", str(tmp_path)], capsys)[0] == 0

    with open(model, "r+b") as f:  # one byte flipped, size unchanged: only the sha256 can tell
        f.seek(model.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    rc, out = run(["models", "check", str(tmp_path)], capsys)
    assert rc == 1
    assert f"{model}: sha256" in out and "corrupted or replaced" in out and "mtcc models make-tiny" in out
    assert re.search(r"^sync\s+\S+\s+PROBLEM", out, re.M)
    assert run(["models", "check", "--quick", str(tmp_path)], capsys)[0] == 0  # sizes only, by design

    model.unlink()
    rc, out = run(["models", "check", str(tmp_path / MODELS_FILE)], capsys)
    assert rc == 1 and f"{model} is missing" in out


def test_check_refuses_an_unreadable_models_file(tmp_path, capsys):
    (tmp_path / MODELS_FILE).write_text("stages: !!python/object/apply:os.system ['true']\n")
    rc, out = run(["models", "check", str(tmp_path)], capsys)
    assert rc == 2 and "not valid YAML" in out
    rc, out = run(["models", "check", str(tmp_path / "nowhere")], capsys)
    assert rc == 2 and "mtcc models fetch" in out and "mtcc models make-tiny" in out


# -- fetch -----------------------------------------------------------------------------------------------

def test_fetch_offline_fails_fast_and_prints_every_layout(tmp_path):
    target = tmp_path / "models"
    env = {**os.environ, "HF_ENDPOINT": DEAD, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "mtcc.pipeline.cli", "models", "fetch", str(target),
                        "--url", f"sync={DEAD}/syncnet_v2.model", "--url", f"faces={DEAD}/buffalo_l.zip",
                        "--url", f"asd={DEAD}/finetuning_TalkSet.model"],
                       capture_output=True, text=True, env=env, timeout=60)
    wall = time.monotonic() - t0
    out = p.stdout + p.stderr
    assert p.returncode == 3, out
    assert wall < 15, wall
    assert "Nothing was downloaded" in out and "127.0.0.1:9" in out
    for e in pinned_table():
        assert f"{e.stage}: {e.title}" in out
        for pin in e.files:
            assert str(target / e.folder / pin.path) in out
        if e.kind == "hf":
            assert f"hf download {e.repo}" in out and (e.revision is None or e.revision in out)
    assert not target.exists() or not any(target.rglob("*"))


def test_fetch_adopts_files_placed_by_hand_without_the_network(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", DEAD)
    placed = tmp_path / "syncnet" / "syncnet_v2.model"
    placed.parent.mkdir()
    shutil.copy(tiny / "sync" / "syncnet_v2_random.model", placed)  # no random marker beside it
    rc, out = run(["models", "fetch", str(tmp_path), "--only", "sync", "--url", f"sync={DEAD}/x"], capsys)
    assert rc == 0, out
    assert "trust on first use" in out
    doc = load_models_file(tmp_path / MODELS_FILE)
    assert doc["stages"] == {"sync": {"model": "./syncnet/syncnet_v2.model"}}
    n, sha = file_digest(placed)
    assert doc["files"] == {"syncnet/syncnet_v2.model": {"bytes": n, "sha256": sha, "pinned": False}}
    rc, out = run(["models", "check", str(tmp_path)], capsys)
    assert rc == 0 and "RANDOM" not in out, out

    # trust on first use binds: another file in its place later is not re-adopted, nor deleted
    placed.write_bytes(b"x" * n)
    rc, out = run(["models", "fetch", str(tmp_path), "--only", "sync", "--url", f"sync={DEAD}/x"], capsys)
    assert rc == 1 and "recorded in" in out and "when it was first fetched" in out
    assert placed.exists()
    assert load_models_file(tmp_path / MODELS_FILE)["files"]["syncnet/syncnet_v2.model"]["sha256"] == sha

    # a pinned file of another size is not adopted: fetch needs the network for it and says so
    wav = tmp_path / "wav2vec2-base-960h"
    wav.mkdir()
    (wav / "config.json").write_text("{}")
    rc, out = run(["models", "fetch", str(tmp_path), "--only", "audio_emb"], capsys)
    assert rc == 3 and "audio_emb" in out and "1596 bytes" in out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_streams_urls_verifies_and_extracts_the_pack(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    www, base = server
    syncnet = os.urandom(300_000)
    (www / "syncnet_v2.model").write_bytes(syncnet)
    detector = os.urandom(50_000)
    with zipfile.ZipFile(www / "antelopev2.zip", "w") as zf:  # nested, as some packs unzip
        zf.writestr("antelopev2/antelopev2/scrfd_10g_bnkps.onnx", detector)
        zf.writestr("antelopev2/antelopev2/glintr100.onnx", b"not needed")
    target = tmp_path / "models"
    rc, out = run(["models", "fetch", str(target), "--only", "faces,sync", "--url", f"sync={base}/syncnet_v2.model",
                   "--faces-pack", "antelopev2", "--url", f"faces={base}/antelopev2.zip"], capsys)
    assert rc == 0, out
    assert (target / "syncnet" / "syncnet_v2.model").read_bytes() == syncnet
    assert (target / "insightface" / "antelopev2" / "scrfd_10g_bnkps.onnx").read_bytes() == detector
    assert not (target / "insightface" / "antelopev2" / "glintr100.onnx").exists()
    leftovers = [p.name for p in target.rglob(".*")]
    assert leftovers == [], leftovers  # no partial file, no downloaded zip
    doc = load_models_file(target / MODELS_FILE)
    assert doc["stages"]["faces"] == {"detector": "insightface", "model": "./insightface/antelopev2"}
    assert doc["files"]["syncnet/syncnet_v2.model"]["sha256"] == file_digest(target / "syncnet/syncnet_v2.model")[1]
    assert doc["sources"]["sync"]["url"] == f"{base}/syncnet_v2.model"

    # a URL that answers 404 fails that model only; nothing half-written is left
    other = tmp_path / "other"
    rc, out = run(["models", "fetch", str(other), "--only", "sync", "--url", f"sync={base}/gone.model"], capsys)
    assert rc == 3 and "404" in out
    assert not other.exists() or not any(other.rglob("*"))


def test_download_never_leaves_a_partial_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    www, base = server
    (www / "w.bin").write_bytes(b"x" * 5000)
    dest = tmp_path / "d" / "w.bin"
    with pytest.raises(ModelsError, match="pins"):
        download_url(f"{base}/w.bin", dest, Pin("w.bin", bytes=4000), out=lambda s: None)
    with pytest.raises(ModelsError, match="sha256"):
        download_url(f"{base}/w.bin", dest, Pin("w.bin", sha256="0" * 64), out=lambda s: None)
    assert list(dest.parent.iterdir()) == []
    n, sha = download_url(f"{base}/w.bin", dest, None, out=lambda s: None)
    assert n == 5000 and dest.read_bytes() == b"x" * 5000


@pytest.mark.parametrize("evil", ["../evil.onnx", "antelopev2/../../evil.onnx", "/tmp/evil.onnx",
                                  "..\\evil.onnx", "C:/evil.onnx"])
def test_unzip_refuses_members_that_leave_the_folder(tmp_path, evil):
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("antelopev2/scrfd_10g_bnkps.onnx", b"ok")
        zf.writestr(evil, b"evil")
    dest = tmp_path / "sub" / "pack"
    with pytest.raises(ModelsError, match="refused"):
        extract_members(archive, {"scrfd_10g_bnkps.onnx": None}, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["pack.zip"]


def test_unzip_refuses_a_member_by_the_size_it_declares_before_writing_anything(tmp_path):
    """zipfile inflates a member to the size it declares and never past it, so a bomb is refused by what it
    declares: other than its pin's bytes, where a pin gives them, or above a ceiling; before any member,
    the good ones included, is written."""
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("antelopev2/w600k_r50.onnx", b"w" * 1000)
        zf.writestr("antelopev2/det_10g.onnx", b"\0" * 3_000_000)  # deflates to a few KB
    assert zipfile.ZipFile(archive).getinfo("antelopev2/det_10g.onnx").compress_size < 10_000
    out = tmp_path / "out"
    with pytest.raises(ModelsError, match="det_10g.onnx declares 3000000 bytes where its pin says 1000"):
        extract_members(archive, {"w600k_r50.onnx": 1000, "det_10g.onnx": 1000}, out)
    with pytest.raises(ModelsError, match="det_10g.onnx declares 3000000 bytes, more than the 1000000"):
        extract_members(archive, {"w600k_r50.onnx": None, "det_10g.onnx": None}, out, max_bytes=1_000_000)
    assert not out.exists()
    got = extract_members(archive, {"w600k_r50.onnx": 1000, "det_10g.onnx": 3_000_000}, out)
    assert got["w600k_r50.onnx"] == (1000, hashlib.sha256(b"w" * 1000).hexdigest())
    assert got["det_10g.onnx"][0] == 3_000_000 == (out / "det_10g.onnx").stat().st_size
    assert sorted(p.name for p in out.iterdir()) == ["det_10g.onnx", "w600k_r50.onnx"]


def test_unzip_leaves_nothing_of_a_member_whose_bytes_fail_their_check(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("det_10g.onnx", b"a" * 1000)
    data = bytearray(buf.getvalue())
    # shrink the declared size in the central directory: the first 10 bytes then fail the CRC of all 1000
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        extract_members(tmp_path / "bad.zip", {"det_10g.onnx": None}, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # not even the temporary file


def test_pinned_table_is_well_formed():
    stages = [e.stage for e in pinned_table()]
    assert len(stages) == len(set(stages)) and set(stages) <= set(STAGES)
    assert {"faces", "separate", "asd", "sync", "masks", "audio_emb", "caption"} == set(stages)
    folders = [e.folder for e in pinned_table()]
    assert len(folders) == len(set(folders))
    for e in every_entry():
        assert ".." not in Path(e.folder).parts and not Path(e.folder).is_absolute()
        assert e.settings["model"].startswith(f"./{e.folder}")
        assert e.revision is None or re.fullmatch(r"[0-9a-f]{40}", e.revision)
        assert (e.kind == "hf") == bool(e.repo) and (e.kind == "url") == bool(e.url)
        for pin in e.files:
            assert pin.sha256 is None or (re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and pin.source)
            assert pin.bytes is None or pin.source


def test_faces_pack_picks_among_the_packs_the_faces_stage_declares(tmp_path, capsys):
    assert [w.pack for w in STAGES["faces"].weights] == ["buffalo_l", "antelopev2"]  # the default first
    rc, out = run(["models", "fetch", str(tmp_path), "--dry-run", "--only", "faces"], capsys)  # its defaults
    assert rc == 0, out
    assert str(tmp_path / "insightface" / "buffalo_l" / "det_10g.onnx") in out and "antelopev2" not in out
    rc, out = run(["models", "fetch", str(tmp_path), "--dry-run", "--only", "faces", "--faces-pack", "antelopev2"],
                  capsys)
    assert rc == 0, out
    assert str(tmp_path / "insightface" / "antelopev2" / "scrfd_10g_bnkps.onnx") in out
    with pytest.raises(ModelsError, match="choose one of buffalo_l, antelopev2"):
        pinned_table({"faces": "retinaface"})
    with pytest.raises(ModelsError, match="no stage offers packs"):
        pinned_table({"probe": "x"})


# -- the models: include ---------------------------------------------------------------------------------

def _models_dir(d: Path, sync_model: str = "./syncnet/s.model", sha: str = "a" * 64, extra: dict | None = None) -> Path:
    (d / "syncnet").mkdir(parents=True, exist_ok=True)
    (d / "syncnet" / "s.model").write_bytes(b"w")
    doc = {"random_weights": False,
           "stages": {"sync": {"model": sync_model, "allow_random_weights": True}, "separate": {"model": "./sep"},
                      **(extra or {})},
           "files": {"syncnet/s.model": {"bytes": 1, "sha256": sha}}}
    (d / MODELS_FILE).write_text(yaml.safe_dump(doc))
    return d / MODELS_FILE


def _profile(d: Path, models: str | None) -> Path:
    # sync reads the face tracks of a clip: segment makes them
    body = {"stages": {"probe": {}, "faces": {}, "segment": {}, "cut": {}, "sync": {"min_sync_c": 1.0}, "write": {}}}
    if models is not None:
        body = {"models": models, **body}
    p = d / "profile.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


def _sync(cfg):
    return next(s for s in cfg.stages if s.name == "sync")


def test_include_merges_with_paths_relative_to_the_models_folder(tmp_path, monkeypatch):
    _models_dir(tmp_path / "m")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the include is relative to the working directory, its paths to its folder
    cfg = load_config(_profile(tmp_path, "../m/models.yaml"))
    sync = _sync(cfg)
    assert sync.model == str(tmp_path / "m" / "syncnet" / "s.model")
    assert sync.allow_random_weights is True and sync.min_sync_c == 1.0
    # 'separate' is not added
    assert [s.name for s in cfg.stages] == ["probe", "faces", "segment", "cut", "sync", "write"]
    assert cfg.models.path == str(tmp_path / "m" / MODELS_FILE)
    assert cfg.dump()["models"]["path"] == cfg.models.path

    over = load_config(_profile(tmp_path, "../m"), ["stages.sync.model=/elsewhere/syncnet_v2.model"])
    assert _sync(over).model == "/elsewhere/syncnet_v2.model" and _sync(over).allow_random_weights is True
    none = load_config(_profile(tmp_path, "../m/models.yaml"), ["models=null"])
    assert _sync(none).model is None and none.models is None
    _models_dir(tmp_path / "m2", sync_model="./syncnet/s.model")
    other = load_config(_profile(tmp_path, None), [f"models={tmp_path / 'm2'}"])
    assert _sync(other).model == str(tmp_path / "m2" / "syncnet" / "s.model")


def test_hub_ids_and_absolute_paths_pass_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _models_dir(tmp_path / "m", extra={"separate": {"model": "alibabasglab/AV_MossFormer2_TSE_16K"}})
    body = yaml.safe_load((tmp_path / "m" / MODELS_FILE).read_text())
    body["stages"]["sync"]["model"] = "/abs/syncnet_v2.model"
    (tmp_path / "m" / MODELS_FILE).write_text(yaml.safe_dump(body))
    p = _profile(tmp_path, "m")
    raw = yaml.safe_load(p.read_text())
    # separate before sync, which reads its tracks
    raw["stages"] = {k: v for n, body in raw["stages"].items()
                     for k, v in ([("separate", {})] if n == "sync" else []) + [(n, body)]}
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(p)
    assert _sync(cfg).model == "/abs/syncnet_v2.model"
    assert next(s for s in cfg.stages if s.name == "separate").model == "alibabasglab/AV_MossFormer2_TSE_16K"


@pytest.mark.parametrize("stages, top, expect", [
    ({"sync": {"model": "./s", "min_sync_c": 0.0}}, {}, "stages.sync.min_sync_c: not a weight setting"),
    ({"faces": {"model": "./f", "allow_random_weights": True}}, {}, "stages.faces.allow_random_weights"),
    ({"sync": {"model": "../outside/s.model"}}, {}, "must stay inside the models folder"),
    ({"sync": {"model": "./a\x07b"}}, {}, "control characters"),
    ({"sync": {"model": "http://host/s.model"}}, {}, "not URLs"),
    ({"sync": {"allow_random_weights": "yes"}}, {}, "expected bool"),
    ({"synk": {"model": "./s"}}, {}, "stages.synk: unknown stage"),
    ({}, {"thresholds": {}}, "thresholds: unknown key"),
    ({}, {"files": {"../x": {"bytes": 1, "sha256": "a" * 64}}}, "must stay inside"),
    ({}, {"files": {"x": {"bytes": 1, "sha256": "ABC"}}}, "files.x.sha256: expected 64 lowercase hex digits"),
    ({}, {"files": {"x": {"bytes": -1, "sha256": "a" * 64}}}, "files.x.bytes: expected a non-negative integer"),
    ({"sync": None}, {}, "stages.sync: expected a mapping of weight settings"),
])
def test_include_refuses_what_a_models_file_may_not_say(tmp_path, monkeypatch, stages, top, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / MODELS_FILE).write_text(yaml.safe_dump({"stages": stages, **top}))
    with pytest.raises(ConfigError) as e:
        load_config(_profile(tmp_path, "models.yaml"))
    assert expect in str(e.value) and str(tmp_path / MODELS_FILE) in str(e.value)


def test_a_missing_models_file_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(_profile(tmp_path, "nowhere/models.yaml"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / MODELS_FILE) in msg
    assert "mtcc models fetch" in msg and "mtcc models make-tiny" in msg
    # the paper profile reads its models folder from the working directory too
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "models/models.yaml"))):
        load_config(resolve_config("mtcc"))


def test_config_hash_follows_the_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _models_dir(tmp_path / "a")
    _models_dir(tmp_path / "b")
    _models_dir(tmp_path / "c", sha="c" * 64)
    h = {k: load_config(_profile(tmp_path, None), [f"models={k}"]).config_hash() for k in "abc"}
    assert h["a"] == load_config(_profile(tmp_path, "a")).config_hash()
    assert h["a"] != h["b"]  # other weights files (other paths)
    # same paths as a, other recorded content: a re-fetch that changed the weights changes the config
    _models_dir(tmp_path / "a", sha="c" * 64)
    assert load_config(_profile(tmp_path, "a")).config_hash() not in (h["a"], h["b"])
    cfg = load_config(_profile(tmp_path, "c"))
    assert config_from_dump(cfg.dump(), [s.name for s in cfg.stages]).config_hash() == cfg.config_hash()
    assert load_config(_profile(tmp_path, None)).config_hash() != cfg.config_hash()


def test_bundled_offline_profile_takes_its_weights_from_the_tiny_folder(tiny):
    raw = yaml.safe_load(resolve_config("offline").read_text())
    assert raw["models"] == "@tiny"
    assert all("model" not in (body or {}) and "allow_random_weights" not in (body or {})
               for body in raw["stages"].values())
    cfg = load_config(resolve_config("offline"), [f"models={tiny}"])
    for s in cfg.stages:
        if s.name in ("separate", "sync"):
            assert s.model.startswith(str(tiny)) and s.allow_random_weights is True
    mtcc = load_config(resolve_config("mtcc"), [f"models={tiny}"])
    assert next(s for s in mtcc.stages if s.name == "faces").detector == "insightface"


def test_fetch_verifies_light_asd_against_its_pinned_sha256(server, tmp_path, capsys, monkeypatch, light_asd_weights):
    """The asd entry pins the authors' file (bytes + sha256): the real file is adopted as pinned and checks;
    anything else served at the URL is refused and not kept."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    www, base = server
    shutil.copy(light_asd_weights, www / "finetuning_TalkSet.model")
    (www / "other.model").write_bytes(b"x" * light_asd_weights.stat().st_size)
    target = tmp_path / "models"
    rc, out = run(["models", "fetch", str(target), "--only", "asd", "--url", f"asd={base}/finetuning_TalkSet.model"],
                  capsys)
    assert rc == 0, out
    doc = load_models_file(target / MODELS_FILE)
    assert doc["stages"] == {"asd": {"model": "./light_asd/finetuning_TalkSet.model"}}
    assert doc["files"]["light_asd/finetuning_TalkSet.model"]["pinned"] is True
    rc, out = run(["models", "check", str(target)], capsys)
    assert rc == 0 and re.search(r"^asd\s+\S+\s+OK: Light-ASD state dict", out, re.M), out

    bad = tmp_path / "bad"
    rc, out = run(["models", "fetch", str(bad), "--only", "asd", "--url", f"asd={base}/other.model"], capsys)
    assert rc == 1 and "sha256" in out, out
    assert not (bad / "light_asd" / "finetuning_TalkSet.model").exists()


LOAD_OFFLINE = """
from mtcc.pipeline.config import resolve_config
from mtcc.pipeline.config import load_config
cfg = load_config(resolve_config("offline"))
print(cfg.models.path)
print(" ".join(s.name for s in cfg.stages if getattr(s, "allow_random_weights", False)))
"""


def test_offline_profile_runs_from_any_directory_making_its_tiny_models_once(tmp_path):
    """`mtcc run offline` outside the repository: the random models are made on first use in the user's
    cache (MTCC_CACHE here), once even when two processes start together, reused after, remade when a
    first use was cut short."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MTCC_CACHE": str(tmp_path / "cache")}

    def start():
        return subprocess.Popen([sys.executable, "-c", LOAD_OFFLINE], cwd=elsewhere, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    runs = [p.communicate() + (p.returncode,) for p in [start(), start()]]
    assert all(rc == 0 for _, _, rc in runs), runs
    assert sum("making the offline profile's random-weight models" in err for _, err, _ in runs) == 1
    paths = {out.splitlines()[0] for out, _, _ in runs}
    assert len(paths) == 1
    models = Path(paths.pop())
    assert models.parent.parent == tmp_path / "cache" / "tiny" and models.is_file()
    assert {"separate", "sync", "asd", "masks", "audio_emb", "caption"} <= set(runs[0][0].splitlines()[1].split())
    assert not list(elsewhere.iterdir())  # nothing written where it ran
    before = models.stat().st_mtime_ns
    out, err, rc = (lambda p: p.communicate() + (p.returncode,))(start())
    assert rc == 0 and "making" not in err and models.stat().st_mtime_ns == before
    models.unlink()  # a first use killed before it finished
    out, err, rc = (lambda p: p.communicate() + (p.returncode,))(start())
    assert rc == 0 and "making" in err and models.is_file()


def test_the_tiny_cache_is_keyed_by_the_code_that_decides_the_tiny_models(tmp_path, monkeypatch):
    """A change to a stage class, to one of our own model classes or to the models-file writer gives another
    cache folder: the first use after it makes the models again instead of loading the old ones."""
    import mtcc.nets
    import mtcc.pipeline.weights
    import mtcc.stages
    from mtcc.pipeline.tiny_cache import code_digest

    before = code_digest()
    for package in (mtcc.stages, mtcc.nets, mtcc.pipeline.weights):
        changed = tmp_path / package.__name__
        shutil.copytree(package.__path__[0], changed, ignore=shutil.ignore_patterns("__pycache__"))
        last = sorted(changed.glob("*.py"))[-1]
        last.write_text(last.read_text() + "\n# changed\n")
        monkeypatch.setattr(package, "__path__", [str(changed)])
        assert code_digest() != before, package.__name__
        monkeypatch.undo()
    assert code_digest() == before
