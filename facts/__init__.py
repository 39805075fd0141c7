"""The typed facts stages hand each other (see ``facts.base`` for the contract). A stage lists the fact
classes it reads in ``requires`` and the ones it makes in ``provides``; ``cand.fact(ClipFaces)`` reads one."""

from .base import LOCAL, Fact, FactMap, MissingFact
from .clip import (
                   AudioEmbeddingMeta,
                   CaptionMeta,
                   ClipCharacter,
                   ClipFaces,
                   CutMedia,
                   FaceIdentities,
                   Fingerprints,
                   MaskResult,
                   MouthCurves,
                   ScreenTextLines,
                   Separation,
                   Speakers,
                   SpeakingCurves,
                   SyncResult,
)
from .video import FrameTimes, ProbeResult, SeamEvidence, Shots, SourceFile, SourceHash, VideoTracks

ALL: tuple[type[Fact], ...] = (
    SourceFile, SourceHash, ProbeResult, FrameTimes, Shots, SeamEvidence, VideoTracks, ClipFaces, CutMedia,
    SpeakingCurves, Speakers, Separation, SyncResult, MaskResult, MouthCurves, AudioEmbeddingMeta, CaptionMeta,
    ScreenTextLines, FaceIdentities, Fingerprints,
)

__all__ = ["ALL", "LOCAL", "AudioEmbeddingMeta", "CaptionMeta", "ClipCharacter", "ClipFaces", "CutMedia", "FaceIdentities", "Fact",
           "FactMap", "Fingerprints", "FrameTimes", "MaskResult", "MissingFact", "MouthCurves", "ProbeResult", "ScreenTextLines",
           "SeamEvidence", "Separation", "Shots", "SourceFile", "SourceHash", "Speakers", "SpeakingCurves",
           "SyncResult", "VideoTracks"]
