"""``mtcc models make-tiny``: random-initialised models of the real classes, in the layout the real
weights use, with a models.yaml that records every file (``random_weights: true``)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from mtcc.storage.hashing import file_digest

from .download import Out
from .modelsfile import MODELS_FILE, write_models_file


def make_tiny(root: Path) -> dict[str, dict[str, Any]]:
    """Random-initialised models of the real classes, for every model stage (``ModelStage.make_tiny``), in
    the layout the real weights use. Returns per stage its settings (absolute paths)."""
    from mtcc.stages import STAGES
    from mtcc.stages.model_stage import ModelStage

    return {name: cls.make_tiny(Path(root)) for name, cls in STAGES.items() if issubclass(cls, ModelStage)}


def _relative_to(root: Path, value: Any) -> Any:
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        if p == root or root in p.parents:
            return "./" + p.relative_to(root).as_posix() if p != root else "."
    return value


def write_tiny(root: Path, out: Out = print) -> Path:
    """make_tiny into ``root`` and its models.yaml (paths relative to ``root``, every file recorded,
    ``random_weights: true``); also ``overrides.yaml`` (absolute paths) for older callers."""
    import yaml

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    made = make_tiny(root)
    (root / "overrides.yaml").write_text(yaml.safe_dump({"stages": made}, sort_keys=True))
    stages = {s: {k: _relative_to(root, v) for k, v in over.items()} for s, over in made.items()}
    files = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in (MODELS_FILE, "overrides.yaml") and not any(
                part.startswith(".") for part in PurePosixPath(rel).parts):
            n, sha = file_digest(f)
            files[rel] = {"bytes": n, "sha256": sha, "pinned": False}
    doc = {"random_weights": True, "stages": stages, "files": files,
           "sources": {s: {"kind": "make-tiny"} for s in stages}}
    p = write_models_file(root, doc, "written by `mtcc models make-tiny`: RANDOM weights of the real model classes,\n"
                                     "for plumbing runs and tests only; `mtcc models check` verifies this folder")
    for stage, over in sorted(stages.items()):
        out(f"{stage:<10} {over.get('model')}")
    skipped = [n for n in _stage_names() if n not in made]
    out(f"\nRANDOM WEIGHTS, for plumbing and tests only: {p}")
    if skipped:
        out(f"(no tiny model for: {', '.join(skipped)})")
    return p


def _stage_names() -> list[str]:
    """The stages that have real weights to stand in for."""
    from .pins import every_entry

    return list(dict.fromkeys(e.stage for e in every_entry()))
