"""Wall time of a build on embedded local Ray against the same stages called in-process.

    .venv/bin/python benchmarks/ray_overhead.py --copies 3 --repeats 2 --json overhead.json

Sample data is generated with ``copies`` different seeds (different content, so nothing is deduplicated).
Reports wall time, the fixed start-up cost (Ray init + actor setup) and the ratio with and without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mtcc.pipeline.build import build
from mtcc.pipeline.cli import resolve_config
from mtcc.pipeline.config import load_config
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
        cfg = load_config(resolve_config(args.config))
        runs: dict[str, list[dict]] = {"inprocess": [], "ray": []}
        for rep in range(args.repeats):
            for runner in ("inprocess", "ray"):
                out = root / f"out-{runner}-{rep}"
                t0 = time.monotonic()
                res = build(cfg, [str(root / "in")], out, runner=runner, progress=False, log=lambda m: None)
                runs[runner].append({"wall_s": time.monotonic() - t0, "startup_s": res.startup_s,
                                     "shards": len(res.shards_built)})
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    start = {k: statistics.median(r["startup_s"] for r in v) for k, v in runs.items()}
    report = {
        "inputs": n_inputs,
        "inprocess_wall_s": round(med["inprocess"], 2),
        "ray_wall_s": round(med["ray"], 2),
        "ray_startup_s": round(start["ray"], 2),
        "ratio": round(med["ray"] / med["inprocess"], 3),
        "ratio_excluding_startup": round((med["ray"] - start["ray"]) / (med["inprocess"] - start["inprocess"]), 3),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
