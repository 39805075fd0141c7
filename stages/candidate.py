"""The unit that flows through the stages (:class:`Candidate`): a whole input video or a clip cut from
one, with its typed facts, its sample members (or references to them held on other nodes) and its stats,
and how it ends (kept, rejected with a reason, or expanded into clips)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from mtcc.facts import Fact, FactMap, MissingFact

Status = Literal["pending", "kept", "rejected", "expanded"]
Level = Literal["video", "clip"]
F = TypeVar("F", bound=Fact)


@dataclass(frozen=True)
class PendingMember:
    """Placeholder a stage worker leaves for a member it returns apart from the candidate (see
    ``mtcc.pipeline.executor``): ``slot`` is the candidate's position in the batch it came in with."""

    slot: int
    size: int


@dataclass(frozen=True)
class MemberRef:
    """A member held in Ray's object store: ``ref`` is the object of one candidate's members from one stage
    call (a dict name -> bytes), owned by the driver and stored on the node that made it. The driver routes
    the reference; only the worker that reads the member, and the commit, fetch the bytes."""

    ref: Any
    name: str
    size: int

    def fetch(self) -> bytes:
        import ray

        try:
            return ray.get(self.ref)[self.name]
        except (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as e:
            raise MemberLost(f"member {self.name!r} was lost with the node that held it: {type(e).__name__}") from e


class UndeclaredFact(RuntimeError):
    """A stage left a fact it does not declare: a bug in the stage, not in the candidate's input."""


class MemberLost(RuntimeError):
    """A member held in the object store is gone (its node died): not the candidate's fault, so no stage
    turns it into an ``error`` row; the build makes the candidate's shard again from its inputs."""


MemberData = bytes | PendingMember | MemberRef


@dataclass
class Candidate:
    """One unit flowing through the stages: a whole input video, or a clip cut from one.

    ``facts`` carries the typed facts later stages need (read with :meth:`fact`); ``members`` carries the
    sample files produced so far (member name -> bytes, or a reference to bytes held elsewhere: read them
    with :meth:`member`), written into the shard tar at commit.
    """

    key: str
    video_id: str
    source: str
    shard: int
    level: Level = "video"
    clip_idx: int | None = None
    start: float | None = None
    end: float | None = None
    from_stage: str = ""
    status: Status = "pending"
    stage: str = ""
    reason: str | None = None
    message: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    facts: FactMap = field(default_factory=FactMap)
    members: dict[str, MemberData] = field(default_factory=dict)
    # members fetched from the object store by this worker; never sent anywhere
    _fetched: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fetched"] = {}
        return state

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    def fact(self, cls: type[F]) -> F:
        """The candidate's fact of class ``cls``; a stage only asks for what it ``requires``."""
        value = self.facts.get(cls)
        if value is None:
            raise MissingFact(f"{self.key} carries no {cls.__name__} fact: the '{cls.made_by}' stage makes it; list "
                              f"'{cls.made_by}' before the stage that reads it in the profile")
        return value

    def maybe(self, cls: type[F]) -> F | None:
        """The candidate's fact of class ``cls``, or None (for what a stage ``requires`` as optional)."""
        return self.facts.get(cls)

    def put(self, fact: Fact) -> None:
        """Leave ``fact`` for the stages after this one (a stage leaves only what it ``provides``)."""
        self.facts.put(fact)

    def member(self, name: str) -> bytes:
        """The bytes of member ``name``, fetched (once per worker) when the candidate holds a reference."""
        value = self.members[name]
        if isinstance(value, bytes):
            return value
        if isinstance(value, MemberRef):
            if name not in self._fetched:
                self._fetched[name] = value.fetch()
            return self._fetched[name]
        raise RuntimeError(f"{self.key}: member {name!r} is still in transit ({value}); the executor resolves it")

    def member_size(self, name: str) -> int:
        value = self.members[name]
        return len(value) if isinstance(value, bytes) else value.size

    def reject(self, stage: str, reason: str, message: str) -> None:
        self.status, self.stage, self.reason, self.message = "rejected", stage, reason, message


@dataclass(frozen=True)
class Rejection:
    reason: str
    message: str
