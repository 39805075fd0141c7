"""Caption (Qwen2-VL through transformers) on a tiny random-initialised Qwen2-VL with an offline tokenizer.

The tiny checkpoint is written by ``ClipCaption.make_tiny`` in the real one's layout and loaded through the
loading seam, so these tests run the code path the 7B model runs: frames decoded at the fed size, the
checkpoint's chat template, the processor, batched left-padded greedy generation, decoding of the new
tokens. Its captions are gibberish; what is checked is that they are produced, reproducible, tied to their
own clip, and that the inputs (frame count, times, sizes) are those the settings ask for.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fresh, ready, run_pending, talk_clips, tiny_fixture

from mtcc.facts import CaptionMeta, CutMedia, ProbeResult
from mtcc.nets import loading
from mtcc.stages.base import Candidate
from mtcc.stages.caption import ClipCaption, frame_times
from mtcc.stages.clip_media import clip_media
from mtcc.stages.cut import ClipCut
from mtcc.stages.probe import Probe

NEW = 12  # new tokens per caption: enough to tell captions apart, little CPU time


tiny = tiny_fixture(ClipCaption)


@pytest.fixture(scope="module")
def clips(sample_dir) -> list[Candidate]:
    """two_talk.mp4 (640x360, 25 fps, 8 s) through probe -> faces -> segment -> cut: three 2.667 s clips."""
    return talk_clips(sample_dir, 2.7, 3)


@pytest.fixture(scope="module")
def varied(sample_dir) -> list[Candidate]:
    """Clips of different videos and lengths, one of them 64x48 (its frames are scaled up to min_pixels):
    prompts of three lengths, so a batch of them is padded."""
    out = []
    for name, start, end in (("two_talk.mp4", 0.5, 3.7), ("one_person.mp4", 1.0, 4.2), ("tiny_res.mp4", 0.0, 2.9),
                             ("three_people.mp4", 0.2, 5.0)):
        c = Candidate(key=name, video_id=name, source=str(sample_dir / name), shard=0, level="clip",
                      start=start, end=end)
        Probe().compute(c)  # the probe facts only: tiny_res is below the probe stage's size limits
        ClipCut().compute(c)  # the clip's own media, which the caption stage reads
        out.append(c)
    return out


@pytest.fixture(scope="module")
def stage(tiny) -> ClipCaption:
    return ready(ClipCaption(**tiny, max_new_tokens=NEW, forward_batch=4))


@pytest.fixture(scope="module")
def captioned(stage, clips) -> list[Candidate]:
    return run_pending(stage, clips)


def captions(cands: list[Candidate]) -> list[str]:
    return [c.members["caption.txt"].decode("utf-8") for c in cands]


# -- the tiny checkpoint --------------------------------------------------------------------------------------

def test_tiny_checkpoint_has_the_real_layout_and_an_offline_qwen_tokenizer(tiny):
    from transformers import AutoConfig, AutoTokenizer

    from mtcc.nets.qwen_tiny import SPECIAL_TOKENS

    d = Path(tiny["model"])
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "processor_config.json", "chat_template.jinja", loading.RANDOM_MARKER):
        assert (d / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    cfg = AutoConfig.from_pretrained(d, local_files_only=True)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    # Qwen's special tokens, in Qwen's order, right after the learned vocabulary; the config names them
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS))) and ids[-1] == len(tok) - 1
    assert (cfg.vision_start_token_id, cfg.image_token_id, cfg.video_token_id) == (ids[9], ids[12], ids[13])
    assert len(tok) <= cfg.text_config.vocab_size and tok.eos_token == "<|im_end|>"
    text = "Two people talk: «ça va?» 日本 — 42 <|im_start|>"
    enc = tok(text)["input_ids"]
    assert tok.decode(enc) == text and enc[-1] == ids[1]  # byte-level: any text round-trips; specials atomic


# -- the stage on real clips --------------------------------------------------------------------------------

def test_tiny_model_captions_real_clips_through_the_stage(captioned, stage):
    for c in captioned:
        text = c.members["caption.txt"].decode("utf-8")
        assert text and text == text.strip()
        s = {k.split(".", 1)[1]: v for k, v in c.stats.items() if k.startswith("caption.")}
        assert set(s) == set(ClipCaption.stats_schema)
        # 2.667 s at 1 fps: frames at 0, 1, 2 s, the last repeated to fill the second temporal patch
        assert s["n_frames"] == 4 and c.fact(CaptionMeta).frames == [0.0, 1.0, 2.0, 2.0]
        t, h, w = c.fact(CaptionMeta).grid
        assert (t, h, w) == (2, 20, 36)  # 640x360 -> 504x280 within 360*420 pixels, 14-px patches
        assert s["visual_tokens"] == t * h * w // 4
        # the prompt is the chat template around one <|video_pad|> per merged visual token
        template = stage._processor.tokenizer(stage._prompt_text)["input_ids"]
        assert s["prompt_tokens"] == len(template) - 1 + s["visual_tokens"]
        # the tiny model's control-token logits are zero, so it writes text until max_new_tokens
        assert s["new_tokens"] == NEW and s["caption_chars"] == len(text) and s["random_weights"] is True
        assert c.fact(CaptionMeta).model == stage.model and c.fact(CaptionMeta).backend == "transformers"
        assert c.fact(CaptionMeta).fps == 1.0
    # greedy, keeping the checkpoint's repetition penalty and stop tokens (the real one ships both)
    assert (stage._gen.do_sample, stage._gen.top_k, stage._gen.repetition_penalty) == (False, None, 1.05)
    tok = stage._processor.tokenizer
    assert stage._eos == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert stage._prompt_text.endswith("<|vision_start|><|video_pad|><|vision_end|>Please describe the video in "
                                       "detail.<|im_end|>\n<|im_start|>assistant\n")


def test_same_input_twice_gives_the_same_captions(captioned, stage, clips):
    again = stage.process(fresh(clips))
    assert captions(again) == captions(captioned)


def test_saved_copy_and_resaved_model_reload_through_the_seam_identically(tiny, captioned, clips, tmp_path,
                                                                          monkeypatch):
    # a copy of the checkpoint, named by a relative path (pinned absolute by the config validator)
    shutil.copytree(tiny["model"], tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    copied = ClipCaption(model="copy", allow_random_weights=True, max_new_tokens=NEW)
    assert copied.model == str(tmp_path / "copy")
    monkeypatch.chdir("/")
    assert captions(copied.run_batch(fresh(clips))) == captions(captioned)

    # what the stage loaded, saved again (sharded this time, as the 7B checkpoint is) and reloaded
    resaved = tmp_path / "resaved"
    copied._net.save_pretrained(resaved, max_shard_size="300KB")
    copied._processor.save_pretrained(resaved)
    loading.write_marker(resaved, "Qwen2-VL (tiny, resaved)")
    index = json.loads((resaved / "model.safetensors.index.json").read_text())
    n_shards = len(set(index["weight_map"].values()))
    assert n_shards > 1
    again = ClipCaption(model=str(resaved), allow_random_weights=True, max_new_tokens=NEW)
    assert f"in {n_shards} safetensors file(s)" in again.check_model()
    assert captions(again.run_batch(fresh(clips))) == captions(captioned)


# -- frames -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("duration, fps, want", [
    (2.667, 1.0, [0, 1, 2, 2]),        # 3 frames at 1 fps, the last repeated: an even count
    (4.0, 1.0, [0, 1, 2, 3]),          # exactly 4 s: t = 4 is past the clip
    (5.0, 1.0, [0, 1, 2, 3, 4, 4]),
    (2.667, 2.0, [0, 0.5, 1, 1.5, 2, 2.5]),
    (0.4, 1.0, [0, 0.2]),              # one frame at 1 fps: min_frames (2) spread over the clip instead
    (100.0, 1.0, [0, 12.5, 25, 37.5, 50, 62.5, 75, 87.5]),  # capped at max_frames, spread evenly
])
def test_frame_times_at_fps_even_and_bounded(duration, fps, want):
    got = frame_times(duration, fps, min_frames=2, max_frames=8)
    np.testing.assert_allclose(got, want)
    assert len(got) % 2 == 0 and len(got) >= 2


def test_frames_are_the_clips_source_frames_at_the_fed_size(stage, clips):
    from mtcc.media.video import open_frames

    clip = clips[1]  # starts at 2.667 s
    times, frames = stage.frames(clip)
    assert list(times) == [0.0, 1.0, 2.0, 2.0] and frames.shape == (4, 284, 504, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[3], frames[2])
    w, h = clip.fact(CutMedia).size
    ref = open_frames(clip_media(clip, stage).mp4(), {"width": w, "height": h}, 504)  # the delivered clip
    src = open_frames(clip.source, clip.fact(ProbeResult).to_json(), 504)
    for k, t in enumerate(times[:3]):
        np.testing.assert_array_equal(frames[k], ref.frame(int(round(t * 25))))
        # and that is the source's picture at that time, up to the clip's compression
        assert np.abs(frames[k].astype(int) - src.frame(int(round((clip.start + t) * 25))).astype(int)).mean() < 3
    assert not np.array_equal(frames[0], frames[1])  # the speakers move between seconds


@pytest.mark.parametrize("max_pixels", [360 * 420, 200 * 200, 56 * 56 * 3])
def test_visual_grid_respects_max_pixels(tiny, clips, varied, max_pixels):
    s = ClipCaption(**tiny, max_new_tokens=NEW, max_pixels=max_pixels, min_pixels=28 * 28 * 2)
    s.setup()
    for c in (clips[0], varied[2]):
        _, frames = s.frames(c)
        # decoded at the processor's target width (the source's, if smaller), the height following the
        # source's aspect: the area is the target's up to rounding, never the full frame's
        assert frames.shape[1] * frames.shape[2] <= max(max_pixels * 1.1, 48 * 64)
        grid = s.inputs([frames])["video_grid_thw"].tolist()[0]
        assert grid[0] * 2 == len(frames)
        assert grid[1] * grid[2] * 14 * 14 <= max_pixels and grid[1] % 2 == 0 and grid[2] % 2 == 0


# -- batching -----------------------------------------------------------------------------------------------

def test_batched_generation_matches_one_clip_at_a_time(tiny, varied):
    """Float32 on CPU, greedy: padding changes only which (masked) positions exist, so the batched
    captions are expected to equal the single ones exactly (measured: they do for this fixture). The
    captions of the four clips differ from each other, so a caption landing on the wrong clip would show."""
    single = ClipCaption(**tiny, max_new_tokens=NEW, forward_batch=1)
    batched = ClipCaption(**tiny, max_new_tokens=NEW, forward_batch=4)
    one = single.run_batch(fresh(varied))
    many = batched.run_batch(fresh(varied))
    assert captions(many) == captions(one)
    assert len(set(captions(one))) == len(varied)
    assert [c.stats["caption.prompt_tokens"] for c in many] == [c.stats["caption.prompt_tokens"] for c in one]
    # three prompt lengths in one batch: 4 frames of 64x48 scaled up to min_pixels, 4 and 6 frames of 640x360
    assert [c.stats["caption.prompt_tokens"] for c in many] == [414, 414, 334, 594]


def test_prompts_are_left_padded_so_each_ends_where_generation_starts(stage, varied):
    videos = [stage.frames(c)[1] for c in (varied[0], varied[2])]
    batch = stage.inputs(videos)
    mask, ids = batch["attention_mask"], batch["input_ids"]
    lengths = mask.sum(1).tolist()
    assert lengths[0] > lengths[1]
    short = mask[1].tolist()
    pad = lengths[0] - lengths[1]
    assert short == [0] * pad + [1] * lengths[1]
    assert ids[1, :pad].tolist() == [stage._processor.tokenizer.pad_token_id] * pad
    tail = stage._processor.tokenizer("<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    assert ids[0, -len(tail):].tolist() == tail == ids[1, -len(tail):].tolist()


# -- refusals and checks ------------------------------------------------------------------------------------

def test_random_weights_refused_unless_allowed(tiny, clips):
    s = ClipCaption(model=tiny["model"], max_new_tokens=NEW)
    with pytest.raises(loading.WeightsError, match=r"RANDOM weights.*stages\.caption\.allow_random_weights=true"):
        s.setup()
    with pytest.raises(loading.WeightsError, match="RANDOM weights"):
        s.check_model()
    out = s.run_batch(fresh(clips[:1]))  # inside a run: that clip is rejected with the reason, nothing written
    assert out[0].status == "rejected" and "RANDOM weights" in out[0].message and "caption.txt" not in out[0].members


def test_a_checkpoint_missing_keys_is_refused_not_run_on_their_random_init(tiny, tmp_path):
    """transformers fills keys a checkpoint lacks (a Qwen2.5-VL folder, a partial download) with random values
    and only logs it: the stage refuses, naming the keys, where it would have captioned with those values."""
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(tiny["model"], tmp_path / "partial")
    (d / loading.RANDOM_MARKER).unlink()  # as if they were the real weights
    weights = load_file(str(d / "model.safetensors"))
    for k in ("visual.blocks.0.mlp.fc1.weight", "visual.blocks.0.mlp.fc1.bias"):
        del weights[k]
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loading.WeightsError, match=r"left 2 key\(s\) of Qwen2-VL unloaded.*blocks\.0\.mlp\.fc1"):
        ClipCaption(model=str(d), max_new_tokens=NEW).setup()


def test_vllm_backend_without_vllm_names_the_fix(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, whether installed or not
    s = ClipCaption(**tiny, backend="vllm")
    with pytest.raises(ImportError, match=r"stages\.caption\.backend is 'vllm'.*pip install vllm.*own torch"):
        s.setup()


def test_check_model_passes_on_tiny_and_names_what_is_wrong(tiny, tmp_path):
    desc = ClipCaption(**tiny).check_model()
    assert "Qwen2-VL" in desc and "match config.json" in desc

    def broken(name: str) -> ClipCaption:
        d = tmp_path / name
        shutil.copytree(tiny["model"], d)
        return ClipCaption(model=str(d), allow_random_weights=True)

    s = broken("no_tokenizer")
    (Path(s.model) / "tokenizer.json").unlink()
    with pytest.raises(loading.WeightsError, match=r"lacks the tokenizer \(tokenizer\.json\)"):
        s.check_model()

    s = broken("no_weights")
    (Path(s.model) / "model.safetensors").unlink()
    with pytest.raises(loading.WeightsError, match=r"lacks the model weights \(model\.safetensors or "):
        s.check_model()

    s = broken("other_width")  # a config that does not describe these weights
    cfg = json.loads((Path(s.model) / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (Path(s.model) / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(loading.WeightsError, match=r"do not fit .*6 of another shape: model\.layers\.0\.mlp\.down_proj"):
        s.check_model()

    with pytest.raises(loading.WeightsError, match=r"does not exist \(stages\.caption\.model\)"):
        ClipCaption(model=str(tmp_path / "nowhere")).check_model()


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="min_pixels"):
        ClipCaption(model=str(tmp_path), min_pixels=200_000, max_pixels=100_000)
    with pytest.raises(ValueError, match="backend"):
        ClipCaption(model=str(tmp_path), backend="tgi")
    s = ClipCaption()
    assert (s.model, s.fps, s.max_pixels, s.max_new_tokens, s.prompt) == (
        "Qwen/Qwen2-VL-7B-Instruct", 1.0, 360 * 420, 512, "Please describe the video in detail.")
