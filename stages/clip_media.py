"""A cut clip's media on this node, as every stage after the cut reads them (see ``mtcc.media.crops`` for
the shared face crops): the clip's mp4, its 16 kHz mixture and the crops, each read from the node's
workspace when the cut ran here, else rebuilt once from the clip's own members (never from the source)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtcc.facts import ClipFaces, CutMedia
from mtcc.media.clip import AUDIO_RATE
from mtcc.media.crops import SHARED_CROPS, CropGeometry, clip_boxes, crop_characters, derive
from mtcc.media.members import MIX, MP4
from mtcc.storage.workspace import NodeWorkspace

from .base import Candidate


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class ClipMedia:
    """The media of one cut clip on this node (its ``CutMedia`` fact says what the cut made)."""

    MP4, MIX, CROPS = "clip.mp4", "mix.npy", "crops.npy"

    def __init__(self, cand: Candidate, workspace: NodeWorkspace, stage: str):
        media = cand.maybe(CutMedia)
        if media is None or MP4 not in cand.members:
            raise ValueError(f"stage '{stage}' reads the clip media the `cut` stage makes, and {cand.key} has none: "
                             f"list `cut` before `{stage}` in the profile")
        self.cand = cand
        self.info = media
        # held, not only its folder: a stage's private workspace is removed when it is collected, and files
        # written after that would be left behind in the temporary folder
        self.workspace = workspace
        self.dir = workspace.clip_dir(cand.key, media.sha256)

    @classmethod
    def write(cls, workspace: NodeWorkspace, key: str, media: CutMedia, files: dict[str, Any]) -> Path:
        """Leave what the cut made in the workspace: ``files`` maps file name -> bytes or array."""
        d = workspace.clip_dir(key, media.sha256)
        d.mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            if isinstance(value, np.ndarray):
                _atomic_save(d / name, value)
            else:
                _atomic_write(d / name, value)
        return d

    @property
    def frames(self) -> int:
        return self.info.frames

    @property
    def scale(self) -> tuple[float, float]:
        """mp4 pixels per source pixel (the clip is the source's picture, scaled down to the cut's size cap when
        it is larger, rounded to even dimensions)."""
        return self.info.scale

    def mp4(self) -> str:
        """The clip's mp4 as a local file (the workspace's, written from the member on a node without it)."""
        path = self.dir / self.MP4
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, self.cand.member(MP4))
        return str(path)

    def mixture(self) -> np.ndarray:
        """The clip's mixture, mono float32 at 16 kHz, exactly the clip's length."""
        path = self.dir / self.MIX
        if path.exists():
            return np.load(path)
        from mtcc.media.audio_io import read_track

        want = int(round(self.info.seconds * AUDIO_RATE))  # as long as mix.flac: the clip, not its frames
        mix = read_track(self.cand.member(MIX), AUDIO_RATE)
        mix = np.pad(mix, (0, max(0, want - len(mix))))[:want].astype(np.float32)
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(path, mix)
        return mix

    def crops(self, geom: CropGeometry = SHARED_CROPS, frames: Sequence[int] | None = None) -> np.ndarray:
        """uint8 RGB ``[C, T, size, size, 3]`` face crops of ``geom``, derived from the shared ones; of the
        clip's ``frames`` only, when given (read and resized for those alone)."""
        path = self.dir / self.CROPS
        if path.exists():
            shared = np.load(path, mmap_mode="r")
        else:
            shared = self._crop_from_mp4()
            _atomic_save(path, shared)
        return derive(np.asarray(shared if frames is None else shared[:, list(frames)]), geom)

    def _crop_from_mp4(self) -> np.ndarray:
        """The shared crops rebuilt from the clip's mp4 (a node the cut did not run on): one decode of the
        clip, frame for frame the delivered picture."""
        from mtcc.media.video import open_frames

        path = self.mp4()
        w, h = self.info.size
        video = open_frames(path, {"width": w, "height": h}, None)
        boxes = clip_boxes(self.cand.fact(ClipFaces).boxes(), self.scale)
        out = np.zeros((len(boxes), self.frames, SHARED_CROPS.size, SHARED_CROPS.size, 3), np.uint8)
        last = None
        for idx, imgs in video.batches(list(range(min(video.n_frames, self.frames))), 32):
            for j, img in zip(idx, imgs):
                out[:, j] = last = crop_characters(img, boxes[:, j])
        for j in range(video.n_frames, self.frames):  # a short encode: hold the last picture
            if last is not None:
                out[:, j] = last
        return out


def clip_media(cand: Candidate, stage: Any) -> ClipMedia:
    """The clip media of ``cand`` for ``stage`` (a Stage: its name and workspace)."""
    return ClipMedia(cand, stage.workspace, stage.name)
