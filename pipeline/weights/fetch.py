"""``mtcc models fetch``: make a folder hold every stage's declared weights, verified, and its models.yaml;
when the network is not there, say so at once and print the layout to place by hand."""

from __future__ import annotations

import dataclasses
import os
import shlex
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from mtcc.storage.hashing import file_digest

from .archive import extract_members
from .download import PROBE_TIMEOUT, Out, download_url, hf_download, hf_endpoint, hub_lfs, origin, probe, verify
from .modelsfile import MODELS_FILE, bad_chars, load_models_file, write_models_file
from .pins import Entry, ModelsError, Pin, pinned_table, select


def _layout_lines(e: Entry, root: Path) -> list[str]:
    folder = root / e.folder
    lines = [f"{e.stage}: {e.title}", f"  from {e.label}"]
    for pin in e.files:
        facts = (f"{pin.bytes} bytes" if pin.bytes is not None else "size not pinned") + (
            f", sha256 {pin.sha256}" if pin.sha256 else ", sha256 not pinned (recorded on first use)")
        lines.append(f"  {folder / pin.path}   ({facts}{', optional' if pin.optional else ''})")
    q = shlex.quote
    if e.kind == "hf":
        rev = f" --revision {e.revision}" if e.revision else ""
        names = " ".join(p.path for p in e.files if not p.optional)
        lines.append(f"  with internet: hf download {e.repo} {names}{rev} --local-dir {q(str(folder))}"
                     f"   (older huggingface_hub: hf download, same arguments)")
    elif e.archive:
        zname = PurePosixPath(urlsplit(e.url).path).name
        pats = " ".join(q("*" + p.path) for p in e.files)
        lines.append(f"  with internet: curl -fL -o {zname} {e.url} && unzip -j {zname} {pats} -d {q(str(folder))}")
    else:
        lines.append(f"  with internet: curl -fL -o {q(str(folder / e.files[0].path))} {e.url}")
    if e.note:
        lines.append(f"  note: {e.note}")
    return lines


def print_layout(entries: list[Entry], root: Path, out: Out = print) -> None:
    for e in entries:
        out("")
        for line in _layout_lines(e, root):
            out(line)


def _missing(folder: Path, e: Entry) -> list[Pin]:
    """Required files not in place (or of another size than pinned)."""
    return [pin for pin in e.files if not pin.optional and not (
        (folder / pin.path).is_file() and (pin.bytes is None or (folder / pin.path).stat().st_size == pin.bytes))]


def fetch(root: str | os.PathLike, *, only: list[str] | None = None, packs: dict[str, str] | None = None,
          urls: dict[str, str] | None = None, timeout: float = PROBE_TIMEOUT, dry_run: bool = False,
          out: Out = print) -> int:
    """Make ``root`` hold the declared weights of every selected stage (``packs``: the pack to take where a
    stage offers several, e.g. ``{"faces": "buffalo_l"}``) and write its models.yaml.

    Exit codes: 0 done; 1 a download or verification failed (nothing unverified is kept); 3 the network
    needed for the missing files is not reachable (nothing was downloaded; the layout to place by hand is
    printed)."""
    root = Path(root).expanduser().absolute()
    entries = _with_urls(select(pinned_table(packs), only), dict(urls or {}))
    if dry_run:
        out(f"MTCC's pinned models, as `mtcc models fetch {shlex.quote(str(root))}` would place them:")
        print_layout(entries, root, out)
        return 0
    existing = None
    if (root / MODELS_FILE).exists():
        existing = load_models_file(root / MODELS_FILE)
        if existing["random_weights"]:
            raise ModelsError(f"{root} holds RANDOM weights from `mtcc models make-tiny`; fetch real weights into "
                              f"another folder")

    todo = {e.stage: _missing(root / e.folder, e) for e in entries}
    endpoint = hf_endpoint()
    if not _reachable([e for e in entries if todo[e.stage]], endpoint, root, timeout, out):
        return 3

    records: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    unpinned = 0
    for e in entries:
        try:
            got_rev = _download(e, root, todo[e.stage], endpoint, out)
            files = _verified(e, root, todo[e.stage], endpoint, existing)
            unpinned += sum(not f["pinned"] for f in files.values())
            records[e.stage] = files
            sources[e.stage] = {"kind": e.kind, "title": e.title, **(
                {"repo": e.repo, "revision": got_rev, "revision_pinned": e.revision is not None}
                if e.kind == "hf" else {"url": e.url})}
            out(f"{e.stage}: OK, {len(files)} file(s) in {root / e.folder}")
        except (ModelsError, OSError) as err:
            failed.append(e.stage)
            out(f"{e.stage}: FAILED: {err}")
            if e.note:
                out(f"  note: {e.note}")
        except Exception as err:  # noqa: BLE001 - hub client errors: one model failing must not stop the others
            failed.append(e.stage)
            out(f"{e.stage}: FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    _write_records(root, [e for e in entries if e.stage in records], records, sources, existing, out)
    if unpinned:
        out(f"note: {unpinned} file(s) are not pinned in MTCC's table: their sha256 as fetched is recorded in "
            f"models.yaml (trust on first use) and `mtcc models check` verifies them from now on")
    if failed:
        out(f"FAILED: {', '.join(failed)}; rerun to retry (verified files are kept and not fetched again)")
        return 1
    return 0


def _with_urls(entries: list, urls: dict[str, str]) -> list:
    """``entries`` with the ``--url`` addresses given for URL-fetched stages (refused for any other)."""
    for key, url in urls.items():
        e = next((x for x in entries if x.stage == key), None)
        if e is None or e.kind != "url":
            raise ModelsError(f"--url {key}=...: '{key}' is not a URL-fetched stage "
                              f"({', '.join(x.stage for x in entries if x.kind == 'url')})")
        if bad_chars(url) or urlsplit(url).scheme not in ("http", "https"):
            raise ModelsError(f"--url {key}={url!r}: expected an http(s) URL")
    return [dataclasses.replace(e, url=urls[e.stage]) if e.stage in urls else e for e in entries]


def _reachable(missing: list, endpoint: str, root: Path, timeout: float, out: Out) -> bool:
    """Whether the hosts the ``missing`` models come from answer; if not, say which and how to place the
    files by hand (then nothing is downloaded)."""
    if not missing:
        return True
    targets = {e.stage: (endpoint if e.kind == "hf" else e.url) for e in missing}
    t0 = time.monotonic()
    why = probe(targets, timeout)
    down = [e for e in missing if why[e.stage]]
    if not down:
        return True
    out(f"cannot reach what {len(down)} model(s) need (probed in {time.monotonic() - t0:.1f} s):")
    hosts: dict[tuple[str, str], list[str]] = {}
    for e in down:
        hosts.setdefault((origin(targets[e.stage]), str(why[e.stage])), []).append(e.stage)
    for (host, reason), stages in sorted(hosts.items()):
        out(f"  {host} ({', '.join(stages)}): {reason}")
    out("Nothing was downloaded. On a machine with internet run `mtcc models fetch DIR` and copy DIR here, "
        "or place the files below by hand and run this command again: files in place are verified and "
        "adopted without the network.")
    print_layout(down, root, out)
    return False


def _download(e: Any, root: Path, need: list, endpoint: str, out: Out) -> str | None:
    """Fetch the files ``need`` of entry ``e`` into its folder; the hub revision got (or the pinned one)."""
    folder = root / e.folder
    folder.mkdir(parents=True, exist_ok=True)
    if not need:
        out(f"{e.stage}: all files already in {folder}; verifying")
        return e.revision
    out(f"{e.stage}: fetching {len(need)} file(s) from {e.label}")
    for pin in need:  # a file of the wrong size is replaced, never resumed into
        (folder / pin.path).unlink(missing_ok=True)
    if e.kind == "hf":
        extra = [p.path for p in e.files if p.optional and not (folder / p.path).exists()]
        return hf_download(e, folder, [p.path for p in need] + extra, endpoint)
    if e.archive:
        zpath = root / f".{e.stage}-{os.getpid()}.zip"
        try:
            download_url(e.url, zpath, None, out)
            extract_members(zpath, {p.path: p.bytes for p in need}, folder)
        finally:
            zpath.unlink(missing_ok=True)
    else:
        download_url(e.url, folder / need[0].path, need[0], out)
    return e.revision


def _verified(e: Any, root: Path, need: list, endpoint: str, existing: dict | None) -> dict[str, dict[str, Any]]:
    """The records (bytes, sha256, pinned) of entry ``e``'s files, each verified against its pin, the hub's
    LFS record when just downloaded, and the first record of it in models.yaml (trust on first use). A file
    this run downloaded that fails is deleted; one placed by hand is left, with how to fix it."""
    folder = root / e.folder
    lfs = hub_lfs(e, endpoint) if e.kind == "hf" and need else {}
    files: dict[str, dict[str, Any]] = {}
    for pin in e.files:
        f = folder / pin.path
        if not f.is_file():
            if pin.optional:
                continue
            raise ModelsError(f"{f}: not delivered (is {pin.path} in {e.label}?)")
        n, sha = file_digest(f)
        rel = (PurePosixPath(e.folder) / pin.path).as_posix()
        first = (existing or {}).get("files", {}).get(rel) if pin not in need else None
        try:
            verify(f, n, sha, pin, str(f))
            if first is not None and (first["bytes"], first["sha256"]) != (n, sha):
                # trust on first use means the first record binds: a changed file is not re-trusted
                raise ModelsError(f"{f}: sha256 {sha} differs from the {first['sha256']} recorded in "
                                  f"{root / MODELS_FILE} when it was first fetched")
            if pin.path in lfs and lfs[pin.path] != (n, sha):
                raise ModelsError(f"{f}: {n} bytes / sha256 {sha} differ from the hub's LFS record "
                                  f"{lfs[pin.path]}; not used")
        except ModelsError as err:
            if pin in need:  # what this run downloaded goes; a file placed by hand is the user's
                f.unlink(missing_ok=True)
                raise
            raise ModelsError(f"{err} (placed by hand? replace or delete it, then rerun)") from err
        files[rel] = {"bytes": n, "sha256": sha, "pinned": pin.pinned}
    return files


def _write_records(root: Path, done: list, records: dict, sources: dict, existing: dict | None, out: Out) -> None:
    """models.yaml with the verified files and settings of the entries ``done`` (earlier records of their
    folders replaced; other stages' kept)."""
    if not done:
        return
    doc = existing or {"stages": {}, "files": {}, "sources": {}, "random_weights": False}
    for e in done:
        prefix = PurePosixPath(e.folder)
        doc["files"] = {k: v for k, v in doc["files"].items() if prefix not in PurePosixPath(k).parents}
        doc["files"].update(records[e.stage])
        doc["stages"][e.stage] = dict(e.settings)
        doc["sources"][e.stage] = sources[e.stage]
    p = write_models_file(root, doc, "written by `mtcc models fetch`; `mtcc models check` verifies this folder;\n"
                                     "include it in a profile with `models: PATH` or --set models=PATH")
    out(f"\nwrote {p} ({', '.join(e.stage for e in done)})")


def parse_urls(items: list[str]) -> dict[str, str]:
    urls = {}
    for item in items:
        key, sep, url = item.partition("=")
        if not sep or not key.strip() or not url.strip():
            raise ModelsError(f"--url {item!r}: expected STAGE=URL, e.g. faces=https://host/antelopev2.zip")
        urls[key.strip()] = url.strip()
    return urls


def split_stages(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None
