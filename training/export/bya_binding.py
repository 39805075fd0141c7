"""Who speaks, whose voice is which track, and where each track goes in the Bind-Your-Avatar layout.

Their trainer never reads an audio-character matrix: it derives one per clip from two things, the side of
character "1"'s mask at frame 0 (more mask pixels in the left or the right half) and the clip's
``speaker`` field: the identity when they are the same side, the swap otherwise. The matrix multiplies
the two audio slots (``left_audio``, ``right_audio``) into the two characters' routing masks ("1", "2"),
so ``af[s][f] = 1`` means "the voice in slot s drives character f". In their inference code the same
field names the side of the character whose voice is in slot 0: ``speaker`` is the speaking side, and
``left_audio`` holds the speaker's voice.

We write ``speaker`` = the side that speaks most (the ``asd`` stage's speaking fractions), compute the
matrix their trainer will derive from the very mask we write, and then put into each slot the separated
track whose voice belongs to the character that matrix names. Which track that is depends on the binding
our stages measured: track k was separated with character k's lips, and it is character k's voice unless
the measures say the pair is swapped (``sync``'s Sync-C cross matrix, ``asd``'s ``track_face`` ASD scores).
So the matrix the trainer derives is always true of the files, and a swapped binding shows up as the
other track in the slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

IDENTITY = [[1, 0], [0, 1]]
SWAP = [[0, 1], [1, 0]]
SIDES = ("left", "right")  # character 0 is the left-most at the clip's first frame (faces.json order)

BindingState = Literal["measured", "unknown", "contradicted"]


@dataclass(frozen=True)
class Binding:
    """The clip's binding and speaking side, read from its sample meta."""

    state: BindingState
    swapped: bool  # track 0 is character 1's voice (the value used for the export, a guess unless measured)
    votes: dict[str, str | None]  # per measure: "identity", "swapped", or None (no evidence)
    why: str  # for a binding that is not measured: what is missing or disagrees
    reason: str | None  # skip reason: no_asd, random_weights, binding_unknown, binding_contradicted (None: measured)
    speaker: int  # character that speaks most (0 left, 1 right)
    speaker_source: Literal["asd", "default"]
    speaking_fraction: tuple[float, float] | None = None
    overlap: float | None = None  # asd's fraction of frames where both speak
    both_speaking: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speaker_side(self) -> str:
        return SIDES[self.speaker]

    def track_of(self, character: int) -> int:
        """The separated track that holds ``character``'s voice."""
        return 1 - character if self.swapped else character


def _vote_asd(asd: dict[str, Any]) -> str | None:
    m = asd.get("track_face")
    try:
        (a00, a01), (a10, a11) = ((float(v) for v in row) for row in m)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (a00, a01, a10, a11)):
        return None
    diag, cross = a00 + a11, a01 + a10
    if diag == cross:
        return None
    return "identity" if diag > cross else "swapped"


def _vote_sync(sync: dict[str, Any] | None) -> str | None:
    # a clip whose sync ran on the mixture (no separated tracks) has two identical rows: no binding evidence
    if not sync or sync.get("audio_source", "separated") != "separated" or "swapped" not in sync:
        return None
    if float(sync.get("binding_margin") or 0.0) == 0.0:
        return None
    return "swapped" if sync["swapped"] else "identity"


def _random(stage_meta: Any) -> bool:
    return isinstance(stage_meta, dict) and bool(stage_meta.get("random_weights"))


def read_binding(meta: dict[str, Any], both_min_fraction: float) -> Binding:
    """The binding and speaking side of one sample meta (``<key>.json``).

    Measured when the ``asd`` output is there and every available measure (asd's ``track_face``, sync's
    cross matrix) votes, all the same way; unknown without asd output or without any vote; contradicted
    when the votes differ. A binding that is not measured is given the asd vote, else the sync vote, else
    the identity (the separated tracks as they are), for ``--keep-unbound``.
    """
    asd = meta.get("asd")
    random_asd = _random(asd)
    if random_asd:
        asd = None  # a make-tiny model's scores are noise: no speaking side, no vote
    # both votes score the separated tracks: tracks from a random separator (or a random SyncNet's scores)
    # are noise, whatever the asd model is
    random_tracks = _random(meta.get("separate"))
    votes = {"asd": _vote_asd(asd) if isinstance(asd, dict) and not random_tracks else None,
             "sync": None if random_tracks or _random(meta.get("sync")) else _vote_sync(meta.get("sync"))}
    cast = [v for v in votes.values() if v is not None]
    if not isinstance(asd, dict):
        state, reason, why = (("unknown", "random_weights", "the asd stage ran on RANDOM weights (make-tiny): its "
                               "scores decide nothing; build with real weights (mtcc models fetch)") if random_asd
                              else ("unknown", "no_asd", "no asd output in the sample meta (run the asd stage)"))
    elif not cast:
        state, reason, why = ("unknown", "binding_unknown",
                              "the separated tracks come from RANDOM weights (make-tiny): nothing binds them"
                              if random_tracks else "neither asd's track_face nor sync's cross matrix gives a binding")
    elif len(set(cast)) > 1:
        state, reason, why = ("contradicted", "binding_contradicted",
                              f"asd's track_face says {votes['asd']}, sync's cross matrix says {votes['sync']}")
    else:
        state, reason, why = "measured", None, ""
    guess = votes["asd"] or votes["sync"] or "identity"
    fractions = None
    if isinstance(asd, dict):
        try:
            f0, f1 = (float(v) for v in asd["speaking_fraction"])
            fractions = (f0, f1)
        except (KeyError, TypeError, ValueError):
            fractions = None
    if fractions is None:
        speaker, source = 0, "default"
        if state == "measured":
            state, reason, why = "unknown", "binding_unknown", "asd output has no speaking_fraction"
    else:
        speaker, source = (0 if fractions[0] >= fractions[1] else 1), "asd"
    overlap = asd.get("both_speaking") if isinstance(asd, dict) else None
    return Binding(
        state=state, swapped=guess == "swapped", votes=votes, why=why, reason=reason, speaker=speaker,
        speaker_source=source,
        speaking_fraction=fractions, overlap=float(overlap) if isinstance(overlap, (int, float)) else None,
        both_speaking=fractions is not None and min(fractions) >= both_min_fraction,
    )


def their_af_matrix(mask_side_1: str, speaker: str) -> list[list[int]]:
    """The matrix their trainer derives: identity iff character "1"'s frame-0 mask side equals ``speaker``
    (a mask with equal halves, or empty, matches neither side)."""
    return [row[:] for row in (IDENTITY if mask_side_1 == speaker else SWAP)]


def slot_tracks(binding: Binding, af: list[list[int]]) -> list[int]:
    """Which separated track goes into slot 0 (``left_audio``) and slot 1 (``right_audio``), so that the
    voice in slot s belongs to the character ``af`` binds it to (character "1" is our character 0)."""
    return [binding.track_of(af[s].index(1)) for s in range(2)]


def mask_side(mask) -> str:
    """Their side rule on one mask: the half (split at width // 2) holding more mask value."""
    import numpy as np

    m = np.asarray(mask)
    mid = m.shape[1] // 2
    left, right = int(m[:, :mid].sum(dtype=np.int64)), int(m[:, mid:].sum(dtype=np.int64))
    return "left" if left > right else "right" if right > left else "equal_or_none"
