"""Masks (SAM2 video predictor, reduced random model): routing ground truth, RLE, references, drift.

The model runs with random weights, so its masks mean nothing; these tests check what real weights rely
on: the route recipe against a direct computation and an analytic case, RLE round trips, one inference
state for both characters (the image encoder once per frame), re-prompting on drift (with a fake
predictor whose drift is planted), stats and thresholds on planted masks, outputs consistent with each
other on a real clip, and weights/configs refused with actionable messages.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fresh, ready, run_pending, talk_clips, tiny_fixture
from PIL import Image

from mtcc.facts import ClipFaces, MaskResult
from mtcc.media import rle as rle_codec
from mtcc.media.geometry import LatentGeometry, letterbox_mask, route_index_mask
from mtcc.media.mask_outputs import cutout, mask_stats, masks_json, ref_window, route_windows
from mtcc.nets import loading, sam2_model
from mtcc.nets.mask_tracking import FrameMasks, drifted, face_cover, prompt_frame, track
from mtcc.stages.base import Candidate
from mtcc.stages.cut import even_size
from mtcc.stages.masks import CharacterMasks

GEO = LatentGeometry()
# sam2 without its optional CUDA extension warns that it skips mask hole filling (tests drive sam2 directly)
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*Skipping the post-processing step:UserWarning")


# -- fixtures -------------------------------------------------------------------------------------------

tiny = tiny_fixture(CharacterMasks)


@pytest.fixture(scope="module")
def clips(sample_dir) -> list[Candidate]:
    """two_talk.mp4 (640x360) through the real probe -> faces -> segment -> cut: three 67-frame clips."""
    out = talk_clips(sample_dir, 2.7, 3)
    assert [c.fact(ClipFaces).frames for c in out] == [67, 67, 67]
    return out


@pytest.fixture(scope="module")
def stage(tiny) -> CharacterMasks:
    return ready(CharacterMasks(**tiny, reject=False))


@pytest.fixture(scope="module")
def done(stage, clips) -> list[Candidate]:
    """Two clips in one process() call."""
    return run_pending(stage, clips[:2])


def encoder_calls(stage: CharacterMasks, cands: list[Candidate]) -> tuple[list[Candidate], int]:
    calls = [0]
    hook = stage._model.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        out = stage.run_batch(cands)
    finally:
        hook.remove()
    return out, calls[0]


# -- route recipe ---------------------------------------------------------------------------------------

def rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_route_recipe_matches_direct_interpolation_on_a_pillarboxed_clip():
    # 400x300 (4:3) on the 720x480 canvas: scale 1.6 -> 640x480 placed at x=40; rectangle edges on
    # multiples of 5 source px land exactly on canvas pixels, so the canvas is known without any resize
    h, w, n = 300, 400, 60
    rng = np.random.default_rng(0)
    boxes = np.zeros((2, n, 4))
    out = FrameMasks(boxes, GEO, (h, w))
    planted = []
    for f in range(n):
        m0 = rect(h, w, *(5 * rng.integers([0, 0, 40, 30], [30, 30, 80, 60])))
        m1 = rect(h, w, *(5 * rng.integers([20, 10, 50, 40], [50, 40, 80, 60])))  # overlaps m0 often
        planted.append((m0, m1))
    for f in list(range(30, n)) + list(range(29, -1, -1)):  # produced out of order, as forward then backward
        out.put(f, np.stack(planted[f]), f < 30)
    got = route_windows(out.canvas, n, GEO)
    assert got.shape == (2, 13, 30, 45) and got.dtype == np.int8

    def canvas(m: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = (int(v) * 8 // 5 for v in (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        c = np.zeros((480, 720), np.float32)
        c[y0:y1, 40 + x0:40 + x1] = 1
        return c

    for wi, (s, e) in enumerate([(0, 49), (11, 60)]):
        want = torch.full((13, 30, 45), -1, dtype=torch.int8)
        for k in range(2):
            vol = torch.from_numpy(np.stack([canvas(planted[f][k]) for f in range(s, e)]))
            r = F.interpolate(vol[None, None], size=(13, 30, 45), mode="trilinear", align_corners=False)[0, 0]
            want[r > 0.5] = k  # character 1 written last: it wins where both are set
        np.testing.assert_array_equal(got[wi], want.numpy())
    assert (got == 1).any() and (got == 0).any() and (got == -1).any()


def test_route_analytic_left_and_right_halves():
    # 720x480 clip (no letterbox), char 0 on x < 360, char 1 on x >= 360, every frame. Token column j
    # samples canvas x = 16 j + 7.5: column 22 sits on the seam (half of each: neither > 0.5)
    n = 49
    out = FrameMasks(np.zeros((2, n, 4)), GEO, (480, 720))
    left = rect(480, 720, 0, 0, 360, 480)
    for f in range(n):
        out.put(f, np.stack([left, ~left]), False)
    got = route_windows(out.canvas, n, GEO)
    want = np.full((1, 13, 30, 45), -1, np.int8)
    want[..., :22] = 0
    want[..., 23:] = 1
    np.testing.assert_array_equal(got, want)


def test_letterboxed_canvas_round_trips_through_the_packed_store():
    h, w = 361, 641  # odd: nothing divides evenly
    m = np.random.default_rng(1).random((h, w)) > 0.7
    out = FrameMasks(np.zeros((1, 1, 4)), GEO, (h, w))
    out.put(0, m[None], False)
    np.testing.assert_array_equal(out.canvas(0, 1)[0, 0], letterbox_mask(m, GEO))


def test_clip_size_is_the_cut_stage_even_scaling():
    assert even_size(641, 361) == (640, 360)
    assert even_size(640, 360) == (640, 360)
    assert even_size(1, 1) == (2, 2)


# -- RLE ----------------------------------------------------------------------------------------------

def test_rle_round_trip_and_json_layout():
    rng = np.random.default_rng(2)
    h, w, n = 37, 53, 4
    seqs = [[rng.random((h, w)) > p for _ in range(n)] for p in (0.5, 0.9)]
    seqs[1][2][:] = False  # an empty mask
    rles = [[rle_codec.encode(m) for m in seq] for seq in seqs]
    for seq, rs in zip(seqs, rles):
        for m, r in zip(seq, rs):
            assert r["size"] == [h, w] and isinstance(r["counts"], str)
            np.testing.assert_array_equal(rle_codec.decode(r), m)
            assert rle_codec.area([r])[0] == m.sum()
    raw = masks_json(rles, [7, 3], (h, w))
    doc = json.loads(raw)
    assert raw == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()  # compact, sorted
    assert doc["size"] == [h, w] and doc["fps"] == 25 and doc["frames"] == n
    assert [(c["index"], c["track_id"], len(c["rle"])) for c in doc["characters"]] == [(0, 7, n), (1, 3, n)]
    np.testing.assert_array_equal(rle_codec.decode(doc["characters"][1]["rle"][3]), seqs[1][3])
    a, b = seqs[0][0], seqs[0][1]
    assert rle_codec.iou(rles[0][0], rles[0][1]) == pytest.approx((a & b).sum() / (a | b).sum())
    empty = rle_codec.encode(np.zeros((h, w), bool))
    assert rle_codec.iou(empty, empty) == 0.0 and rle_codec.iou(empty, empty, empty=1.0) == 1.0


# -- pure pieces: drift, stats, thresholds, references ------------------------------------------------------

def test_face_cover_and_drift_on_planted_masks():
    m = rect(100, 200, 50, 20, 100, 60)
    assert face_cover(m, [50, 20, 100, 60]) == 1.0
    assert face_cover(m, [75, 20, 125, 60]) == pytest.approx(0.5)
    assert face_cover(m, [150, 70, 190, 95]) == 0.0
    assert np.isnan(face_cover(m, [210, 10, 260, 50]))  # off screen: no evidence either way
    edge = rect(100, 200, 0, 20, 40, 60)
    assert face_cover(edge, [-20, 20, 40, 60]) == 1.0  # only the in-frame part counts (not 40/60)
    covers = np.array([[1.0, 0.5, 0.2, np.nan, 0.9, np.nan], [1.0, 0.1, 0.9, 0.9, np.nan, np.nan]])
    np.testing.assert_array_equal(drifted(covers, 0.3), [False, True, True, False, False, False])
    np.testing.assert_array_equal(drifted(covers, 1.01), [True, True, True, True, True, False])


def test_prompt_frame_maximises_the_weaker_character():
    boxes = np.zeros((2, 4, 4))
    boxes[..., 2:] = 10.0  # 10x10 everywhere
    boxes[0, 1, 2:] = 40.0  # char 0 huge on frame 1, but char 1 is weak there
    scores = np.array([[0.9, 0.9, 0.5, 0.8], [0.5, 0.1, 0.6, 0.7]])
    assert prompt_frame(boxes, scores) == 3


def test_mask_stats_on_planted_sequences():
    h, w = 10, 10
    a = rect(h, w, 0, 0, 5, 10)  # 50 px
    b = rect(h, w, 0, 0, 5, 5)  # 25 px, inside a
    z = np.zeros((h, w), bool)
    seq0 = [a, a, b, z]
    seq1 = [b, z, z, b]
    rles = [[rle_codec.encode(m) for m in s] for s in (seq0, seq1)]
    covers = np.array([[1.0, 0.5, np.nan, 0.0], [np.nan, np.nan, np.nan, np.nan]])
    st = mask_stats(rles, covers)
    assert st["area_0"] == pytest.approx((0.5 + 0.5 + 0.25 + 0) / 4)
    assert st["area_1"] == pytest.approx(0.25 * 2 / 4)
    assert st["empty_0"] == 0.25 and st["empty_1"] == 0.5
    assert st["stability_0"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert st["stability_1"] == pytest.approx((0.0 + 1.0 + 0.0) / 3)  # two empty frames in a row: stable
    assert st["overlap"] == pytest.approx((0.5 + 0 + 0 + 0) / 4)
    assert st["face_cover_0"] == pytest.approx(0.5) and st["face_cover_1"] == 0.0


def test_decide_thresholds_and_messages():
    s = CharacterMasks(min_area=0.01, max_empty_fraction=0.2, max_overlap=0.4)
    ok = {"area_0": 0.2, "area_1": 0.1, "empty_0": 0.0, "empty_1": 0.2, "overlap": 0.4}
    assert s.decide(ok) is None
    r = s.decide({**ok, "area_1": 0.005})
    assert r.reason == "mask_collapsed" and "character 1" in r.message and "0.0050" in r.message
    assert "masks.min_area=0.01" in r.message
    r = s.decide({**ok, "empty_0": 0.25})
    assert r.reason == "mask_collapsed" and "character 0" in r.message and "25%" in r.message
    assert "masks.max_empty_fraction=0.2" in r.message
    r = s.decide({**ok, "overlap": 0.45})
    assert r.reason == "masks_merged" and "0.450" in r.message and "masks.max_overlap=0.4" in r.message
    assert CharacterMasks(reject=False).decide({**ok, "overlap": 0.99, "area_0": 0.0}) is None


def test_cutout_sets_background_outside_the_mask():
    frame = np.full((100, 200, 3), 90, np.uint8)
    mask = rect(100, 200, 60, 30, 90, 70)
    box = np.array([60, 30, 100, 70])  # 40 px -> crop side 64, centre (80, 50)
    assert ref_window(box, 1.6, 200, 100) == (48, 18, 112, 82)
    ref = cutout(frame, mask, box, 1.6, (255, 0, 255))
    assert ref.shape == (64, 64, 3)
    inside = mask[18:82, 48:112]
    assert (ref[inside] == 90).all() and (ref[~inside] == [255, 0, 255]).all()
    # at the frame edge the crop is cut, as the plain references are
    assert cutout(frame, mask, np.array([0, 0, 40, 40]), 1.6, (0, 0, 0)).shape == (52, 52, 3)


# -- tracking logic with a fake predictor (planted drift) ------------------------------------------------------

class FakePredictor:
    """SAM2's interface; masks are the face boxes, except that forward propagation from a prompt before
    frame ``drift_at`` loses the objects (empty masks) from ``drift_at`` on."""

    def __init__(self, boxes: np.ndarray, size: tuple[int, int], drift_at: int):
        self.boxes, self.size, self.drift_at = boxes, size, drift_at
        self.prompted: list[tuple[int, int]] = []
        self.runs: list[tuple[int, bool]] = []

    def _masks(self, frame: int, good: bool) -> torch.Tensor:
        h, w = self.size
        out = torch.full((len(self.boxes), 1, h, w), -5.0)
        if good:
            for k, b in enumerate(self.boxes[:, frame].astype(int)):
                out[k, 0, b[1]:b[3], b[0]:b[2]] = 5.0
        return out

    def add_new_points_or_box(self, state, frame_idx, obj_id, box=None, points=None, labels=None):
        assert labels is not None and len(points) == len(labels) == 5 and (np.asarray(labels) == 1).all()
        self.prompted.append((frame_idx, obj_id))
        return frame_idx, [0, 1], self._masks(frame_idx, True)

    def propagate_in_video(self, state, start_frame_idx, reverse=False):
        self.runs.append((start_frame_idx, reverse))
        frames = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, self.boxes.shape[1])
        for f in frames:
            good = reverse or f < self.drift_at or start_frame_idx >= self.drift_at
            yield f, [0, 1], self._masks(f, good)


def fake_track(drift_at: int, first: int, max_reprompts: int, n: int = 60):
    boxes = np.tile(np.array([[[10, 10, 30, 30]], [[50, 10, 70, 30]]], np.float64), (1, n, 1))
    lms = np.tile(np.array([[[15, 15], [25, 15], [20, 20], [16, 25], [24, 25]]], np.float64), (2, n, 1, 1))
    model = FakePredictor(boxes, (40, 80), drift_at)
    out = FrameMasks(boxes, GEO, (40, 80))
    state = {"output_dict_per_obj": {}}
    prompts, reprompts = track(model, state, out, lms, first, min_cover=0.3, max_reprompts=max_reprompts)
    return model, out, prompts, reprompts


def test_drift_is_reprompted_at_the_first_drifted_frame_and_repropagated():
    model, out, prompts, reprompts = fake_track(drift_at=40, first=10, max_reprompts=2)
    assert prompts == [10, 40] and reprompts == 1
    assert model.prompted == [(10, 0), (10, 1), (40, 0), (40, 1)]  # both characters, same frame
    assert model.runs == [(10, False), (10, True), (40, False)]
    assert out.complete() and not drifted(out.covers, 0.3).any()
    assert all(rle_codec.area([out.rles[k][f]])[0] == 400 for k in range(2) for f in range(60))


def test_reprompts_are_bounded_and_drift_is_left_when_they_run_out():
    model, out, prompts, reprompts = fake_track(drift_at=40, first=10, max_reprompts=0)
    assert prompts == [10] and reprompts == 0 and model.runs == [(10, False), (10, True)]
    np.testing.assert_array_equal(np.flatnonzero(drifted(out.covers, 0.3)), np.arange(40, 60))


# -- the real (tiny) model on a real clip ------------------------------------------------------------------

def test_outputs_on_a_real_clip(done, clips):
    for cand in done:
        faces = cand.fact(ClipFaces)
        n = faces.frames
        assert {"masks.rle.json", "route.npy", "ref0.jpg", "ref1.jpg"} <= set(cand.members)
        doc = json.loads(cand.members["masks.rle.json"])
        assert doc["size"] == [360, 640] and doc["frames"] == n and doc["fps"] == 25
        assert [c["track_id"] for c in doc["characters"]] == [c.track_id for c in faces.characters]
        masks = [[rle_codec.decode(r) for r in c["rle"]] for c in doc["characters"]]
        assert [len(m) for m in masks] == [n, n] and masks[0][0].shape == (360, 640)

        route = np.load(io.BytesIO(cand.members["route.npy"]), allow_pickle=False)
        fact_json = cand.fact(MaskResult).to_json()
        assert route.dtype == np.int8 and route.shape == (2, 13, 30, 45)
        assert fact_json["windows"] == [[0, 49], [18, 67]] and fact_json["geometry"] == GEO.model_dump()
        assert set(np.unique(route)) <= {-1, 0, 1}
        # route.npy is the trainer's recipe applied to exactly the masks in masks.rle.json
        for wi, (s, e) in enumerate(fact_json["windows"]):
            vol = np.stack([[letterbox_mask(masks[k][f], GEO) for f in range(s, e)] for k in range(2)])
            np.testing.assert_array_equal(route[wi], route_index_mask(vol, GEO))

        # stats are those of the written masks
        st = {k.split(".", 1)[1]: v for k, v in cand.stats.items() if k.startswith("masks.")}
        assert set(st) == set(CharacterMasks.stats_schema)
        again = mask_stats([c["rle"] for c in doc["characters"]], np.zeros((2, n)))
        for key in ("area_0", "area_1", "empty_0", "empty_1", "stability_0", "stability_1", "overlap"):
            assert st[key] == pytest.approx(again[key]), key
        assert st["random_weights"] is True and fact_json["random_weights"] is True
        assert 0 <= st["reprompts"] <= 2 and len(fact_json["prompt_frames"]) == st["reprompts"] + 1

        # references: the character's crop at its best frame, background where its mask is not
        for k in range(2):
            ref = np.asarray(Image.open(io.BytesIO(cand.members[f"ref{k}.jpg"])).convert("RGB")).astype(int)
            best = fact_json["ref_frames"][k]
            box = np.asarray(faces.characters[k].boxes[best])
            xa, ya, xb, yb = ref_window(box, 1.6, 640, 360)
            assert ref.shape == (yb - ya, xb - xa, 3)
            inside = masks[k][best][ya:yb, xa:xb]
            # away from mask edges (JPEG rings there), outside pixels are the background colour
            pad = np.pad(inside, 3, constant_values=False)
            near = np.zeros_like(inside)
            for dy in range(7):
                for dx in range(7):
                    near |= pad[dy:dy + inside.shape[0], dx:dx + inside.shape[1]]
            far = ~near
            assert far.sum() > 100
            assert np.abs(ref[far] - 255).max() <= 12


def test_one_state_for_both_characters_runs_the_encoder_once_per_frame(stage, clips):
    s = stage.model_copy(update={"max_reprompts": 0})
    s._model, s._random, s._config_used = stage._model, stage._random, stage._config_used
    out, calls = encoder_calls(s, fresh(clips[:1]))
    assert out[0].stats["masks.reprompts"] == 0
    assert calls == clips[0].fact(ClipFaces).frames  # 67, not 2 x 67


def test_forced_reprompts_are_recorded_bounded_and_follow_production_order(stage, clips):
    s = stage.model_copy(update={"max_reprompts": 2, "drift_min_cover": 1.01})  # every frame "drifts"
    s._model, s._random, s._config_used = stage._model, stage._random, stage._config_used
    out, calls = encoder_calls(s, fresh(clips[:1]))
    n = clips[0].fact(ClipFaces).frames
    faces = clips[0].fact(ClipFaces).characters
    p = prompt_frame(np.array([c.boxes for c in faces]), np.array([c.scores for c in faces]))
    assert 1 < p < n - 2
    fact_json = out[0].fact(MaskResult).to_json()
    assert out[0].stats["masks.reprompts"] == 2 and fact_json["reprompts"] == 2
    # first produced after the prompt: p+1 (forward pass); then the earliest left: p-1 (backward pass)
    assert fact_json["prompt_frames"] == [p, p + 1, p - 1]
    # n, plus one prompt frame and the re-propagated frames (forward from p+1, backward from p-1) each
    assert calls == n + 1 + (n - p - 2) + 1 + (p - 1)


def test_batch_of_two_equals_one_at_a_time(stage, done, clips):
    alone = stage.run_batch(fresh(clips[1:2]))[0]
    assert alone.members == done[1].members
    assert alone.stats == done[1].stats


# -- weights and configs ---------------------------------------------------------------------------------------

def copy_model(tiny: dict, dst: Path) -> Path:
    shutil.copytree(tiny["model"], dst)
    return dst


def test_check_model_passes_on_make_tiny_output(tiny):
    msg = CharacterMasks(**tiny).check_model()
    assert "sam2.1_hiera_mtcc_tiny.yaml" in msg and "match" in msg and "RANDOM" in msg
    yaml_text = next(Path(tiny["model"]).glob("*.yaml")).read_text()
    assert "sam2.modeling.sam2_base.SAM2Base" in yaml_text and "image_size: 128" in yaml_text
    state = loading.load_state_dict(next(Path(tiny["model"]).glob("*.pt")))
    assert any(k.startswith("image_encoder.trunk.") for k in state)


def test_random_weights_are_refused_unless_allowed(tiny):
    s = CharacterMasks(model=tiny["model"])
    with pytest.raises(loading.WeightsError, match="RANDOM weights.*allow_random_weights"):
        s.setup()
    with pytest.raises(loading.WeightsError, match="RANDOM weights"):
        s.check_model()


def test_checkpoint_with_a_missing_key_is_refused_naming_it(tiny, tmp_path):
    d = copy_model(tiny, tmp_path / "broken")
    pt = next(d.glob("*.pt"))
    state = loading.load_state_dict(pt)
    del state["sam_mask_decoder.iou_token.weight"]
    torch.save({"model": state}, pt)
    s = CharacterMasks(model=str(d), allow_random_weights=True)
    for call in (s.setup, s.check_model):
        with pytest.raises(loading.WeightsError, match=r"1 missing: sam_mask_decoder\.iou_token\.weight.*"
                                                      r"hf download facebook/sam2\.1-hiera-large"):
            call()


def test_config_targets_outside_sam2_models_are_refused_before_import(tiny, tmp_path, monkeypatch):
    # a module that leaves a trace when imported: a refused config must never import it
    trace = tmp_path / "imported"
    (tmp_path / "evil_mtcc_mod.py").write_text(f"open({str(trace)!r}, 'w').close()\nclass Boom:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    src = next(Path(tiny["model"]).glob("*.yaml")).read_text()
    key = "_target_: sam2.modeling.position_encoding.PositionEmbeddingSine"
    assert key in src
    cases = {"evil_mtcc_mod.Boom": "refused", "sam2.benchmark.x": "refused",
             "sam2.modeling.sam2_base.torch.nn.Linear": "not a sam2 model class"}
    for target, why in cases.items():
        d = copy_model(tiny, tmp_path / target.replace(".", "_"))
        cfg = next(d.glob("*.yaml"))
        cfg.write_text(src.replace(key, f"_target_: {target}", 1))
        s = CharacterMasks(model=str(d), allow_random_weights=True)
        for call in (s.setup, s.check_model):
            with pytest.raises(sam2_model.ConfigError,
                               match=rf"{cfg.name}.*model\.image_encoder\.neck\.position_encoding\._target_.*{why}"):
                call()
    assert not trace.exists()
    # anywhere in the file counts, not just under `model`
    d = copy_model(tiny, tmp_path / "elsewhere")
    cfg = next(d.glob("*.yaml"))
    cfg.write_text(src + "\ntrainer:\n  _target_: evil_mtcc_mod.Boom\n")
    with pytest.raises(sam2_model.ConfigError, match=r"trainer\._target_"):
        CharacterMasks(model=str(d), allow_random_weights=True).setup()
    assert not trace.exists()


def test_model_locations(tiny, tmp_path, monkeypatch):
    # a bare .pt: the config comes from stages.masks.config (a local YAML here)
    d = copy_model(tiny, tmp_path / "m")
    cfg = next(d.glob("*.yaml"))
    pt = next(d.glob("*.pt"))
    s = CharacterMasks(model=str(pt), config=str(cfg), allow_random_weights=True)
    assert "match" in s.check_model()
    # two checkpoints in one directory: ambiguous
    shutil.copy(pt, d / "other.pt")
    with pytest.raises(loading.WeightsError, match="2 .pt files"):
        CharacterMasks(model=str(d), allow_random_weights=True).check_model()
    # relative local paths are pinned where the config is read; hub ids and packaged configs are not
    monkeypatch.chdir(tmp_path)
    s = CharacterMasks(model="m", config="m/" + cfg.name)
    assert s.model == str(tmp_path / "m") and s.config == str(tmp_path / "m" / cfg.name)
    assert CharacterMasks().model == "facebook/sam2.1-hiera-large"
    assert CharacterMasks().config == "configs/sam2.1/sam2.1_hiera_l.yaml"


def test_packaged_large_config_passes_the_target_check():
    path = loading.packaged_file("sam2", "configs", "sam2.1", "sam2.1_hiera_l.yaml", install="sam2")
    data = sam2_model.read_config(path)
    node = sam2_model.predictor_config(data, path)
    assert node["_target_"] == "sam2.sam2_video_predictor.SAM2VideoPredictor"
    assert node["fill_hole_area"] == 8 and node["binarize_mask_from_pts_for_mem_enc"] is True
    assert node["sam_mask_decoder_extra_args"]["dynamic_multimask_stability_thresh"] == 0.98
    assert node["memory_encoder"]["fuser"]["layer"]["layer_scale_init_value"] == pytest.approx(1e-6)


# -- the inference state built in memory ---------------------------------------------------------------------

def test_state_matches_sam2_init_state_on_the_same_frames(stage, tmp_path):
    # frames already at the model's input size, so sam2's own loader does no resizing: the two must agree
    model = stage._model
    size = model.image_size
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    decoded = np.stack([np.asarray(Image.open(tmp_path / f"{i}.jpg").convert("RGB")) for i in range(3)])
    theirs = model.init_state(str(tmp_path))
    ours = sam2_model.inference_state(model, torch.from_numpy(decoded), theirs["video_height"],
                                      theirs["video_width"])
    assert set(ours) == set(theirs) and ours["num_frames"] == theirs["num_frames"] == 3
    for i in range(3):
        torch.testing.assert_close(ours["images"][i], theirs["images"][i], atol=1e-5, rtol=0)


def test_reprompt_makes_a_fresh_conditioning_frame(stage):
    # a click on an already tracked frame is a correction SAM2 re-infers over during propagation; the
    # stage's re-prompt must instead be a conditioning frame whose prompt result is kept
    model = stage._model
    frames = torch.from_numpy(np.random.default_rng(4).integers(0, 255, (8, 128, 128, 3), dtype=np.uint8))
    boxes = [np.array([20, 20, 60, 70], np.float32), np.array([90, 15, 140, 70], np.float32)]
    with torch.inference_mode():
        state = sam2_model.inference_state(model, frames, 90, 160)
        for k in range(2):
            model.add_new_points_or_box(state, frame_idx=2, obj_id=k, box=boxes[k])
        list(model.propagate_in_video(state, start_frame_idx=2))
        sam2_model.forget_frame(state, 5)
        for k in range(2):
            _, _, prompted = model.add_new_points_or_box(state, frame_idx=5, obj_id=k, box=boxes[1 - k])
        outs = {f: m.clone() for f, _, m in model.propagate_in_video(state, start_frame_idx=5)}
    assert all(5 in state["output_dict_per_obj"][k]["cond_frame_outputs"] for k in range(2))
    assert sorted(outs) == [5, 6, 7]
    torch.testing.assert_close(outs[5], prompted)
