"""The offline profile's random-weight models, made on first use in the user's cache.

A profile that says ``models: @tiny`` gets the models.yaml of `mtcc models make-tiny` from
``$MTCC_CACHE/tiny/<digest>/`` (``MTCC_CACHE`` defaults to ``$XDG_CACHE_HOME/mtcc``, else ``~/.cache/mtcc``),
so ``mtcc run offline`` works from any directory. The digest covers the code that decides what make-tiny
writes (the stage classes, our own model classes they save, the models file writer) and the versions of the
libraries whose classes are saved, so a changed stage never reads another version's models. Concurrent first
uses (two runs, two test workers) make the folder once, under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from .weights.modelsfile import MODELS_FILE

TINY_REF = "@tiny"
# libraries whose model classes make-tiny saves: their versions decide the bytes it writes
LIBRARIES = ("torch", "transformers", "sam2", "clearvoice", "syncnet-python")


def cache_root() -> Path:
    explicit = os.environ.get("MTCC_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtcc"


def code_digest() -> str:
    import mtcc.nets
    import mtcc.pipeline.weights
    import mtcc.stages

    h = hashlib.sha256()
    # the stage classes (make_tiny), the model classes of our own they save (nets/) and the models file writer
    for package in (mtcc.stages, mtcc.nets, mtcc.pipeline.weights):
        for f in sorted(Path(package.__path__[0]).glob("*.py")):
            h.update(f"{package.__name__}.{f.name}".encode() + b"\0" + f.read_bytes() + b"\0")
    for lib in LIBRARIES:
        try:
            version = metadata.version(lib)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{lib}={version}\0".encode())
    return h.hexdigest()[:16]


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def tiny_models(out: Callable[[str], None] = _say) -> Path:
    """The models.yaml of this code's tiny models, made first if the cache has none."""
    from .weights.tiny import write_tiny

    root = cache_root() / "tiny" / code_digest()
    target = root / MODELS_FILE
    if target.is_file():
        return target
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # another process made it while this one waited
            return target
        out(f"making the offline profile's random-weight models in {root} (first use of this version; "
            f"`mtcc models make-tiny DIR` writes them anywhere)")
        # written in place (some saved configs name their own folder); models.yaml, atomic and last, marks
        # the folder complete, so a folder without it is a first use cut short and is made again
        shutil.rmtree(root, ignore_errors=True)
        write_tiny(root, out=lambda _line: None)
    return target
