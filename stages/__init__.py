"""Stages, by the name a config lists them under. A config names stages; it never imports code."""

from __future__ import annotations

from .asd import ActiveSpeakers
from .audio_emb import AudioEmbeddings
from .base import Candidate, Rejection, Resources, Stage
from .caption import ClipCaption
from .clip import WholeVideoClip
from .cut import ClipCut
from .distance import FaceDistance
from .faces import FaceTrack
from .fingerprint import ClipFingerprint
from .identity import FaceIdentity
from .layout import PanelLayout
from .masks import CharacterMasks
from .picture import PictureQuality
from .prescore import MouthPrescore
from .probe import Probe
from .screen_text import ScreenText
from .segment import TwoFaceSegments
from .separate import SpeechSeparation
from .sound import SoundQuality
from .sync import SyncScores
from .write import ClipWriter

STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (Probe, FaceTrack, TwoFaceSegments, PanelLayout, WholeVideoClip, FaceDistance, ClipCut,
                PictureQuality, ScreenText, MouthPrescore, SpeechSeparation, SoundQuality, ActiveSpeakers, SyncScores,
                CharacterMasks, AudioEmbeddings, FaceIdentity, ClipFingerprint,
                ClipCaption, ClipWriter)
}

# the Candidate.info entries the stages carry into a sample's json (each stage declares its own)
SAMPLE_META: tuple[str, ...] = tuple(k for cls in STAGES.values() for k in cls.sample_meta())

# stage names earlier versions knew, and where their settings went
RETIRED: dict[str, str] = {
    "shots": "cut detection now runs on the faces stage's one decode of the video: move its settings under "
             "stages.faces.shots (detector, threshold, min_shot_seconds; decode_width is analysis_width)",
}

__all__ = ["RETIRED", "SAMPLE_META", "STAGES", "Candidate", "Rejection", "Resources", "Stage"]
