"""The dataset report (`mtcc report OUT`, refreshed by every build), checked in a real headless browser.

A small offline build (every stage, tiny random models, three short inputs: one kept, one rejected
with a hostile file name, one rejected by the probe) is rendered and opened in Debian's chromium over
the DevTools protocol (``--remote-debugging-pipe``: no websocket client, no port). The browser reports
console messages, uncaught exceptions, failed loads and JavaScript dialogs as events, so "no console
errors" is read from the browser itself rather than from a script the page would have to carry; the
images are checked in the loaded DOM (``complete`` and ``naturalWidth > 0``), and a full-page
screenshot is saved in the test's tmp dir.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtcc.manifests.paths import OutPaths
from mtcc.manifests.report import evenly, pick_rejected, write_report
from mtcc.manifests.report_data import read_manifests
from mtcc.pipeline.build import build
from mtcc.pipeline.cli import main
from mtcc.pipeline.config import load_config, resolve_config

HOSTILE = "<img src=x onerror=alert('x')><script>alert(1)<\\script> \"q\" &.mp4"
PLOTS = ["funnel", "rejections", "duration_video", "duration_clip", "face_size", "distance_ratio", "face_sharpness",
         "face_luminance", "face_contrast", "face_yaw", "face_complete", "bits_per_pixel", "camera_shake",
         "text_cover", "static_text", "text_over_face",
         "dnsmos_ovrl", "dnsmos_bak", "dnsmos_sig", "speech_fraction", "nonspeech_sound", "sync_c", "sync_d", "offset",
         "mask_area", "identity_spread", "identity_between", "throughput"]
BAD_EVENTS = ("Runtime.exceptionThrown", "Network.loadingFailed", "Page.javascriptDialogOpening")


# ------------------------------------------------------------------------------------- the browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium not found: the report test renders the page in a real headless browser; install it "
                "with `apt-get install chromium` (Debian) and rerun")


# The DevTools pipe is fds 3 (commands in) and 4 (answers out) of the browser. subprocess cannot place
# fds at fixed numbers without preexec_fn (unsafe with threads), so a tiny Python exec wrapper moves them
# there (via fds >= 10 first, so that the two can never clobber each other) and execs the browser.
_EXEC_WITH_PIPE = ("import fcntl, os, sys\n"
                   "r, w = (fcntl.fcntl(int(a), fcntl.F_DUPFD, 10) for a in sys.argv[1:3])\n"
                   "os.dup2(r, 3)\nos.dup2(w, 4)\n"
                   "os.execv(sys.argv[3], sys.argv[3:])\n")


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (NUL-terminated JSON messages)."""

    def __init__(self, exe: str, profile: Path, width: int = 1280, height: int = 900):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--window-size={width},{height}", "about:blank"]
        self._stderr = profile.parent / "chromium.stderr.log"
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _EXEC_WITH_PIPE, str(cmd_r), str(res_w), *args],
                                         pass_fds=(cmd_r, res_w), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer in time; its log: {self.log_tail()}")
            ready, _, _ = select.select([self._res_r], [], [], left)
            if ready:
                chunk = os.read(self._res_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe; its log: {self.log_tail()}")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            while checked < len(self.events):
                m = self.events[checked]
                checked += 1
                if m.get("method") == "Page.javascriptDialogOpening":
                    # an injected alert() blocks the page until answered: dismiss it (the event stays
                    # recorded and fails the test) rather than time out without saying why
                    self.send("Page.handleJavaScriptDialog", {"accept": True}, session=m.get("sessionId"))
                elif m.get("method") == method:
                    return m
            self.events.append(self._read(deadline))

    def log_tail(self) -> str:
        try:
            return self._stderr.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass  # already gone: killed below
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)


def problems_in(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and dialogs (an injected alert) the page caused."""
    out = []
    for m in events:
        method, p = m.get("method"), m.get("params", {})
        if method in BAD_EVENTS:
            out.append(f"{method}: {json.dumps(p)[:400]}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            out.append(f"console.{p['type']}: {json.dumps(p.get('args'))[:400]}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return out


def open_page(page: Path, screenshot: Path, tmp: Path) -> dict:
    """Load ``page`` from disk; returns the images as the DOM sees them, the page text, the problems
    the browser reported and a few DOM facts. The full-page screenshot goes to ``screenshot``."""
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    b = Browser(chromium(), profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            b.send(f"{domain}.enable", session=s)
        b.send("Page.navigate", {"url": page.as_uri()}, session=s)
        b.wait_event("Page.loadEventFired")
        probe = ("JSON.stringify({images: Array.from(document.images, i => ({src: i.getAttribute('src'), "
                 "complete: i.complete, width: i.naturalWidth, alt: i.getAttribute('alt')})), text: document.body.innerText, "
                 "title: document.title, scripts: document.scripts.length, "
                 "remote: Array.from(document.querySelectorAll('[src],[href]'), n => n.getAttribute('src') || "
                 "n.getAttribute('href')).filter(u => /^[a-z]+:/i.test(u))})")
        facts = json.loads(b.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                  session=s)["result"]["value"])
        size = b.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
        shot = b.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}},
            session=s)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        facts["problems"] = problems_in(b.events)
        return facts
    finally:
        b.close()


def assert_timeline_shows_only(path: Path, speaker: int) -> None:
    """The timeline PNG has a bar in the speaker's colour and none in the other character's."""
    from PIL import Image

    from mtcc.manifests.report_plots import CHAR_RGB

    with Image.open(path) as img:
        px = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    count = [int((np.abs(px - np.asarray(rgb)).sum(1) < 30).sum()) for rgb in CHAR_RGB]
    assert count[speaker] > 500 and count[1 - speaker] == 0, count


def assert_non_blank_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 10_000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        px = np.asarray(img.convert("RGB"))
    assert px.shape[0] > 1000 and px.shape[1] >= 1000, px.shape
    assert px.std() > 10 and len(np.unique(px.reshape(-1, 3), axis=0)) > 200, "screenshot looks blank"


# ------------------------------------------------------------------------------------ the dataset


def _trim(src: Path, dst: Path, seconds: float) -> None:
    """A shorter copy: the model stages' cost grows with clip length, and 2.4 s still makes one 49+
    frame clip."""
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", "file:" + str(src), "-t", f"{seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac", "file:" + str(dst)], check=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_overrides, light_asd_weights):
    from mtcc.sampledata.fixtures import broken_scenes, good_scenes
    from mtcc.sampledata.scene import render

    root = tmp_path_factory.mktemp("report")
    raw, videos = root / "raw", root / "videos"
    raw.mkdir()
    videos.mkdir()
    scenes = {s.name: s for s in good_scenes() + broken_scenes()}
    for name in ("two_talk", "two_far"):
        render(scenes[name], raw, seed=0)
    _trim(raw / "two_talk.mp4", videos / "two_talk.mp4", 2.4)
    _trim(raw / "two_far.mp4", videos / HOSTILE, 2.4)  # a file name that is HTML and quotes
    render(scenes["too_short"], videos, seed=0)
    out = root / "out"
    cfg = load_config(resolve_config("offline"), [
        *tiny_overrides, "run.videos_per_shard=1",
        # keep the one kept clip kept on random weights, and spare SAM2 its re-prompt passes
        "stages.prescore.reject=false", "stages.masks.max_reprompts=0",
        # who speaks when, from the real Light-ASD weights: the gallery's speaking timeline
        f"stages.asd.model={light_asd_weights}"])
    t0 = time.monotonic()
    res = build(cfg, [str(videos)], out, runner="inprocess", progress=False)
    assert not res.shards_failed and not res.warnings, (res.shards_failed, res.warnings)
    rows = read_manifests(out).to_pylist()
    outcome = {Path(r["source"]).name: (r["status"], r["reason"]) for r in rows if r["level"] == "clip"
               or r["status"] == "rejected"}
    assert outcome == {"two_talk.mp4": ("kept", None), HOSTILE: ("rejected", "too_distant"),
                       "too_short.mp4": ("rejected", "too_short")}, outcome
    print(f"build: {time.monotonic() - t0:.1f}s")
    return out, cfg, videos


def shard_of(out: Path, name: str) -> int:
    rows = read_manifests(out).to_pylist()
    return next(r["shard"] for r in rows if Path(r["source"]).name == name)


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_build_refreshes_the_report(built):
    out, _, _ = built
    page = (out / "report" / "index.html").read_text()
    assert "MTCC dataset report" in page and "plots/funnel.png" in page and "gallery/kept_00.jpg" in page
    assert not list((out / "report").glob(".staging-*"))


@pytest.mark.slow
def test_report_loads_in_a_headless_browser_with_every_image(built, tmp_path, capsys):
    out, _, _ = built
    assert main(["report", str(out), "--samples", "3"]) == 0
    page = Path(capsys.readouterr().out.strip())
    assert page == out / "report" / "index.html"
    shot = tmp_path / "report.png"
    facts = open_page(page, shot, tmp_path)

    assert facts["problems"] == []
    srcs = [i["src"] for i in facts["images"]]
    broken = [i for i in facts["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert [f"plots/{p}.png" for p in PLOTS if f"plots/{p}.png" in srcs] == [f"plots/{p}.png" for p in PLOTS]
    assert {"gallery/kept_00.jpg", "gallery/kept_00_ref0.jpg", "gallery/kept_00_ref1.jpg",
            "gallery/kept_00_wave.png", "gallery/kept_00_speaking.png", "gallery/rejected_00.jpg",
            "gallery/rejected_01.jpg"} <= set(srcs)
    # who speaks when under the kept clip's card: the left character (the astronaut) talks, the right listens
    timeline = next(i for i in facts["images"] if i["src"] == "gallery/kept_00_speaking.png")
    assert "speaking timeline: character 0 speaks on" in timeline["alt"]
    assert_timeline_shows_only(out / "report" / "gallery" / "kept_00_speaking.png", speaker=0)
    assert srcs.index("gallery/kept_00_speaking.png") < srcs.index("gallery/rejected_00.jpg")
    # self-contained: nothing the page links leaves the folder, no script at all
    assert facts["remote"] == [] and facts["scripts"] == 0
    assert all((out / "report" / s).is_file() for s in srcs)
    text = facts["text"]
    assert "too_distant" in text and "too_short" in text and "RANDOM weights" in text
    assert "speaking 0/1" in text and "turns" in text
    assert "All 3 planned shards are committed" in text
    assert_non_blank_png(shot)


@pytest.mark.slow
def test_hostile_file_name_is_escaped_everywhere(built, tmp_path):
    out, _, _ = built
    write_report(out, samples=3)
    raw = (out / "report" / "index.html").read_text()
    assert "<img src=x" not in raw and "<script" not in raw
    # Jinja2's autoescape writes quotes as numeric references
    assert "&lt;img src=x onerror=alert(&#39;x&#39;)&gt;&lt;script&gt;" in raw and "&#34;q&#34; &amp;.mp4" in raw
    facts = open_page(out / "report" / "index.html", tmp_path / "hostile.png", tmp_path)
    assert facts["problems"] == []  # an injected onerror/alert would show up as a failed load or a dialog
    assert facts["scripts"] == 0 and "x" not in [i["src"] for i in facts["images"]]
    assert HOSTILE in facts["text"]  # shown as text, exactly


@pytest.mark.slow
def test_partial_out_lists_the_missing_shard(built, tmp_path):
    out, _, _ = built
    part = tmp_path / "partial"
    shutil.copytree(out, part)
    missing = shard_of(part, "two_talk.mp4")
    (part / "commits" / f"{missing:06d}.json").unlink()  # manifest and tar stay: an uncommitted attempt
    page = write_report(part, samples=3)
    facts = open_page(page, tmp_path / "partial.png", tmp_path)
    assert facts["problems"] == [] and all(i["complete"] and i["width"] > 0 for i in facts["images"])
    text = facts["text"]
    assert "1 of 3 planned shards are not committed yet" in text
    assert f"{missing:06d}\tpartial\ttwo_talk.mp4" in text
    # the uncommitted shard's manifest is not read: its kept clip is gone from the numbers and gallery
    assert "No kept clip yet" in text and "2 / 3" in text
    assert not list((part / "report" / "gallery").glob("kept_*")), "stale gallery files of the last report"
    assert_non_blank_png(tmp_path / "partial.png")


@pytest.mark.slow
def test_missing_source_gets_a_placeholder(built, tmp_path):
    out, _, videos = built
    part = tmp_path / "moved"
    shutil.copytree(out, part)
    moved = videos.parent / "moved-away"
    moved.mkdir(exist_ok=True)
    shutil.move(videos / "too_short.mp4", moved / "too_short.mp4")
    try:
        page = write_report(part, samples=3).read_text()
    finally:
        shutil.move(moved / "too_short.mp4", videos / "too_short.mp4")
    assert "source file not found" in page


@pytest.mark.slow
def test_a_failing_report_never_fails_the_build(built, tmp_path, monkeypatch):
    out, cfg, videos = built
    again = tmp_path / "again"
    shutil.copytree(out, again)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr("mtcc.manifests.report.write_report", broken)
    logs: list[str] = []
    res = build(cfg, [str(videos)], again, runner="inprocess", progress=False, log=logs.append)
    assert sorted(res.shards_skipped) == [0, 1, 2] and not res.shards_failed
    assert any("report not updated: RuntimeError: boom" in w for w in res.warnings)
    assert any(m.startswith("WARNING: report not updated") for m in logs)


def test_empty_out_says_there_is_no_plan(tmp_path):
    page = write_report(tmp_path)
    assert "No plan yet" in page.read_text()


def test_planned_but_uncommitted_out_lists_pending_shards(tmp_path):
    layout = OutPaths(tmp_path)
    pq.write_table(pa.table({"shard": [0, 0, 1], "source": ["/v/a.mp4", "/v/" + HOSTILE, "/v/c.mp4"]}),
                   layout.plan)
    (tmp_path / "shards").mkdir()
    layout.temp(layout.tar(1)).write_bytes(b"partial")
    html = write_report(tmp_path).read_text()
    assert "2 of 2 planned shards are not committed yet" in html
    assert "000000</td><td>pending" in html and "000001</td><td>partial" in html
    assert "&lt;img src=x" in html and "<img src=x" not in html
    assert "No shard is committed yet" in html


def test_gallery_choice_is_deterministic_and_spread():
    assert evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly(list(range(3)), 4) == [0, 1, 2]
    assert evenly(list(range(5)), 0) == []
    rows = [{"key": k, "status": "rejected", "reason": r, "level": "clip"}
            for k, r in [("b", "x"), ("a", "x"), ("c", "y"), ("d", "x"), ("e", "z")]]
    table = pa.Table.from_pylist(rows)
    assert [r["key"] for r in pick_rejected(table, 4)] == ["a", "c", "e", "b"]


def test_stats_shown_are_the_ones_the_configured_stages_declare():
    from mtcc.manifests.report_views import stat_views
    from mtcc.stages import STAGES

    for name, cls in STAGES.items():  # a view names stats its stage records
        for v in cls.report_views:
            assert set(v.stats) <= set(cls.stats_schema), (name, v)
    cfg = load_config(resolve_config("offline"), ["models=null"])
    views = stat_views(["plan", *[s.name for s in cfg.stages]])
    # every histogram of the page, from the stages, video-level first, then in the config's stage order
    assert [v.view.plot for v in views if v.view.plot] == [p for p in PLOTS if p not in ("funnel", "rejections",
                                                                                           "throughput")]
    labels = [v.view.label for v in views if v.view.card]
    assert {"speaking 0/1", "turns", "Sync-C 0/1", "mask area 0/1", "speech s 0/1", "duration"} <= set(labels)
    # a profile without a stage shows none of its stats
    spine = stat_views(["plan", *[s.name for s in load_config(resolve_config("spine")).stages]])
    assert [v.view.plot for v in spine if v.view.plot] == ["duration_video", "duration_clip"]


def test_report_cli_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
