"""The window schedule shared by the stages that run a model over fixed-length windows of a clip."""

from __future__ import annotations


def window_starts(n: int, window: int, hop: int | None = None) -> list[int]:
    """Starts of windows of ``window`` steps over ``n`` steps: every ``hop`` (default: ``window``, no
    overlap) while a full window fits before the end, then one ending exactly at ``n``, so no step is left
    out and none past the end is read. One window of the whole clip when ``n <= window``.

    Separation uses it over samples with an overlapping hop (clearvoice's decode schedule); active-speaker
    detection over frames without overlap."""
    if n <= window:
        return [0]
    return list(range(0, n - window, hop or window)) + [n - window]
