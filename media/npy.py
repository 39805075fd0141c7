"""Arrays as ``.npy`` sample members."""

from __future__ import annotations

import io

import numpy as np


def npy_bytes(a: np.ndarray) -> bytes:
    """The ``.npy`` file of ``a``; no pickles, so a reader may refuse them (``allow_pickle=False``)."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
