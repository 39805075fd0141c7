"""sha256 of a file or an open binary stream, read in blocks: weights and shards run to many GB."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO

BLOCK = 8 << 20


def stream_digest(f: BinaryIO) -> tuple[int, str]:
    """(bytes read, sha256 hex) of the rest of ``f``."""
    h = hashlib.sha256()
    n = 0
    while block := f.read(BLOCK):
        h.update(block)
        n += len(block)
    return n, h.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of the file at ``path``."""
    with open(path, "rb") as f:
        return stream_digest(f)


def sha256_stream(f: BinaryIO) -> str:
    return stream_digest(f)[1]


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_digest(path)[1]
