"""Members of a downloaded zip (an insightface pack), extracted flat and only when the whole archive is safe."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from .modelsfile import bad_chars
from .pins import ModelsError


def _unsafe_member(name: str) -> str | None:
    if not name or bad_chars(name):
        return "empty name or control characters"
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in p.parts:
        return "'..' in its path"
    return None


def extract_members(archive: Path, names: Iterable[str], dest: Path) -> dict[str, tuple[int, str]]:
    """Extract the members whose base name is in ``names`` flat into ``dest``; returns name -> (bytes,
    sha256). The whole archive is refused if any member's path is absolute or has '..' (a crafted archive
    is not trusted for any of its members); each file goes through a temporary name and is renamed into
    place; a member bigger than it declares is refused (no decompression bombs)."""
    names = list(names)
    got: dict[str, tuple[int, str]] = {}
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            why = _unsafe_member(info.filename)
            if why:
                raise ModelsError(f"{archive}: member {info.filename!r} refused ({why}); nothing extracted")
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            hits = [i for i in infos if not i.is_dir() and PurePosixPath(i.filename.replace("\\", "/")).name == name]
            if len(hits) != 1:
                raise ModelsError(f"{archive}: {'no' if not hits else len(hits)} member(s) named {name!r} "
                                  f"(members: {', '.join(i.filename for i in infos[:12])})")
            info = hits[0]
            tmp = dest / f".{name}.part-{os.getpid()}"
            h = hashlib.sha256()
            n = 0
            done = False
            try:
                with zf.open(info) as src, open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        n += len(chunk)
                        if n > info.file_size:
                            raise ModelsError(f"{archive}: {info.filename} inflates beyond its declared "
                                              f"{info.file_size} bytes; refused")
                        f.write(chunk)
                        h.update(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest / name)
                done = True
            finally:
                if not done:
                    tmp.unlink(missing_ok=True)
            got[name] = (n, h.hexdigest())
    return got
