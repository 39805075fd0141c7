"""What a fact is: one frozen, typed record a stage leaves on a candidate for the stages after it.

Contract:
- a fact class names its entry (``key``): the name it is declared under, and the name of its object in the
  sample's json when ``sample_meta`` is set;
- exactly one stage makes each fact (it lists the class in ``provides``); readers list it in ``requires``
  and read it with ``cand.fact(Cls)``; nobody edits a fact in place (they are frozen: a stage that learns
  more about a clip leaves a fact of its own);
- :meth:`Fact.to_json` is what the sample's json carries: every field but those marked :data:`LOCAL`
  (facts a later stage reads that the dataset does not ship), fields in ``absent_if_none`` left out while
  None. :meth:`Fact.from_json` reads that form back (tests, tools that rebuild a candidate).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

# field metadata: a field later stages read that the sample's json does not carry
LOCAL = {"json": False}

F = TypeVar("F", bound="Fact")


@dataclass(frozen=True)
class Fact:
    key: ClassVar[str] = ""
    # the stage that makes it (its name in a profile), for the messages that tell a user what to list first
    made_by: ClassVar[str] = ""
    sample_meta: ClassVar[bool] = False
    absent_if_none: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("json", True) is False:
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.absent_if_none:
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_json(cls: type[F], data: dict[str, Any]) -> F:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown} (fields: {sorted(names)})")
        return cls(**data)


def _plain(value: Any) -> Any:
    """The json form of a field's value: a fact by its own rule, any other dataclass (a clip character) field
    by field, tuples as lists."""
    if isinstance(value, Fact):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class MissingFact(LookupError):
    """A stage asked a candidate for a fact no earlier stage left on it."""


class FactMap:
    """The facts a candidate carries, one per class. Pickles with the candidate (Ray ships it between
    actors), copies shallowly into a clip (the facts themselves are frozen and shared)."""

    __slots__ = ("_by_key",)

    def __init__(self, facts: dict[str, Fact] | None = None):
        self._by_key: dict[str, Fact] = dict(facts or {})

    def __getstate__(self) -> dict[str, Fact]:
        return self._by_key

    def __setstate__(self, state: dict[str, Fact]) -> None:
        self._by_key = state

    def get(self, cls: type[F]) -> F | None:
        value = self._by_key.get(cls.key)
        if value is not None and not isinstance(value, cls):
            raise TypeError(f"fact {cls.key!r} holds a {type(value).__name__}, not a {cls.__name__}")
        return value  # type: ignore[return-value]

    def put(self, fact: Fact) -> None:
        if not isinstance(fact, Fact) or not type(fact).key:
            raise TypeError(f"not a fact: {fact!r}")
        self._by_key[type(fact).key] = fact

    def drop(self, cls: type[Fact]) -> None:
        self._by_key.pop(cls.key, None)

    def keys(self) -> set[str]:
        return set(self._by_key)

    def items(self) -> list[tuple[str, Fact]]:
        return list(self._by_key.items())

    def copy(self) -> FactMap:
        return FactMap(self._by_key)

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and issubclass(cls, Fact) and cls.key in self._by_key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FactMap) and self._by_key == other._by_key

    def __repr__(self) -> str:
        return f"FactMap({sorted(self._by_key)})"
