"""Model weights as one portable folder: ``mtcc models fetch | check | make-tiny``.

A models folder DIR holds every model in the on-disk layout its stage loads, plus ``DIR/models.yaml``::

    random_weights: false          # true only for folders written by `mtcc models make-tiny`
    stages:                        # per stage, weight settings only; local paths relative to DIR
      sync: {model: ./syncnet/syncnet_v2.model}
      faces: {detector: insightface, model: ./insightface/antelopev2}
    files:                         # every file fetch / make-tiny placed, as it was verified then
      syncnet/syncnet_v2.model: {bytes: 1234, sha256: ..., pinned: false}
    sources:                       # provenance: where each stage's weights came from
      sync: {kind: url, url: http://..., revision: null}

A profile includes it with a top-level ``models: PATH`` (see :func:`mtcc.pipeline.config.load_config`):
its stage settings are laid over the profile's before ``--set`` overrides. Paths inside resolve against
the folder of models.yaml, so the folder can be copied to a cluster as it is.

``fetch`` downloads the paper-grade checkpoints listed in :data:`PINNED` (Hugging Face repos at pinned
revisions, and two public URLs), verifying bytes and sha256 where MTCC's table pins them; files the table
does not pin are recorded as downloaded (trust on first use) and verified by ``check`` from then on.
Files already in place (copied by hand) are verified and adopted without the network, so an offline
machine gets a models.yaml by placing the files and running ``fetch`` again. ``check`` verifies every
recorded file and runs each stage's cheap ``check_model()`` before a long run starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Literal
from urllib.parse import urlsplit

from mtcc.stages.hashing import file_digest

from .config import ConfigError

MODELS_FILE = "models.yaml"
TOP_KEYS = ("stages", "files", "random_weights", "sources")
# the only settings a models.yaml may give a stage: what names the weights and whether random ones are
# acceptable. Thresholds and devices stay in the profile, so a models folder cannot change a run's rules.
STAGE_KEYS: dict[str, type] = {"model": str, "config": str, "allow_random_weights": bool, "detector": str}
PATH_KEYS = ("model", "config")
FILE_KEYS = ("bytes", "sha256", "pinned")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
REV_RE = re.compile(r"^[0-9a-f]{40}$")
HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT = 5.0

Out = Callable[[str], None]


class ModelsError(RuntimeError):
    """A fetch that cannot complete; the message names the file or host and what to do."""


# -- the pinned table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    """One file of a model, at ``path`` under the model's folder. ``bytes``/``sha256`` are None where no
    public record of them could be established (fetch then records what it downloaded)."""

    path: str
    bytes: int | None = None
    sha256: str | None = None
    source: str = ""          # where the pinned values come from
    optional: bool = False    # some revisions of the upstream repo lack it; nothing to place then

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Entry:
    stage: str
    title: str
    kind: Literal["hf", "url"]
    folder: str                       # under DIR
    files: tuple[Pin, ...]
    settings: dict[str, Any]          # the stage's models.yaml settings, paths relative to DIR
    repo: str = ""
    revision: str | None = None       # a commit sha; None = not pinned (fetch records the one it got)
    url: str = ""
    archive: bool = False             # url is a zip; ``files`` are members (by base name) to extract
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.repo}@{self.revision or 'main (revision not pinned)'}" if self.kind == "hf" else self.url


_SAM2_SRC = ("HF LFS metadata of facebook/sam2.1-hiera-large@665f8e2a as recorded in public download manifests; "
             "the same sha256 is published for dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt")
_W2V_SRC = "HF LFS/blob metadata of facebook/wav2vec2-base-960h@22aad52d, recorded alike in several public manifests"
_QWEN_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               *(f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)),
               "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "preprocessor_config.json")
INSIGHTFACE_RELEASE = "https://github.com/deepinsight/insightface/releases/download/v0.7"

FACE_PACKS: dict[str, Entry] = {
    "antelopev2": Entry(
        stage="faces", title="insightface antelopev2 pack: SCRFD-10GF detector with 5 keypoints (the paper's)",
        kind="url", folder="insightface/antelopev2", url=f"{INSIGHTFACE_RELEASE}/antelopev2.zip", archive=True,
        files=(Pin("scrfd_10g_bnkps.onnx"),),
        settings={"detector": "insightface", "model": "./insightface/antelopev2"},
        note=("insightface's v0.7 release has answered 404 for antelopev2.zip since early 2024 (deepinsight/"
              "insightface#2517); if it still does, pass --url faces=<a copy you trust> or --faces-pack buffalo_l "
              "(det_10g.onnx, same SCRFD family), or place the file by hand")),
    "buffalo_l": Entry(
        stage="faces", title="insightface buffalo_l pack: SCRFD-10GF detector with 5 keypoints",
        kind="url", folder="insightface/buffalo_l", url=f"{INSIGHTFACE_RELEASE}/buffalo_l.zip", archive=True,
        files=(Pin("det_10g.onnx"),),
        settings={"detector": "insightface", "model": "./insightface/buffalo_l"}),
}

PINNED: tuple[Entry, ...] = (
    FACE_PACKS["antelopev2"],
    Entry(
        stage="separate", title="clearvoice AV-MossFormer2 target speaker extraction, 16 kHz",
        kind="hf", folder="AV_MossFormer2_TSE_16K", repo="alibabasglab/AV_MossFormer2_TSE_16K", revision=None,
        files=(Pin("last_best_checkpoint"),
               Pin("last_best_checkpoint.pt", bytes=734_561_014,
                   source="size reported from the HF API in a public design note; no sha256 published")),
        settings={"model": "./AV_MossFormer2_TSE_16K"},
        note="the repo also holds last_best_checkpoint_old.pt (a second ~700 MB copy); it is not fetched"),
    Entry(
        stage="sync", title="SyncNet v2 (syncnet_python release weights)",
        kind="url", folder="syncnet", url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        files=(Pin("syncnet_v2.model"),),
        settings={"model": "./syncnet/syncnet_v2.model"},
        note="the URL syncnet_python's download_model.sh uses (plain http: the sha256 recorded at first fetch "
             "is what protects later runs)"),
    Entry(
        stage="asd", title="Light-ASD active speaker detector, fine-tuned on TalkSet (CVPR 2023, MIT licence)",
        kind="url", folder="light_asd",
        url=("https://github.com/Junhua-Liao/Light-ASD/raw/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight/"
             "finetuning_TalkSet.model"),
        files=(Pin("finetuning_TalkSet.model", bytes=4_175_289,
                   sha256="efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5",
                   source="the authors' repository Junhua-Liao/Light-ASD at commit ed38c232, weight/"),),
        settings={"model": "./light_asd/finetuning_TalkSet.model"}),
    Entry(
        stage="masks", title="SAM 2.1 Hiera-Large (video predictor checkpoint + its config)",
        kind="hf", folder="sam2.1-hiera-large", repo="facebook/sam2.1-hiera-large",
        revision="665f8e2ad61cf5f53d65644ff27c8ee525124610",
        files=(Pin("sam2.1_hiera_large.pt", bytes=898_083_611,
                   sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", source=_SAM2_SRC),
               Pin("sam2.1_hiera_l.yaml")),
        settings={"model": "./sam2.1-hiera-large"}),
    Entry(
        stage="audio_emb", title="Wav2Vec2 base 960h (all 12 transformer layers)",
        kind="hf", folder="wav2vec2-base-960h", repo="facebook/wav2vec2-base-960h",
        revision="22aad52d435eb6dbaf354bdad9b0da84ce7d6156",
        files=(Pin("config.json", bytes=1596,
                   sha256="d3ec255c063d9f95057b553b19c20135b259875834a4fe9deb218a6be25b4cf3", source=_W2V_SRC),
               Pin("preprocessor_config.json", bytes=159,
                   sha256="b225d617c025463b9e157e06afea8b90dc7078fc70b013c533328423e0486b4a", source=_W2V_SRC),
               Pin("model.safetensors", bytes=377_607_901,
                   sha256="8aa76ab2243c81747a1f832954586bc566090c83a0ac167df6f31f0fa917d74a", source=_W2V_SRC)),
        settings={"model": "./wav2vec2-base-960h"}),
    Entry(
        stage="caption", title="Qwen2-VL-7B-Instruct (captions)",
        kind="hf", folder="Qwen2-VL-7B-Instruct", repo="Qwen/Qwen2-VL-7B-Instruct",
        revision="eed13092ef92e448dd6875b2a00151bd3f7db0ac",
        files=(*(Pin(n) for n in _QWEN_FILES), Pin("chat_template.json", optional=True)),
        settings={"model": "./Qwen2-VL-7B-Instruct"},
        note="about 16.6 GB; the shards' sizes and sha256 are checked against the hub's own LFS metadata"),
)


def pinned_table(faces_pack: str = "antelopev2") -> list[Entry]:
    if faces_pack not in FACE_PACKS:
        raise ModelsError(f"unknown insightface pack {faces_pack!r}; choose one of {', '.join(FACE_PACKS)}")
    return [FACE_PACKS[faces_pack] if e.stage == "faces" else e for e in PINNED]


# -- paths and models.yaml -------------------------------------------------------------------------------

def _bad_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def models_path(ref: str | os.PathLike) -> Path:
    """The models.yaml named by ``ref``: that file, or ``ref/models.yaml`` for a folder; ``~`` expanded,
    relative to the working directory."""
    text = os.fspath(ref)
    if _bad_chars(text):
        raise ConfigError(f"models: {text!r} contains control characters")
    p = Path(text).expanduser()
    if p.is_dir() or (not p.suffix and not p.exists()):
        p = p / MODELS_FILE
    return Path(os.path.normpath(p.absolute()))


def _rel_path(rel: str, where: str) -> PurePosixPath:
    """A path inside a models folder: relative, no ``..``, no control characters."""
    if not isinstance(rel, str) or not rel or _bad_chars(rel) or "\\" in rel:
        raise ConfigError(f"{where}: {rel!r} is not a usable relative path")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ConfigError(f"{where}: {rel!r} must stay inside the models folder (no absolute path, no '..')")
    return p


def resolve_value(value: str, base: Path, where: str) -> str:
    """A ``model``/``config`` value of models.yaml as the stage receives it: a Hugging Face id
    (``org/name[@rev]`` with nothing of that name inside the folder) passes unchanged, an absolute or
    ``~`` path is used as written, anything else is a path inside the folder."""
    if _bad_chars(value):
        raise ConfigError(f"{where}: {value!r} contains control characters")
    if "://" in value:
        raise ConfigError(f"{where}: {value!r}: a models.yaml names local paths or Hugging Face ids, not URLs")
    if value.startswith("~") or os.path.isabs(value):
        return os.path.normpath(os.path.expanduser(value))
    if HUB_RE.match(value) and not value.startswith("./") and not (base / value.split("@", 1)[0]).exists():
        return value
    return os.path.normpath(base / Path(*_rel_path(value, where).parts))


def _missing_message(p: Path) -> str:
    d = shlex.quote(str(p.parent))
    return (f"models file not found: {p}. Get one with `mtcc models fetch {d}` on a machine with internet (then copy "
            f"the folder here, or place its files by hand and run the same command here), or `mtcc models make-tiny "
            f"{d}` for a random-weights plumbing run; or point --set models=PATH at an existing models.yaml "
            f"(--set models=null runs with the profile's own weight settings)")


def load_models_file(p: Path) -> dict[str, Any]:
    """models.yaml at ``p``, safely loaded and checked key by key; ConfigError names what is wrong."""
    import yaml

    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(_missing_message(p)) from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping with {', '.join(TOP_KEYS)}")
    problems = [f"{p}: {k}: unknown key; allowed: {', '.join(TOP_KEYS)}" for k in doc if k not in TOP_KEYS]
    stages = doc.get("stages") or {}
    files = doc.get("files") or {}
    if not isinstance(stages, dict):
        problems.append(f"{p}: stages: expected a mapping of stage name -> weight settings")
        stages = {}
    if not isinstance(files, dict):
        problems.append(f"{p}: files: expected a mapping of relative path -> {{bytes, sha256}}")
        files = {}
    if not isinstance(doc.get("random_weights", False), bool):
        problems.append(f"{p}: random_weights: expected true or false")
    if not isinstance(doc.get("sources") or {}, dict):
        problems.append(f"{p}: sources: expected a mapping")
    from mtcc.stages import STAGES

    for name, body in stages.items():
        where = f"{p}: stages.{name}"
        cls = STAGES.get(name)
        if cls is None:
            problems.append(f"{where}: unknown stage; known stages: {', '.join(sorted(STAGES))}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}: expected a mapping of weight settings")
            continue
        allowed = [k for k in STAGE_KEYS if k in cls.model_fields]
        for k, v in body.items():
            if k not in STAGE_KEYS or k not in cls.model_fields:
                problems.append(f"{where}.{k}: not a weight setting of stage '{name}'; a models.yaml may set only "
                                f"{', '.join(allowed) or 'nothing for this stage'} (other settings belong in the "
                                f"profile)")
            elif not isinstance(v, STAGE_KEYS[k]):
                problems.append(f"{where}.{k}: expected {STAGE_KEYS[k].__name__}, got {v!r}")
    for rel, rec in files.items():
        where = f"{p}: files.{rel}"
        try:
            _rel_path(rel, where)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if not isinstance(rec, dict) or set(rec) - set(FILE_KEYS) or not {"bytes", "sha256"} <= set(rec):
            problems.append(f"{where}: expected {{bytes: int, sha256: hex, pinned: bool}}, got {rec!r}")
        elif not (isinstance(rec["bytes"], int) and rec["bytes"] >= 0 and isinstance(rec["sha256"], str)
                  and SHA_RE.match(rec["sha256"])):
            problems.append(f"{where}: bytes must be a non-negative integer and sha256 64 hex digits")
    if problems:
        raise ConfigError("invalid models file:\n  " + "\n  ".join(problems))
    return {"stages": stages, "files": files, "random_weights": bool(doc.get("random_weights", False)),
            "sources": doc.get("sources") or {}}


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


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# -- make-tiny -------------------------------------------------------------------------------------------

def make_tiny(root: Path) -> dict[str, dict[str, Any]]:
    """Random-initialised models of the real classes, for every model stage (``ModelStage.make_tiny``), in
    the layout the real weights use. Returns per stage its settings (absolute paths)."""
    from mtcc.stages import STAGES
    from mtcc.stages.model_stage import ModelStage

    return {name: cls.make_tiny(Path(root)) for name, cls in STAGES.items() if issubclass(cls, ModelStage)}


def _relative_to(root: Path, value: Any) -> Any:
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        if p == root or root in p.parents:
            return "./" + p.relative_to(root).as_posix() if p != root else "."
    return value


def write_tiny(root: Path, out: Out = print) -> Path:
    """make_tiny into ``root`` and its models.yaml (paths relative to ``root``, every file recorded,
    ``random_weights: true``); also ``overrides.yaml`` (absolute paths) for older callers."""
    import yaml

    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    made = make_tiny(root)
    (root / "overrides.yaml").write_text(yaml.safe_dump({"stages": made}, sort_keys=True))
    stages = {s: {k: _relative_to(root, v) for k, v in over.items()} for s, over in made.items()}
    files = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and rel not in (MODELS_FILE, "overrides.yaml") and not any(
                part.startswith(".") for part in PurePosixPath(rel).parts):
            n, sha = file_digest(f)
            files[rel] = {"bytes": n, "sha256": sha, "pinned": False}
    doc = {"random_weights": True, "stages": stages, "files": files,
           "sources": {s: {"kind": "make-tiny"} for s in stages}}
    p = write_models_file(root, doc, "written by `mtcc models make-tiny`: RANDOM weights of the real model classes,\n"
                                     "for plumbing runs and tests only; `mtcc models check` verifies this folder")
    for stage, over in sorted(stages.items()):
        out(f"{stage:<10} {over.get('model')}")
    skipped = [n for n in _stage_names() if n not in made]
    out(f"\nRANDOM WEIGHTS, for plumbing and tests only: {p}")
    if skipped:
        out(f"(no tiny model for: {', '.join(skipped)})")
    return p


def _stage_names() -> list[str]:
    from mtcc.stages import STAGES

    return [n for n in STAGES if n in {e.stage for e in PINNED}]


# -- check -----------------------------------------------------------------------------------------------

@dataclass
class Row:
    stage: str
    weights: str
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    random: bool = False


def _fix(random: bool, root: Path) -> str:
    d = shlex.quote(str(root))
    if random:
        return f"rebuild the folder with `mtcc models make-tiny {d}`"
    return (f"delete it and run `mtcc models fetch {d}` (on a machine with internet, or after placing the file by "
            f"hand: files in place are verified and adopted)")


def check(ref: str | os.PathLike, *, quick: bool = False, only: list[str] | None = None, out: Out = print) -> int:
    """Verify a models folder: every recorded file present with its size (and sha256 unless ``quick``),
    then each stage's ``check_model()`` with its settings (device=cpu). 0 if all is well, 1 otherwise."""
    from pydantic import ValidationError

    from mtcc.stages import STAGES
    from mtcc.stages import models as seam

    p = models_path(ref)
    doc = load_models_file(p)
    root = p.parent
    settings = stage_settings(doc, root, str(p))
    wanted = [s for s in settings if not only or s in only]
    if only and (unknown := sorted(set(only) - set(settings))):
        raise ConfigError(f"--only {','.join(unknown)}: not in {p} (it has: {', '.join(settings) or 'no stages'})")
    random_dir = doc["random_weights"]
    out(f"models: {p}")
    if random_dir:
        out("RANDOM WEIGHTS (written by `mtcc models make-tiny`): for plumbing runs and tests only")

    owned = {s: files_of(doc, root, settings[s]) for s in settings}
    checked = sorted({f for s in wanted for f in owned[s]}) if only else sorted(doc["files"])
    total = sum(doc["files"][f]["bytes"] for f in checked)
    how = "sizes only (--quick)" if quick else "sizes and sha256"
    out(f"files: {len(checked)} recorded, {_gb(total)}; checking {how}")
    file_problem: dict[str, str] = {}
    unpinned = 0
    for rel in checked:
        rec = doc["files"][rel]
        unpinned += not rec.get("pinned", False)
        f = root.joinpath(*PurePosixPath(rel).parts)
        if not f.is_file():
            file_problem[rel] = f"{f} is missing; {_fix(random_dir, root)}"
            continue
        size = f.stat().st_size
        if size != rec["bytes"]:
            file_problem[rel] = (f"{f}: {size} bytes, recorded {rec['bytes']} (truncated or replaced); "
                                 f"{_fix(random_dir, root)}")
            continue
        if not quick:
            _, sha = file_digest(f)
            if sha != rec["sha256"]:
                file_problem[rel] = (f"{f}: sha256 {sha[:16]}... != recorded {rec['sha256'][:16]}... (corrupted or "
                                     f"replaced); {_fix(random_dir, root)}")

    rows: list[Row] = []
    for name in wanted:
        s = settings[name]
        cls = STAGES[name]
        shown = doc["stages"][name].get("model") or doc["stages"][name].get("config") or "(stage default)"
        row = Row(name, str(shown))
        row.problems += [file_problem[f] for f in owned[name] if f in file_problem]
        kwargs = dict(s)
        if "device" in cls.model_fields:
            kwargs["device"] = "cpu"
        for k in PATH_KEYS:
            v = s.get(k)
            if isinstance(v, str) and os.path.isabs(v) and os.path.exists(v) and seam.random_marker(Path(v)):
                row.random = True
        try:
            stage = cls.model_validate(kwargs)
            row.detail = stage.check_model()
        except ValidationError as e:
            row.problems.append(f"settings do not fit stage '{name}': {e.errors()[0]['msg']} "
                                f"({'.'.join(map(str, e.errors()[0]['loc']))})")
        except Exception as e:  # noqa: BLE001 - any failure of one model is reported in its row; the rest still run
            msg = str(e).strip() or type(e).__name__
            row.problems.append(msg if isinstance(e, seam.WeightsError) else f"{type(e).__name__}: {msg}")
        rows.append(row)
    stray = [f for f in checked if f in file_problem and not any(f in owned[s] for s in wanted)]
    if stray:
        rows.append(Row("(files)", f"{len(stray)} file(s) of no listed stage", [file_problem[f] for f in stray]))

    width = max([len(r.weights) for r in rows] + [10])
    out(f"\n{'stage':<10} {'weights':<{width}}  result")
    for r in rows:
        tag = " (RANDOM weights)" if r.random else ""
        if r.problems:
            out(f"{r.stage:<10} {r.weights:<{width}}  PROBLEM{tag}")
            for msg in r.problems:
                out("    - " + msg.replace("\n", "\n      "))
        else:
            out(f"{r.stage:<10} {r.weights:<{width}}  OK{tag}: {r.detail}")
    bad = [r.stage for r in rows if r.problems]
    if unpinned and not random_dir:
        out(f"\nnote: {unpinned} file(s) have no sha256 in MTCC's pinned table; they are checked against the sha256 "
            f"recorded when they were first fetched (trust on first use)")
    out(f"\n{len(bad)} problem(s): {', '.join(bad)}" if bad else f"\nall {len(rows)} stage(s) OK")
    return 1 if bad else 0


# -- fetch: connectivity ---------------------------------------------------------------------------------

def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def _origin(url: str) -> str:
    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def probe(urls: dict[str, str], timeout: float = PROBE_TIMEOUT) -> dict[str, str | None]:
    """Per key, None if ``urls[key]`` answered (any HTTP status but 404/410), else why not. All at once, in
    daemon threads, bounded by about ``timeout``: a stuck DNS lookup must not hold an offline machine."""
    import requests

    result: dict[str, str | None] = {k: f"no answer within {timeout:g} s" for k in urls}

    def one(key: str, url: str) -> None:
        try:
            r = requests.head(url, timeout=(timeout, timeout), allow_redirects=False)
            result[key] = f"HTTP {r.status_code} (not found)" if r.status_code in (404, 410) else None
        except requests.RequestException as e:
            first = str(e).splitlines()[0] if str(e) else ""
            result[key] = f"{type(e).__name__}: {first[:160]}"

    threads = [threading.Thread(target=one, args=(k, u), daemon=True) for k, u in urls.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return dict(result)


# -- fetch: placing files --------------------------------------------------------------------------------

def _verify(path: Path, n: int, sha: str, pin: Pin, what: str) -> None:
    if pin.bytes is not None and n != pin.bytes:
        raise ModelsError(f"{what}: {n} bytes, MTCC's table pins {pin.bytes}; not used")
    if pin.sha256 is not None and sha != pin.sha256:
        raise ModelsError(f"{what}: sha256 {sha} != pinned {pin.sha256}; not used")


def download_url(url: str, dest: Path, pin: Pin | None = None, out: Out = print) -> tuple[int, str]:
    """Stream ``url`` to ``dest`` through a hidden temporary name in the same folder, renamed into place only
    once complete and verified; nothing is left behind on any failure."""
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.part-{os.getpid()}"
    h = hashlib.sha256()
    n = 0
    done = False
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as r:
            if r.status_code != 200:
                raise ModelsError(f"{url}: HTTP {r.status_code}")
            length = r.headers.get("Content-Length")
            expect = int(length) if length and length.isdigit() and "Content-Encoding" not in r.headers else None
            t0, shown = time.monotonic(), 0
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    if pin is not None and pin.bytes is not None and n > pin.bytes:
                        raise ModelsError(f"{url}: more than the {pin.bytes} bytes MTCC's table pins; stopped")
                    if n - shown >= 256 << 20:
                        shown = n
                        out(f"    {_gb(n)}{' of ' + _gb(expect) if expect else ''} "
                            f"({n / max(time.monotonic() - t0, 1e-3) / 1e6:.1f} MB/s)")
                f.flush()
                os.fsync(f.fileno())
        if expect is not None and n != expect:
            raise ModelsError(f"{url}: got {n} of {expect} bytes (connection cut); nothing kept")
        sha = h.hexdigest()
        if pin is not None:
            _verify(tmp, n, sha, pin, url)
        os.replace(tmp, dest)
        done = True
        return n, sha
    except requests.RequestException as e:
        raise ModelsError(f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def _unsafe_member(name: str) -> str | None:
    if not name or _bad_chars(name):
        return "empty name or control characters"
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in p.parts:
        return "'..' in its path"
    return None


def extract_members(archive: Path, names: Iterable[str], dest: Path) -> dict[str, tuple[int, str]]:
    """Extract the members whose base name is in ``names`` flat into ``dest``; returns name -> (bytes,
    sha256). The whole archive is refused if any member's path is absolute or has '..' (a crafted archive
    is not trusted for any of its members); each file goes through a temporary name and is renamed into
    place; a member bigger than it declares is refused (no decompression bombs)."""
    names = list(names)
    got: dict[str, tuple[int, str]] = {}
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            why = _unsafe_member(info.filename)
            if why:
                raise ModelsError(f"{archive}: member {info.filename!r} refused ({why}); nothing extracted")
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            hits = [i for i in infos if not i.is_dir() and PurePosixPath(i.filename.replace("\\", "/")).name == name]
            if len(hits) != 1:
                raise ModelsError(f"{archive}: {'no' if not hits else len(hits)} member(s) named {name!r} "
                                  f"(members: {', '.join(i.filename for i in infos[:12])})")
            info = hits[0]
            tmp = dest / f".{name}.part-{os.getpid()}"
            h = hashlib.sha256()
            n = 0
            done = False
            try:
                with zf.open(info) as src, open(tmp, "wb") as f:
                    while chunk := src.read(1 << 20):
                        n += len(chunk)
                        if n > info.file_size:
                            raise ModelsError(f"{archive}: {info.filename} inflates beyond its declared "
                                              f"{info.file_size} bytes; refused")
                        f.write(chunk)
                        h.update(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest / name)
                done = True
            finally:
                if not done:
                    tmp.unlink(missing_ok=True)
            got[name] = (n, h.hexdigest())
    return got


def _hf_download(e: Entry, folder: Path, names: list[str], endpoint: str) -> str | None:
    """Download ``names`` of ``e``'s repo into ``folder``; returns the commit the files came from."""
    from huggingface_hub import HfApi, snapshot_download

    snapshot_download(e.repo, revision=e.revision, local_dir=str(folder), allow_patterns=names, endpoint=endpoint)
    try:
        return HfApi(endpoint=endpoint).model_info(e.repo, revision=e.revision).sha
    except Exception:  # noqa: BLE001 - the commit is provenance only; the files are already verified
        return e.revision


def _hub_lfs(e: Entry, endpoint: str) -> dict[str, tuple[int, str]]:
    """The hub's own size and sha256 of each LFS file of ``e`` at its revision (empty if unavailable)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(e.repo, revision=e.revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - an extra check; without it the download is still recorded as TOFU
        return {}
    return {s.rfilename: (s.lfs.size, s.lfs.sha256) for s in (info.siblings or []) if s.lfs is not None}


def _layout_lines(e: Entry, root: Path) -> list[str]:
    folder = root / e.folder
    lines = [f"{e.stage}: {e.title}", f"  from {e.label}"]
    for pin in e.files:
        facts = (f"{pin.bytes} bytes" if pin.bytes is not None else "size not pinned") + (
            f", sha256 {pin.sha256}" if pin.sha256 else ", sha256 not pinned (recorded on first use)")
        lines.append(f"  {folder / pin.path}   ({facts}{', optional' if pin.optional else ''})")
    q = shlex.quote
    if e.kind == "hf":
        rev = f" --revision {e.revision}" if e.revision else ""
        names = " ".join(p.path for p in e.files if not p.optional)
        lines.append(f"  with internet: hf download {e.repo} {names}{rev} --local-dir {q(str(folder))}"
                     f"   (older huggingface_hub: hf download, same arguments)")
    elif e.archive:
        zname = PurePosixPath(urlsplit(e.url).path).name
        pats = " ".join(q("*" + p.path) for p in e.files)
        lines.append(f"  with internet: curl -fL -o {zname} {e.url} && unzip -j {zname} {pats} -d {q(str(folder))}")
    else:
        lines.append(f"  with internet: curl -fL -o {q(str(folder / e.files[0].path))} {e.url}")
    if e.note:
        lines.append(f"  note: {e.note}")
    return lines


def print_layout(entries: list[Entry], root: Path, out: Out = print) -> None:
    for e in entries:
        out("")
        for line in _layout_lines(e, root):
            out(line)


def _select(entries: list[Entry], only: list[str] | None) -> list[Entry]:
    if not only:
        return entries
    known = [e.stage for e in entries]
    unknown = [s for s in only if s not in known]
    if unknown:
        raise ModelsError(f"--only {','.join(unknown)}: not in MTCC's pinned table (stages: {', '.join(known)})")
    return [e for e in entries if e.stage in only]


def _missing(folder: Path, e: Entry) -> list[Pin]:
    """Required files not in place (or of another size than pinned)."""
    return [pin for pin in e.files if not pin.optional and not (
        (folder / pin.path).is_file() and (pin.bytes is None or (folder / pin.path).stat().st_size == pin.bytes))]


def fetch(root: str | os.PathLike, *, only: list[str] | None = None, faces_pack: str = "antelopev2",
          urls: dict[str, str] | None = None, timeout: float = PROBE_TIMEOUT, dry_run: bool = False,
          out: Out = print) -> int:
    """Make ``root`` hold every selected model of the pinned table and write its models.yaml.

    Exit codes: 0 done; 1 a download or verification failed (nothing unverified is kept); 3 the network
    needed for the missing files is not reachable (nothing was downloaded; the layout to place by hand is
    printed)."""
    root = Path(root).expanduser().absolute()
    entries = _select(pinned_table(faces_pack), only)
    urls = dict(urls or {})
    for key, url in urls.items():
        e = next((x for x in entries if x.stage == key), None)
        if e is None or e.kind != "url":
            raise ModelsError(f"--url {key}=...: '{key}' is not a URL-fetched stage "
                              f"({', '.join(x.stage for x in entries if x.kind == 'url')})")
        if _bad_chars(url) or urlsplit(url).scheme not in ("http", "https"):
            raise ModelsError(f"--url {key}={url!r}: expected an http(s) URL")
    entries = [dataclasses.replace(e, url=urls[e.stage]) if e.stage in urls else e for e in entries]
    if dry_run:
        out(f"MTCC's pinned models, as `mtcc models fetch {shlex.quote(str(root))}` would place them:")
        print_layout(entries, root, out)
        return 0
    existing = None
    if (root / MODELS_FILE).exists():
        existing = load_models_file(root / MODELS_FILE)
        if existing["random_weights"]:
            raise ModelsError(f"{root} holds RANDOM weights from `mtcc models make-tiny`; fetch real weights into "
                              f"another folder")

    todo = {e.stage: _missing(root / e.folder, e) for e in entries}
    missing = [e for e in entries if todo[e.stage]]
    endpoint = hf_endpoint()
    if missing:
        targets = {e.stage: (endpoint if e.kind == "hf" else e.url) for e in missing}
        t0 = time.monotonic()
        why = probe(targets, timeout)
        down = [e for e in missing if why[e.stage]]
        if down:
            out(f"cannot reach what {len(down)} model(s) need (probed in {time.monotonic() - t0:.1f} s):")
            hosts: dict[tuple[str, str], list[str]] = {}
            for e in down:
                hosts.setdefault((_origin(targets[e.stage]), str(why[e.stage])), []).append(e.stage)
            for (host, reason), stages in sorted(hosts.items()):
                out(f"  {host} ({', '.join(stages)}): {reason}")
            out("Nothing was downloaded. On a machine with internet run `mtcc models fetch DIR` and copy DIR here, "
                "or place the files below by hand and run this command again: files in place are verified and "
                "adopted without the network.")
            print_layout(down, root, out)
            return 3

    records: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    unpinned = 0
    for e in entries:
        folder = root / e.folder
        folder.mkdir(parents=True, exist_ok=True)
        try:
            got_rev = e.revision
            need = todo[e.stage]
            if need:
                out(f"{e.stage}: fetching {len(need)} file(s) from {e.label}")
                for pin in need:  # a file of the wrong size is replaced, never resumed into
                    (folder / pin.path).unlink(missing_ok=True)
                if e.kind == "hf":
                    extra = [p.path for p in e.files if p.optional and not (folder / p.path).exists()]
                    got_rev = _hf_download(e, folder, [p.path for p in need] + extra, endpoint)
                elif e.archive:
                    zpath = root / f".{e.stage}-{os.getpid()}.zip"
                    try:
                        download_url(e.url, zpath, None, out)
                        extract_members(zpath, [p.path for p in need], folder)
                    finally:
                        zpath.unlink(missing_ok=True)
                else:
                    download_url(e.url, folder / need[0].path, need[0], out)
            else:
                out(f"{e.stage}: all files already in {folder}; verifying")
            lfs = _hub_lfs(e, endpoint) if e.kind == "hf" and need else {}
            files: dict[str, dict[str, Any]] = {}
            for pin in e.files:
                f = folder / pin.path
                if not f.is_file():
                    if pin.optional:
                        continue
                    raise ModelsError(f"{f}: not delivered (is {pin.path} in {e.label}?)")
                n, sha = file_digest(f)
                rel = (PurePosixPath(e.folder) / pin.path).as_posix()
                first = (existing or {}).get("files", {}).get(rel) if pin not in need else None
                try:
                    _verify(f, n, sha, pin, str(f))
                    if first is not None and (first["bytes"], first["sha256"]) != (n, sha):
                        # trust on first use means the first record binds: a changed file is not re-trusted
                        raise ModelsError(f"{f}: sha256 {sha} differs from the {first['sha256']} recorded in "
                                          f"{root / MODELS_FILE} when it was first fetched")
                    if pin.path in lfs and lfs[pin.path] != (n, sha):
                        raise ModelsError(f"{f}: {n} bytes / sha256 {sha} differ from the hub's LFS record "
                                          f"{lfs[pin.path]}; not used")
                except ModelsError as err:
                    if pin in need:  # what this run downloaded goes; a file placed by hand is the user's
                        f.unlink(missing_ok=True)
                        raise
                    raise ModelsError(f"{err} (placed by hand? replace or delete it, then rerun)") from err
                unpinned += not pin.pinned
                files[rel] = {"bytes": n, "sha256": sha, "pinned": pin.pinned}
            records[e.stage] = files
            sources[e.stage] = {"kind": e.kind, "title": e.title, **(
                {"repo": e.repo, "revision": got_rev, "revision_pinned": e.revision is not None}
                if e.kind == "hf" else {"url": e.url})}
            out(f"{e.stage}: OK, {len(files)} file(s) in {folder}")
        except (ModelsError, OSError) as err:
            failed.append(e.stage)
            out(f"{e.stage}: FAILED: {err}")
            if e.note:
                out(f"  note: {e.note}")
        except Exception as err:  # noqa: BLE001 - hub client errors: one model failing must not stop the others
            failed.append(e.stage)
            out(f"{e.stage}: FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    done = [e for e in entries if e.stage in records]
    if done:
        doc = existing or {"stages": {}, "files": {}, "sources": {}, "random_weights": False}
        for e in done:
            prefix = PurePosixPath(e.folder)
            doc["files"] = {k: v for k, v in doc["files"].items()
                            if prefix not in PurePosixPath(k).parents}
            doc["files"].update(records[e.stage])
            doc["stages"][e.stage] = dict(e.settings)
            doc["sources"][e.stage] = sources[e.stage]
        p = write_models_file(root, doc, "written by `mtcc models fetch`; `mtcc models check` verifies this folder;\n"
                                         "include it in a profile with `models: PATH` or --set models=PATH")
        out(f"\nwrote {p} ({', '.join(e.stage for e in done)})")
    if unpinned:
        out(f"note: {unpinned} file(s) are not pinned in MTCC's table: their sha256 as fetched is recorded in "
            f"models.yaml (trust on first use) and `mtcc models check` verifies them from now on")
    if failed:
        out(f"FAILED: {', '.join(failed)}; rerun to retry (verified files are kept and not fetched again)")
        return 1
    return 0


def parse_urls(items: list[str]) -> dict[str, str]:
    urls = {}
    for item in items:
        key, sep, url = item.partition("=")
        if not sep or not key.strip() or not url.strip():
            raise ModelsError(f"--url {item!r}: expected STAGE=URL, e.g. faces=https://host/antelopev2.zip")
        urls[key.strip()] = url.strip()
    return urls


def split_stages(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None
