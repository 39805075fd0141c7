"""Getting bytes: whether the hosts answer (probe), HTTP and Hugging Face downloads, and verifying what
arrived against its pin. Nothing unverified is ever left under its final name."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .pins import Entry, ModelsError, Pin

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 5.0

Out = Callable[[str], None]


def size_text(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def probe(urls: dict[str, str], timeout: float = PROBE_TIMEOUT) -> dict[str, str | None]:
    """Per key, None if ``urls[key]`` answered (any HTTP status but 404/410), else why not. All at once, in
    daemon threads, bounded by about ``timeout``: a stuck DNS lookup must not hold an offline machine."""
    import requests

    result: dict[str, str | None] = {k: f"no answer within {timeout:g} s" for k in urls}

    def one(key: str, url: str) -> None:
        try:
            r = requests.head(url, timeout=(timeout, timeout), allow_redirects=False)
            result[key] = f"HTTP {r.status_code} (not found)" if r.status_code in (404, 410) else None
        except requests.RequestException as e:
            first = str(e).splitlines()[0] if str(e) else ""
            result[key] = f"{type(e).__name__}: {first[:160]}"

    threads = [threading.Thread(target=one, args=(k, u), daemon=True) for k, u in urls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return dict(result)


def verify(path: Path, n: int, sha: str, pin: Pin, what: str) -> None:
    if pin.bytes is not None and n != pin.bytes:
        raise ModelsError(f"{what}: {n} bytes, MTCC's table pins {pin.bytes}; not used")
    if pin.sha256 is not None and sha != pin.sha256:
        raise ModelsError(f"{what}: sha256 {sha} != pinned {pin.sha256}; not used")


def download_url(url: str, dest: Path, pin: Pin | None = None, out: Out = print) -> tuple[int, str]:
    """Stream ``url`` to ``dest`` through a hidden temporary name in the same folder, renamed into place only
    once complete and verified; nothing is left behind on any failure."""
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.part-{os.getpid()}"
    h = hashlib.sha256()
    n = 0
    done = False
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as r:
            if r.status_code != 200:
                raise ModelsError(f"{url}: HTTP {r.status_code}")
            length = r.headers.get("Content-Length")
            expect = int(length) if length and length.isdigit() and "Content-Encoding" not in r.headers else None
            t0, shown = time.monotonic(), 0
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    if pin is not None and pin.bytes is not None and n > pin.bytes:
                        raise ModelsError(f"{url}: more than the {pin.bytes} bytes MTCC's table pins; stopped")
                    if n - shown >= 256 << 20:
                        shown = n
                        out(f"    {size_text(n)}{' of ' + size_text(expect) if expect else ''} "
                            f"({n / max(time.monotonic() - t0, 1e-3) / 1e6:.1f} MB/s)")
                f.flush()
                os.fsync(f.fileno())
        if expect is not None and n != expect:
            raise ModelsError(f"{url}: got {n} of {expect} bytes (connection cut); nothing kept")
        sha = h.hexdigest()
        if pin is not None:
            verify(tmp, n, sha, pin, url)
        os.replace(tmp, dest)
        done = True
        return n, sha
    except requests.RequestException as e:
        raise ModelsError(f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def hf_download(e: Entry, folder: Path, names: list[str], endpoint: str) -> str | None:
    """Download ``names`` of ``e``'s repo into ``folder``; returns the commit the files came from."""
    from huggingface_hub import HfApi, snapshot_download

    snapshot_download(e.repo, revision=e.revision, local_dir=str(folder), allow_patterns=names, endpoint=endpoint)
    try:
        return HfApi(endpoint=endpoint).model_info(e.repo, revision=e.revision).sha
    except Exception:  # noqa: BLE001 - the commit is provenance only; the files are already verified
        return e.revision


def hub_lfs(e: Entry, endpoint: str) -> dict[str, tuple[int, str]]:
    """The hub's own size and sha256 of each LFS file of ``e`` at its revision (empty if unavailable)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(e.repo, revision=e.revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - an extra check; without it the download is still recorded as TOFU
        return {}
    return {s.rfilename: (s.lfs.size, s.lfs.sha256) for s in (info.siblings or []) if s.lfs is not None}
