"""The house's layers, enforced: no import cycle between any two of the project's modules (imports inside
functions counted too), and each package imports only the layers below it. Read from the source with ast,
so a cycle or an upward import fails here the moment it is written."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# what each package may import of the project (besides itself); lower layers first
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "media": {"storage"},
    "facts": {"media"},
    "nets": {"media", "storage"},
    "stages": {"facts", "nets", "media", "storage"},
    "manifests": {"stages", "facts", "nets", "media", "storage"},
    "configs": set(),
    "pipeline": {"manifests", "stages", "facts", "nets", "media", "storage", "configs"},
    "training": {"pipeline", "manifests", "stages", "facts", "nets", "media", "storage"},
    "sampledata": {"pipeline", "facts", "nets", "media", "storage"},
    "benchmarks": {"pipeline", "training", "sampledata", "manifests", "stages", "facts", "nets", "media", "storage",
                   "configs"},
}
# the command line sits above everything it runs: the benchmark, training, export and sample-data commands
APP = {"mtcc.pipeline.cli": {"benchmarks", "training", "sampledata"}}


def modules() -> dict[str, Path]:
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for pkg, folder in dirs.items():
        for f in (REPO / folder).rglob("*.py"):
            rel = f.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    out: dict[str, set[str]] = {}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        out[name] = {d for d in deps if d in mods and d != name}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_module_imports_itself_round_a_cycle():
    assert cycles(graph()) == []


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for mod, deps in graph().items():
        layer = mod.split(".")[1]
        allowed = ALLOWED[layer] | APP.get(mod, set()) | {layer}
        wrong += [f"{mod} imports {d}" for d in sorted(deps) if d.split(".")[1] not in allowed]
    assert wrong == []


def test_the_check_sees_a_planted_cycle():
    g = {"mtcc.a": {"mtcc.b"}, "mtcc.b": {"mtcc.c"}, "mtcc.c": {"mtcc.a"}, "mtcc.d": {"mtcc.a"}}
    assert cycles(g) == [["mtcc.a", "mtcc.b", "mtcc.c"]]
