"""Real face photos and the cutouts the scene renderer pastes into frames.

Sources: scikit-image's bundled ``astronaut`` portrait and the two photos that ship inside the
``insightface`` wheel (``t1.jpg``, a group photo, and ``Tom_Hanks_54745.png``). insightface is never
imported (its ``__init__`` needs packages we do not install); only its data folder is located.

Every photo entry gives, in source-pixel coordinates, the face box a detector would report
(forehead to chin, cheek/ear to cheek/ear), the mouth centre and the mouth half-width. These were
read off the photos by eye on a pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mtcc.nets.loading import packaged_file


@dataclass(frozen=True)
class Photo:
    source: str  # "astronaut" | "t1" | "tom"
    face: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels (after rotation)
    mouth: tuple[float, float]  # mouth centre (where the lips meet)
    mouth_hw: float  # half width of the mouth
    rotate: tuple[float, float, float] | None = None  # (cx, cy, degrees) applied to the source first


PHOTOS: dict[str, Photo] = {
    "astronaut": Photo("astronaut", (178, 72, 277, 182), (224, 144), 21),
    "ross": Photo("t1", (466, 266, 588, 406), (512, 382), 20),
    "chandler": Photo("t1", (750, 338, 872, 474), (788, 442), 19),
    "phoebe": Photo("t1", (1136, 268, 1228, 396), (1176, 367), 22),
    # head tilted in the group photo: rotate the photo 20 degrees clockwise about the face first
    "rachel": Photo("t1", (68, 262, 157, 402), (116, 367), 18, rotate=(110.0, 330.0, -20.0)),
    # aligned 112x112 recognition crop, chin cut off by the frame: only used where detection
    # does not matter (tiny / broken fixtures)
    "tom_hanks": Photo("tom", (8, 10, 104, 112), (55, 93), 16),
}


def insightface_images_dir() -> Path:
    return packaged_file("insightface", "data", "images", install="pip install --no-deps insightface==2.1")


def _read_rgb(path: Path) -> np.ndarray:
    # Pillow, not cv2.imread: once decord is imported before cv2 in a process, cv2's PNG decoder fails
    # ("libpng error: bad parameters to zlib", decord ships its own zlib), so the photos would be unreadable
    # in any process that opened a video first
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise RuntimeError(f"cannot read photo {path}: {e}") from e


@lru_cache(maxsize=None)
def source_image(source: str) -> np.ndarray:
    """RGB uint8 image for a source name (cached, treat as read-only)."""
    if source == "astronaut":
        from skimage import data

        img = np.ascontiguousarray(data.astronaut()[..., :3])
    elif source == "t1":
        img = _read_rgb(insightface_images_dir() / "t1.jpg")
    elif source == "tom":
        img = _read_rgb(insightface_images_dir() / "Tom_Hanks_54745.png")
    else:
        raise KeyError(source)
    img.setflags(write=False)
    return img


def _photo_image(photo: Photo) -> np.ndarray:
    img = source_image(photo.source)
    if photo.rotate is None:
        return img
    cx, cy, deg = photo.rotate
    m = cv2.getRotationMatrix2D((cx, cy), deg, 1.0)
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)


class Cutout:
    """A head-and-shoulders cutout at a fixed scale, with a feathered elliptical alpha.

    ``render(opening)`` returns (rgb float32 HxWx3, alpha float32 HxW) with the jaw dropped and the
    mouth opened by ``opening`` in [0, 1]. Coordinates in ``face``/``mouth`` are tile pixels.
    """

    def __init__(self, name: str, face_width: float):
        photo = PHOTOS[name]
        img = _photo_image(photo)
        fx0, fy0, fx1, fy1 = photo.face
        fw, fh = fx1 - fx0, fy1 - fy0
        # tile = face box grown for hair, ears, neck; clipped to the photo
        cx0 = max(0, int(np.floor(fx0 - 0.32 * fw)))
        cx1 = min(img.shape[1], int(np.ceil(fx1 + 0.32 * fw)))
        cy0 = max(0, int(np.floor(fy0 - 0.32 * fh)))
        cy1 = min(img.shape[0], int(np.ceil(fy1 + 0.28 * fh)))
        s = face_width / fw
        tw, th = max(1, int(round((cx1 - cx0) * s))), max(1, int(round((cy1 - cy0) * s)))
        sx, sy = tw / (cx1 - cx0), th / (cy1 - cy0)
        crop = img[cy0:cy1, cx0:cx1]
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
        self.name = name
        self.rgb = cv2.resize(crop, (tw, th), interpolation=interp).astype(np.float32)
        self.face = ((fx0 - cx0) * sx, (fy0 - cy0) * sy, (fx1 - cx0) * sx, (fy1 - cy0) * sy)
        self.mouth = ((photo.mouth[0] - cx0) * sx, (photo.mouth[1] - cy0) * sy)
        self.mouth_hw = photo.mouth_hw * sx
        ys, xs = np.mgrid[0:th, 0:tw].astype(np.float32)
        # feathered ellipse filling the tile; the face box sits in its opaque core
        r = np.sqrt(((xs + 0.5 - tw / 2) / (tw / 2)) ** 2 + ((ys + 0.5 - th / 2) / (th / 2)) ** 2)
        self.alpha = np.clip((1.0 - r) / 0.16, 0.0, 1.0).astype(np.float32)
        self._xs, self._ys = xs, ys
        # jaw-drop displacement weight: 1 from the mouth line to the chin, fading below the chin
        # and towards the cheeks, 0 above the mouth line
        mx, my = self.mouth
        chin = self.face[3]
        fwt, fht = self.face[2] - self.face[0], self.face[3] - self.face[1]
        wy = np.where(ys < my, 0.0, np.clip(1.0 - (ys - chin) / (0.3 * fht), 0.0, 1.0))
        dx = np.abs(xs - mx) / (0.42 * fwt)
        wx = np.where(dx < 1.0, np.cos(np.minimum(dx, 1.0) * np.pi / 2) ** 2, 0.0)
        self._w = (wy * wx).astype(np.float32)
        self.max_drop = 0.11 * fht

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]

    def render(self, opening: float) -> tuple[np.ndarray, np.ndarray]:
        d = float(np.clip(opening, 0.0, 1.0)) * self.max_drop
        if d < 0.25:
            return self.rgb, self.alpha
        map_y = self._ys - d * self._w
        rgb = cv2.remap(self.rgb, self._xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # the opened mouth: a dark ellipse between the lips, soft edged
        mx, my = self.mouth
        a, b = self.mouth_hw * (0.8 + 0.1 * d / self.max_drop), d / 2 + 0.8
        cy = my + d / 2
        e = ((self._xs - mx) / a) ** 2 + ((self._ys - cy) / b) ** 2
        m = np.clip((1.0 - e) * 3.0, 0.0, 1.0)[..., None]
        inner = np.array([48.0, 14.0, 18.0], dtype=np.float32)
        rgb = rgb * (1.0 - m) + inner * m
        return rgb, self.alpha


@lru_cache(maxsize=64)
def cutout(name: str, face_width: float) -> Cutout:
    return Cutout(name, face_width)
