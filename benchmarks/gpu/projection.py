"""From per-stage GPU cost to hours of raw video per GPU-hour.

With ``g_s`` = GPU seconds per clip-second of stage s at its best batch size and ``r_s`` = fraction of the
raw video's seconds that reach s (the product of the keep rates of every stage before s, in the profile's
order), one GPU processes ``1 / sum_s r_s g_s`` hours of raw video per GPU-hour. ``KEEP`` holds the
default keep rates; ``--keep STAGE=RATE`` overrides one (RATE: the fraction of the clip seconds entering
STAGE that it passes on). Stages share the GPU one after another in this sum: the face detector (on the
GPU in the ``mtcc`` profile, ONNX Runtime) and video decoding are not in it.
"""

from __future__ import annotations

import math
from typing import Any

from mtcc.stages import STAGES

from .plan import BenchError

# Default keep rates: fraction of the clip seconds entering a stage that it passes on (for segment: of the
# raw video's seconds, the seconds that become two-character clips). The paper and the anchor pipelines
# give keep *rules* (LatentSync: Sync-C >= 3, |offset| <= 6) but no measured funnel, so these are stated
# assumptions for talk-show / interview footage, declared by each stage (``typical_keep``, which the pool
# planner uses too); replace them with a real run's funnel (`mtcc report`) via --keep.
KEEP: dict[str, float] = {name: cls.typical_keep for name, cls in STAGES.items()}
KEEP_SOURCE = ("assumed (the paper and the anchor pipelines give keep rules but no funnel fractions); "
               "override with --keep STAGE=RATE from a real run's funnel")


def parse_keep(items: list[str], order: list[str]) -> dict[str, float]:
    """The default keep rates with ``STAGE=RATE`` overrides applied; every stage of ``order`` gets one."""
    keep = {s: KEEP.get(s, 1.0) for s in order}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or name not in keep:
            raise BenchError(f"--keep {item!r}: expected STAGE=RATE with STAGE one of {', '.join(order)}")
        try:
            rate = float(text)
        except ValueError as e:
            raise BenchError(f"--keep {item!r}: RATE must be a number in [0, 1]") from e
        if not 0.0 <= rate <= 1.0:
            raise BenchError(f"--keep {item!r}: RATE must be in [0, 1] (a fraction of the stage's input seconds)")
        keep[name] = rate
    return keep


def reach(order: list[str], keep: dict[str, float]) -> dict[str, float]:
    """Fraction of the raw video's seconds that enter each stage of ``order``."""
    out: dict[str, float] = {}
    frac = 1.0
    for s in order:
        out[s] = frac
        frac *= keep.get(s, 1.0)
    return out


def project(gpu_s_per_clip_s: dict[str, float], keep: dict[str, float], order: list[str]) -> dict[str, Any]:
    """Hours of raw video one GPU gets through per hour: ``1 / sum_s reach_s x gpu_s_per_clip_s[s]``."""
    r = reach(order, keep)
    missing = [s for s in gpu_s_per_clip_s if s not in r]
    if missing:
        raise BenchError(f"stages {missing} are not in the pipeline order {order}")
    terms = {s: r[s] * float(g) for s, g in gpu_s_per_clip_s.items()}
    total = sum(terms.values())
    return {
        "reach": {s: r[s] for s in gpu_s_per_clip_s},
        "terms": terms,
        "gpu_s_per_raw_s": total,
        "raw_video_hours_per_gpu_hour": (1.0 / total) if total > 0 else math.inf,
    }
