"""Textured backgrounds: blurred real photos (no people in them) or a noisy gradient."""

from __future__ import annotations

import cv2
import numpy as np

from .faces import source_image

BACKGROUNDS = ("coffee", "rocket", "table", "wall", "gradient")
# two camera feeds in one frame: "panels_lr:A+B" (A left, B right) or "panels_tb:A+B" (A above B), with a
# light border line between the panels as news channels draw it
PANEL_KINDS = ("panels_lr", "panels_tb")
PANEL_BORDER_PX = 4


def _photo(name: str) -> np.ndarray:
    if name in ("coffee", "rocket"):
        from skimage import data

        return np.ascontiguousarray(getattr(data, name)()[..., :3])
    t1 = source_image("t1")
    if name == "table":  # poker table and chips in the group photo, below every face
        return t1[640:886, 330:1280]
    if name == "wall":  # wall, lamp and frames above the heads, between the people
        return t1[0:215, 440:860]
    raise KeyError(name)


def panels(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A split-screen frame: two backgrounds side by side or stacked, and a border line between them."""
    kind, _, pair = name.partition(":")
    first, _, second = pair.partition("+")
    if kind not in PANEL_KINDS or not first or not second:
        raise KeyError(f"{name!r}: expected panels_lr:A+B or panels_tb:A+B")
    if kind == "panels_lr":
        half = width // 2
        img = np.concatenate([background(first, half, height, rng), background(second, width - half, height, rng)], 1)
        img[:, half - PANEL_BORDER_PX // 2: half + PANEL_BORDER_PX // 2] = 225
    else:
        half = height // 2
        img = np.concatenate([background(first, width, half, rng), background(second, width, height - half, rng)], 0)
        img[half - PANEL_BORDER_PX // 2: half + PANEL_BORDER_PX // 2] = 225
    return img


def background(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 HxWx3 background of the given size; ``rng`` adds a little fixed grain."""
    if name.partition(":")[0] in PANEL_KINDS:
        return panels(name, width, height, rng)
    if name == "gradient":
        c0, c1 = rng.uniform(40, 200, size=3), rng.uniform(40, 200, size=3)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (0.6 * xx / max(1, width - 1) + 0.4 * yy / max(1, height - 1))[..., None]
        img = c0 * (1 - t) + c1 * t
        img = img + cv2.GaussianBlur(rng.normal(0, 18, (height, width, 3)).astype(np.float32), (0, 0), 3)
    else:
        src = _photo(name)
        h, w = src.shape[:2]
        # cover-crop to the target aspect, then resize
        s = max(width / w, height / h)
        cw, ch = min(w, int(np.ceil(width / s))), min(h, int(np.ceil(height / s)))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        crop = src[y0:y0 + ch, x0:x0 + cw]
        img = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        sigma = max(1.0, 2.0 * min(width, height) / 360)
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma) * 0.85 + 10
    img = img + rng.normal(0, 2.5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
