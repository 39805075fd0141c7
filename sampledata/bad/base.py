"""The base scene every case derives from: one short two-person talking scene."""

from __future__ import annotations

from ..scene import Person, Place, Scene

BASE_SECONDS = 3.0
BASE_W, BASE_H = 384, 216


def base_scene() -> Scene:
    return Scene(
        "bad_base", BASE_W, BASE_H, 25, BASE_SECONDS,
        persons=[
            Person("astronaut", "en-us+f2", [Place(0.0, 100, 108, 66)], says=[(0.2, "Hello, how are you?")]),
            Person("ross", "en-us+m3", [Place(0.0, 284, 110, 68)], says=[(1.6, "Fine, thank you.")]),
        ],
        shots=[(0.0, "wall")], audio_rate=44100, channels=2, kind="bad",
    )
