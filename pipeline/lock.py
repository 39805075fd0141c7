"""One run per OUT. An flock on OUT/.lock is held for the run; the kernel drops it when the process
dies, so a lock left by a killed run is stale by construction and the next run takes it over."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import LockBusy


class RunLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self.took_over: dict | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}" if holder
                       else "another process")
                raise LockBusy(f"{self.path.parent} is being written by {who}; wait for it to finish "
                               f"or use another --output") from None
            if self._names(fd):
                break
            # removed between our open and lock (a refused run takes back the lock file it made): a lock on
            # that file guards nothing, the next run would make and lock a new one
            os.close(fd)
        else:
            raise LockBusy(f"{self.path} kept being removed while this run took it; retry")
        previous = self._holder(fd)
        if previous:
            self.took_over = previous  # its owner died without releasing: take over
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _names(self, fd: int) -> bool:
        """Whether the lock file's path still names the file ``fd`` holds."""
        try:
            at = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (at.st_dev, at.st_ino) == (held.st_dev, held.st_ino)

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode("utf-8", "replace")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file means a clean exit
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
