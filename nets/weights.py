"""Where a stage's paper-grade weights come from: declared on the stage class as ``weights``.

``mtcc models fetch`` (:mod:`mtcc.pipeline.weights`) places, verifies and records them; it learns which
stages have weights, and what to download for each, from the registered stage classes only. The stage
name is the class's ``name``, so a declaration never repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Pin:
    """One file of a model, at ``path`` under the model's folder. ``bytes``/``sha256`` are None where no
    public record of them could be established (fetch then records what it downloaded)."""

    path: str
    bytes: int | None = None
    sha256: str | None = None
    source: str = ""          # where the pinned values come from
    optional: bool = False    # some revisions of the upstream repo lack it; nothing to place then

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Weights:
    """One download that gives a stage its weights. A stage that offers several (the faces stage's
    insightface packs) lists its default first; ``pack`` is the name a user picks another by."""

    title: str
    kind: Literal["hf", "url"]
    folder: str                       # under the models folder
    files: tuple[Pin, ...]
    settings: dict[str, Any]          # the stage's models.yaml settings, paths relative to the models folder
    repo: str = ""
    revision: str | None = None       # a commit sha; None = not pinned (fetch records the one it got)
    url: str = ""
    archive: bool = False             # url is a zip; ``files`` are members (by base name) to extract
    note: str = ""
    pack: str = ""

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision or 'main (revision not pinned)'}" if self.kind == "hf" else self.url
