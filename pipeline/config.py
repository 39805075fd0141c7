"""Pipeline configuration: YAML (safe loading only) validated into typed models.

The stage list is an ordered mapping ``stages: {probe: {...}, clip: {...}, write: {...}}``: the order
in the file is the order of execution, and the names are looked up in ``mtcc.stages.STAGES`` (a config
can name stages, never import code). Errors name the key and what is allowed. Each enabled stage's
``requires`` must be made by a stage listed before it (``provides``, see :mod:`mtcc.stages.base`).

A top-level ``models: PATH`` includes the weight settings of a models folder's ``models.yaml`` (written by
``mtcc models fetch`` or ``make-tiny``, see :mod:`mtcc.pipeline.weights`) into the listed stages, before
``--set`` overrides; the config hash then also covers the recorded content of those weights.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mtcc.media.clip import ClipSpec
from mtcc.stages import RETIRED, STAGES, Stage
from mtcc.stages.base import FROM_INPUT
from mtcc.storage.remote_io import RetryPolicy

from .errors import ConfigError


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    videos_per_shard: int = Field(8, ge=1, description="input videos per shard (the unit of commit and resume)")
    max_shards_in_flight: int = Field(4, ge=1, description="shards whose candidates may be in the stages at once")
    max_clips_in_flight: int = Field(32, ge=1, description="clips cut and not yet through: the cut waits beyond "
                                                           "this (each holds its media on a node's disk)")
    max_batch_retries: int = Field(2, ge=0, description="retries of a batch whose worker died before it is split")
    rebalance_s: float = Field(20.0, gt=0, description="how often auto pools are planned again from the stages' "
                                                       "measured throughput and the live nodes (Ray runner)")
    work_dir: str | None = Field(None, description="node-local folder for fetched sources and cut clips, one "
                                                   "subfolder per OUT, emptied at the start and end of every run "
                                                   "(default: ~/.cache/mtcc/work)")
    source_cache_gb: float = Field(50.0, gt=0, description="most GiB of remote sources one node keeps at once")
    remote: RetryPolicy = Field(default_factory=RetryPolicy,
                                description="retries of every remote read and write (plan, source fetch, a "
                                            "remote OUT) on throttling, server errors, timeouts and cut bodies")


class RayConfig(BaseModel):
    """How to reach Ray. Runtime only: not part of the config hash (a rerun may use another cluster)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="None: RAY_ADDRESS when set (ray job submit, ray start), else an "
                                                  "embedded local Ray; 'local': always the embedded one; 'auto', "
                                                  "host:port or 'ray://host:port'")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all)")
    object_store_mb: int | None = Field(None, ge=64, description="object store of the embedded local Ray, MiB "
                                                                 "(default: Ray's)")
    memory_mb: int | None = Field(None, ge=64, description="host memory the embedded local Ray offers actors, MiB "
                                                           "(default: Ray's, what is free when it starts less the "
                                                           "object store): a figure of its own keeps the pools "
                                                           "the same whatever else the machine runs at that moment")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="what Ray logs on the driver (mtcc run --log-level)")


class ModelsRef(BaseModel):
    """The models.yaml a config included (``models: PATH``). Its settings are already merged into the
    stages; this records where they came from and what the weights were."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="absolute path of the included models.yaml")
    weights_sha256: str = Field(description="digest of the recorded sha256 of every file the config's stages "
                                            "take from it: other weights at the same paths change it")


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    profile: str = Field("custom", description="the profile's name (recorded in every sample's meta)")
    clip: ClipSpec = Field(default_factory=ClipSpec, description="what every clip is: frame rate, audio rate, "
                                                                 "characters; stages take these from here")
    run: RunSettings = Field(default_factory=RunSettings)
    ray: RayConfig = Field(default_factory=RayConfig)
    models: ModelsRef | None = None
    stages: list[Stage]

    @property
    def active_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.enabled]

    def dump(self) -> dict[str, Any]:
        out = {
            "profile": self.profile,
            "clip": self.clip.model_dump(),
            "run": self.run.model_dump(),
            "ray": self.ray.model_dump(),
            "stages": {s.name: s.model_dump() for s in self.stages},
        }
        if self.models is not None:
            out["models"] = self.models.model_dump()
        return out

    def config_hash(self) -> str:
        """Hash of what changes the output: the shard grouping and each stage's settings, in order, and
        (when a models.yaml was included) the recorded content of the weights the stages take from it.
        Resources, Ray settings and scheduling knobs are left out: scaling a build out is not a new
        dataset and must not force a rebuild. The models.yaml's own path is left out too: the stage
        settings already say where the weights are."""
        body: dict[str, Any] = {
            "videos_per_shard": self.run.videos_per_shard,
            "stages": [[s.name, s.model_dump(exclude={"resources", *type(s).schedule_fields})] for s in self.stages],
        }
        if self.models is not None:
            body["weights"] = self.models.weights_sha256
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that ``loc`` points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return sorted(model.model_fields)


def validation_problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per error of validating ``model``, at its dotted place under ``prefix``; an unknown key
    lists the keys allowed there."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join([prefix, *map(str, loc)]) if prefix else ".".join(map(str, loc))
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key; allowed: {', '.join(_allowed(model, loc))}")
        elif isinstance(e.get("input"), dict):
            # a whole section refused (a renamed key): echoing the section back would bury the message
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return lines


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.probe.min_fps=24")
        key, text = item.split("=", 1)
        _set_path(raw, key.strip(), yaml.safe_load(text) if text.strip() else None)
    return raw


def build_config(raw: dict[str, Any]) -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping with a 'stages' section")
    problems: list[str] = []
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        problems.append(f"stages: must be a non-empty ordered mapping of stage name -> settings; known stages: "
                        f"{', '.join(sorted(STAGES))}")
        stages_raw = {}
    stages: list[Stage] = []
    try:
        clip = ClipSpec.model_validate(raw.get("clip") or {})
    except ValidationError as e:
        problems.extend(validation_problems(e, ClipSpec, "clip"))
        clip = ClipSpec()
    for name, body in stages_raw.items():
        cls = STAGES.get(name)
        if cls is None:
            why = f"{RETIRED[name]}" if name in RETIRED else f"unknown stage; known stages: {', '.join(sorted(STAGES))}"
            problems.append(f"stages.{name}: {why}")
            continue
        body, clash = clip_settings(cls, body or {}, clip)
        if clash:
            problems.extend(clash)
            continue
        try:
            stages.append(cls.model_validate(body))
        except ValidationError as e:
            problems.extend(validation_problems(e, cls, f"stages.{name}"))
    top = {k: v for k, v in raw.items() if k != "stages"}
    try:
        cfg = PipelineConfig.model_validate({**top, "stages": []})
    except ValidationError as e:
        problems.extend(validation_problems(e, PipelineConfig, ""))
        cfg = None
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    assert cfg is not None
    active = [s for s in stages if s.enabled]
    needs = clip_problems(active, clip)
    if needs:
        raise ConfigError("invalid config:\n  " + "\n  ".join(needs))
    expanding = [s.name for s in active if s.expands]
    if len(expanding) != 1:
        raise ConfigError(f"stages: exactly one enabled stage must split videos into clips, found {expanding or 'none'}")
    order = order_problems(active)
    if order:
        raise ConfigError("invalid stage order:\n  " + "\n  ".join(order))
    return cfg.model_copy(update={"stages": stages})


def clip_settings(cls: type[Stage], body: dict[str, Any], clip: ClipSpec) -> tuple[dict[str, Any], list[str]]:
    """A stage's settings with what the clip section states (``Stage.clip_fields``) filled in; a stage setting
    that says otherwise is refused, naming the clip key to set instead (one place for what a clip is)."""
    out = dict(body)
    clash = []
    for key, field in cls.clip_fields.items():
        want = getattr(clip, key)
        if field in out and out[field] != want:
            clash.append(f"stages.{cls.name}.{field} is {out[field]!r} but clip.{key} is {want!r}: set clip.{key} "
                         f"(what a clip is is stated once, in the clip section)")
        out[field] = want
    return out, clash


def clip_problems(active: list[Stage], clip: ClipSpec) -> list[str]:
    """The enabled stages whose models take other clips than the clip section states (``Stage.clip_needs``)."""
    return [f"stages.{s.name} takes clips of {key} {need}, the clip section says {getattr(clip, key)}: set clip.{key}="
            f"{need} or disable the stage" for s in active for key, need in type(s).clip_needs.items()
            if getattr(clip, key) != need]


def order_problems(active: list[Stage]) -> list[str]:
    """Each enabled stage's ``requires`` against what the stages listed before it ``provide`` (see
    :class:`mtcc.stages.base.Key`): one line per reader and the stage it must follow, or per input that
    no enabled stage makes."""
    makers: dict[tuple[str, str], list[int]] = {}
    for i, s in enumerate(active):
        for key in s.made():
            makers.setdefault(key.ident, []).append(i)
    given = {k.ident for k in FROM_INPUT}
    late: dict[tuple[str, str], list[str]] = {}  # (reader, maker listed after it) -> what it needs
    missing: dict[tuple[str, str], list[str]] = {}  # (reader, how to fix) -> what it needs
    for i, s in enumerate(active):
        for need in s.requires:
            at = [m for m in makers.get(need.ident, []) if m != i]
            if need.ident in given or need.if_earlier or any(m < i for m in at):
                continue
            if at:
                late.setdefault((s.name, active[at[0]].name), []).append(str(need))
            elif not need.optional:
                known = [n for n, cls in STAGES.items() if any(k.ident == need.ident for k in cls.made())]
                fix = f"list {' or '.join(map(repr, known))} before it" if known else "no stage makes it"
                missing.setdefault((s.name, fix), []).append(str(need))
    return [f"stages.{reader} needs {', '.join(needs)}, made by no enabled stage: {fix}"
            for (reader, fix), needs in missing.items()] + [
        f"stages.{reader} needs {', '.join(needs)} (made by {maker}): list it after '{maker}'"
        for (reader, maker), needs in late.items()]


def include_models(raw: dict[str, Any]) -> dict[str, Any]:
    """Replace a top-level ``models: PATH`` by the weight settings of that models.yaml, laid over the
    stages the config lists (stages it does not list are not added). PATH is relative to the working
    directory (``~`` expanded; a folder means its models.yaml); paths inside models.yaml are relative to
    its own folder. ``models: "@tiny"`` is make-tiny's random models for this code, made on first use in
    the user's cache (:mod:`mtcc.pipeline.tiny_cache`). ``models: null`` (or no key) includes nothing."""
    if not isinstance(raw, dict) or "models" not in raw:
        return raw
    ref = raw.pop("models")
    if ref is None or ref == "":
        return raw
    if not isinstance(ref, (str, Path)):
        raise ConfigError(f"models: expected the path of a models.yaml (or of its folder), got {ref!r}")
    from .tiny_cache import TINY_REF, tiny_models
    from .weights.modelsfile import load_models_file, models_path, stage_settings, weights_digest

    p = tiny_models() if ref == TINY_REF else models_path(ref)
    doc = load_models_file(p)
    settings = stage_settings(doc, p.parent, str(p))
    stages = raw.get("stages")
    used = []
    if isinstance(stages, dict):
        for name, over in settings.items():
            if name in stages and (stages[name] is None or isinstance(stages[name], dict)):
                stages[name] = {**(stages[name] or {}), **over}
                used.append(name)
    raw["models"] = {"path": str(p), "weights_sha256": weights_digest(doc, p.parent, settings, used)}
    return raw


def read_yaml(p: Path, what: str) -> Any:
    """A config file's YAML, safely loaded (an empty file is ``{}``); ConfigError names the file."""
    try:
        return yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{what} not found: {p}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e


def resolve_config(name: str) -> Path:
    """A config path, or the name of a bundled profile (``offline``, ``mtcc``)."""
    p = Path(name)
    if p.exists():
        return p
    bundled = resources.files("mtcc.configs") / f"{name.removesuffix('.yaml')}.yaml"
    if bundled.is_file():
        return Path(str(bundled))
    raise ConfigError(f"config {name!r} not found (a YAML path, or a bundled profile: offline, mtcc)")


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """A config file, with its ``models:`` include merged in, then the ``--set`` overrides applied
    (``--set models=PATH`` replaces the file's include, ``--set models=null`` drops it)."""
    p = Path(path)
    raw = read_yaml(p, "config file")
    rest = []
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if sep and key.strip() == "models":
            if isinstance(raw, dict):
                raw["models"] = yaml.safe_load(text) if text.strip() else None
        else:
            rest.append(item)
    return build_config(apply_overrides(include_models(raw), rest))


def config_from_dump(dump: dict[str, Any], stage_order: list[str]) -> PipelineConfig:
    return build_config({**dump, "stages": {n: dump["stages"][n] for n in stage_order}})
