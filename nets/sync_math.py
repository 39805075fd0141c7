"""SyncNet scoring math on embeddings (pure numpy, no model).

SyncNet embeds every 5-frame video window and the matching 0.2 s of audio (20 MFCC frames) into one
space. The confidence of a face/voice pair comes from the distance curve over time offsets, computed
the way syncnet_python's ``SyncNetInstance.evaluate`` does:

* for every video window ``t`` and offset index ``j`` in ``0..2*vshift``, the distance between video
  embedding ``t`` and audio embedding ``t + j - vshift`` (audio outside the clip is a zero vector,
  i.e. the audio sequence is zero-padded by ``vshift`` windows on each side);
* ``dists[j]`` = mean over ``t``;
* Sync-D = ``min(dists)``, Sync-C = ``median(dists) - min(dists)``, offset = ``vshift - argmin``.

Sign of the offset (SyncNet's convention): ``offset = k`` means video window ``t`` matches audio
window ``t - k``. Audio that arrives ``d`` frames late (delayed) gives ``offset = -d``.

On top of one pair, :func:`cross_matrix` scores every audio track against every face, and
:func:`binding` reads the audio-character matrix A_ac from it (identity when each track fits its own
face best, the swap matrix when the crossed pairing fits better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

VSHIFT = 15
# torch.nn.functional.pairwise_distance adds this to the difference before the norm; kept so the
# numbers match syncnet_python's to float precision
PAIRWISE_EPS = 1e-6


@dataclass(frozen=True)
class SyncScore:
    """Sync of one (video, audio) embedding pair."""

    conf: float  # Sync-C: median - min of the mean distance curve
    dist: float  # Sync-D: min of the mean distance curve
    offset: int  # vshift - argmin (frames at 25 fps)
    dists: np.ndarray  # the mean distance per offset index, length 2*vshift+1

    def as_dict(self) -> dict[str, Any]:
        return {"c": self.conf, "d": self.dist, "offset": self.offset, "dists": self.dists.tolist()}


def distance_curve(video: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """``[T, 2*vshift+1]`` distances between video window ``t`` and audio window ``t + j - vshift``.

    Both inputs are ``[T, D]``; when their lengths differ, the shorter one sets ``T`` (syncnet_python
    embeds the same number of windows of each).
    """
    v = np.asarray(video, np.float64)
    a = np.asarray(audio, np.float64)
    if v.ndim != 2 or a.ndim != 2 or v.shape[1] != a.shape[1]:
        raise ValueError(f"embeddings must be [T, D] with the same D, got {v.shape} and {a.shape}")
    n = min(len(v), len(a))
    if n < 1:
        raise ValueError("no windows to score")
    v, a = v[:n], a[:n]
    padded = np.concatenate([np.zeros((vshift, a.shape[1])), a, np.zeros((vshift, a.shape[1]))])
    # row t, column j looks at padded[t + j]
    idx = np.arange(n)[:, None] + np.arange(2 * vshift + 1)[None, :]
    diff = v[:, None, :] - padded[idx] + PAIRWISE_EPS
    return np.sqrt(np.einsum("tjd,tjd->tj", diff, diff))


def sync_score(video: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT) -> SyncScore:
    """Sync-C, Sync-D and offset of one face's video embeddings against one audio track's."""
    mean = distance_curve(video, audio, vshift).mean(axis=0)
    j = int(np.argmin(mean))
    lo = float(mean[j])
    return SyncScore(conf=float(np.median(mean)) - lo, dist=lo, offset=vshift - j, dists=mean)


def cross_matrix(video_embs: list[np.ndarray], audio_embs: list[np.ndarray],
                 vshift: int = VSHIFT) -> dict[str, Any]:
    """Every audio track ``i`` against every face ``j``.

    Returns JSON-able ``{"c": C, "d": D, "offset": O, "dists": curves}`` where ``C[i][j]`` is the
    Sync-C of audio ``i`` with face ``j`` (likewise Sync-D, offset, and the mean distance curve).
    """
    scores = [[sync_score(v, a, vshift) for v in video_embs] for a in audio_embs]
    return {
        "c": [[s.conf for s in row] for row in scores],
        "d": [[s.dist for s in row] for row in scores],
        "offset": [[s.offset for s in row] for row in scores],
        "dists": [[s.dists.tolist() for s in row] for row in scores],
    }


IDENTITY = [[1, 0], [0, 1]]
SWAP = [[0, 1], [1, 0]]


def binding(m: dict[str, Any]) -> dict[str, Any]:
    """The audio-character matrix of a 2x2 cross matrix from :func:`cross_matrix`.

    ``a_ac`` is the identity when the diagonal pairing (audio i with face i) has the larger total
    Sync-C, the swap matrix when the crossed pairing has; a tie keeps the identity. ``margin`` is the
    mean diagonal Sync-C minus the mean off-diagonal Sync-C (negative when swapped). ``diag_*`` are the
    per-speaker scores of audio i with face i.
    """
    c = np.asarray(m["c"], np.float64)
    if c.shape != (2, 2):
        raise ValueError(f"binding needs a 2x2 cross matrix, got {c.shape}")
    diag = float(c[0, 0] + c[1, 1])
    off = float(c[0, 1] + c[1, 0])
    swapped = off > diag
    return {
        "a_ac": [row[:] for row in (SWAP if swapped else IDENTITY)],
        "swapped": bool(swapped),
        "margin": (diag - off) / 2,
        "diag_c": [float(c[0, 0]), float(c[1, 1])],
        "diag_d": [float(m["d"][0][0]), float(m["d"][1][1])],
        "diag_offset": [int(m["offset"][0][0]), int(m["offset"][1][1])],
    }
