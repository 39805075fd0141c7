"""Caption: Qwen2-VL captions of each clip (skeleton; filled by the caption work)."""

from __future__ import annotations

from typing import ClassVar

from .base import Stage


class ClipCaption(Stage):
    name: ClassVar[str] = "caption"
