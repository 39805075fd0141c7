"""``mtcc models check``: every recorded file of a models folder present and intact, and each stage's
cheap ``check_model()`` passing with the folder's settings, before a long run starts."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mtcc.storage.hashing import file_digest

from ..errors import ConfigError
from .download import Out, size_text
from .modelsfile import PATH_KEYS, files_of, load_models_file, models_path, stage_settings


@dataclass
class Row:
    stage: str
    weights: str
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    random: bool = False


def _fix(random: bool, root: Path) -> str:
    d = shlex.quote(str(root))
    if random:
        return f"rebuild the folder with `mtcc models make-tiny {d}`"
    return (f"delete it and run `mtcc models fetch {d}` (on a machine with internet, or after placing the file by "
            f"hand: files in place are verified and adopted)")


def check(ref: str | os.PathLike, *, quick: bool = False, only: list[str] | None = None, out: Out = print) -> int:
    """Verify a models folder: every recorded file present with its size (and sha256 unless ``quick``),
    then each stage's ``check_model()`` with its settings (device=cpu). 0 if all is well, 1 otherwise."""
    from pydantic import ValidationError

    from mtcc.nets import loading as seam
    from mtcc.stages import STAGES

    p = models_path(ref)
    doc = load_models_file(p)
    root = p.parent
    settings = stage_settings(doc, root, str(p))
    wanted = [s for s in settings if not only or s in only]
    if only and (unknown := sorted(set(only) - set(settings))):
        raise ConfigError(f"--only {','.join(unknown)}: not in {p} (it has: {', '.join(settings) or 'no stages'})")
    random_dir = doc["random_weights"]
    out(f"models: {p}")
    if random_dir:
        out("RANDOM WEIGHTS (written by `mtcc models make-tiny`): for plumbing runs and tests only")

    owned = {s: files_of(doc, root, settings[s]) for s in settings}
    checked = sorted({f for s in wanted for f in owned[s]}) if only else sorted(doc["files"])
    total = sum(doc["files"][f]["bytes"] for f in checked)
    how = "sizes only (--quick)" if quick else "sizes and sha256"
    out(f"files: {len(checked)} recorded, {size_text(total)}; checking {how}")
    file_problem: dict[str, str] = {}
    unpinned = 0
    for rel in checked:
        rec = doc["files"][rel]
        unpinned += not rec.get("pinned", False)
        f = root.joinpath(*PurePosixPath(rel).parts)
        if not f.is_file():
            file_problem[rel] = f"{f} is missing; {_fix(random_dir, root)}"
            continue
        size = f.stat().st_size
        if size != rec["bytes"]:
            file_problem[rel] = (f"{f}: {size} bytes, recorded {rec['bytes']} (truncated or replaced); "
                                 f"{_fix(random_dir, root)}")
            continue
        if not quick:
            _, sha = file_digest(f)
            if sha != rec["sha256"]:
                file_problem[rel] = (f"{f}: sha256 {sha[:16]}... != recorded {rec['sha256'][:16]}... (corrupted or "
                                     f"replaced); {_fix(random_dir, root)}")

    rows: list[Row] = []
    for name in wanted:
        s = settings[name]
        cls = STAGES[name]
        shown = doc["stages"][name].get("model") or doc["stages"][name].get("config") or "(stage default)"
        row = Row(name, str(shown))
        row.problems += [file_problem[f] for f in owned[name] if f in file_problem]
        kwargs = dict(s)
        if "device" in cls.model_fields:
            kwargs["device"] = "cpu"
        for k in PATH_KEYS:
            v = s.get(k)
            if isinstance(v, str) and os.path.isabs(v) and os.path.exists(v) and seam.random_marker(Path(v)):
                row.random = True
        try:
            stage = cls.model_validate(kwargs)
            row.detail = stage.check_model()
        except ValidationError as e:
            row.problems.append(f"settings do not fit stage '{name}': {e.errors()[0]['msg']} "
                                f"({'.'.join(map(str, e.errors()[0]['loc']))})")
        except Exception as e:  # noqa: BLE001 - any failure of one model is reported in its row; the rest still run
            msg = str(e).strip() or type(e).__name__
            row.problems.append(msg if isinstance(e, seam.WeightsError) else f"{type(e).__name__}: {msg}")
        rows.append(row)
    stray = [f for f in checked if f in file_problem and not any(f in owned[s] for s in wanted)]
    if stray:
        rows.append(Row("(files)", f"{len(stray)} file(s) of no listed stage", [file_problem[f] for f in stray]))

    width = max([len(r.weights) for r in rows] + [10])
    out(f"\n{'stage':<10} {'weights':<{width}}  result")
    for r in rows:
        tag = " (RANDOM weights)" if r.random else ""
        if r.problems:
            out(f"{r.stage:<10} {r.weights:<{width}}  PROBLEM{tag}")
            for msg in r.problems:
                out("    - " + msg.replace("\n", "\n      "))
        else:
            out(f"{r.stage:<10} {r.weights:<{width}}  OK{tag}: {r.detail}")
    bad = [r.stage for r in rows if r.problems]
    if unpinned and not random_dir:
        out(f"\nnote: {unpinned} file(s) have no sha256 in MTCC's pinned table; they are checked against the sha256 "
            f"recorded when they were first fetched (trust on first use)")
    out(f"\n{len(bad)} problem(s): {', '.join(bad)}" if bad else f"\nall {len(rows)} stage(s) OK")
    return 1 if bad else 0
