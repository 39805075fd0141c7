"""Stages, by the name a config lists them under. A config names stages; it never imports code."""

from __future__ import annotations

from .asd import ActiveSpeakers
from .audio_emb import AudioEmbeddings
from .base import Candidate, Rejection, Resources, Stage
from .caption import ClipCaption
from .clip import WholeVideoClip
from .distance import FaceDistance
from .faces import FaceTrack
from .layout import PanelLayout
from .masks import CharacterMasks
from .prescore import MouthPrescore
from .probe import Probe
from .segment import TwoFaceSegments
from .separate import SpeechSeparation
from .shots import ShotSplit
from .sync import SyncScores
from .write import ClipWriter

STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (Probe, ShotSplit, FaceTrack, TwoFaceSegments, PanelLayout, WholeVideoClip, FaceDistance,
                MouthPrescore, SpeechSeparation, ActiveSpeakers, SyncScores, CharacterMasks, AudioEmbeddings,
                ClipCaption, ClipWriter)
}

__all__ = ["STAGES", "Candidate", "Rejection", "Resources", "Stage"]
