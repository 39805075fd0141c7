"""A local HTTP server that serves a folder the way an object store serves objects (HEAD, GET, byte ranges)
and counts the bytes it sends per file: what "a source crosses the network once" is measured against.

Loopback only. Used by ``mtcc bench`` (URL inputs) and by the tests of the node-local source cache.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

CHUNK = 1 << 20


class LocalHTTPServer:
    """A threaded HTTP server on a free local port, serving ``handler`` while in its ``with`` block, counting
    body bytes sent (``sent``, by name)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.sent: Counter[str] = Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def total_sent(self) -> int:
        return sum(self.sent.values())


class CountingServer(LocalHTTPServer):
    """``with CountingServer(folder) as srv: srv.url("a.mp4")``; ``srv.sent[name]``: body bytes sent.
    ``swap={name: (n, path)}``: after ``n`` HEAD requests for ``name`` it serves the file at ``path`` instead
    (an object replaced between a build's planning, which asks its size once, and its fetch)."""

    def __init__(self, root: str | os.PathLike, swap: dict[str, tuple[int, Path]] | None = None):
        self.root = Path(root).resolve()
        self.swap = dict(swap or {})
        self.requests: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()  # HEAD requests by name (what swap counts)
        self._lock = threading.Lock()
        super().__init__(self._handler())

    def url(self, name: str) -> str:
        return f"{self.base}/{quote(name)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: tests and benchmarks read the counters
                return

            def _file(self) -> Path | None:
                name = unquote(self.path.split("?", 1)[0].lstrip("/"))
                p = (server.root / name).resolve()
                if server.root not in p.parents or not p.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                with server._lock:
                    server.heads[name] += self.command == "HEAD"
                    after, other = server.swap.get(name, (None, None))
                    if after is not None and server.heads[name] > after:
                        return Path(other)
                return p

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                p = self._file()
                if p is None:
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(p.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                p = self._file()
                if p is None:
                    return
                size = p.stat().st_size
                start, end = 0, size - 1
                m = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if m and (m.group(1) or m.group(2)):
                    if m.group(1):
                        start = int(m.group(1))
                        end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
                    else:  # a suffix range: the last N bytes
                        start = max(0, size - int(m.group(2)))
                    if start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                n = end - start + 1
                self.send_header("Content-Length", str(n))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                name = unquote(self.path.split("?", 1)[0].lstrip("/"))
                with server._lock:
                    server.requests[name] += 1
                with open(p, "rb") as f:
                    f.seek(start)
                    left = n
                    while left > 0:
                        block = f.read(min(CHUNK, left))
                        if not block:
                            break
                        # counted before the write: once the client holds the last byte, the count has it too
                        # (counted after, a test reading it could see the last block missing)
                        with server._lock:
                            server.sent[name] += len(block)
                        try:
                            self.wfile.write(block)
                        except OSError:
                            with server._lock:
                                server.sent[name] -= len(block)
                            raise
                        left -= len(block)

        return Handler
