"""Members of a downloaded zip (an insightface pack), extracted flat and only when the whole archive is safe."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path, PurePosixPath

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


# the largest member a pack may declare when no pin gives its size (insightface's are under 200 MB)
MAX_MEMBER_BYTES = 2 << 30


def extract_members(archive: Path, members: dict[str, int | None], dest: Path,
                    max_bytes: int = MAX_MEMBER_BYTES) -> dict[str, tuple[int, str]]:
    """Extract the members whose base name is a key of ``members`` flat into ``dest``; returns name -> (bytes,
    sha256). Nothing is extracted unless the whole archive is safe: no member path absolute or with '..' (a
    crafted archive is not trusted for any of its members), and every wanted member declaring the size its
    pin gives (``members[name]``, when known) and at most ``max_bytes``: a decompression bomb is refused by
    what it declares, since zipfile never inflates a member past its declared size. Each file goes through a
    temporary name and is renamed into place."""
    got: dict[str, tuple[int, str]] = {}
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            why = _unsafe_member(info.filename)
            if why:
                raise ModelsError(f"{archive}: member {info.filename!r} refused ({why}); nothing extracted")
        chosen = {}
        for name, pinned in members.items():
            hits = [i for i in infos if not i.is_dir() and PurePosixPath(i.filename.replace("\\", "/")).name == name]
            if len(hits) != 1:
                raise ModelsError(f"{archive}: {'no' if not hits else len(hits)} member(s) named {name!r} "
                                  f"(members: {', '.join(i.filename for i in infos[:12])})")
            info = chosen[name] = hits[0]
            if pinned is not None and info.file_size != pinned:
                raise ModelsError(f"{archive}: {info.filename} declares {info.file_size} bytes where its pin says "
                                  f"{pinned}; nothing extracted")
            if info.file_size > max_bytes:
                raise ModelsError(f"{archive}: {info.filename} declares {info.file_size} bytes, more than the "
                                  f"{max_bytes} a model file may have here; nothing extracted")
        dest.mkdir(parents=True, exist_ok=True)
        for name, info in chosen.items():
            tmp = dest / f".{name}.part-{os.getpid()}"
            h = hashlib.sha256()
            n = 0
            done = False
            try:
                with zf.open(info) as src, open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        n += len(chunk)
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
