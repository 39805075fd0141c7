"""Audio embeddings: per character, the Wav2Vec2 hidden states of its separated speech, one row per video
frame (the ``audio_emb.npy`` member Bind-Your-Avatar trains on).

Model: ``transformers.Wav2Vec2Model`` (``facebook/wav2vec2-base-960h`` by default; its CTC head is not
used) and the ``Wav2Vec2FeatureExtractor`` of the same directory for input normalisation, loaded from a
local directory in ``save_pretrained`` layout (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``preprocessor_config.json``) or a hub id resolved through the one loading seam
(``org/name@revision`` pins a commit; the resolved commit is recorded).
Keys are checked against the model before loading: every learned key of the encoder must be present with
its shape (only ``masked_spec_embed``, used by training-time masking alone, may be absent); task heads
(``lm_head``, the pretraining quantizer) are ignored.

Alignment to the clip's frames (the scheme of the Hallo family, which Bind-Your-Avatar's trainer reads):
the normalised track goes through the CNN feature encoder (50 rows/s); those rows are linearly
interpolated along time to exactly ``T`` rows (``T`` = the clip's frame count at ``fps``,
``align_corners=True``) *before* the feature projection and the transformer, so the transformer itself
runs at the frame rate; the outputs of the transformer layers (``hidden_states[1:]`` of the model's
own forward; not the pre-transformer embedding) are stacked to ``[T, layers, hidden]``.

Tracks are batched only with tracks of the same length: the base model's CNN uses group norm over the
whole time axis, so padding would change every row.

Member: ``audio_emb.npy`` (``np.save`` of float16 ``[C, T, layers, hidden]``, C = characters, track i =
``spk{i}.flac``). Stats: frames, cnn_frames, layers, hidden, rms_0/rms_1 (RMS of each character's
embeddings), random_weights. the ``AudioEmbeddingMeta`` fact (sample json ``audio_emb``): model, revision, fps, shape, dtype, layers, alignment,
random_weights. Rejections: ``missing_tracks`` (no ``spk{i}.flac``: the ``separate`` stage did not run),
``track_length`` (a track off the clip's frame count by more than ``max_mismatch_frames``),
``track_too_short`` (under the CNN's 25 ms receptive field), ``no_frames``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from mtcc.facts import AudioEmbeddingMeta, ClipFaces
from mtcc.media.audio_io import read_track
from mtcc.media.clip import AUDIO_RATE, CHARACTERS
from mtcc.media.members import AUDIO_EMB, TRACKS
from mtcc.media.npy import npy_bytes
from mtcc.nets import loading
from mtcc.nets.weights import Pin, Weights

from .base import RESOURCES, Candidate, Key, Member, Rejection, Resources, optional
from .model_stage import ModelStage

HF_ID = "facebook/wav2vec2-base-960h"
MEMBER = AUDIO_EMB
HOW_TO_GET = (f"Get the weights on a machine with internet: `hf download {HF_ID} --local-dir DIR` "
              f"(DIR then holds config.json, model.safetensors and preprocessor_config.json) and set "
              f"stages.audio_emb.model to DIR (or to the hub id {HF_ID} where the hub or its local cache is "
              f"reachable); `mtcc models make-tiny DIR` writes a random-weights model for plumbing runs only.")
EXPECTED = "a Wav2Vec2 directory in save_pretrained layout (config.json, model.safetensors, preprocessor_config.json)"
# learned only for training-time SpecAugment; inference never reads it, and checkpoints may omit it
UNUSED_AT_INFERENCE = ("masked_spec_embed",)
# a checkpoint saved from a model with a head (Wav2Vec2ForCTC, ...) prefixes the base model's keys
BASE_PREFIX = "wav2vec2."
# the cheap stand-in keeps what fixes the output geometry (50 Hz CNN: same kernels and strides; 12 layers of
# 768) and shrinks what does not (CNN width, feed-forward width, positional conv kernel)
TINY = {"conv_dim": (32,) * 7, "intermediate_size": 64, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 16}
DTYPES = ("float32", "float16", "bfloat16")


# -- keys and checkpoint files ---------------------------------------------------------------------------

def _model_key(key: str) -> str:
    """A checkpoint key as the base model names it: head prefix dropped, pre-parametrization weight norm
    names (``weight_g``/``weight_v``, as in the released base-960h files) mapped the way transformers maps them."""
    key = key.removeprefix(BASE_PREFIX)
    if key.endswith(".weight_g"):
        key = key[: -len(".weight_g")] + ".parametrizations.weight.original0"
    elif key.endswith(".weight_v"):
        key = key[: -len(".weight_v")] + ".parametrizations.weight.original1"
    return key


def weight_files(path: Path) -> list[Path]:
    """The weight files of a save_pretrained directory (safetensors preferred, sharded or not)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / single).is_file():
            return [path / single]
        if (path / index).is_file():
            try:
                names = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise loading.WeightsError(
                    f"stage 'audio_emb': {path / index} is not a weight index ({e}). {HOW_TO_GET}") from e
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise loading.WeightsError(f"stage 'audio_emb': {path / index} names shard(s) not present: "
                                          f"{', '.join(missing)}. {HOW_TO_GET}")
            return [path / n for n in names]
    raise loading.WeightsError(f"stage 'audio_emb': no weights in {path} (looked for model.safetensors, "
                              f"pytorch_model.bin or their .index.json). {HOW_TO_GET}")


def checkpoint_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the weight files, without reading tensor data (safetensors headers;
    ``.bin`` files are memory-mapped). A truncated or corrupt file raises ``WeightsError``."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as st:
                    for k in st.keys():  # noqa: SIM118 - a safe_open handle is not a mapping
                        shapes[k] = tuple(st.get_slice(k).get_shape())
            else:
                state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
                shapes.update({k: tuple(v.shape) for k, v in state.items()})
        except Exception as e:  # safetensors and torch raise assorted types for damaged files
            raise loading.WeightsError(f"stage 'audio_emb': cannot read {f} ({type(e).__name__}: {e}); the file is "
                                      f"damaged or incomplete. {HOW_TO_GET}") from e
    return shapes


def _few(xs: list[str]) -> str:
    return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")


def read_config(path: Path) -> Any:
    from transformers import Wav2Vec2Config

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise loading.WeightsError(f"stage 'audio_emb': {cfg_file} not found; expected {EXPECTED}. {HOW_TO_GET}")
    try:
        raw = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise loading.WeightsError(f"stage 'audio_emb': {cfg_file} is not JSON ({e}). {HOW_TO_GET}") from e
    if raw.get("model_type") != "wav2vec2":
        raise loading.WeightsError(f"stage 'audio_emb': {cfg_file} has model_type {raw.get('model_type')!r}, not "
                                  f"'wav2vec2'. {HOW_TO_GET}")
    return Wav2Vec2Config.from_pretrained(str(path), local_files_only=True)


def check_keys(path: Path, config: Any) -> tuple[int, int]:
    """Compare the checkpoint's key set and shapes with a Wav2Vec2Model built from ``config`` on the meta
    device (no memory, no init). Returns (tensors matched, parameters). Refuses missing learned keys, keys
    of another shape, and keys of the base model's own modules that the model does not have."""
    import torch
    from transformers import Wav2Vec2Model

    files = weight_files(path)
    found = checkpoint_shapes(files)
    with torch.device("meta"):
        net = Wav2Vec2Model(config)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ckpt: dict[str, tuple[int, ...]] = {}
    for k, shape in found.items():
        ckpt.setdefault(_model_key(k), shape)
    roots = {name for name, _ in net.named_children()} | {name for name, _ in net.named_parameters(recurse=False)}
    missing = [k for k in own if k not in ckpt and k not in UNUSED_AT_INFERENCE]
    shapes = [f"{k} {ckpt[k]} != {own[k]}" for k in own if k in ckpt and ckpt[k] != own[k]]
    # keys under the base model's own modules that it lacks mean config and weights disagree; heads don't count
    foreign = [k for k in ckpt if k not in own and k.split(".", 1)[0] in roots]
    if missing or shapes or foreign:
        parts = [f"{len(missing)} missing: {_few(missing)}" if missing else "",
                 f"{len(shapes)} of another shape: {_few(shapes)}" if shapes else "",
                 f"{len(foreign)} not in the model: {_few(foreign)}" if foreign else ""]
        raise loading.WeightsError(
            f"stage 'audio_emb': {', '.join(str(f) for f in files)} does not fit the Wav2Vec2Model of "
            f"{path / 'config.json'} ({'; '.join(p for p in parts if p)}). Weights are never filled in at random. "
            f"{HOW_TO_GET}")
    return len(own), sum(math.prod(s) for s in own.values())


# -- the forward ------------------------------------------------------------------------------------------

def frames_to_rows(feats: Any, n_frames: int, align_corners: bool = True) -> Any:
    """CNN features ``[B, C, L]`` linearly resampled along time to ``[B, C, n_frames]`` (float32 maths)."""
    import torch.nn.functional as F

    if feats.shape[-1] == n_frames:
        return feats
    out = F.interpolate(feats.float(), size=n_frames, mode="linear", align_corners=align_corners)
    return out.to(feats.dtype)


def embed(model: Any, input_values: Any, n_frames: int, *, align_corners: bool = True) -> tuple[Any, int]:
    """Normalised audio ``[B, n]`` -> the transformer layers' outputs ``[B, n_frames, layers, hidden]``,
    and the CNN's own row count. The model's submodules are called in its forward's order, with the
    CNN rows resampled to ``n_frames`` between the CNN and the projection; each layer's output is taken
    by a forward hook, the same tensors the model returns as ``hidden_states[1:]``."""
    import torch

    feats = model.feature_extractor(input_values)  # [B, C, L] at 50 rows/s
    cnn_rows = int(feats.shape[-1])
    feats = frames_to_rows(feats, n_frames, align_corners)
    hidden, _ = model.feature_projection(feats.transpose(1, 2))
    outs: list[Any] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        outs.append(output[0] if isinstance(output, tuple) else output)

    hooks = [layer.register_forward_hook(keep) for layer in model.encoder.layers]
    try:
        model.encoder(hidden)
    finally:
        for h in hooks:
            h.remove()
    if len(outs) != len(model.encoder.layers):  # layerdrop skips layers in train mode only
        raise RuntimeError(f"{len(outs)} of {len(model.encoder.layers)} encoder layers ran; is the model in eval mode?")
    return torch.stack(outs, dim=2), cnn_rows


def receptive_field(config: Any) -> int:
    """Samples the CNN needs for its first output row (400 for the base model)."""
    n = 1
    for k, s in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        n = (n - 1) * s + k
    return n


def video_frame_count(cand: Candidate, n_samples: int, rate: int, fps: float) -> int:
    """The clip's frame count at ``fps``: the face tracks' count when they are at ``fps``, else the clip's
    duration (the track's when the candidate has no times)."""
    faces = cand.maybe(ClipFaces)
    if faces is not None and math.isclose(float(faces.fps), fps):
        return int(faces.frames)
    if cand.start is not None and cand.end is not None:
        return int(round((cand.end - cand.start) * fps))
    return int(round(n_samples / rate * fps))


_W2V_SOURCE = "HF LFS/blob metadata of facebook/wav2vec2-base-960h@22aad52d, recorded alike in several public manifests"


class AudioEmbeddings(ModelStage):
    name: ClassVar[str] = "audio_emb"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.1
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 1125
    uses: ClassVar[tuple[str, ...]] = ("transformers", "torch")
    max_actor_cpus: ClassVar[float] = 8.0
    clip_fields: ClassVar[dict[str, str]] = {"fps": "fps"}
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "audio_rate": AUDIO_RATE}
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="Wav2Vec2 base 960h (all 12 transformer layers)",
        kind="hf", folder="wav2vec2-base-960h", repo=HF_ID,
        revision="22aad52d435eb6dbaf354bdad9b0da84ce7d6156",
        files=(Pin("config.json", bytes=1596,
                   sha256="d3ec255c063d9f95057b553b19c20135b259875834a4fe9deb218a6be25b4cf3", source=_W2V_SOURCE),
               Pin("preprocessor_config.json", bytes=159,
                   sha256="b225d617c025463b9e157e06afea8b90dc7078fc70b013c533328423e0486b4a", source=_W2V_SOURCE),
               Pin("model.safetensors", bytes=377_607_901,
                   sha256="8aa76ab2243c81747a1f832954586bc566090c83a0ac167df6f31f0fa917d74a", source=_W2V_SOURCE)),
        settings={"model": "./wav2vec2-base-960h"}),)
    requires: ClassVar[tuple[Key | type, ...]] = (*(Member(t) for t in TRACKS), optional(ClipFaces))
    provides: ClassVar[tuple[Key | type, ...]] = (Member(MEMBER), AudioEmbeddingMeta)
    stats_schema: ClassVar[dict[str, str]] = {
        "frames": "int64", "cnn_frames": "int64", "layers": "int64", "hidden": "int64",
        "rms_0": "float64", "rms_1": "float64", "random_weights": "bool",
    }

    model: loading.ModelSpec = Field(HF_ID, description="Wav2Vec2 directory in save_pretrained layout, or the Hugging Face id")
    dtype: str = Field("float32", description="model dtype: float32, or float16/bfloat16 on a GPU")
    fps: float = Field(25.0, gt=0, description="embedding rows per second: the clip's frame rate")
    align_corners: bool = Field(True, description="linear resampling of the CNN rows with aligned end points "
                                                  "(the Hallo family's choice, which Bind-Your-Avatar reads)")
    renamed: ClassVar[dict[str, str]] = {"batch_size": "forward_batch"}
    forward_batch: int = Field(8, ge=1, description="tracks of equal length per model forward")
    max_mismatch_frames: float = Field(2.0, ge=0, description="a track whose length differs from the clip's by "
                                                              "more frames than this is rejected")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4), description=RESOURCES)


    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        return v

    @model_validator(mode="after")
    def _half_needs_gpu(self) -> AudioEmbeddings:
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 needs a CUDA device (use float32 or bfloat16 on the CPU)")
        return self

    # -- loading ------------------------------------------------------------------------------------------
    def _resolve(self) -> Path:
        path = loading.resolve(self.model, stage=self.name, key="model", expected=EXPECTED, how_to_get=HOW_TO_GET)
        if not path.is_dir():
            raise loading.WeightsError(f"stage 'audio_emb': {path} is a file; expected {EXPECTED}. {HOW_TO_GET}")
        return path

    def check_model(self) -> str:
        path = self._resolve()
        random = self.admit(path)
        config = read_config(path)
        if not (path / "preprocessor_config.json").is_file():
            raise loading.WeightsError(f"stage 'audio_emb': {path / 'preprocessor_config.json'} not found (the input "
                                      f"normalisation settings). {HOW_TO_GET}")
        n, params = check_keys(path, config)
        files = ", ".join(f.name for f in weight_files(path))
        return (f"Wav2Vec2 {config.num_hidden_layers} layers x {config.hidden_size} at {path} ({files}: {n} tensors, "
                f"{params / 1e6:.1f} M parameters match){'; RANDOM weights' if random else ''}")

    def load(self) -> None:
        import torch
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        loading.quiet_transformers()
        path = self._resolve()
        self.admit(path)
        config = read_config(path)
        check_keys(path, config)
        net, info = Wav2Vec2Model.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        # the same refusal from what transformers actually did, so a rename it does differently is caught too
        missing = sorted(k for k in info.get("missing_keys", ()) if k not in UNUSED_AT_INFERENCE)
        missing += sorted(map(str, info.get("mismatched_keys", ())))
        if missing:
            raise loading.WeightsError(f"stage 'audio_emb': {path} left keys unloaded: {_few(missing)}. {HOW_TO_GET}")
        try:
            self._fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path), local_files_only=True)
        except OSError as e:
            raise loading.WeightsError(f"stage 'audio_emb': no feature extractor settings in {path} "
                                      f"(preprocessor_config.json): {e}. {HOW_TO_GET}") from e
        self._net = net.to(device=self.device, dtype=getattr(torch, self.dtype)).eval()
        self._min_samples = receptive_field(net.config)
        # a hub id resolves to .../snapshots/<commit>: the commit pins the weights a sample was made with
        self._revision = path.name if path.parent.name == "snapshots" else None

    # -- running ------------------------------------------------------------------------------------------
    def _normalise(self, tracks: list[np.ndarray]) -> np.ndarray:
        out = self._fe(tracks, sampling_rate=self._fe.sampling_rate, return_tensors="np")
        return np.asarray(out["input_values"], np.float32)

    def embed_tracks(self, tracks: list[np.ndarray], frames: list[int]) -> tuple[list[np.ndarray], list[int]]:
        """Per track (float32 at the feature extractor's rate) its ``[frames[i], layers, hidden]`` float32
        embeddings and its CNN row count; tracks of one length and frame count share forwards."""
        import torch

        groups: dict[tuple[int, int], list[int]] = {}
        for i, (tr, n) in enumerate(zip(tracks, frames)):
            groups.setdefault((len(tr), n), []).append(i)
        embs: list[Any] = [None] * len(tracks)
        rows = [0] * len(tracks)
        dtype = getattr(torch, self.dtype)
        for (_, n), idx in sorted(groups.items()):
            for b0 in range(0, len(idx), self.forward_batch):
                chunk = idx[b0: b0 + self.forward_batch]
                x = torch.from_numpy(self._normalise([tracks[i] for i in chunk])).to(self.device, dtype)
                with torch.inference_mode():
                    e, cnn = embed(self._net, x, n, align_corners=self.align_corners)
                e = e.float().cpu().numpy()
                for j, i in enumerate(chunk):
                    embs[i], rows[i] = e[j], cnn
        return embs, rows

    def _tracks(self, cand: Candidate) -> tuple[list[np.ndarray], int] | Rejection:
        faces = cand.maybe(ClipFaces)
        n_chars = (len(faces.characters) if faces else 0) or 2
        names = [TRACKS[k] for k in range(n_chars)]
        absent = [n for n in names if n not in cand.members]
        if absent:
            return Rejection("missing_tracks", f"{', '.join(absent)} missing: audio_emb embeds the separated "
                                               f"tracks the `separate` stage writes; run it before audio_emb")
        rate = int(self._fe.sampling_rate)
        tracks = [read_track(cand.member(n), rate) for n in names]
        lengths = {len(t) for t in tracks}
        frames = video_frame_count(cand, max(lengths), rate, self.fps)
        if frames < 1:
            return Rejection("no_frames", f"clip of {frames} frames at {self.fps:g} fps")
        for n, t in zip(names, tracks):
            if len(t) < self._min_samples:
                return Rejection("track_too_short", f"{n}: {len(t)} samples, the CNN needs {self._min_samples}")
            off = abs(len(t) / rate * self.fps - frames)
            if off > self.max_mismatch_frames:
                return Rejection("track_length", f"{n} lasts {len(t) / rate:.3f}s ({len(t) / rate * self.fps:.1f} "
                                                 f"frames) but the clip has {frames} frames at {self.fps:g} fps "
                                                 f"(max_mismatch_frames {self.max_mismatch_frames:g})")
        return tracks, frames

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        todo: list[tuple[Candidate, int, int]] = []  # candidate, first track, characters
        tracks: list[np.ndarray] = []
        frames: list[int] = []
        for cand in batch:
            got = self._tracks(cand)
            if isinstance(got, Rejection):
                cand.reject(self.name, got.reason, got.message)
                continue
            trs, n = got
            todo.append((cand, len(tracks), len(trs)))
            tracks.extend(trs)
            frames.extend([n] * len(trs))
        embs, rows = self.embed_tracks(tracks, frames)
        for cand, first, count in todo:
            arr = np.stack(embs[first: first + count]).astype(np.float16)  # [C, T, L, H]
            cand.members[MEMBER] = npy_bytes(arr)
            c, t, layers, hidden = arr.shape
            stats: dict[str, Any] = {"frames": t, "cnn_frames": int(rows[first]), "layers": layers, "hidden": hidden,
                                     "random_weights": self.is_random}
            for k in range(min(c, 2)):
                stats[f"rms_{k}"] = round(float(np.sqrt(np.mean(arr[k].astype(np.float64) ** 2))), 6)
            cand.put(AudioEmbeddingMeta(
                model=self.model, revision=self._revision, fps=self.fps, shape=list(arr.shape),
                dtype="float16", layers="hidden_states[1:]", random_weights=self.is_random,
                alignment=f"cnn features linearly interpolated to frames (align_corners={self.align_corners}) "
                          f"before the transformer",
            ))
            self.record(cand, stats)
        return batch

    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A random Wav2Vec2 whose outputs have the real model's geometry (50 Hz CNN, 12 layers x 768) at a
        fraction of its cost, saved as the real checkpoint is: a CTC model's ``save_pretrained`` (keys under
        ``wav2vec2.`` plus ``lm_head``) with its ``preprocessor_config.json``."""
        import torch
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

        d = Path(root) / cls.name
        d.mkdir(parents=True, exist_ok=True)
        config = Wav2Vec2Config(**TINY)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = Wav2Vec2ForCTC(config).eval()
        net.save_pretrained(str(d))
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=AUDIO_RATE, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=False).save_pretrained(str(d))
        loading.write_marker(d, "transformers Wav2Vec2ForCTC (reduced CNN and feed-forward; 12 x 768 outputs)",
                            reduced=dict(TINY))
        return {"model": str(d), "allow_random_weights": True}
