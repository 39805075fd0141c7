"""RemoteIO: the one policy every remote read and write goes through (plan fingerprints, the node-local
source fetch, a remote OUT, export and the training loader reading shards from a URL).

Object stores throttle (503 Slow Down, 429), drop connections, time out and cut bodies short as a matter
of course at cluster scale. Each call is retried with exponential backoff and full jitter while it fails
for a reason that can pass (:func:`transient`), within ``RetryPolicy.attempts`` and ``budget_s``; a reason
that cannot pass (404, 403, a bad request) fails at once. Every retry is logged at debug level and counted
(:class:`IOCounts`), so a build can say how rough its store was. Ranges are read one at a time and each is
checked for its length, so a retry re-reads only the range that failed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("mtcc.remote_io")

T = TypeVar("T")

# HTTP statuses a store answers when it wants the client to come back later
THROTTLED = {429, 503}
# server-side failures worth another try
SERVER = {500, 502, 504, 408}
# S3 and GCS error codes of the same kinds (botocore ClientError, google.api_core)
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                  "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestThrottled",
                  "BandwidthLimitExceeded", "ServiceUnavailable"}
SERVER_CODES = {"InternalError", "RequestTimeout", "RequestTimeoutException", "ServiceUnavailableException",
                "InternalServerError"}
# exception type names (any module) that mean the connection or the body broke: aiohttp, botocore, urllib3,
# http.client, fsspec; matched by name so that no store's package has to be installed to classify
NETWORK_TYPES = {"ClientPayloadError", "ContentLengthError", "TransferEncodingError", "ServerDisconnectedError",
                 "ClientConnectionError", "ClientConnectorError", "ClientOSError", "ServerTimeoutError",
                 "ConnectionTimeoutError", "SocketTimeoutError", "IncompleteRead", "ProtocolError",
                 "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                 "ResponseStreamingError", "HTTPClientError", "FSTimeoutError", "RemoteDisconnected",
                 "ChunkedEncodingError", "ConnectionError"}


class RetryPolicy(BaseModel):
    """How hard a remote read or write is tried before it counts as failed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(8, ge=1, description="tries of one remote call (the first included) before it fails")
    backoff_s: float = Field(0.5, ge=0, description="wait before the first retry; doubles with every retry "
                                                    "(full jitter: a random share of it)")
    max_backoff_s: float = Field(20.0, ge=0, description="the longest wait between two tries")
    budget_s: float = Field(300.0, gt=0, description="the longest one call keeps retrying, waits included")
    range_mb: float = Field(8.0, ge=1 / 16, description="MiB per ranged read of a fetch: what one retry "
                                                       "re-reads")

    @property
    def range_bytes(self) -> int:
        return int(self.range_mb * 2**20)


class ShortRead(OSError):
    """A body shorter than the range asked for (a connection cut with the length header already sent)."""


class RetriesExhausted(OSError):
    """A transient failure that did not pass within the policy's attempts or budget."""

    def __init__(self, what: str, attempts: int, last: BaseException):
        self.what, self.attempts, self.last = what, attempts, last
        super().__init__(f"{what}: still failing after {attempts} tries ({describe(last)})")


class IOCounts:
    """What a process's remote calls went through: retries by (operation, kind), calls given up on.
    Thread-safe (the remote lock's heartbeat retries from its own thread)."""

    def __init__(self) -> None:
        self.retries: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()
        self._lock = threading.Lock()

    def retried(self, op: str, kind: str) -> None:
        with self._lock:
            self.retries[f"{op}.{kind}"] += 1

    def failed(self, op: str) -> None:
        with self._lock:
            self.gave_up[op] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"retries": dict(sorted(self.retries.items())), "gave_up": dict(sorted(self.gave_up.items()))}

    @staticmethod
    def merge(snaps: list[dict[str, dict[str, int]]]) -> dict[str, Any]:
        """One summary of several processes' snapshots: totals first, then by operation and kind."""
        retries: Counter[str] = Counter()
        gave_up: Counter[str] = Counter()
        for s in snaps:
            retries.update(s.get("retries", {}))
            gave_up.update(s.get("gave_up", {}))
        return {"retries": sum(retries.values()), "gave_up": sum(gave_up.values()),
                "retries_by_kind": dict(sorted(retries.items())), "gave_up_by_op": dict(sorted(gave_up.items()))}


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def http_status(err: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp's ``status``, botocore's response metadata), if any."""
    for e in _chain(err):
        status = getattr(e, "status", None)
        if status is None and type(e).__name__ == "HTTPError":  # urllib's: ``code`` (aiohttp's parse errors
            status = getattr(e, "code", None)                    # carry a ``code`` that is no answer)
        if isinstance(status, int) and 100 <= status < 600:
            return status
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


def _error_code(e: BaseException) -> str | None:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return (resp.get("Error") or {}).get("Code")
    return None


def transient(err: BaseException) -> str | None:
    """Why ``err`` may pass on another try ('throttled', 'server', 'network', 'timeout', 'short_read'), or
    None when it will not (not found, forbidden, a bad request, a bug). The whole cause chain is read:
    fsspec's HTTP filesystem reports a HEAD answered 503 as a FileNotFoundError raised from it."""
    for e in _chain(err):
        if isinstance(e, ShortRead):
            return "short_read"
        code = _error_code(e)
        if code in THROTTLE_CODES:
            return "throttled"
        if code in SERVER_CODES:
            return "server"
        status = getattr(e, "status", None)
        if not isinstance(status, int):
            resp = getattr(e, "response", None)
            status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode") if isinstance(resp, dict) else None
        if isinstance(status, int):
            if status in THROTTLED:
                return "throttled"
            if status in SERVER or status >= 500:
                return "server"
            if 400 <= status < 500:
                return None  # the request itself is wrong or the object is not there: no retry helps
        name = type(e).__name__
        if isinstance(e, TimeoutError) or "Timeout" in name:
            return "timeout"
        if isinstance(e, (ConnectionError, EOFError)) or name in NETWORK_TYPES:
            return "network"
    return None


def describe(err: BaseException) -> str:
    """A short account of a remote failure for messages and manifest rows: the HTTP status when there is
    one (``404 Not Found``, ``503 Slow Down``), else the exception's type and text; a spent retry policy
    says so (``503 Slow Down, still failing after 8 tries``)."""
    if isinstance(err, RetriesExhausted):
        return f"{describe(err.last)}, still failing after {err.attempts} tries"
    status = http_status(err)
    if status is not None:
        for e in _chain(err):
            msg = getattr(e, "message", None)
            if isinstance(msg, str) and msg:
                return f"{status} {msg}"
            code = _error_code(e)
            if code and code != str(status):
                return f"{status} {code}"
        from http import HTTPStatus

        try:
            return f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            return str(status)
    if isinstance(err, FileNotFoundError):
        return "404 Not Found (no such object)"
    if isinstance(err, PermissionError):
        return "403 Forbidden (access denied)"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class RemoteIO:
    """Runs remote calls under a :class:`RetryPolicy` and counts what they went through."""

    def __init__(self, policy: RetryPolicy | None = None, counts: IOCounts | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        self.policy = policy or RetryPolicy()
        self.counts = counts or IOCounts()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def call(self, op: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again while it fails transiently. ``op`` groups the counts
        (plan, fetch, out, read); ``what`` names the object for the log and the final error. A lasting
        failure raises ``RetriesExhausted`` (from the last error); a permanent one is raised as it is."""
        p = self.policy
        deadline = time.monotonic() + p.budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - classified below; what cannot pass is raised as it is
                kind = transient(e)
                if kind is None:
                    raise
                wait = self._rng.uniform(0.0, min(p.max_backoff_s, p.backoff_s * 2 ** (attempt - 1)))
                if attempt >= p.attempts or time.monotonic() + wait > deadline:
                    self.counts.failed(op)
                    raise RetriesExhausted(what, attempt, e) from e
                self.counts.retried(op, kind)
                log.debug("%s: %s (%s), try %d of %d in %.2fs", what, kind, describe(e), attempt + 1, p.attempts,
                          wait)
                self._sleep(wait)

    def read_range(self, fs: Any, path: str, start: int, end: int, op: str = "read", what: str | None = None) -> bytes:
        """Bytes [start, end) of ``path``, exactly: a short body is retried like a dropped connection."""

        def once() -> bytes:
            data = fs.cat_file(path, start=start, end=end)
            if len(data) != end - start:
                raise ShortRead(f"{len(data)} of {end - start} bytes of range {start}-{end}")
            return data

        return self.call(op, what or f"bytes {start}-{end} of {path}", once)

    def open(self, fs: Any, path: str, op: str = "read", size: int | None = None,
             buffer: int | None = None) -> io.BufferedReader:
        """A read-only, seekable file over ``path`` whose reads are ranged and retried (a stream a tar reader
        or Parquet can consume): a dropped connection re-reads only the range it was in."""
        if size is None:
            size = int(self.call(op, f"size of {path}", fs.size, path))
        raw = _RangeFile(self, fs, path, size, op)
        return io.BufferedReader(raw, buffer_size=buffer or self.policy.range_bytes)


class _RangeFile(io.RawIOBase):
    def __init__(self, rio: RemoteIO, fs: Any, path: str, size: int, op: str):
        self.rio, self.fs, self.path, self.size, self.op = rio, fs, path, size, op
        self.pos = 0
        self.name = path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readall(self) -> bytes:
        """The rest of the object, one range at a time (the default would ask for it 8 KiB at a time)."""
        step = self.rio.policy.range_bytes
        parts = []
        while self.pos < self.size:
            end = min(self.size, self.pos + step)
            parts.append(self.rio.read_range(self.fs, self.path, self.pos, end, self.op))
            self.pos = end
        return b"".join(parts)

    def readinto(self, buf: Any) -> int:
        end = min(self.size, self.pos + len(buf))
        if end <= self.pos:
            return 0
        data = self.rio.read_range(self.fs, self.path, self.pos, end, self.op)
        n = len(data)
        memoryview(buf)[:n] = data
        self.pos += n
        return n


def fingerprint_digest(size: int, head: bytes, tail: bytes) -> str:
    """The plan's content fingerprint of a file of ``size`` bytes from its first and last bytes: cheap enough
    to plan thousands of files, and it tells copies apart from re-encodes (and a replaced object from the
    one that was planned)."""
    return hashlib.sha256(str(size).encode() + b"\0" + head + b"\0" + tail).hexdigest()


def file_fingerprint(path: str, nbytes: int) -> str:
    """:func:`fingerprint_digest` of a local file, reading ``nbytes`` at each end."""
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        n = min(nbytes, size)
        f.seek(0)
        head = f.read(n)
        f.seek(max(0, size - n))
        tail = f.read(n)
    return fingerprint_digest(size, head, tail)


def open_read(url: str, rio: RemoteIO | None = None, op: str = "read") -> Any:
    """A binary file to read ``url``: a local path (or ``file://``) opened as it is, any other fsspec URL
    through ``rio``'s ranged, retried reads (see :meth:`RemoteIO.open`)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return open(path, "rb")
    return (rio or RemoteIO()).open(fs, path, op)
