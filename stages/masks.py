"""Masks: SAM2 per-character segmentation masks (skeleton; filled by the masks work)."""

from __future__ import annotations

from typing import ClassVar

from .base import Stage


class CharacterMasks(Stage):
    name: ClassVar[str] = "masks"
