"""models.yaml: where it is, what it may say (validated by pydantic, every problem named with the file
and the key), the stage settings it gives with paths resolved, the digest of its weights, and writing it."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Iterable

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    field_validator,
)

from ..errors import ConfigError

MODELS_FILE = "models.yaml"
TOP_KEYS = ("stages", "files", "random_weights", "sources")
# the only settings a models.yaml may give a stage: what names the weights and whether random ones are
# acceptable. Thresholds and devices stay in the profile, so a models folder cannot change a run's rules.
STAGE_KEYS: dict[str, type] = {"model": str, "config": str, "allow_random_weights": bool, "detector": str}
PATH_KEYS = ("model", "config")
HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def bad_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def models_path(ref: str | os.PathLike) -> Path:
    """The models.yaml named by ``ref``: that file, or ``ref/models.yaml`` for a folder; ``~`` expanded,
    relative to the working directory."""
    text = os.fspath(ref)
    if bad_chars(text):
        raise ConfigError(f"models: {text!r} contains control characters")
    p = Path(text).expanduser()
    if p.is_dir() or (not p.suffix and not p.exists()):
        p = p / MODELS_FILE
    return Path(os.path.normpath(p.absolute()))


def _outside(rel: Any) -> str | None:
    """Why ``rel`` is no path inside a models folder (relative, no ``..``, no control characters), or None."""
    if not isinstance(rel, str) or not rel or bad_chars(rel) or "\\" in rel:
        return f"{rel!r} is not a usable relative path"
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        return f"{rel!r} must stay inside the models folder (no absolute path, no '..')"
    return None


def _rel_path(rel: str, where: str) -> PurePosixPath:
    why = _outside(rel)
    if why:
        raise ConfigError(f"{where}: {why}")
    return PurePosixPath(rel)


def resolve_value(value: str, base: Path, where: str) -> str:
    """A ``model``/``config`` value of models.yaml as the stage receives it: a Hugging Face id
    (``org/name[@rev]`` with nothing of that name inside the folder) passes unchanged, an absolute or
    ``~`` path is used as written, anything else is a path inside the folder."""
    if bad_chars(value):
        raise ConfigError(f"{where}: {value!r} contains control characters")
    if "://" in value:
        raise ConfigError(f"{where}: {value!r}: a models.yaml names local paths or Hugging Face ids, not URLs")
    if value.startswith("~") or os.path.isabs(value):
        return os.path.normpath(os.path.expanduser(value))
    if HUB_RE.match(value) and not value.startswith("./") and not (base / value.split("@", 1)[0]).exists():
        return value
    return os.path.normpath(base / Path(*_rel_path(value, where).parts))


# -- the schema ------------------------------------------------------------------------------------------

def _inside(rel: str) -> str:
    why = _outside(rel)
    if why:
        raise ValueError(why)
    return rel


class FileRecord(BaseModel):
    """A file as fetch or make-tiny verified it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    pinned: bool = False


class _Top(BaseModel):
    model_config = ConfigDict(extra="forbid")

    random_weights: StrictBool = False
    files: dict[Annotated[str, AfterValidator(_inside)], FileRecord] = Field(default_factory=dict)
    sources: dict[Any, Any] = Field(default_factory=dict)

    @field_validator("stages", "files", "sources", mode="before", check_fields=False)
    @classmethod
    def _absent(cls, v: Any) -> Any:
        return {} if v is None else v


def weight_keys(cls: type) -> list[str]:
    """The settings a models.yaml may give stage class ``cls``."""
    return [k for k in STAGE_KEYS if k in cls.model_fields]


@functools.cache
def _schema() -> type[BaseModel]:
    """The models.yaml model: per registered stage, exactly the weight settings its class has."""
    from mtcc.stages import STAGES

    strict = ConfigDict(extra="forbid", strict=True)
    per_stage = {name: create_model(f"{cls.__name__}Weights", __config__=strict,
                                    **{k: (STAGE_KEYS[k], None) for k in weight_keys(cls)})
                 for name, cls in STAGES.items()}
    stages = create_model("StagesWeights", __config__=ConfigDict(extra="forbid"),
                          **{name: (m, None) for name, m in per_stage.items()})
    return create_model("ModelsFile", __base__=_Top, stages=(stages, Field(default_factory=stages)))


# what a mapping at each place holds, for "expected ..." (a "*" stands for any key)
_MAPPINGS = {(): f"a mapping with {', '.join(TOP_KEYS)}", ("stages",): "a mapping of stage name -> weight settings",
             ("stages", "*"): "a mapping of weight settings",
             ("files",): "a mapping of relative path -> {bytes, sha256}",
             ("files", "*"): "{bytes: int, sha256: hex, pinned: bool}", ("sources",): "a mapping"}
_EXPECTED = {"bool_type": "bool", "string_type": "str", "int_type": "int",
             "greater_than_equal": "a non-negative integer", "string_pattern_mismatch": "64 lowercase hex digits"}


def _phrase(err: dict[str, Any], loc: list[str]) -> str:
    from mtcc.stages import STAGES

    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown key; allowed: {', '.join(TOP_KEYS)}"
        if loc[0] == "stages" and len(loc) == 2:
            return f"unknown stage; known stages: {', '.join(sorted(STAGES))}"
        if loc[0] == "stages":
            allowed = weight_keys(STAGES[loc[1]])
            return (f"not a weight setting of stage '{loc[1]}'; a models.yaml may set only "
                    f"{', '.join(allowed) or 'nothing for this stage'} (other settings belong in the profile)")
        return f"unknown key; a file record is {_MAPPINGS[('files', '*')]}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind == "missing":
        return f"missing; a file record is {_MAPPINGS[('files', '*')]}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got!r}"
    place = tuple(loc[:1]) + (("*",) if len(loc) > 1 else ())
    if kind in ("model_type", "dict_type", "model_attributes_type") and place in _MAPPINGS:
        return f"expected {_MAPPINGS[place]}, got {got!r}"
    return f"{err['msg']} (got {got!r})"


def _missing_message(p: Path) -> str:
    d = shlex.quote(str(p.parent))
    return (f"models file not found: {p}. Get one with `mtcc models fetch {d}` on a machine with internet (then copy "
            f"the folder here, or place its files by hand and run the same command here), or `mtcc models make-tiny "
            f"{d}` for a random-weights plumbing run; or point --set models=PATH at an existing models.yaml "
            f"(--set models=null runs with the profile's own weight settings)")


def load_models_file(p: Path) -> dict[str, Any]:
    """models.yaml at ``p``, safely loaded and validated; ConfigError names the file, each key that is
    wrong and what it may hold."""
    import yaml

    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(_missing_message(p)) from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    try:
        _schema().model_validate(doc)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = [str(part) for part in err["loc"] if part != "[key]"]
            problems.append(f"{p}: {'.'.join(loc) + ': ' if loc else ''}{_phrase(err, loc)}")
        raise ConfigError("invalid models file:\n  " + "\n  ".join(problems)) from None
    # validation is strict (nothing coerced), so what was read is what was validated, in the file's order
    return {"stages": doc.get("stages") or {}, "files": doc.get("files") or {},
            "random_weights": bool(doc.get("random_weights", False)), "sources": doc.get("sources") or {}}


# -- using it --------------------------------------------------------------------------------------------

def stage_settings(doc: dict[str, Any], base: Path, where: str) -> dict[str, dict[str, Any]]:
    """Per stage, the settings to lay over a profile's, with paths resolved against ``base``."""
    out: dict[str, dict[str, Any]] = {}
    for name, body in doc["stages"].items():
        out[name] = {k: resolve_value(v, base, f"{where}: stages.{name}.{k}") if k in PATH_KEYS else v
                     for k, v in body.items()}
    return out


def files_of(doc: dict[str, Any], base: Path, settings: dict[str, Any]) -> list[str]:
    """The recorded files (relative paths) a stage's weights consist of: everything in the folder its
    ``model``/``config`` names, or in the folder of the file it names (a checkpoint file travels with its
    siblings, e.g. make-tiny's random-weights marker)."""
    recorded = {base.joinpath(*PurePosixPath(rel).parts): rel for rel in doc["files"]}
    dirs = []
    for k in PATH_KEYS:
        v = settings.get(k)
        if isinstance(v, str) and os.path.isabs(v):
            p = Path(v)
            dirs.append(p.parent if p.is_file() or p in recorded else p)
    return sorted(rel for f, rel in recorded.items() if any(d in f.parents for d in dirs))


def weights_digest(doc: dict[str, Any], base: Path, settings: dict[str, dict[str, Any]], stages: Iterable[str]) -> str:
    """sha256 over the recorded content (file sha256s) of the weights the given stages use: the same files
    moved elsewhere keep it, other weights at the same paths change it."""
    body = {s: {rel: doc["files"][rel]["sha256"] for rel in files_of(doc, base, settings[s])}
            for s in sorted(stages) if s in settings}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_models_file(root: Path, doc: dict[str, Any], header: str) -> Path:
    """``root/models.yaml``, written atomically (a reader sees the old file or the new one)."""
    import yaml

    p = root / MODELS_FILE
    tmp = root / f".{MODELS_FILE}.tmp-{os.getpid()}"
    body = {"random_weights": bool(doc.get("random_weights", False)), "stages": doc.get("stages") or {},
            "files": doc.get("files") or {}, "sources": doc.get("sources") or {}}
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(body, sort_keys=True)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
