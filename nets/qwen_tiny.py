"""A tiny random-initialised Qwen2-VL checkpoint, built offline, in the layout of the real one.

The real ``Qwen/Qwen2-VL-7B-Instruct`` directory holds ``config.json`` + ``generation_config.json`` +
safetensors weights, a byte-level BPE tokenizer (``tokenizer.json``) with Qwen's special tokens, a
ChatML chat template and the image/video preprocessor settings. This module writes the same set with
``save_pretrained`` for a model small enough to caption a clip in about a second on one CPU core, so
the caption stage's loading and generation code runs unchanged on it. The hub cannot be reached from
the test machines, so the tokenizer is trained here on a short built-in corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen2-VL's special tokens, in the order (and so with the relative ids) the real tokenizer has them;
# the model config names four of them by id
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# ChatML, as Qwen2-VL's instruct models are prompted: a default system turn, then each turn's text and
# media parts; a video part becomes <|vision_start|><|video_pad|><|vision_end|>, which the processor
# widens to one <|video_pad|> per merged visual token
CHAT_TEMPLATE = (
    "{%- set counts = namespace(image=0, video=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set counts.image = counts.image + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' + counts.image|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set counts.video = counts.video + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' + counts.video|string + ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Enough English of the kind a caption holds for a few hundred BPE merges.
CORPUS = """\
Two people sit across from each other at a wooden table in a bright studio and talk about the news.
The woman on the left wears a red jacket and gestures with her hands while she speaks to the man.
The man on the right has short dark hair and a blue shirt; he nods, smiles and answers her question.
Behind them a large window shows a city skyline at dusk, with lights coming on in the tall buildings.
The camera stays still in a medium shot that keeps both faces visible for the whole conversation.
A host interviews a guest on a talk show. The audience is not visible. Soft light falls from above.
The video shows a calm discussion between two speakers who take turns; neither of them looks at the camera.
She laughs at something he says, then leans forward and continues her point with a serious expression.
He holds a cup of coffee in one hand and a sheet of paper in the other, reading a few lines aloud.
The background is a plain grey wall with a small plant on a shelf and a lamp standing in the corner.
In the scene, an older man with glasses and a young woman with long hair are having a friendly chat.
The lighting is warm and even, the colours are natural, and the image is sharp and well exposed.
Two characters face each other in a kitchen; one of them is cooking while the other one asks questions.
At the end of the clip both of them turn towards the door as if someone has just entered the room.
The conversation seems relaxed and informal, and their voices are clear over a quiet background.
A news anchor and a reporter appear side by side in a split screen, each in a different location.
The reporter stands outside in the rain holding a microphone, while the anchor sits in the studio.
Their mouths move as they speak, their heads turn slightly, and their eyes follow each other.
This is a short video of 2, 3 or 10 seconds, recorded at 25 frames per second in high definition.
Please describe the video in detail: who is in it, what they do, where they are and how it looks.
"""


def _text_lines(repeat: int = 3) -> list[str]:
    return [line for _ in range(repeat) for line in CORPUS.splitlines() if line.strip()]


def build_tokenizer(vocab_size: int = 640) -> Any:
    """A Qwen2 byte-level BPE tokenizer trained on ``CORPUS``: Qwen's pre-tokenizer regex and byte-level
    alphabet (any text encodes), Qwen's special tokens after the learned vocabulary."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tk_models
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # train with the very pre-tokenizer Qwen2Tokenizer rebuilds around the vocab, so the merges fit it
    tok = Tokenizer(tk_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_text_lines(), trainer=trainer)
    vocab = dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))
    # the specials follow the learned vocabulary in Qwen's order (the tokenizer would otherwise number
    # them in the order it registers them: eos first)
    vocab.update({t: len(vocab) + i for i, t in enumerate(SPECIAL_TOKENS)})
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", extra_special_tokens=list(SPECIAL_TOKENS[1:]),
                          model_max_length=32768)


# Width of the tiny model. The text side keeps Qwen2-VL's structure (GQA, M-RoPE with its three
# sections summing to half the head dim); the vision side keeps its patch 14, temporal patch 2, merge 2.
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 32768,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}}
TINY_VISION = {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": 64,
               "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2}
# the real checkpoint's preprocessor settings (images: 4 to 16384 merged tokens of 28x28 pixels)
PREPROCESSOR = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384, "patch_size": 14, "temporal_patch_size": 2,
                "merge_size": 2}


def build_config(tokenizer: Any) -> Any:
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # the real vocab is padded past the tokenizer to a multiple of 128; the same here, at a smaller step
    vocab = -(-len(tokenizer) // 64) * 64
    text = {**TINY_TEXT, "vocab_size": vocab, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    return Qwen2VLConfig(text_config=text, vision_config=dict(TINY_VISION),
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)


def build_processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**PREPROCESSOR), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(**PREPROCESSOR), chat_template=CHAT_TEMPLATE)


def write_tiny(directory: Path, seed: int = 0) -> Path:
    """Tokenizer, processor, config and random weights of a tiny Qwen2-VL, saved into ``directory``."""
    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        # a random head favours no token in particular; zeroing the output rows of the control tokens
        # and of the padding past the vocabulary makes them lose every greedy step (some of the other
        # 640 logits are always positive), so the random model writes text rather than stopping at once
        # or emitting tokens that decode to nothing
        model.lm_head.weight[len(tokenizer) - len(SPECIAL_TOKENS):] = 0
    # the real checkpoint's generation settings: top_k=1 sampling, a mild repetition penalty, two stop tokens
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id, pad_token_id=config.text_config.pad_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id], do_sample=True,
        temperature=0.01, top_p=0.001, top_k=1, repetition_penalty=1.05)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    build_processor(tokenizer).save_pretrained(directory)
    return directory
