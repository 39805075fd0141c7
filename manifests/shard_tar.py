"""The one reader of shard tars: samples as (key, {member: bytes}), members grouped by key in tar order.

Not webdataset's ``tar_file_iterator`` + ``group_by_keys``: those skip non-file members silently (a shard
holds only files, anything else means it is not ours), accept member paths with folders, lowercase
member names, read in stream mode only (the report reads a remote tar by ranges, seeking past members it
does not need) and drop a sample none of whose members is selected (the training loader counts the
samples its filters skip).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Collection, Iterator
from typing import BinaryIO


class ShardTarError(ValueError):
    """A tar member that cannot be part of a sample (not a file, a path, no member name after the key)."""


def read_samples(src: str | os.PathLike | BinaryIO, select: Callable[[str], Collection[str]] | None = None,
                 seek: bool = False, where: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) per sample of a shard tar, in tar order; member names are checked, never
    used as paths.

    ``select(key)`` names the members of that sample to read (all when ``select`` is None); the others are
    skipped unread, and a sample with none selected is still yielded, with no members. ``src`` is a path
    or an open binary file (a URL opened with fsspec), read as a stream unless ``seek``, where skipped
    members are seeked past instead of read. A truncated or corrupt tar raises ``tarfile.TarError``
    (``ReadError``) or ``EOFError`` once the reader reaches the damage, a tar without its end-of-archive block
    too (cut at or inside a header, where tarfile alone would just stop); the samples before it are yielded,
    the one being read only once a header of the next said it had ended.
    """
    ends: list[type] = []
    if isinstance(src, (str, os.PathLike)):
        opened, where = tarfile.open(src, tarinfo=_recording(ends)), where or str(src)
    else:
        opened = tarfile.open(fileobj=src, mode="r" if seek else "r|", tarinfo=_recording(ends))
        where = where or str(getattr(src, "path", "") or "tar")
    with opened as tar:
        key: str | None = None
        wanted: Collection[str] | None = None
        members: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                raise ShardTarError(f"{where}: unexpected non-file member {info.name!r}")
            k, _, ext = info.name.partition(".")
            if "/" in info.name or not ext:
                raise ShardTarError(f"{where}: bad member name {info.name!r}")
            if k != key:
                if key is not None:
                    yield key, members
                key, members = k, {}
                wanted = None if select is None else select(k)
            if wanted is None or ext in wanted:
                f = tar.extractfile(info)
                members[ext] = f.read() if f else b""
        # tarfile ends quietly on a header it cannot read past the first (a tar cut short at, or inside, a
        # member's header): only the end-of-archive block, all zeros, says the tar is whole
        if not ends or ends[-1] is not tarfile.EOFHeaderError:
            raise tarfile.ReadError(f"{where}: the tar ends without its end-of-archive block, cut short in or "
                                    f"after sample {key!r} ({ends[-1].__name__ if ends else 'no header read'})")
        if key is not None:
            yield key, members


def _recording(ends: list[type]) -> type[tarfile.TarInfo]:
    """A TarInfo whose header reads append the kind of header that ended the archive to ``ends``."""

    class Recording(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tar)
            except tarfile.HeaderError as e:
                ends.append(type(e))
                raise

    return Recording
