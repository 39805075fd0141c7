"""Caption: a Qwen2-VL description of each clip (ConsisID's captioning settings by default).

Model: ``Qwen/Qwen2-VL-7B-Instruct`` (or any Qwen2-VL checkpoint directory) through ``transformers``, in
bf16 on a GPU; through vLLM instead when ``backend: vllm`` and vLLM is installed. Loaded by hub id or
local directory through the one loading seam (``loading.resolve``), random weights refused unless allowed.

Frames: the clip is sampled at ``fps`` (1 frame per second: t = 0, 1/fps, ... inside the clip), at most
``max_frames`` (spread evenly over the clip when capped) and at least ``min_frames``. Qwen2-VL folds
pairs of frames into one temporal patch, so an odd count gets its last frame repeated, as its own
processor would pad. Every needed frame is decoded once, at about the size the processor resizes to
(Qwen2-VL's ``smart_resize``: sides multiples of 28, area within ``[min_pixels, max_pixels]``), never
larger than the source. The processor gets these frames as they are (its own frame sampling is off).

Prompt: the checkpoint's chat template with one user turn holding the video and ``prompt``, then the
assistant header. Clips are captioned ``forward_batch`` at a time in one ``generate`` call, prompts
left-padded, greedy decoding; only the new tokens are decoded, up to the first end-of-turn token.

Member ``caption.txt`` (UTF-8, stripped). Stats: frames fed, visual tokens, prompt and new token counts,
caption length, random weights. the ``CaptionMeta`` fact (sample json ``caption``): model, backend, fps, the clip times of the frames fed,
the visual grid (t, h, w in 14-px patches).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from mtcc.facts import CaptionMeta, ProbeResult
from mtcc.media.members import CAPTION
from mtcc.nets import loading
from mtcc.nets.weights import Pin, Weights

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Resources, optional
from .clip_media import ClipMedia, clip_media
from .model_stage import ModelStage

HF_ID = "Qwen/Qwen2-VL-7B-Instruct"
PROMPT = "Please describe the video in detail."
HOW_TO_GET = (f"Get the weights on a machine with internet: `hf download {HF_ID} --local-dir DIR` and "
              f"set stages.caption.model to DIR (or to the hub id {HF_ID} where the hub or its local cache is "
              f"reachable); `mtcc models make-tiny DIR` writes a random-weights model for plumbing runs only.")
VLLM_HOW = ("vLLM is not installed; `pip install vllm` in an environment of its own (vLLM wheels pin their own "
            "torch and transformers versions), or set stages.caption.backend to 'transformers'")
# Qwen2-VL's vision geometry (its processor's defaults), used before a processor is loaded
PATCH, MERGE, TEMPORAL = 14, 2, 2
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


# -- frames -----------------------------------------------------------------------------------------------

def frame_times(duration: float, fps: float, *, min_frames: int = 2, max_frames: int = 64,
                temporal: int = TEMPORAL) -> np.ndarray:
    """Clip times (s) of the frames fed for a clip of ``duration`` seconds.

    Every ``1/fps`` from the clip's start while inside it; when that is fewer than ``min_frames`` or more
    than ``max_frames``, that many frames spread evenly over the clip instead. The count is then rounded
    up to a multiple of ``temporal`` by repeating the last time."""
    natural = max(1, math.ceil(duration * fps - 1e-6))
    n = min(max(natural, min_frames), max(max_frames, min_frames))
    step = 1.0 / fps if n == natural else max(duration, 0.0) / n
    times = np.arange(n) * step
    pad = -n % temporal
    return np.concatenate([times, np.repeat(times[-1:], pad)])


def target_size(height: int, width: int, *, min_pixels: int, max_pixels: int,
                factor: int = PATCH * MERGE) -> tuple[int, int]:
    """(h, w) the Qwen2-VL processor resizes a ``height`` x ``width`` frame to."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def caption_frames(media: ClipMedia, times: np.ndarray, *, min_pixels: int, max_pixels: int,
                factor: int = PATCH * MERGE, threads: int = 1) -> np.ndarray:
    """uint8 RGB ``[len(times), H, W, 3]``: the clip's frames at ``times`` (clip seconds), read from the
    clip's own mp4, each frame decoded once, at the width the processor will resize to (the clip's, if
    smaller). The cut puts a key frame every second, so 1 fps samples decode nothing else."""
    from mtcc.media.video import open_frames

    clip_w, clip_h = media.info.size
    _, w = target_size(clip_h, clip_w, min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)
    video = open_frames(media.mp4(), {"width": clip_w, "height": clip_h}, w if w < clip_w else None, threads)
    last = max(0, min(media.frames, video.n_frames) - 1)
    idx = np.clip(np.round(np.asarray(times, np.float64) * float(media.info.fps)).astype(int), 0, last)
    got: dict[int, np.ndarray] = {}
    for chunk, frames in video.batches(sorted(set(idx.tolist())), 16):
        got.update(zip(chunk, frames))
    return np.stack([got[i] for i in idx.tolist()])


def greedy_config(checkpoint: Any, max_new_tokens: int, pad_id: int | None, eos_fallback: int) -> Any:
    """The checkpoint's generation config made greedy. Qwen2-VL-Instruct ships top_k=1 sampling (greedy in
    effect) with a repetition penalty of 1.05, which is what ConsisID's captions were generated with: the
    penalty and the stop tokens are kept, the sampling settings dropped so decoding is deterministic."""
    gen = copy.deepcopy(checkpoint)
    eos = gen.eos_token_id if gen.eos_token_id is not None else eos_fallback
    eos = eos if isinstance(eos, list) else [eos]
    gen.update(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, temperature=None, top_p=None,
               top_k=None, eos_token_id=eos, pad_token_id=gen.pad_token_id if gen.pad_token_id is not None
               else (pad_id if pad_id is not None else eos[0]))
    return gen


# -- the stage ----------------------------------------------------------------------------------------------

_QWEN_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               *(f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)),
               "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "preprocessor_config.json")


class ClipCaption(ModelStage):
    name: ClassVar[str] = "caption"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.08
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 1040
    uses: ClassVar[tuple[str, ...]] = ("transformers", "torch")
    max_actor_cpus: ClassVar[float] = 8.0
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="Qwen2-VL-7B-Instruct (captions)",
        kind="hf", folder="Qwen2-VL-7B-Instruct", repo=HF_ID,
        revision="eed13092ef92e448dd6875b2a00151bd3f7db0ac",
        files=(*(Pin(n) for n in _QWEN_FILES), Pin("chat_template.json", optional=True)),
        settings={"model": "./Qwen2-VL-7B-Instruct"},
        note="about 16.6 GB; the shards' sizes and sha256 are checked against the hub's own LFS metadata"),)
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, optional(ProbeResult))
    provides: ClassVar[tuple[Key | type, ...]] = (Member(CAPTION), CaptionMeta)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "n_frames": "int64", "visual_tokens": "int64", "prompt_tokens": "int64", "new_tokens": "int64",
        "caption_chars": "int64", "random_weights": "bool",
    }

    model: loading.ModelSpec = Field(HF_ID, description="Qwen2-VL checkpoint directory (save_pretrained model + processor, "
                                          "tokenizer and chat template) or the Hugging Face id")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: needs vLLM installed")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="auto: CUDA when the actor sees a GPU, else CPU")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU")
    attn_implementation: str | None = Field(None, description="transformers attention kernel (e.g. sdpa, "
                                                              "flash_attention_2); None: transformers' default")
    fps: float = Field(1.0, gt=0, description="frames sampled per second of clip")
    min_frames: int = Field(2, ge=1, description="fewer frames at fps are spread evenly over the clip instead")
    max_frames: int = Field(64, ge=1, description="more frames at fps are spread evenly over the clip instead")
    max_pixels: int = Field(360 * 420, ge=28 * 28, description="most pixels per frame after resizing")
    min_pixels: int = Field(128 * 28 * 28, ge=28 * 28, description="fewest pixels per frame after resizing "
                                                                   "(qwen-vl-utils' video default)")
    prompt: str = Field(PROMPT, min_length=1, description="what the captioner is asked about each clip")
    max_new_tokens: int = Field(512, ge=1, description="tokens generated per caption at most")
    renamed: ClassVar[dict[str, str]] = {"batch_size": "forward_batch"}
    forward_batch: int = Field(4, ge=1, description="clips per generate call")
    vllm_args: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM engine arguments "
                                      "(e.g. max_model_len, gpu_memory_utilization, tensor_parallel_size)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4), description=RESOURCES)


    @model_validator(mode="after")
    def _pixels(self) -> ClipCaption:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})")
        return self

    # -- loading ----------------------------------------------------------------------------------------
    def _resolve(self) -> Path:
        return loading.resolve(self.model, stage=self.name, key="model",
                              expected="a Qwen2-VL checkpoint directory (config.json, safetensors weights, "
                                       "tokenizer, preprocessor config, chat template)", how_to_get=HOW_TO_GET)

    def _device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"stage 'caption': device {self.device!r} requested but CUDA is not available "
                               f"(set stages.caption.device to auto or cpu)")
        return self.device

    def _dtype_name(self, device: str) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if device.startswith("cuda") else "float32"

    def adopt_processor(self, processor: Any) -> None:
        """Take the processor's patch geometry and build the prompt (also used by the GPU benchmark, which
        brings a full-size model of its own)."""
        # a batch of prompts of different lengths must end where generation starts
        processor.tokenizer.padding_side = "left"
        self._processor = processor
        vp = processor.video_processor
        self._factor = int(vp.patch_size) * int(vp.merge_size)
        self._temporal = int(vp.temporal_patch_size)
        self._merge = int(vp.merge_size)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": self.prompt}]}]
        self._prompt_text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def load(self) -> None:
        from transformers import AutoProcessor

        loading.quiet_transformers()
        if self.backend == "vllm":
            try:
                import vllm
            except ImportError as e:
                raise ImportError(f"stage 'caption': stages.caption.backend is 'vllm' but {VLLM_HOW}") from e
        path = self._resolve()
        self.admit(path)
        self._path = path
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.adopt_processor(processor)
        device = self._device()
        self._dev = device
        if self.backend == "vllm":
            from transformers import GenerationConfig

            penalty = GenerationConfig.from_pretrained(path, local_files_only=True).repetition_penalty
            engine = {"dtype": self._dtype_name(device), "seed": 0, "limit_mm_per_prompt": {"video": 1},
                      "mm_processor_kwargs": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
                      **self.vllm_args}
            self._llm = vllm.LLM(model=str(path), **engine)
            self._sampling = vllm.SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens,
                                                 repetition_penalty=float(penalty or 1.0))
            return
        import torch
        from transformers import Qwen2VLForConditionalGeneration

        extra = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        net, info = Qwen2VLForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, self._dtype_name(device)), local_files_only=True, output_loading_info=True,
            **extra)
        # transformers only logs keys it left at their random init (a Qwen2.5-VL or a partial checkpoint):
        # refused, as every other model stage refuses them; a tied output head has no key of its own
        tied = {"lm_head.weight"} if getattr(net.config, "tie_word_embeddings", False) else set()
        missing = sorted(k for k in info.get("missing_keys", ()) if k not in tied)
        shapes = sorted(map(str, info.get("mismatched_keys", ())))
        if missing or shapes:
            raise loading.WeightsError(
                f"stage 'caption': {path} left {len(missing) + len(shapes)} key(s) of Qwen2-VL unloaded (they would "
                f"run on random values): {loading.key_mismatch(missing, [], shapes)}. {HOW_TO_GET}")
        self._net = net.to(device).eval()
        self._gen = greedy_config(net.generation_config, self.max_new_tokens, processor.tokenizer.pad_token_id,
                                  net.config.text_config.eos_token_id)
        # generate() fills unset fields from the model's own config: give it the greedy one too, or the
        # checkpoint's sampling fields come back (ignored, with a warning)
        self._net.generation_config = self._gen
        self._eos = set(self._gen.eos_token_id)

    # -- inputs -----------------------------------------------------------------------------------------
    def frames(self, cand: Candidate) -> tuple[np.ndarray, np.ndarray]:
        """(clip times, uint8 RGB frames ``[T, H, W, 3]``) fed for ``cand``."""
        start = float(cand.start or 0.0)
        end = float(cand.end if cand.end is not None else cand.fact(ProbeResult).duration or 0.0)
        times = frame_times(end - start, self.fps, min_frames=self.min_frames, max_frames=self.max_frames,
                            temporal=getattr(self, "_temporal", TEMPORAL))
        threads = self.resources.threads or max(1, int(round(self.resources.num_cpus)))
        frames = caption_frames(clip_media(cand, self), times, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                             factor=getattr(self, "_factor", PATCH * MERGE), threads=threads)
        return times, frames

    def inputs(self, videos: list[np.ndarray]) -> Any:
        """The processor's batch for ``videos`` (one chat-templated prompt per video, left-padded)."""
        import torch

        clips = [torch.from_numpy(np.ascontiguousarray(v)).permute(0, 3, 1, 2) for v in videos]
        return self._processor(text=[self._prompt_text] * len(clips), videos=clips, padding=True,
                               return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=True,
                               size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels})

    # -- generation -------------------------------------------------------------------------------------
    def _generate(self, videos: list[np.ndarray]) -> list[dict[str, Any]]:
        """Per video: caption text, prompt and new token counts, visual grid."""
        if self.backend == "vllm":
            return self._generate_vllm(videos)
        import torch

        batch = self.inputs(videos)
        grids = batch["video_grid_thw"].tolist()
        prompt_len = batch["attention_mask"].sum(1).tolist()
        batch = batch.to(self._dev)
        with torch.inference_mode():
            out = self._net.generate(**batch, generation_config=self._gen)
        new = out[:, batch["input_ids"].shape[1]:].cpu().tolist()
        results = []
        for row, grid, n_prompt in zip(new, grids, prompt_len):
            stop = next((j for j, t in enumerate(row) if t in self._eos), len(row))
            text = self._processor.tokenizer.decode(row[:stop], skip_special_tokens=True)
            results.append({"text": text.strip(), "prompt_tokens": int(n_prompt), "new_tokens": stop, "grid": grid})
        return results

    def _generate_vllm(self, videos: list[np.ndarray]) -> list[dict[str, Any]]:
        requests = [{"prompt": self._prompt_text, "multi_modal_data": {"video": v}} for v in videos]
        outs = self._llm.generate(requests, self._sampling, use_tqdm=False)
        results = []
        for o, v in zip(outs, videos):
            h, w = target_size(v.shape[1], v.shape[2], min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                               factor=self._factor)
            grid = [len(v) // self._temporal, h // (self._factor // self._merge), w // (self._factor // self._merge)]
            results.append({"text": o.outputs[0].text.strip(), "prompt_tokens": len(o.prompt_token_ids),
                            "new_tokens": len(o.outputs[0].token_ids), "grid": grid})
        return results

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        sampled = [self.frames(c) for c in batch]
        # clips of a similar visual length share a generate call: less padding; the order is fixed
        order = sorted(range(len(batch)), key=lambda i: (sampled[i][1].shape[0] * sampled[i][1].shape[1]
                                                         * sampled[i][1].shape[2], i))
        results: dict[int, dict[str, Any]] = {}
        for b0 in range(0, len(order), self.forward_batch):
            chunk = order[b0: b0 + self.forward_batch]
            results.update(zip(chunk, self._generate([sampled[i][1] for i in chunk])))
        for i, cand in enumerate(batch):
            times, frames = sampled[i]
            r = results[i]
            t, h, w = r["grid"]
            stats = {"n_frames": len(frames), "visual_tokens": int(t * h * w // self._merge ** 2),
                     "prompt_tokens": r["prompt_tokens"], "new_tokens": r["new_tokens"],
                     "caption_chars": len(r["text"]), "random_weights": self.is_random}
            cand.members[CAPTION] = r["text"].encode("utf-8")
            cand.put(CaptionMeta(self.model, self.backend, self.fps, [round(float(x), 4) for x in times], [t, h, w]))
            self.record(cand, stats)
        return batch

    # -- checks and the tiny model ------------------------------------------------------------------------
    def check_model(self) -> str:
        """Files present, config and processor loadable, token ids consistent, and the safetensors headers
        (keys and shapes) equal to what this Qwen2-VL config's model saves; no weights are read."""
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration
        from transformers.core_model_loading import revert_weight_conversion

        path = self._resolve()
        self.admit(path)

        def need(names: tuple[str, ...], what: str) -> Path:
            for n in names:
                if (path / n).is_file():
                    return path / n
            raise loading.WeightsError(f"stage 'caption': {path} lacks {what} ({' or '.join(names)}). {HOW_TO_GET}")

        need(("config.json",), "the model config")
        weights = need(WEIGHT_FILES, "the model weights")
        need(("tokenizer.json",), "the tokenizer")
        need(("tokenizer_config.json",), "the tokenizer config")
        need(PREPROCESSOR_FILES, "the image/video preprocessor config")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise loading.WeightsError(f"stage 'caption': {path} does not load: {type(e).__name__}: {e}. "
                                      f"{HOW_TO_GET}") from e
        if config.model_type != "qwen2_vl":
            raise loading.WeightsError(f"stage 'caption': {path} holds a '{config.model_type}' model; this stage "
                                      f"runs Qwen2-VL ('qwen2_vl'). {HOW_TO_GET}")
        if not getattr(processor, "chat_template", None):
            raise loading.WeightsError(f"stage 'caption': {path} has no chat template ({' or '.join(TEMPLATE_FILES)}). "
                                      f"{HOW_TO_GET}")
        tok = processor.tokenizer
        for attr, token in (("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>")):
            if tok.convert_tokens_to_ids(token) != getattr(config, attr):
                raise loading.WeightsError(f"stage 'caption': {path}: the tokenizer's {token} is id "
                                          f"{tok.convert_tokens_to_ids(token)} but config.{attr} is "
                                          f"{getattr(config, attr)}; tokenizer and model do not belong together")
        if len(tok) > config.text_config.vocab_size:
            raise loading.WeightsError(f"stage 'caption': {path}: tokenizer has {len(tok)} tokens, more than the "
                                      f"model's vocab_size {config.text_config.vocab_size}")

        if weights.name.endswith(".index.json"):
            shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        else:
            shards = [weights.name]
        found: dict[str, tuple[int, ...]] = {}
        for s in shards:
            if not (path / s).is_file():
                raise loading.WeightsError(f"stage 'caption': {path / s} (named by {weights.name}) is missing. "
                                          f"{HOW_TO_GET}")
            with safe_open(str(path / s), framework="pt") as f:
                found.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
        with torch.device("meta"):
            net = Qwen2VLForConditionalGeneration(config)
        native = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        # checkpoints on the hub keep the pre-5.x key names (``model.layers``, ``visual``), which is also
        # what save_pretrained writes; a checkpoint in the new names loads too
        legacy = {k: tuple(v.shape) for k, v in revert_weight_conversion(net, net.state_dict()).items()}
        want = legacy if len(set(found) & set(legacy)) >= len(set(found) & set(native)) else native
        tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
        missing = sorted(set(want) - set(found) - tied)
        unexpected = sorted(set(found) - set(want))
        shapes = [f"{k} {found[k]} != {want[k]}" for k in sorted(set(found) & set(want)) if found[k] != want[k]]
        problem = loading.key_mismatch(missing, unexpected, shapes)
        if problem:
            raise loading.WeightsError(f"stage 'caption': the weights in {path} do not fit the Qwen2-VL model of its "
                                      f"config.json ({problem}). {HOW_TO_GET}")
        n_params = sum(math.prod(s) for s in found.values())
        return (f"Qwen2-VL {n_params / 1e6:.1f}M params in {len(shards)} safetensors file(s), {len(found)} tensors "
                f"match config.json; tokenizer ({len(tok)} tokens), processor and chat template load")

    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A tiny Qwen2-VL (1 vision block, 2 text layers) with random weights and an offline-trained
        tokenizer, saved as the real checkpoint is (see ``qwen_tiny``)."""
        from mtcc.nets.qwen_tiny import TINY_TEXT, TINY_VISION, write_tiny

        d = write_tiny(Path(root) / cls.name)
        loading.write_marker(d, "Qwen2-VL (tiny)", text=TINY_TEXT, vision=TINY_VISION)
        return {"model": str(d), "allow_random_weights": True}
