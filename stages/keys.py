"""What a stage declares it reads (``requires``) and leaves (``provides``): typed facts, sample members,
stats and clip candidates, as keys the config loader checks in profile order (pipeline/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mtcc.facts import CutMedia, Fact, SourceFile


@dataclass(frozen=True)
class Key:
    """One fact a candidate carries from stage to stage. ``optional``: the reader does without it when no
    enabled stage makes it; when one does, it must still be listed first. ``if_earlier``: taken only when a
    stage listed earlier made it, and a maker listed later is no error (a cheap gate placed before an
    expensive stage on purpose)."""

    name: str
    optional: bool = False
    if_earlier: bool = False
    kind: ClassVar[str] = ""

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(frozen=True)
class FactKey(Key):
    """A typed fact (``mtcc.facts``) a stage reads or leaves. In ``requires`` / ``provides`` a stage lists the
    fact class itself (``ClipFaces``), or ``optional(ClipFaces)`` / ``if_earlier(ClipFaces)``."""

    fact: type[Fact] | None = None
    kind: ClassVar[str] = "fact"

    def __str__(self) -> str:
        return f"fact {self.fact.__name__ if self.fact else self.name}"


def fact_key(fact: type[Fact], *, optional: bool = False, if_earlier: bool = False) -> FactKey:
    return FactKey(fact.key, optional, if_earlier, fact)


def optional(fact: type[Fact]) -> FactKey:
    """A fact the reader does without when no enabled stage makes it (see ``Key``)."""
    return fact_key(fact, optional=True)


def as_key(entry: Key | type[Fact]) -> Key:
    """A ``requires`` / ``provides`` entry as a key: fact classes stand for themselves."""
    if isinstance(entry, Key):
        return entry
    if isinstance(entry, type) and issubclass(entry, Fact):
        return fact_key(entry)
    raise TypeError(f"not a fact class or key: {entry!r}")


class Member(Key):
    """A sample file in ``Candidate.members``."""

    kind: ClassVar[str] = "member"


class Stat(Key):
    """A recorded stat, ``"<stage>.<stat>"``; every stage provides its ``stats_schema`` without saying so."""

    kind: ClassVar[str] = "stat"


class Clips(Key):
    """Clip candidates (a start and an end in the video): made by the stage that ``expands``."""

    kind: ClassVar[str] = "clips"

    def __str__(self) -> str:
        return "clip candidates"


CLIPS = Clips("clips")
# the clip's media the ``cut`` stage leaves in the node's workspace, described by its ``CutMedia`` fact and
# backed by its ``mp4`` / ``mix.flac`` members
CLIP_MEDIA = fact_key(CutMedia)
# what the build itself puts on every video candidate, from the input listing
FROM_INPUT: tuple[Key, ...] = (fact_key(SourceFile),)
