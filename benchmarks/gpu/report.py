"""The text table a run prints: per stage its sweep, then the projection."""

from __future__ import annotations

from typing import Any


def _fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def format_report(doc: dict[str, Any]) -> str:
    head = (f"mtcc bench --gpu: {doc['device_name']} ({doc['device']}), scale {doc['scale']}, "
            f"{doc['clip_seconds']:g} s clips, profile {doc['profile']}")
    lines = [head, ""]
    for name, st in doc["stages"].items():
        lines.append(f"{name}: {st.get('model', '')} ({st.get('params', 0) / 1e6:.1f} M params); batch = {st['batch_unit']}")
        if st.get("error"):
            lines.append(f"  ERROR: {st['error']}")
            continue
        lines.append(f"  {'batch':>6} {'s/call':>9} {'s/fwd':>9} {'clip-s/s':>10} {'GPU s/clip-s':>13} "
                     f"{'peak GiB':>9} {'util %':>7}")
        for r in st["sweep"]:
            if r.get("oom"):
                lines.append(f"  {r['batch']:>6} out of memory")
                continue
            util = "-" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f}"
            lines.append(f"  {r['batch']:>6} {r['seconds']:>9.3f} {r['seconds_per_forward']:>9.4f} "
                         f"{r['clip_s_per_s']:>10.2f} {r['gpu_s_per_clip_s']:>13.4f} "
                         f"{_fmt_bytes(r['peak_mem_bytes']):>9} {util:>7}")
    lines.append("")
    proj = doc.get("projection")
    if proj:
        lines.append(f"{'stage':<10} {'keep':>6} {'reach':>7} {'best batch':>10} {'GPU s/clip-s':>13} {'GPU s/raw s':>12}")
        for s, term in proj["terms"].items():
            b = doc["stages"][s]["best"]
            lines.append(f"{s:<10} {doc['keep'][s]:>6.3g} {proj['reach'][s]:>7.4f} {b['batch']:>10} "
                         f"{b['gpu_s_per_clip_s']:>13.4f} {term:>12.5f}")
        first = min(doc["order"].index(s) for s in proj["terms"])
        lines.append("keep rates before the model stages: " + ", ".join(
            f"{s} {doc['keep'][s]:g}" for s in doc["order"][:first]))
        lines.append(f"projected: {proj['raw_video_hours_per_gpu_hour']:.2f} hours of raw video per GPU-hour"
                     + (" (PARTIAL: only the stages measured)" if proj.get("partial") else ""))
        lines.append(f"keep rates: {doc['keep_source']}")
    else:
        lines.append("no projection: a stage failed or ran out of memory at every batch size")
    return "\n".join(lines)
