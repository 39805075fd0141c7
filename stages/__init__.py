"""Stages, by the name a config lists them under. A config names stages; it never imports code."""

from __future__ import annotations

from .base import Candidate, Rejection, Resources, Stage
from .clip import WholeVideoClip
from .probe import Probe
from .write import ClipWriter

STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (Probe, WholeVideoClip, ClipWriter)}

__all__ = ["STAGES", "Candidate", "Rejection", "Resources", "Stage"]
