"""Where an input is and how a file is made durable: a URL source vs a local one, fsync of a file and of the
folder that names it (the commit protocol's renames)."""

from __future__ import annotations

import os


def is_remote_source(source: str) -> bool:
    """True for an input given as a URL other than file:// (fetched into the node's cache before reading)."""
    return "://" in source and not source.startswith("file://")


def local_source(source: str) -> str:
    return source[len("file://"):] if source.startswith("file://") else source


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
