"""A reverse proxy that makes a healthy store behave like a throttled one: it forwards every request to an
upstream (the range server of ``http_source``, moto's S3 server) and, on a fixed schedule, answers
``503 Slow Down`` or ``429 Too Many Requests`` instead, cuts a body off half-way after promising all of it,
or resets the connection mid-body. What object stores do at cluster scale, on loopback, reproducibly.

``with FlakyProxy(upstream, Faults(slow_down=5, cut=7)) as p: p.base`` is the address clients use;
``p.faults`` can be swapped between builds (``Faults()`` is a healthy store) and ``p.injected`` counts what
was done. Loopback only: tests and ``mtcc bench`` start it and talk to it on this machine.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from .http_source import LocalHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your '
             b'request rate.</Message></Error>')
TOO_MANY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>TooManyRequests</Code><Message>Too many '
            b'requests.</Message></Error>')
# request headers that describe one hop, not the request: never forwarded
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade", "trailer"}


@dataclass(frozen=True)
class Faults:
    """Which requests fail, counted per request method in ``methods`` (1-based: ``slow_down=5`` fails the
    5th, 10th, ... of them). ``down_from``: from the first request whose path holds this text on, every
    request is answered 503 (a store that stopped answering mid-build; empty = never)."""

    slow_down: int = 0  # answered 503 Slow Down
    too_many: int = 0  # answered 429 Too Many Requests
    cut: int = 0  # body cut off half-way, Content-Length promising the whole of it
    reset: int = 0  # connection reset (RST) half-way through the body
    methods: tuple[str, ...] = ("GET",)
    down_from: str = ""


@dataclass
class FlakyProxy(LocalHTTPServer):
    upstream: str  # http://host:port
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.injected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # by method
        self.down = False
        self._lock = threading.Lock()
        up = urlsplit(self.upstream)
        self._up = (up.hostname or "127.0.0.1", up.port or 80)
        super().__init__(self._handler())  # ``sent``: body bytes, by request path (without the query)

    def reset_counts(self) -> None:
        with self._lock:
            self.injected.clear()
            self.requests.clear()
            self.sent.clear()
            self.down = False

    def _fault(self, method: str, path: str) -> str | None:
        """The fault for the next request of ``method``, or None. A cut or a reset is only counted when it
        happens: a HEAD, or a body of a byte or none (a 404's), passes whole."""
        f = self.faults
        with self._lock:
            if f.down_from and f.down_from in path:
                self.down = True
            if self.down and f.down_from:
                self.injected["down"] += 1
                return "down"
            if method not in f.methods:
                return None
            self.requests[method] += 1
            n = self.requests[method]
            for kind, every in (("slow_down", f.slow_down), ("too_many", f.too_many), ("cut", f.cut),
                                ("reset", f.reset)):
                if every and n % every == 0:
                    if kind not in ("cut", "reset"):  # those are counted where a body is there to cut
                        self.injected[kind] += 1
                    return kind
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: tests read the counters
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _error(self, status: int, reason: str, body: bytes) -> None:
                self.send_response(status, reason)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                if fault in ("slow_down", "down"):
                    return self._error(503, "Slow Down", SLOW_DOWN)
                if fault == "too_many":
                    return self._error(429, "Too Many Requests", TOO_MANY)
                conn = http.client.HTTPConnection(*proxy._up, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, reason, resp_headers = resp.status, resp.reason, resp.getheaders()
                finally:
                    conn.close()
                self.send_response(status, reason)
                for k, v in resp_headers:
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = int(dict((k.lower(), v) for k, v in resp_headers).get("content-length", len(data)))
                self.send_header("Content-Length", str(length if self.command == "HEAD" else len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                path = self.path.split("?", 1)[0]
                if fault in ("cut", "reset") and len(data) > 1:
                    half = data[: len(data) // 2]
                    self.wfile.write(half)
                    self.wfile.flush()
                    with proxy._lock:
                        proxy.sent[path] += len(half)
                        proxy.injected[fault] += 1
                    self.close_connection = True
                    if fault == "reset":  # RST instead of FIN when the socket closes: a reset connection
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)
                with proxy._lock:
                    proxy.sent[path] += len(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815 - http.server's naming

        return Handler
