"""What a clip is: its frame rate, its audio rate and how many characters it holds. The model stages are
built for these (SyncNet and Light-ASD read 25 fps pictures and 16 kHz MFCCs, AV-MossFormer2 and Wav2Vec2
16 kHz audio, the routing ground truth has two characters); the config's ``clip`` section states them once
and is cross-checked against every stage at load (pipeline/config.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

FPS = 25
AUDIO_RATE = 16000
CHARACTERS = 2


class ClipSpec(BaseModel):
    """The ``clip`` section of a config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps: int = Field(FPS, ge=1, description="frames per second of every clip's mp4 and face tracks")
    audio_rate: int = Field(AUDIO_RATE, ge=8000, description="Hz of every clip's mixture, tracks and mp4 audio")
    characters: int = Field(CHARACTERS, ge=1, description="faces (and voices) a clip holds on every frame")
