"""People across a whole build: each kept clip's characters (a mean face descriptor each, from the
``identity`` stage) assigned to identities, online and in a fixed order, so that indexing new shards never
renumbers the people already found.

A character joins the identity whose centre (the mean of its members' descriptors) is nearest, when that
centre is closer than ``same_person`` (the descriptor model's operating point), else founds a new one. The
two characters of one clip are two people by construction (the faces stage tracked two faces in one frame),
so they never join the same identity: of the pairings of both characters with distinct identities (or new
ones), the one with the least total distance wins. Memory: the centres (identities x 128 floats), never a
matrix over all clips.
"""

from __future__ import annotations

from itertools import product

import numpy as np


class IdentityBook:
    """The identities found so far: a centre and a member count each; ids are dense, in order of founding.
    Rows are kept with spare capacity (founding one is not a copy of all) and each centre's squared norm
    beside it, so a clip costs one matrix-vector product over the centres."""

    def __init__(self, centres: np.ndarray | None = None, counts: np.ndarray | None = None, dim: int = 128):
        centres = np.zeros((0, dim)) if centres is None else np.asarray(centres, np.float64).reshape(-1, dim)
        n = len(centres)
        self._c = np.zeros((max(64, 2 * n), dim))
        self._c[:n] = centres
        self._n2 = np.zeros(len(self._c))
        self._n2[:n] = (centres ** 2).sum(1)
        self._k = np.zeros(len(self._c), np.int64)
        self._k[:n] = np.ones(n, np.int64) if counts is None else np.asarray(counts, np.int64)
        self.size = n

    def centres(self) -> np.ndarray:
        return self._c[:self.size].copy()

    def counts(self) -> np.ndarray:
        return self._k[:self.size].copy()

    def _found(self, vec: np.ndarray) -> int:
        if self.size == len(self._c):
            grow = len(self._c)
            self._c = np.vstack([self._c, np.zeros_like(self._c)])
            self._n2 = np.append(self._n2, np.zeros(grow))
            self._k = np.append(self._k, np.zeros(grow, np.int64))
        i = self.size
        self._c[i], self._n2[i], self._k[i] = vec, vec @ vec, 1
        self.size += 1
        return i

    def _join(self, i: int, vec: np.ndarray) -> None:
        k = self._k[i]
        self._c[i] = (self._c[i] * k + vec) / (k + 1)  # the running mean of its members
        self._n2[i] = self._c[i] @ self._c[i]
        self._k[i] = k + 1

    def distances(self, vecs: np.ndarray) -> np.ndarray:
        """``[len(vecs), size]`` Euclidean distances to every centre."""
        c = self._c[:self.size]
        sq = self._n2[:self.size][None] - 2 * vecs @ c.T + (vecs ** 2).sum(1)[:, None]
        return np.sqrt(np.maximum(sq, 0.0))

    def assign_clip(self, descriptors: list[np.ndarray | None], same_person: float) -> list[tuple[int, float]]:
        """Identity ids (and the distance to the identity's centre before joining; 0 for a founder) of one
        clip's characters, ``None`` descriptors (a character not described) getting ``(-1, nan)``."""
        present = [k for k, d in enumerate(descriptors) if d is not None]
        out: list[tuple[int, float]] = [(-1, float("nan"))] * len(descriptors)
        if not present:
            return out
        vecs = np.stack([np.asarray(descriptors[k], np.float64) for k in present])
        dist = self.distances(vecs)  # [chars, identities]
        # each character's few nearest identities within reach, or "new" (None): a small search
        options = []
        for row in dist:
            near = [int(i) for i in np.argsort(row, kind="stable")[:len(present) + 1] if row[i] < same_person]
            options.append([*near, None])
        best: tuple[float, tuple] | None = None
        for combo in product(*options):
            chosen = [c for c in combo if c is not None]
            if len(set(chosen)) < len(chosen):
                continue  # two characters of one clip are two people
            # a new identity costs the threshold: joining is preferred whenever it is within reach
            cost = sum(same_person if c is None else dist[j, c] for j, c in enumerate(combo))
            if best is None or cost < best[0] - 1e-12:
                best = (cost, combo)
        assert best is not None  # the all-new combination is always allowed
        for j, c in enumerate(best[1]):
            if c is None:
                out[present[j]] = (self._found(vecs[j]), 0.0)
            else:
                out[present[j]] = (c, float(dist[j, c]))
                self._join(c, vecs[j])
        return out
