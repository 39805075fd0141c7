"""Audio embeddings: Wav2Vec2 hidden states per separated track (skeleton; filled by the audio_emb work)."""

from __future__ import annotations

from typing import ClassVar

from .base import Stage


class AudioEmbeddings(Stage):
    name: ClassVar[str] = "audio_emb"
