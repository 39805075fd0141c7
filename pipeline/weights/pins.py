"""The pinned table: every registered stage's declared ``weights`` (:mod:`mtcc.nets.weights`), each
bound to the name of the stage class that declares it."""

from __future__ import annotations

from dataclasses import dataclass

from mtcc.nets.weights import Pin, Weights

__all__ = ["Entry", "ModelsError", "Pin", "every_entry", "pinned_table", "select"]


class ModelsError(RuntimeError):
    """A fetch that cannot complete; the message names the file or host and what to do."""


@dataclass(frozen=True, kw_only=True)
class Entry(Weights):
    """A stage's weights with that stage's name (which comes from the class, not the declaration)."""

    stage: str

    @classmethod
    def of(cls, stage: str, weights: Weights) -> Entry:
        return cls(**vars(weights), stage=stage)


def pinned_table(packs: dict[str, str] | None = None) -> list[Entry]:
    """One entry per stage that declares weights, in the registry's order: its default, or the pack
    ``packs[stage]`` names (``--faces-pack``)."""
    packs = dict(packs or {})
    table = []
    for name, cls in _weights_stages():
        if not cls.weights:
            continue
        choice = cls.weights[0]
        want = packs.pop(name, None)
        if want is not None:
            named = {w.pack: w for w in cls.weights if w.pack}
            if want not in named:
                raise ModelsError(f"unknown {name} pack {want!r}; choose one of {', '.join(named) or 'none'}")
            choice = named[want]
        table.append(Entry.of(name, choice))
    if packs:
        raise ModelsError(f"no stage offers packs of weights for {', '.join(packs)}")
    return table


def every_entry() -> list[Entry]:
    """Every declared download, the alternatives (packs) included."""
    return [Entry.of(name, w) for name, cls in _weights_stages() for w in cls.weights]


def _weights_stages() -> list[tuple[str, type]]:
    from mtcc.stages import STAGES
    from mtcc.stages.model_stage import WeightsStage

    return [(name, cls) for name, cls in STAGES.items() if issubclass(cls, WeightsStage)]


def select(entries: list[Entry], only: list[str] | None) -> list[Entry]:
    """The entries of the stages ``--only`` names (all when it names none)."""
    if not only:
        return entries
    known = [e.stage for e in entries]
    unknown = [s for s in only if s not in known]
    if unknown:
        raise ModelsError(f"--only {','.join(unknown)}: not in MTCC's pinned table (stages: {', '.join(known)})")
    return [e for e in entries if e.stage in only]
