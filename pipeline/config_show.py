"""``mtcc config show PROFILE``: the resolved config, one setting a line, each with where its value came from
(default, the profile, its models.yaml, a --set) and what it means (the setting's description)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from mtcc.stages import STAGES

from .config import PipelineConfig, RayConfig, RunSettings, include_models, load_config, read_yaml


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _field_doc(model: type[BaseModel], parts: list[str]) -> str:
    """The description of the (nested) field ``parts`` of ``model``, '' when there is none."""
    doc = ""
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return doc
        doc = field.description or ""
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return doc


def describe(key: str) -> str:
    """The description of the setting at dotted ``key`` of a config (``stages.probe.min_fps``)."""
    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 2 and parts[1] in STAGES:
        return _field_doc(STAGES[parts[1]], parts[2:])
    if parts[0] == "run":
        return _field_doc(RunSettings, parts[1:])
    if parts[0] == "ray":
        return _field_doc(RayConfig, parts[1:])
    return _field_doc(PipelineConfig, parts)


def show_config(path: str | Path, overrides: list[str] | None = None) -> str:
    overrides = list(overrides or [])
    cfg = load_config(path, overrides)
    raw = read_yaml(Path(path), "config file")
    from_profile = set(_leaves({k: v for k, v in raw.items() if k != "models"}))
    with_models = include_models({**copy.deepcopy(raw), **{k: yaml.safe_load(v) for o in overrides
                                                            for k, _, v in [o.partition("=")] if k == "models"}})
    from_models = set(_leaves(with_models.get("stages") or {}, "stages")) - from_profile
    from_set = {o.partition("=")[0].strip() for o in overrides if o.partition("=")[0].strip() != "models"}
    dump = cfg.dump()
    models = dump.pop("models", None)
    lines = [f"# profile {cfg.profile} ({path}), config hash {cfg.config_hash()}"
             + (f"; weights from {models['path']}" if models else "")]
    for key, value in _leaves(dump).items():
        source = ("--set" if key in from_set or any(key.startswith(s + ".") for s in from_set)
                  else "models.yaml" if key in from_models else "profile" if key in from_profile else "default")
        doc = describe(key) or ("the profile's name (recorded in every sample's meta)" if key == "profile" else "")
        lines.append(f"{key} = {json.dumps(value)}  [{source}]" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)
