"""Masks: per-character SAM2 video masks, the routing ground truth on the latent grid, and background-free
reference images.

Model: SAM2's video predictor (``sam2`` package), built from a SAM2 YAML config whose ``_target_`` keys
are vetted first (see ``sam2_model``) and loaded strictly from the released checkpoint format
``{"model": state_dict}``. Default: SAM2.1 Hiera-L (``facebook/sam2.1-hiera-large``: its YAML and .pt).

Per clip, the frames at 25 fps are decoded once from the source at clip resolution (the written clip is
the source scaled to even dimensions), resized to the model's square input and kept as uint8; SAM2's
inference state is built from them in memory. Both characters live in ONE inference state (object ids
0 and 1), so the image encoder runs once per visited frame, not once per person. Both are prompted on the
same frame (the one where the weaker face is best: score x box area) with the face box and its 5
landmarks as positive clicks, so neither object has an empty output on the other's conditioning frame.
Propagation runs forward from there, then backward.

Drift: a frame where a character's mask covers less than ``drift_min_cover`` of its tracked face box.
The earliest drifted frame (in the order frames were produced) becomes a new conditioning frame: its old
outputs are dropped, both characters are prompted there again from their tracked boxes and landmarks,
and propagation reruns from it in the direction that produced it; at most ``max_reprompts`` times.

Outputs per clip, produced frame by frame (full-resolution masks of a whole clip are never held):
  * ``masks.rle.json``: per character, per frame, COCO RLE at clip resolution;
  * ``route.npy``: int8 ``[windows, 13, 30, 45]`` (default geometry): each training window's masks
    letterboxed onto the geometry's canvas and reduced by the trainer's recipe (``geometry``);
  * ``ref{i}.jpg``: each character's square crop at its best frame, pixels outside its mask set to
    ``ref_background``.
Stats: per character mean mask area (fraction of the frame), fraction of empty frames, temporal
stability (mean IoU of consecutive frames), mean coverage of the tracked face box; mean IoU between the
two characters; re-prompt count. Clips whose masks collapse (too small / too often empty) or merge (the
characters' masks overlap) are rejected unless ``reject`` is off.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from mtcc.facts import ClipFaces, MaskResult
from mtcc.media import rle as rle_codec
from mtcc.media.clip import CHARACTERS
from mtcc.media.geometry import LatentGeometry
from mtcc.media.mask_outputs import cutout, jpeg_bytes, mask_stats, masks_json, route_windows
from mtcc.media.members import MASKS, REFS, ROUTE
from mtcc.media.npy import npy_bytes
from mtcc.nets import loading, sam2_model
from mtcc.nets.mask_tracking import FrameMasks, best_frame, prompt_frame, track
from mtcc.nets.weights import Pin, Weights

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, StatView, Threshold
from .clip_media import clip_media
from .model_stage import ModelStage

HF_ID = "facebook/sam2.1-hiera-large"
PACKAGED_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
TINY_BASE = ("configs", "sam2.1", "sam2.1_hiera_t.yaml")
TINY_NAME = "sam2.1_hiera_mtcc_tiny"
HOW_TO_GET = (f"Get the weights on a machine with internet: `hf download {HF_ID} --local-dir DIR` "
              f"(DIR then holds sam2.1_hiera_l.yaml and sam2.1_hiera_large.pt) and set stages.masks.model to DIR "
              f"(or to the hub id {HF_ID} where the hub or its local cache is reachable); "
              f"`mtcc models make-tiny DIR` writes a random-weights model for plumbing runs only.")
# A reduced SAM2.1: the packaged Hiera-T config with narrower, shallower parts and a 128 px input, so a
# CPU runs it at a few ms per frame. Keys are dotted paths into the YAML; everything else stays as packaged.
TINY_CHANGES: dict[str, Any] = {
    "model.image_size": 128,
    "model.image_encoder.trunk.embed_dim": 8,
    "model.image_encoder.trunk.num_heads": 1,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size": [4, 4],
    "model.image_encoder.trunk.window_spec": [8, 4, 4, 2],
    "model.image_encoder.neck.position_encoding.num_pos_feats": 32,
    "model.image_encoder.neck.d_model": 32,
    "model.image_encoder.neck.backbone_channel_list": [64, 32, 16, 8],
    "model.memory_attention.d_model": 32,
    "model.memory_attention.num_layers": 1,
    "model.memory_attention.layer.d_model": 32,
    "model.memory_attention.layer.dim_feedforward": 64,
    "model.memory_attention.layer.self_attention.embedding_dim": 32,
    "model.memory_attention.layer.self_attention.feat_sizes": [8, 8],
    "model.memory_attention.layer.cross_attention.embedding_dim": 32,
    "model.memory_attention.layer.cross_attention.feat_sizes": [8, 8],
    "model.memory_attention.layer.cross_attention.kv_in_dim": 16,
    "model.memory_encoder.out_dim": 16,
    "model.memory_encoder.in_dim": 32,
    "model.memory_encoder.position_encoding.num_pos_feats": 16,
    "model.memory_encoder.mask_downsampler.embed_dim": 32,
    "model.memory_encoder.fuser.layer.dim": 32,
    "model.memory_encoder.fuser.num_layers": 1,
}


# -- the stage ------------------------------------------------------------------------------------------

@dataclass
class ClipFrames:
    frames: Any  # torch uint8 [T, S, S, 3]
    size: tuple[int, int]  # clip (h, w)
    scale: tuple[float, float]  # clip px per source px (x, y)
    full: dict[int, np.ndarray]  # clip-resolution RGB of the frames asked for


_SAM2_SOURCE = ("HF LFS metadata of facebook/sam2.1-hiera-large@665f8e2a as recorded in public download manifests; "
                "the same sha256 is published for dl.fbaipublicfiles.com/segment_anything_2/092824/"
                "sam2.1_hiera_large.pt")


class CharacterMasks(ModelStage):
    name: ClassVar[str] = "masks"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 1.7
    typical_keep: ClassVar[float] = 0.9
    actor_memory_mb: ClassVar[int] = 1115
    uses: ClassVar[tuple[str, ...]] = ("sam2", "torch", "hydra-core", "pycocotools")
    max_actor_cpus: ClassVar[float] = 8.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS}
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="SAM 2.1 Hiera-Large (video predictor checkpoint + its config)",
        kind="hf", folder="sam2.1-hiera-large", repo=HF_ID,
        revision="665f8e2ad61cf5f53d65644ff27c8ee525124610",
        files=(Pin("sam2.1_hiera_large.pt", bytes=898_083_611,
                   sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", source=_SAM2_SOURCE),
               Pin("sam2.1_hiera_l.yaml")),
        settings={"model": "./sam2.1-hiera-large"}),)
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces)
    provides: ClassVar[tuple[Key | type, ...]] = (Member(MASKS), Member(ROUTE), *(Member(r) for r in REFS),
                                           MaskResult)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "area_0": "float64", "area_1": "float64", "empty_0": "float64", "empty_1": "float64",
        "stability_0": "float64", "stability_1": "float64", "overlap": "float64",
        "face_cover_0": "float64", "face_cover_1": "float64", "reprompts": "int64", "random_weights": "bool",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("area_0", "area_1"), "mask area 0/1", plot="mask_area", title="Mask area (both characters)",
                 unit="fraction of the frame", thresholds=(Threshold("min_area", "min_area"),)),
        StatView(("overlap",), "mask overlap"),
    )

    model: loading.ModelSpec = Field(HF_ID, description="SAM2 checkpoint: a directory with one .pt ({'model': state_dict}) and "
                                          "optionally its YAML config, a .pt file, or a Hugging Face id")
    config: str = Field(PACKAGED_CONFIG, description="SAM2 YAML used when the model directory has none: a path "
                                                     "inside the sam2 package (configs/...) or a local YAML file")
    geometry: LatentGeometry = Field(default_factory=LatentGeometry,
                                     description="the video model's clip and latent sizes (route.npy)")
    drift_min_cover: float = Field(0.3, ge=0, description="a mask covering less of its tracked face box than this "
                                                          "has drifted (above 1: every frame counts as drifted)")
    max_reprompts: int = Field(2, ge=0, description="re-prompts on drifted frames per clip")
    min_area: float = Field(0.002, ge=0, le=1, description="reject when a character's mean mask area (fraction "
                                                           "of the frame) is below this")
    max_empty_fraction: float = Field(0.1, ge=0, le=1, description="reject when a character's mask is empty on "
                                                                   "more than this fraction of frames")
    max_overlap: float = Field(0.5, ge=0, le=1, description="reject when the characters' masks overlap more "
                                                            "than this (mean IoU)")
    reject: bool = Field(True, description="apply the thresholds above (off: only record the stats)")
    ref_margin: float = Field(1.6, ge=1.0, description="reference crop side / face box longer side")
    ref_background: tuple[int, int, int] = Field((255, 255, 255), description="RGB outside the character's mask "
                                                                              "in ref{i}.jpg")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the reference pictures")
    renamed: ClassVar[dict[str, str]] = {"batch_frames": "decode_frames"}
    decode_frames: int = Field(32, ge=1, description="frames per decode call")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=2), description=RESOURCES)


    @field_validator("config")
    @classmethod
    def _absolute_config(cls, v: str) -> str:
        # a path inside the sam2 package stays relative; a local file is pinned like the model
        p = Path(v).expanduser()
        if p.is_absolute() or p.exists() or not v.startswith("configs/"):
            return str(p.absolute())
        return v

    @field_validator("ref_background")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= int(c) <= 255 for c in v):
            raise ValueError("ref_background must be three values in 0..255")
        return v

    # -- model ------------------------------------------------------------------------------------------
    def _config_file(self) -> Path:
        if self.config.startswith("configs/") and not Path(self.config).is_absolute():
            return loading.packaged_file("sam2", *Path(self.config).parts, install=sam2_model.INSTALL)
        p = Path(self.config)
        if not p.is_file():
            raise loading.WeightsError(f"stage 'masks': SAM2 config {p} does not exist (stages.masks.config). {HOW_TO_GET}")
        return p

    def _files(self) -> tuple[Path, Path, Path]:
        """(resolved model path, config YAML, checkpoint .pt)."""
        path = loading.resolve(self.model, stage=self.name, key="model",
                              expected="a SAM2 checkpoint directory (one .pt holding {'model': state_dict}, and "
                                       "its YAML config) or a .pt file", how_to_get=HOW_TO_GET)
        if path.is_file():
            return path, self._config_file(), path
        pts = sorted(path.glob("*.pt"))
        yamls = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if len(pts) != 1:
            raise loading.WeightsError(
                f"stage 'masks': {path} holds {len(pts)} .pt files ({', '.join(p.name for p in pts) or 'none'}); "
                f"expected exactly one SAM2 checkpoint. {HOW_TO_GET}")
        if len(yamls) > 1:
            raise loading.WeightsError(
                f"stage 'masks': {path} holds several YAML files ({', '.join(p.name for p in yamls)}); keep only "
                f"the checkpoint's SAM2 config there. {HOW_TO_GET}")
        return path, (yamls[0] if yamls else self._config_file()), pts[0]

    def load(self) -> None:
        path, cfg, ckpt = self._files()
        self.admit(path)
        data = sam2_model.read_config(cfg)
        self._model = sam2_model.load_predictor(data, cfg, ckpt, device=self.device, how_to_get=HOW_TO_GET)
        self._config_used = str(cfg)

    def check_model(self) -> str:
        path, cfg, ckpt = self._files()
        random = self.admit(path)
        data = sam2_model.read_config(cfg)
        own = sam2_model.build_model(data, cfg, "cpu").state_dict()
        sam2_model.compare_state(own, sam2_model.checkpoint_shapes(ckpt), ckpt=ckpt, config=cfg,
                                 how_to_get=HOW_TO_GET)
        return (f"SAM2 video predictor ({cfg.name}, image_size {data['model'].get('image_size')}): {len(own)} "
                f"tensors of {ckpt.name} match{' (RANDOM weights)' if random else ''}")

    # -- frames --------------------------------------------------------------------------------------------
    def _frames(self, cand: Candidate, size: int, want_full: set[int]) -> ClipFrames:
        """Every frame of the clip's own mp4 (the delivered picture), decoded once: resized for SAM2, and
        at clip resolution where a reference picture is cut."""
        import torch

        from mtcc.media.video import open_frames

        media = clip_media(cand, self)
        n_out = media.frames
        clip_w, clip_h = media.info.size
        video = open_frames(media.mp4(), {"width": clip_w, "height": clip_h}, None)
        frames = torch.empty((n_out, size, size, 3), dtype=torch.uint8)
        full: dict[int, np.ndarray] = {}
        last, img = -1, None
        for idx, imgs in video.batches(list(range(min(n_out, video.n_frames))), self.decode_frames):
            for last, img in zip(idx, imgs):
                frames[last] = torch.from_numpy(np.ascontiguousarray(sam2_model.resize_square(img, size)))
                if last in want_full:
                    full[last] = np.ascontiguousarray(img)
        if img is None:
            raise ValueError(f"{cand.key}: its clip mp4 has no frame")
        # a short encode: hold the last picture, as the crops do
        frames[last + 1:] = frames[last]
        full.update({j: np.ascontiguousarray(img) for j in want_full if j > last})
        return ClipFrames(frames, (clip_h, clip_w), media.scale, full)

    # -- one clip -------------------------------------------------------------------------------------------
    def _clip(self, cand: Candidate) -> dict[str, Any]:
        import torch

        faces = cand.fact(ClipFaces)
        chars = faces.characters
        n = int(faces.frames)
        if n <= 0 or not chars:
            raise ValueError(f"{cand.key}: clip has {n} frames and {len(chars)} characters")
        boxes_src = np.stack([np.asarray(c.boxes, np.float64).reshape(-1, 4)[:n] for c in chars])
        scores = np.stack([np.asarray(c.scores, np.float64)[:n] for c in chars])
        bests = [best_frame(boxes_src[k], scores[k]) for k in range(len(chars))]
        first = prompt_frame(boxes_src, scores)
        clip = self._frames(cand, int(self._model.image_size), set(bests))
        sx, sy = clip.scale
        boxes = boxes_src * np.array([sx, sy, sx, sy])
        lms = [np.asarray(c.landmarks, np.float64).reshape(-1, 5, 2)[:n] * np.array([sx, sy]) for c in chars]
        h, w = clip.size
        out = FrameMasks(boxes, self.geometry, (h, w))
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda")
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            # sam2 fills small mask holes with its optional CUDA extension (not built by our install) and
            # warns on every frame without it; it then skips that post-processing, as any such install does
            warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step",
                                    category=UserWarning)
            state = sam2_model.inference_state(self._model, clip.frames, h, w)
            prompts, reprompts = track(self._model, state, out, lms, first, min_cover=self.drift_min_cover,
                                       max_reprompts=self.max_reprompts)
        del state
        clip.frames = None  # the resized video is the largest thing held; refs need only clip.full
        if not out.complete():
            raise RuntimeError(f"{cand.key}: SAM2 produced masks for {(out.order >= 0).sum()} of {n} frames")
        rles = out.rle_lists()
        route = route_windows(out.canvas, n, self.geometry)
        members = {MASKS: masks_json(rles, [c.track_id for c in chars], (h, w)),
                   ROUTE: npy_bytes(route)}
        for k, c in enumerate(chars):
            ref = cutout(clip.full[bests[k]], rle_codec.decode(rles[k][bests[k]]), boxes[k, bests[k]],
                         self.ref_margin, tuple(int(v) for v in self.ref_background))
            members[REFS[c.index]] = jpeg_bytes(ref, self.jpeg_quality)
        stats = mask_stats(rles, out.covers)
        stats["reprompts"] = int(reprompts)
        stats["random_weights"] = self.is_random
        fact = MaskResult(
            windows=[list(wn) for wn in self.geometry.windows(n)],
            geometry=self.geometry.model_dump(),
            size=[h, w],
            prompt_frames=[int(p) for p in prompts],
            reprompts=int(reprompts),
            ref_frames=[int(b) for b in bests],
            model=self.model,
            config=Path(self._config_used).name,
            image_size=int(self._model.image_size),
            random_weights=self.is_random,
        )
        return {"stats": stats, "members": members, "fact": fact}

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        for cand in batch:
            res = self._clip(cand)
            cand.members.update(res["members"])
            cand.put(res["fact"])
            self.settle(cand, res["stats"])
        return batch

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if not self.reject:
            return None
        chars = sorted(int(k.split("_")[1]) for k in stats if k.startswith("area_"))
        collapsed = [f"character {k}: mean area {stats[f'area_{k}']:.4f} of the frame, empty on "
                     f"{stats[f'empty_{k}']:.0%} of frames" for k in chars
                     if stats[f"area_{k}"] < self.min_area or stats[f"empty_{k}"] > self.max_empty_fraction]
        if collapsed:
            return Rejection("mask_collapsed", "; ".join(collapsed) + f" (needs area >= masks.min_area="
                             f"{self.min_area:g} and empty <= masks.max_empty_fraction={self.max_empty_fraction:g})")
        if stats.get("overlap", 0.0) > self.max_overlap:
            return Rejection("masks_merged", f"the characters' masks overlap: mean IoU {stats['overlap']:.3f} > "
                                             f"masks.max_overlap={self.max_overlap:g}")
        return None

    # -- tiny model ----------------------------------------------------------------------------------------
    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A reduced SAM2.1 (the packaged Hiera-T config with ``TINY_CHANGES``) with random weights, in the
        released layout: its YAML beside a .pt holding ``{"model": state_dict}``."""
        import torch
        import yaml

        d = Path(root) / cls.name
        d.mkdir(parents=True, exist_ok=True)
        base = loading.packaged_file("sam2", *TINY_BASE, install=sam2_model.INSTALL)
        data = sam2_model.read_config(base)
        for key, value in TINY_CHANGES.items():
            sam2_model.set_dotted(data, key, value)
        cfg = d / f"{TINY_NAME}.yaml"
        cfg.write_text("# @package _global_\n# MTCC tiny SAM2.1 (random weights, plumbing only): "
                       f"sam2's {'/'.join(TINY_BASE[1:])} reduced\n\n" + yaml.safe_dump(data, sort_keys=False))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = sam2_model.build_model(sam2_model.read_config(cfg), cfg, "cpu")
        torch.save({"model": model.state_dict()}, d / f"{TINY_NAME}.pt")
        loading.write_marker(d, f"SAM2.1 video predictor (reduced: {TINY_NAME})",
                            image_size=TINY_CHANGES["model.image_size"])
        return {"model": str(d), "allow_random_weights": True}
