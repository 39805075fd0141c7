"""The funnel: per stage, how many candidates went in, how many it rejected and why.

Derived from manifests alone: a row entered every stage from the one after the stage that created it
(``from_stage``; inputs start at the first) up to the stage where it stopped (``stage``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class StageCount:
    stage: str
    entered: int = 0
    rejected: Counter = field(default_factory=Counter)
    produced: int = 0  # clips created by a stage that splits videos

    @property
    def passed(self) -> int:
        return self.entered - sum(self.rejected.values())


def funnel(table: pa.Table, stage_names: list[str]) -> list[StageCount]:
    index = {n: i for i, n in enumerate(stage_names)}
    counts = [StageCount(n) for n in stage_names]
    rows = table.select(["status", "stage", "reason", "from_stage"]).to_pylist()
    for r in rows:
        if r["from_stage"] in index:
            counts[index[r["from_stage"]]].produced += 1
        first = index[r["from_stage"]] + 1 if r["from_stage"] in index else 0
        last = index.get(r["stage"], -1)
        for i in range(first, last + 1):
            counts[i].entered += 1
        if r["status"] == "rejected" and last >= 0:
            counts[last].rejected[r["reason"] or "unknown"] += 1
    return counts


def status_counts(table: pa.Table) -> dict[str, Any]:
    rows = table.select(["level", "status"]).to_pylist()
    c = Counter((r["level"], r["status"]) for r in rows)
    return {f"{lvl}_{st}": n for (lvl, st), n in sorted(c.items())}


def format_funnel(counts: list[StageCount]) -> str:
    lines = [f"{'stage':<12}{'in':>8}{'out':>8}  rejected by reason"]
    for sc in counts:
        why = ", ".join(f"{k}={v}" for k, v in sorted(sc.rejected.items())) or "-"
        made = f"  -> {sc.produced} clips" if sc.produced else ""
        lines.append(f"{sc.stage:<12}{sc.entered:>8}{sc.passed:>8}  {why}{made}")
    return "\n".join(lines)
