"""The trainer's geometry: how a clip maps onto the video model's latent token grid.

Bind-Your-Avatar trains CogVideoX on 49-frame clips at 480x720 (letterboxed: resized to fit, centred on
black). The VAE compresses time by 4 (49 -> 13 latent frames; the first frame alone) and space by 8; the
transformer patches 2x2, so a clip is 13 x 30 x 45 = 17,550 tokens. Routing ground truth is each
character's binary mask trilinearly resized to that grid (align_corners=False), thresholded at > 0.5,
written as one index mask: -1 background, 0 / 1 the character, character 1 winning where both are set.
One definition here serves the masks stage (which writes ``route.npy``) and the training loader.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LatentGeometry(BaseModel):
    """Clip and latent sizes of the video model the dataset is for (default: CogVideoX 5B at 480x720)."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(49, ge=1, description="frames per training clip at 25 fps")
    height: int = Field(480, ge=16, description="pixels of a training clip (the clip is letterboxed to it)")
    width: int = Field(720, ge=16, description="pixels of a training clip (the clip is letterboxed to it)")
    temporal_stride: int = Field(4, ge=1, description="VAE time compression (first frame kept alone)")
    spatial_stride: int = Field(8, ge=1, description="VAE space compression")
    patch: int = Field(2, ge=1, description="transformer patch size on the latent")
    threshold: float = Field(0.5, gt=0, lt=1, description="resized mask > threshold is the character")

    @model_validator(mode="after")
    def _divisible(self) -> LatentGeometry:
        step = self.spatial_stride * self.patch
        if self.height % step or self.width % step:
            raise ValueError(f"height and width must be multiples of spatial_stride x patch = {step}")
        if (self.frames - 1) % self.temporal_stride:
            raise ValueError(f"frames - 1 must be a multiple of temporal_stride ({self.temporal_stride})")
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'): 13 x 30 x 45 by default."""
        step = self.spatial_stride * self.patch
        return ((self.frames - 1) // self.temporal_stride + 1, self.height // step, self.width // step)

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def letterbox(self, src_w: int, src_h: int) -> tuple[int, int, int, int]:
        """(w, h, x0, y0): the size a ``src_w`` x ``src_h`` frame is resized to so that it fits the
        canvas with its aspect kept, and where its top-left corner sits on the black canvas."""
        s = min(self.width / src_w, self.height / src_h)
        w = max(1, min(self.width, int(round(src_w * s))))
        h = max(1, min(self.height, int(round(src_h * s))))
        return w, h, (self.width - w) // 2, (self.height - h) // 2

    def windows(self, n_frames: int) -> list[tuple[int, int]]:
        """Training windows [start, end) over a clip of ``n_frames``: back to back from frame 0, the last
        one ending at the clip's end (overlapping its neighbour) so every frame is covered; one window of
        the whole clip when it is shorter than ``frames``."""
        if n_frames <= self.frames:
            return [(0, n_frames)]
        starts = list(range(0, n_frames - self.frames + 1, self.frames))
        if starts[-1] + self.frames < n_frames:
            starts.append(n_frames - self.frames)
        return [(s, s + self.frames) for s in starts]


def letterbox_mask(mask: np.ndarray, geo: LatentGeometry) -> np.ndarray:
    """A binary ``[H, W]`` mask at clip resolution placed on the ``geo`` canvas as the frames are
    (nearest-neighbour resize: the mask stays binary), zeros on the padding."""
    import cv2

    h0, w0 = mask.shape
    w, h, x0, y0 = geo.letterbox(w0, h0)
    out = np.zeros((geo.height, geo.width), np.uint8)
    out[y0:y0 + h, x0:x0 + w] = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def route_index_mask(masks: Any, geo: LatentGeometry) -> np.ndarray:
    """Index mask int8 ``grid`` from per-character letterboxed masks ``[C, frames, height, width]``
    (0/1), by the trainer's recipe: float32 trilinear resize to the grid (align_corners=False), > threshold,
    later characters overwrite earlier ones, -1 where none."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(np.asarray(masks), dtype=torch.float32)
    if m.ndim != 4 or tuple(m.shape[2:]) != (geo.height, geo.width):
        raise ValueError(f"masks must be [C, T, {geo.height}, {geo.width}], got {tuple(m.shape)}")
    out = torch.full(geo.grid, -1, dtype=torch.int8)
    for k in range(m.shape[0]):
        r = F.interpolate(m[k][None, None], size=geo.grid, mode="trilinear", align_corners=False)[0, 0]
        out = torch.where(r > geo.threshold, torch.tensor(k, dtype=torch.int8), out)
    return out.numpy()
