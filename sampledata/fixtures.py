"""The sample scenes: who is where, who says what and when."""

from __future__ import annotations

from .scene import Person, Place, Scene


def good_scenes() -> list[Scene]:
    return [
        Scene(
            "two_talk", 640, 360, 25, 8.0,
            persons=[
                Person("astronaut", "en-us+f2", [Place(0.0, 175, 165, 104)],
                       says=[(0.3, "Good morning, I have been waiting for you."),
                             (4.6, "Never mind, we can start now.")]),
                Person("ross", "en-us+m3", [Place(0.0, 465, 170, 110)],
                       says=[(2.7, "Sorry, the traffic was terrible today."), (7.0, "Okay.")]),
            ],
            shots=[(0.0, "wall")], audio_rate=44100, channels=2,
        ),
        Scene(
            "two_talk_30fps", 640, 360, 30, 6.0,
            persons=[
                Person("phoebe", "en-gb+f3", [Place(0.0, 190, 175, 96)],
                       says=[(0.3, "Did you bring the tickets?"), (2.9, "Great, then we should go.")]),
                Person("chandler", "en-gb+m1", [Place(0.0, 455, 165, 100)],
                       says=[(1.9, "They are in my jacket pocket."), (4.7, "Wait for me.")]),
            ],
            shots=[(0.0, "coffee")], audio_rate=48000, channels=2,
        ),
        Scene(
            # A (person 0) walks left -> right high in the frame, B right -> left low in the frame;
            # their face boxes pass each other at 4 s without overlapping
            "two_cross", 640, 360, 25, 8.0,
            persons=[
                Person("phoebe", "en-gb+f3", [Place(0.0, 110, 100, 84), Place(8.0, 530, 100, 84, glide=True)],
                       says=[(0.3, "Excuse me, could I get past you, please?"),
                             (5.6, "Thank you, that is very kind.")]),
                Person("ross", "en-us+m3", [Place(0.0, 530, 258, 92), Place(8.0, 110, 258, 92, glide=True)],
                       says=[(3.2, "Of course, there is plenty of room.")]),
            ],
            shots=[(0.0, "table")], audio_rate=44100, channels=2,
        ),
        Scene(
            "one_person", 640, 360, 25, 5.0,
            persons=[Person("rachel", "en-us+f4", [Place(0.0, 320, 170, 110)],
                            says=[(0.4, "I am recording a short message for the team."),
                                  (3.0, "Please call me back later.")])],
            shots=[(0.0, "gradient")], audio_rate=32000, channels=1,
        ),
        Scene(
            "three_people", 640, 360, 25, 5.0,
            persons=[
                Person("chandler", "en-gb+m1", [Place(0.0, 115, 175, 84)], says=[(0.3, "Who wants coffee?")]),
                Person("rachel", "en-us+f4", [Place(0.0, 320, 170, 80)], says=[(1.6, "I would love some.")]),
                Person("astronaut", "en-us+f2", [Place(0.0, 525, 175, 84)],
                       says=[(2.9, "Make mine black, please.")]),
            ],
            shots=[(0.0, "table")], audio_rate=44100, channels=2,
        ),
        Scene(
            "two_far", 1280, 360, 25, 5.0,
            persons=[
                Person("ross", "en-us+m3", [Place(0.0, 48, 180, 72)],
                       says=[(0.3, "Can you hear me over there?"), (3.7, "Good, see you soon.")]),
                Person("phoebe", "en-gb+f3", [Place(0.0, 1232, 180, 70)], says=[(2.0, "Yes, loud and clear.")]),
            ],
            shots=[(0.0, "rocket")], audio_rate=44100, channels=2,
        ),
        Scene(
            "scene_events", 640, 360, 25, 10.0,
            persons=[
                Person("astronaut", "en-us+f2", [Place(0.0, 200, 170, 100), Place(5.0, 320, 185, 92)],
                       says=[(0.4, "Welcome to the show."), (5.3, "So, tell us about your trip.")]),
                Person("chandler", "en-gb+m1", [Place(3.0, 450, 170, 100), Place(5.0, 115, 180, 92)],
                       says=[(3.3, "Thanks for having me here.")], appear=3.0),
                Person("phoebe", "en-gb+f3", [Place(7.0, 530, 180, 88)],
                       says=[(7.4, "Hello everyone, sorry I am late.")], appear=7.0),
            ],
            shots=[(0.0, "wall"), (5.0, "coffee")], audio_rate=44100, channels=2,
        ),
    ]


def broken_scenes() -> list[Scene]:
    """Valid, decodable videos that the probe stage must still reject."""
    return [
        Scene("no_audio", 640, 360, 25, 3.0, persons=[Person("ross", None, [Place(0.0, 320, 170, 110)])],
              shots=[(0.0, "gradient")], audio_rate=None, kind="broken"),
        Scene("too_short", 640, 360, 25, 0.6,
              persons=[Person("astronaut", "en-us+f2", [Place(0.0, 320, 170, 110)], says=[(0.08, "Hi.")])],
              shots=[(0.0, "coffee")], audio_rate=44100, channels=2, kind="broken"),
        Scene("tiny_res", 64, 48, 25, 3.0,
              persons=[Person("tom_hanks", "en-us+m3", [Place(0.0, 32, 24, 30)],
                              says=[(0.5, "Testing, one two three.")])],
              shots=[(0.0, "gradient")], audio_rate=44100, channels=2, kind="broken"),
    ]


def panel_scenes() -> list[Scene]:
    """Split-screen composites with planted panels (``mtcc sample-data --panels``): one person per panel,
    both talking, turns and one overlap; the truth's ``layout`` names the arrangement."""
    return [
        Scene(
            "panels_side_by_side", 640, 360, 25, 6.0,
            persons=[
                Person("chandler", "en-gb+m1", [Place(0.0, 160, 170, 104)],
                       says=[(0.3, "Our plan lowers taxes for every family."), (3.9, "That is simply not true.")]),
                Person("astronaut", "en-us+f2", [Place(0.0, 480, 170, 104)],
                       says=[(2.2, "Your numbers do not add up."), (3.8, "Check the budget office.")]),
            ],
            shots=[(0.0, "panels_lr:wall+coffee")], audio_rate=44100, channels=2,
        ),
        Scene(
            "panels_stacked", 480, 720, 25, 6.0,
            persons=[
                Person("phoebe", "en-gb+f3", [Place(0.0, 240, 170, 112)],
                       says=[(0.3, "Did you see the game last night?"), (4.2, "No way, really?")]),
                Person("ross", "en-us+m3", [Place(0.0, 240, 530, 112)],
                       says=[(2.3, "Yes, it went to overtime.")]),
            ],
            shots=[(0.0, "panels_tb:rocket+table")], audio_rate=44100, channels=2,
        ),
    ]
