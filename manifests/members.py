"""What a sample is made of (the README's sample table): its tar members (named in mtcc.media.members) and the
meta it carries.

Every reader and writer of a shard names members from mtcc.media.members: the shard writer orders a sample's members
by ``MEMBERS`` (the order is part of the shards' bytes), the schema check requires them, and each consumer
(report, training loader) takes the subset it reads with :func:`members_except`, so a misspelt or
renamed member fails at import instead of silently never matching.
"""

from __future__ import annotations

from mtcc.media.members import MEMBERS, META, MP4

# in every sample whatever the profile: the clip (cut) and its meta (commit); the rest depends on the
# configured stages (the spine profile writes no masks, a silent source no FLACs)
REQUIRED = (MP4, META)


def members_except(*names: str) -> tuple[str, ...]:
    """``MEMBERS`` without ``names`` (in tar order); every name must be a member."""
    unknown = [n for n in names if n not in MEMBERS]
    if unknown:
        raise ValueError(f"not sample members: {', '.join(unknown)}")
    return tuple(m for m in MEMBERS if m not in names)


def member_rank(name: str) -> tuple[int, str]:
    """Sort key putting a sample's members in tar order."""
    return (MEMBERS.index(name), name) if name in MEMBERS else (len(MEMBERS), name)
