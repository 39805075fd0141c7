"""SAM2 video predictor: config vetting, strict loading, and inference state built from frames in memory.

A SAM2 config is a Hydra YAML whose ``_target_`` keys name the classes to build, so instantiating an
untrusted config could call anything importable. Every ``_target_`` in the whole file must name a
``torch.nn.Module`` class defined in ``sam2.modeling`` (or the video predictor itself): checked as text
before any module is imported, then on the resolved class. The YAML is read with OmegaConf's loader
(yaml's SafeLoader) and instantiated here, never through Hydra's compose.

The predictor is built with the same overrides as ``sam2.build_sam.build_sam2_video_predictor`` and its
checkpoint (``{"model": state_dict}``, the released format) is loaded strictly through the loading seam.
``sam2``'s ``init_state`` only reads JPEG folders or video files; :func:`inference_state` builds the same
state from frames already decoded by the stage.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mtcc.nets import loading

VIDEO_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"
# module prefixes a config's `_target_` may point into: the model classes and the predictor
ALLOWED_MODULES = ("sam2.modeling.", "sam2.sam2_video_predictor.")
# what build_sam2_video_predictor applies on top of the YAML (sam2 1.1.0), as (dotted key, value)
PREDICTOR_OVERRIDES: tuple[tuple[str, Any], ...] = (
    ("model._target_", VIDEO_PREDICTOR),
    ("model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability", True),
    ("model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta", 0.05),
    ("model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh", 0.98),
    ("model.binarize_mask_from_pts_for_mem_enc", True),
    ("model.fill_hole_area", 8),
)
IMG_MEAN = (0.485, 0.456, 0.406)  # sam2's load_video_frames normalisation (ImageNet)
IMG_STD = (0.229, 0.224, 0.225)
INSTALL = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation --no-deps sam2==1.1.0"


class ConfigError(loading.WeightsError):
    """A SAM2 config that cannot be used (unsafe or malformed); names the file and the key."""


# -- config -------------------------------------------------------------------------------------------

def read_config(path: Path) -> dict[str, Any]:
    """The YAML at ``path`` as plain data, with every ``_target_`` vetted (see :func:`check_targets`)."""
    import yaml
    from omegaconf import OmegaConf

    try:
        # OmegaConf's loader is yaml's SafeLoader plus YAML 1.2 floats: the released configs write `1e-6`,
        # which plain YAML 1.1 reads as a string
        data = OmegaConf.to_container(OmegaConf.load(Path(path)), resolve=False)
    except yaml.YAMLError as e:
        raise ConfigError(f"SAM2 config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"SAM2 config {path} has no 'model' mapping (expected the layout of sam2's "
                          f"configs/sam2.1/*.yaml)")
    check_targets(data, path)
    return data


def _walk_targets(node: Any, where: str) -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}" if where else str(k)
            if k == "_target_":
                yield key, v
            else:
                yield from _walk_targets(v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_targets(v, f"{where}[{i}]")


def check_targets(data: Any, path: Path | str) -> None:
    """Refuse a config naming anything but ``sam2`` model classes, before importing any of them.

    The name is checked as text first (so a module outside the allowed ones is never imported), then
    resolved and checked again: an attribute chain such as ``sam2.modeling.x.os.system`` passes the text
    check but resolves to something that is not a ``sam2`` module class."""
    for key, target in _walk_targets(data, ""):
        if not isinstance(target, str) or not target.startswith(ALLOWED_MODULES):
            raise ConfigError(
                f"SAM2 config {path}: {key} = {target!r} is refused: a config may only build sam2 model classes "
                f"(modules {', '.join(m + '*' for m in ALLOWED_MODULES)}); configs are data, never code")
        import torch

        obj = _locate(target)
        if obj is None:
            raise ConfigError(f"SAM2 config {path}: {key} = {target!r} names nothing in the installed sam2 "
                              f"({INSTALL}); refused")
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                and (str(getattr(obj, "__module__", "")) + ".").startswith(ALLOWED_MODULES)):
            raise ConfigError(f"SAM2 config {path}: {key} = {target!r} resolves to {obj!r}, not a sam2 model class; "
                              f"refused")


def _locate(name: str) -> Any:
    """What a dotted ``name`` inside the allowed sam2 modules refers to (None if nothing): the longest
    importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        module_name = ".".join(parts[:i])
        if not (module_name + ".").startswith(ALLOWED_MODULES):
            break
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # not a module (an attribute further down): try a shorter prefix; a module that exists but
            # imports something missing is an installation problem, left to say so
            if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue
            raise
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return None
            obj = getattr(obj, attr)
        return obj
    return None


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    *parents, last = key.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


def predictor_config(data: dict[str, Any], path: Path | str) -> Any:
    """The resolved OmegaConf ``model`` node to instantiate: ``data`` with the video predictor's overrides,
    interpolations resolved, and the targets vetted again on what instantiate will actually see."""
    from omegaconf import OmegaConf

    data = copy.deepcopy(data)
    for key, value in PREDICTOR_OVERRIDES:
        set_dotted(data, key, value)
    cfg = OmegaConf.create(data)
    OmegaConf.resolve(cfg)
    check_targets(OmegaConf.to_container(cfg), path)
    return cfg.model


def build_model(data: dict[str, Any], path: Path | str, device: str = "cpu") -> Any:
    """A SAM2VideoPredictor from vetted config data, randomly initialised, on ``device`` (``meta`` allowed:
    parameters without storage, for key/shape checks), in eval mode."""
    import torch
    from hydra.utils import instantiate

    node = predictor_config(data, path)
    with torch.device(device):
        model = instantiate(node, _recursive_=True)
    return model.eval()


def quiet_progress() -> None:
    """Silence the predictor's per-frame progress bar: in a worker pool it is one log line per frame per
    clip. Only ``sam2.sam2_video_predictor``'s own reference to tqdm is replaced."""
    import functools

    import sam2.sam2_video_predictor as predictor
    import tqdm

    if not getattr(predictor.tqdm, "_mtcc_quiet", False):
        quiet = functools.partial(tqdm.tqdm, disable=True)
        quiet._mtcc_quiet = True  # type: ignore[attr-defined]
        predictor.tqdm = quiet


# -- checkpoint ---------------------------------------------------------------------------------------

def compare_state(own: dict[str, Any], state: dict[str, Any], *, ckpt: Path, config: Path | str,
                  how_to_get: str) -> None:
    """Raise ``WeightsError`` unless ``state`` has exactly ``own``'s keys, each with its shape."""
    problem = loading.state_mismatch(own, state)
    if problem:
        raise loading.WeightsError(
            f"stage 'masks': checkpoint {ckpt} does not fit the SAM2 model built from {config} "
            f"({problem}). Keys are loaded strictly: use the config that came with "
            f"the checkpoint. {how_to_get}")


def load_predictor(data: dict[str, Any], config: Path | str, ckpt: Path, *, device: str,
                   how_to_get: str) -> Any:
    """Build the predictor and load ``ckpt`` (``{"model": state_dict}``) into it strictly."""
    quiet_progress()
    model = build_model(data, config, "cpu")
    state = loading.load_state_dict(ckpt)
    compare_state(model.state_dict(), state, ckpt=ckpt, config=config, how_to_get=how_to_get)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def checkpoint_shapes(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's tensors memory-mapped (nothing read but the index), unwrapped like the seam does."""
    import torch

    obj = torch.load(str(ckpt), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise loading.WeightsError(f"stage 'masks': {ckpt} is not a state dict checkpoint (got {type(obj).__name__})")
    return obj


# -- inference state from frames in memory --------------------------------------------------------------

class NormalizedFrames:
    """SAM2's ``images`` entry, kept as uint8 ``[T, S, S, 3]`` and normalised one frame at a time when the
    predictor indexes it: a float32 copy of all frames is 4x the memory (250 frames at 1024 px: 3 GB)."""

    def __init__(self, frames: Any, device: Any):
        import torch

        self.frames = frames
        self.device = device
        self.mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=device)[:, None, None]
        self.std = torch.tensor(IMG_STD, dtype=torch.float32, device=device)[:, None, None]

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index: int) -> Any:
        img = self.frames[index].to(self.device, non_blocking=True).permute(2, 0, 1).float() / 255.0
        return (img - self.mean) / self.std


def inference_state(model: Any, frames: Any, video_height: int, video_width: int) -> dict[str, Any]:
    """What ``SAM2VideoPredictor.init_state`` returns, for frames already resized to the model's square
    input (uint8 ``[T, S, S, 3]`` torch tensor); outputs are at ``video_height`` x ``video_width``. Unlike
    ``init_state`` it does not warm up frame 0, so each frame's image encoder runs once per visit."""
    from collections import OrderedDict

    device = model.device
    return {
        "images": NormalizedFrames(frames, device),
        "num_frames": int(frames.shape[0]),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": int(video_height),
        "video_width": int(video_width),
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """A frame stretched to ``size`` x ``size`` as sam2 feeds its encoder (aspect not kept); area
    averaging when shrinking so thin structures do not alias, cubic when enlarging."""
    import cv2

    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


def forget_frame(state: dict[str, Any], frame_idx: int) -> None:
    """Make an already tracked frame a fresh conditioning frame for every object: its old outputs go, so a
    new prompt there is segmented from the prompt alone (as on the first frame), not from drifted memory."""
    for obj_idx in list(state["output_dict_per_obj"]):
        state["frames_tracked_per_obj"][obj_idx].pop(frame_idx, None)
        state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"].pop(frame_idx, None)
        state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
