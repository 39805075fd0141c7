"""Writing the corpus (the base scene rendered, every case's file made, the list input, the
expectations) and reading one back."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..scene import render
from .base import base_scene
from .case import Case, Corpus, Plan, expect_path
from .paths import add_paths
from .shapes import add_shapes
from .unusable import add_unusable


def plan_cases(root: Path, base: Path, seed: int) -> Plan:
    """Every case of the corpus rooted at ``root``, in a fixed order (that of expected.json)."""
    plan = Plan(root, base, seed)
    add_shapes(plan)
    add_paths(plan)
    add_unusable(plan)
    return plan


def case_list(seed: int = 0) -> list[Case]:
    """The cases :func:`generate_bad` writes, without writing anything (tests parametrize over them)."""
    root = Path("/nonexistent-mtcc-corpus")
    return plan_cases(root, root / "videos" / "reference.mp4", seed).cases


def _input_list(cases: list[Case]) -> str:
    lines = ["# MTCC hostile-input corpus: one path per line, relative to this file.",
             "# Names with a newline or non-UTF-8 bytes cannot be written here: pass odd_names/ as a folder.", ""]
    for c in sorted(cases, key=lambda c: c.file):
        if not c.listed:
            continue
        lines.append(c.file)
        if c.name == "listed_twice":
            lines += [f"./{c.file}", c.file.replace("/", "//")]
    return "\n".join(lines) + "\n"


def generate_bad(out_dir: str | Path, *, seed: int = 0) -> Corpus:
    """Write the hostile-input corpus into ``out_dir`` (which must not hold one yet); the layout is
    described in :mod:`mtcc.sampledata.bad`."""
    t0 = time.monotonic()
    root = Path(out_dir).absolute()
    if (root / "videos").exists() or (root / "expected.json").exists():
        # links, a FIFO and a mode-000 file cannot be rewritten in place: start from a fresh folder
        raise FileExistsError(f"{root} already holds a hostile-input corpus; generate into a new folder")
    for d in ("videos", "odd_names", "store", ".work"):
        (root / d).mkdir(parents=True, exist_ok=True)
    base = root / "videos" / "reference.mp4"
    render(base_scene(), root / "videos", seed, file_name=base.name)
    plan = plan_cases(root, base, seed)
    cases = plan.cases
    # each encode is small and single-threaded: two at a time fill two cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        for fut in [pool.submit(j) for j in plan.jobs]:
            fut.result()
    for step in plan.after:
        step()
    shutil.rmtree(root / ".work")
    (root / "inputs.txt").write_text(_input_list(cases), encoding="utf-8")
    corpus = Corpus(root, cases, [root / "inputs.txt", root / "odd_names"], seconds=time.monotonic() - t0)
    for c in cases:
        doc = {"case": c.name, "file": c.file, "expect": c.expect, "why": c.why, "row": c.row,
               "same_as": c.same_as, "known_issue": c.known_issue}
        expect_path(root, c).write_text(json.dumps(doc, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    index = {"seed": seed, "inputs": [str(p.relative_to(root)) for p in corpus.inputs],
             "overrides": corpus.overrides, "generation_s": round(corpus.seconds, 2),
             "cases": [c.to_json() for c in cases]}
    (root / "expected.json").write_text(json.dumps(index, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    return corpus


def load_corpus(root: str | Path) -> Corpus:
    root = Path(root).absolute()
    index = json.loads((root / "expected.json").read_text(encoding="utf-8"))
    cases = [Case(c["name"], os.fsdecode(bytes.fromhex(c["file_hex"])), c["expect"], c["why"], c["listed"],
                  c["row"], c["same_as"], c["known_issue"]) for c in index["cases"]]
    return Corpus(root, cases, [root / p for p in index["inputs"]], index["overrides"], index["generation_s"])
