"""COCO run-length encoding of binary masks (pycocotools), with counts as text so that it is JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def encode(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}`` of a 2-D binary mask (COCO's column-major compressed RLE)."""
    from pycocotools import mask as mask_util

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    r = mask_util.encode(np.asfortranarray(m.astype(np.uint8, copy=False)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """The bool ``[h, w]`` mask of an RLE made by :func:`encode` (or any COCO compressed RLE)."""
    import warnings

    from pycocotools import mask as mask_util

    with warnings.catch_warnings():
        # pycocotools' compiled decoder trips numpy 2's __array__(copy=) deprecation; the result is right
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_util.decode(_coco(rle)).astype(bool)


def _coco(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def area(rles: Sequence[dict[str, Any]]) -> np.ndarray:
    """Foreground pixel count of each RLE."""
    from pycocotools import mask as mask_util

    if not rles:
        return np.zeros(0, np.int64)
    return np.asarray(mask_util.area([_coco(r) for r in rles]), np.int64)


def iou(a: dict[str, Any], b: dict[str, Any], *, empty: float = 0.0) -> float:
    """Intersection over union of two masks of one size; ``empty`` when both are empty (pycocotools
    gives 0 there: for temporal stability two empty frames in a row are perfectly stable)."""
    from pycocotools import mask as mask_util

    ca, cb = _coco(a), _coco(b)
    if int(mask_util.area(ca)) == 0 and int(mask_util.area(cb)) == 0:
        return float(empty)
    return float(mask_util.iou([ca], [cb], [0])[0, 0])
