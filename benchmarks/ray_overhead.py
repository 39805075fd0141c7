"""Wall time of a build on embedded local Ray against the same stages called in-process (the
``ray_vs_inprocess`` ratio of ``mtcc bench``, alone, on more input).

    .venv/bin/python benchmarks/ray_overhead.py --copies 3 --repeats 2 --json overhead.json

Sample data is generated with ``copies`` different seeds (different content, so nothing is deduplicated).
Reports wall time, the fixed start-up cost (Ray init + actor setup) and the ratio with and without it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mtcc.benchmarks.harness import run_builds
from mtcc.pipeline.config import load_config, resolve_config
from mtcc.sampledata import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--config", default="offline")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtcc-bench-") as tmp:
        root = Path(tmp)
        n_inputs = sum(len(generate(root / "in" / f"seed{seed}", seed=seed)) for seed in range(args.copies))
        report = {"inputs": n_inputs,
                  **run_builds(load_config(resolve_config(args.config)), root / "in", root, args.repeats)}
    report.pop("out")  # gone with the temporary folder
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
