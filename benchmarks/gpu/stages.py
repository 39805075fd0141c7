"""Each model stage built at full size (or reduced, ``tiny``) with random weights and run through its own
code path on clips shaped like a real one (``--clip-seconds`` at 25 fps, 720p source, 16 kHz audio).

What "batch" means is each stage's own GPU batching knob (what a profile sets):
  * separate: windows (clips x characters x 3 s windows) per forward (``stages.separate.forward_batch``);
  * asd: windows of the visual encoder (characters x ``encode_frames`` frames) per forward
    (``stages.asd.forward_batch``); its audio encoder and sequence model run per clip;
  * sync: 5-frame windows per forward, video and audio alike (``stages.sync.forward_batch``);
  * masks: clips per call, run one after another: SAM2's video predictor tracks one clip (both
    characters in one inference state) at a time, so there is no batch dimension to sweep;
  * audio_emb: tracks (2 per clip) per forward (``stages.audio_emb.forward_batch``);
  * caption: clips per ``generate`` call (``stages.caption.forward_batch``), ``--new-tokens`` new tokens
    forced per clip (min = max new tokens), greedy, the checkpoint's repetition penalty.
Each measurement processes enough clips to fill the batch at least twice (the last forward of a call may
be partial, as it is in the stage).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtcc.media.windows import window_starts
from mtcc.stages.cut import even_size

from .plan import BenchError
from .timing import Work

FPS = 25
RATE = 16000
SOURCE = (720, 1280)  # (h, w) of the frames a clip is cut from: 720p

# Qwen2-VL-7B-Instruct's config.json (text side; the vision side is Qwen2VLVisionConfig's defaults, the
# merger projecting into the text width)
QWEN_7B_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
QWEN_7B_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 3584,
                  "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3}
# facebook/wav2vec2-base-960h's encoder (its config.json; the CTC head is not run by the stage)
WAV2VEC2_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "conv_dim": (512,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2), "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
                 "conv_bias": False, "feat_extract_norm": "group", "do_stable_layer_norm": False,
                 "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
SAM2_LARGE = ("configs", "sam2.1", "sam2.1_hiera_l.yaml")
# Qwen2-VL-Instruct's generation_config.json values that change the decode loop's work
QWEN_REPETITION_PENALTY = 1.05


# -- the clip every stage sees ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipShape:
    seconds: float
    source: tuple[int, int] = SOURCE

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * FPS))

    @property
    def samples(self) -> int:
        return round(self.seconds * RATE)


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    # band-limited noise at speech level: the models' cost does not depend on it, the feature extractor's
    # normalisation and the separator's peak scaling see ordinary values
    x = rng.standard_normal(n).astype(np.float32)
    return (np.convolve(x, np.ones(8, np.float32) / 8, mode="same") * 0.3).astype(np.float32)


def _params(net: Any) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# -- the stages ------------------------------------------------------------------------------------------

@dataclass
class Bench:
    """One stage ready to run: ``run(batch)`` times nothing itself, ``info`` describes the model."""

    run: Callable[[int], Work]
    info: dict[str, Any]


def bench_separate(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    from mtcc.stages import separate as sep

    full = sep.packaged_settings()
    if tiny:
        full["network_audio"].update(sep.TINY_AUDIO)
    net = sep.build_network(full).to(device).eval()
    stage = sep.SpeechSeparation(**settings, device=str(device))
    stage._net = net
    window = max(1, round(stage.window_seconds * sep.AUDIO_RATE))
    hop = max(1, round(window * (1.0 - stage.overlap)))
    chars = 2
    per_clip = chars * len(window_starts(clip.samples, window, hop))
    mix = _speechlike(rng, clip.samples)
    lips = rng.standard_normal((chars, clip.frames, sep.LIP_SIZE, sep.LIP_SIZE)).astype(np.float32)

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        _, calls = sep.separate_tracks(stage._forward, [mix] * n, [lips] * n, [float(FPS)] * n,
                                       window=window, hop=hop, forward_batch=batch)
        return Work(n, n * clip.seconds, calls, {"items": n * per_clip})

    info = {"model": "clearvoice AV_MossFormer2_TSE_16K (av_mossformer2)" + (" reduced" if tiny else ""),
            "params": _params(net), "dtype": str(next(net.parameters()).dtype).removeprefix("torch."),
            "path": "stages.separate.separate_tracks + SpeechSeparation._forward",
            "per_clip": f"{chars} characters x {per_clip // chars} windows of {stage.window_seconds:g} s "
                        f"(overlap {stage.overlap:g})"}
    return Bench(run, info)


def bench_asd(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    import torch

    from mtcc.nets.light_asd import LightASD
    from mtcc.stages import asd as asd_stage

    net = LightASD().fuse().to(device)  # one size: make-tiny writes the real 1.0 M-parameter class too
    stage = asd_stage.ActiveSpeakers(**settings, device=str(device))
    stage._net = net
    stage._bf16 = stage.dtype == "bfloat16" or (stage.dtype == "auto" and asd_stage.bf16_supported(str(device)))
    faces = rng.integers(0, 256, (2, clip.frames, asd_stage.FACE_SIZE, asd_stage.FACE_SIZE), dtype=np.uint8)
    mfcc = asd_stage.mfcc_rows(_speechlike(rng, clip.samples), clip.frames)  # CPU work of _inputs, not timed
    per_clip = 2 * len(window_starts(clip.frames, stage.encode_frames))

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        stage.score([asd_stage._Clip(faces, [mfcc], False) for _ in range(n)])
        return Work(n, n * clip.seconds, math.ceil(n * per_clip / batch), {"items": n * per_clip})

    info = {"model": "Light-ASD (CVPR 2023), our class", "params": _params(net),
            "dtype": "bfloat16" if stage._bf16 else "float32", "torch_threads": torch.get_num_threads(),
            "path": "ActiveSpeakers.score (visual encoder on [N,T,112,112], audio encoder, GRU back-end)",
            "per_clip": f"2 faces x {per_clip // 2} windows of {stage.encode_frames} frames"}
    return Bench(run, info)


def bench_sync(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator) -> Bench:
    from mtcc.stages import sync as sy

    net = sy.syncnet_class()(num_layers_in_fc_layers=1024).to(device).eval()
    stage = sy.SyncScores(**settings, device=str(device))
    stage._net = net
    windows = sy.n_windows(clip.frames, clip.samples)
    if windows < 1:
        raise BenchError(f"--clip-seconds {clip.seconds:g} is too short for SyncNet ({clip.frames} frames)")
    crops = rng.integers(0, 256, (2, clip.frames, sy.CROP_SIZE, sy.CROP_SIZE, 3), dtype=np.uint8)
    tracks = [_speechlike(rng, clip.samples) for _ in range(2)]
    mfcc = [sy.mfcc_features(t) for t in tracks]  # CPU work of _inputs, outside the timed GPU path
    per_clip = 2 * windows

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = max(1, math.ceil(2 * batch / per_clip))
        clips = [sy._Clip(crops, mfcc, tracks, windows) for _ in range(n)]
        stage._embed(clips)
        calls = 2 * math.ceil(n * per_clip / batch)  # video and audio windows alike
        return Work(n, n * clip.seconds, calls, {"items": 2 * n * per_clip})

    info = {"model": "syncnet_python SyncNetModel.S (SyncNet v2, 1024-d)", "params": _params(net), "dtype": "float32",
            "path": "SyncScores._embed (forward_lip on [N,3,5,224,224], forward_aud on [N,1,13,20])",
            "per_clip": f"2 faces x {windows} video windows + 2 tracks x {windows} audio windows"}
    return Bench(run, info)


def bench_masks(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator,
                reprompts: int) -> Bench:
    import contextlib
    import warnings

    import torch

    from mtcc.nets import loading as stage_models
    from mtcc.nets import mask_tracking as mtrack
    from mtcc.nets import sam2_model
    from mtcc.stages import masks as mk

    base = mk.TINY_BASE if tiny else SAM2_LARGE
    cfg = stage_models.packaged_file("sam2", *base, install=sam2_model.INSTALL)
    data = sam2_model.read_config(cfg)
    if tiny:
        for key, value in mk.TINY_CHANGES.items():
            sam2_model.set_dotted(data, key, value)
    sam2_model.quiet_progress()
    # built on the CPU and moved, as load_predictor does with the real checkpoint
    model = sam2_model.build_model(data, cfg, "cpu").to(device).eval()
    stage = mk.CharacterMasks(**settings, device=str(device), max_reprompts=reprompts)
    size = int(model.image_size)
    h, w = even_size(clip.source[1], clip.source[0])[::-1]
    t = clip.frames
    # what CharacterMasks._frames hands SAM2: every clip frame resized to the square input, uint8, on the host
    frames = torch.from_numpy(rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8))
    boxes = np.array([[w * 0.2, h * 0.25, w * 0.38, h * 0.65], [w * 0.62, h * 0.25, w * 0.80, h * 0.65]])
    boxes = np.repeat(boxes[:, None, :], t, axis=1)
    lm_rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    lms = [np.repeat((b[0, :2] + lm_rel * (b[0, 2:] - b[0, :2]))[None], t, axis=0) for b in boxes]
    first = t // 2  # prompted mid-clip: a forward and a backward pass, as on most real clips

    def one_clip() -> int:
        out = mtrack.FrameMasks(boxes, stage.geometry, (h, w))
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            # the stage filters the same warning (sam2's optional hole-filling extension is not built)
            warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step", category=UserWarning)
            state = sam2_model.inference_state(model, frames, h, w)
            _, done = mtrack.track(model, state, out, lms, first, min_cover=stage.drift_min_cover,
                               max_reprompts=stage.max_reprompts)
        if not out.complete():
            raise RuntimeError(f"SAM2 produced masks for {(out.order >= 0).sum()} of {t} frames")
        return done

    def run(batch: int) -> Work:
        done = [one_clip() for _ in range(batch)]
        return Work(batch, batch * clip.seconds, batch * t, {"reprompts": int(sum(done))})

    info = {"model": f"SAM2.1 video predictor ({cfg.name}{', reduced' if tiny else ''})", "params": _params(model),
            "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32", "image_size": size,
            "path": "sam2_model.inference_state + masks.track (both characters in one state, RLE + latent canvas "
                    "per frame)",
            "per_clip": f"{t} frames at {size}x{size}, 2 objects, masks at {h}x{w}, max_reprompts {reprompts}"}
    return Bench(run, info)


def bench_audio_emb(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any],
                    rng: np.random.Generator) -> Bench:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from mtcc.stages import audio_emb as ae

    stage = ae.AudioEmbeddings(**settings, device=str(device))
    config = Wav2Vec2Config(**(ae.TINY if tiny else WAV2VEC2_BASE))
    with torch.device(device):
        net = Wav2Vec2Model(config)
    stage._net = net.to(device=device, dtype=getattr(torch, stage.dtype)).eval()
    # base-960h's preprocessor_config.json (make_tiny writes the same)
    stage._fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=ae.AUDIO_RATE, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=False)
    n_frames = round(clip.samples / ae.AUDIO_RATE * stage.fps)
    track = _speechlike(rng, clip.samples)

    def run(batch: int) -> Work:
        stage.forward_batch = batch
        n = batch  # 2 tracks per clip: two forwards' worth
        tracks = [track] * (2 * n)
        stage.embed_tracks(tracks, [n_frames] * len(tracks))
        return Work(n, n * clip.seconds, math.ceil(2 * n / batch), {"items": 2 * n})

    info = {"model": "transformers Wav2Vec2Model (" + ("reduced" if tiny else "wav2vec2-base-960h") + ")",
            "params": _params(net), "dtype": stage.dtype,
            "path": "AudioEmbeddings.embed_tracks (feature extractor, CNN, interpolation to frames, all layers)",
            "per_clip": f"2 tracks of {clip.samples} samples -> [{n_frames}, {config.num_hidden_layers}, "
                        f"{config.hidden_size}]"}
    return Bench(run, info)


def bench_caption(device: Any, tiny: bool, clip: ClipShape, settings: dict[str, Any], rng: np.random.Generator,
                  new_tokens: int) -> Bench:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    from mtcc.nets import loading as stage_models
    from mtcc.nets import qwen_tiny
    from mtcc.stages import caption as cp

    stage_models.quiet_transformers()
    stage = cp.ClipCaption(**settings, device=str(device), max_new_tokens=new_tokens)
    # the tiny tokenizer stands in for Qwen's (not reachable offline): prompt token ids differ, the visual
    # tokens (nearly all of the prompt) and the model's vocabulary width do not
    tokenizer = qwen_tiny.build_tokenizer()
    processor = qwen_tiny.build_processor(tokenizer)
    if tiny:
        config = qwen_tiny.build_config(tokenizer)
    else:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in qwen_tiny.SPECIAL_TOKENS}
        text = {**QWEN_7B_TEXT, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                "pad_token_id": ids["<|endoftext|>"]}
        config = Qwen2VLConfig(text_config=text, vision_config=dict(QWEN_7B_VISION),
                               image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                               vision_start_token_id=ids["<|vision_start|>"],
                               vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
                               eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                               tie_word_embeddings=False)
    extra = {"attn_implementation": stage.attn_implementation} if stage.attn_implementation else {}
    dtype = getattr(torch, stage._dtype_name(str(device)))
    # built where it runs, in its run dtype: 8.3 B parameters never pass through host memory in float32
    with torch.device(device):
        net = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype, **extra)
    net = net.eval()
    stage.adopt_processor(processor)
    stage._dev = str(device)
    stage._net = net
    eos = config.text_config.eos_token_id
    checkpoint = GenerationConfig(bos_token_id=config.text_config.bos_token_id,
                                  pad_token_id=config.text_config.pad_token_id,
                                  eos_token_id=[eos, config.text_config.bos_token_id],
                                  repetition_penalty=QWEN_REPETITION_PENALTY)
    gen = cp.greedy_config(checkpoint, new_tokens, tokenizer.pad_token_id, eos)
    # random weights would stop at any step; every clip decodes exactly new_tokens tokens
    gen.min_new_tokens = new_tokens
    net.generation_config = gen
    stage._gen = gen
    stage._eos = set(gen.eos_token_id)
    times = cp.frame_times(clip.seconds, stage.fps, min_frames=stage.min_frames, max_frames=stage.max_frames,
                           temporal=stage._temporal)
    fh, fw = cp.target_size(clip.source[0], clip.source[1], min_pixels=stage.min_pixels, max_pixels=stage.max_pixels,
                            factor=stage._factor)
    # caption_frames decodes at the processor's target width (aspect kept), so frames arrive at about this size
    video = rng.integers(0, 256, (len(times), fh, fw, 3), dtype=np.uint8)

    def run(batch: int) -> Work:
        results = stage._generate([video] * batch)
        return Work(batch, batch * clip.seconds, 1, {
            "prompt_tokens": int(results[0]["prompt_tokens"]), "new_tokens": int(min(r["new_tokens"] for r in results)),
            "grid": [int(x) for x in results[0]["grid"]]})

    n_vis = (len(times) // stage._temporal) * (fh // 14) * (fw // 14) // stage._merge ** 2
    info = {"model": "transformers Qwen2VLForConditionalGeneration (" + ("tiny" if tiny else "Qwen2-VL-7B-Instruct")
                     + " architecture)", "params": _params(net), "dtype": str(dtype).removeprefix("torch."),
            "attn_implementation": getattr(net.config, "_attn_implementation", None),
            "path": "ClipCaption._generate (processor, generate, decode)",
            "per_clip": f"{len(times)} frames at {fh}x{fw} ({stage.fps:g} fps, max_pixels {stage.max_pixels}), "
                        f"{n_vis} visual tokens, {new_tokens} new tokens"}
    return Bench(run, info)
