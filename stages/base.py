"""The stage contract.

A stage is a pydantic model: its fields are its config (validated, unknown keys refused), its class
variables say what it is (name, the stats it records, whether it splits a video into clips). ``setup()``
runs the stage's ``load()`` once per actor; ``process(batch)`` fills stats and decides per candidate.
Stages that run weights build on ``mtcc.stages.model_stage``.

Stats and decisions are kept apart (compute, then decide against thresholds) so the manifest carries
the numbers and a user can re-apply other thresholds later without recomputing.

Stages hand each other typed facts (``mtcc.facts``), members and stats through the candidate, so each
declares what it reads (``requires``) and what it leaves (``provides``): a profile that lists a reader
before the stage that makes its input is refused when the config is loaded, not hours into a run, and a
stage that leaves a fact it does not declare fails on the candidate it did it to.
"""

from __future__ import annotations

import sys
import traceback
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from mtcc.facts import Fact, SourceFile
from mtcc.media.members import REFS, TRACKS  # noqa: F401 - the stages' own names for them
from mtcc.storage.workspace import Fetched, NodeWorkspace

# the contract's vocabulary, defined in their own modules, importable from here as every stage does
from .candidate import (  # noqa: F401
    Candidate,
    Level,
    MemberData,
    MemberLost,
    MemberRef,
    PendingMember,
    Rejection,
    Status,
    UndeclaredFact,
)
from .keys import (  # noqa: F401
    CLIP_MEDIA,
    CLIPS,
    FROM_INPUT,
    Clips,
    FactKey,
    Key,
    Member,
    Stat,
    as_key,
    fact_key,
    optional,
)

# the stat every stage with weights records: whether they were random-initialised (plumbing-only output)
RANDOM_WEIGHTS = "random_weights"

# Stat column types a stage may declare; the manifest schema is built from them so that every shard's
# Parquet file has the same columns whatever its content. The list types hold vectors a build-wide index
# reads without opening a tar (face descriptors, fingerprints); they stay out of the sample's json.
STAT_TYPES = ("float64", "int64", "bool", "string", "float32[]", "int64[]")
LIST_STAT_TYPES = ("float32[]", "int64[]")


def refuse_renamed(model: type[BaseModel], data: Any) -> Any:
    """Refuse a key of ``model.renamed`` (old name -> new name) naming the new one and what it counts: a
    config written for an earlier release must not run with a setting silently dropped or misread."""
    renamed: dict[str, str] = getattr(model, "renamed", {})
    old = [k for k in renamed if isinstance(data, dict) and k in data]
    if old:
        raise ValueError("; ".join(
            f"'{k}' was renamed to '{renamed[k]}' ({model.model_fields[renamed[k]].description})" for k in old))
    return data


class Resources(BaseModel):
    """What one actor of a stage asks the scheduler for, and how many actors its pool may have."""

    model_config = ConfigDict(extra="forbid")
    # ``batch_size`` counted candidates here and model inputs in a stage's own settings
    renamed: ClassVar[dict[str, str]] = {"batch_size": "candidates_per_call"}

    num_cpus: float = Field(1.0, ge=0, description="CPUs one actor asks for (with concurrency auto: the least it "
                                                   "gets; CPUs a cluster has left over go to the actors of stages "
                                                   "that can use more threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs (a fraction shares a device) one actor asks for")
    memory_mb: int | None = Field(None, ge=1, description="host memory one actor holds (its models loaded), in "
                                                          "MiB; no node is given actors beyond its memory. "
                                                          "Default: what the stage was measured to hold")
    candidates_per_call: int = Field(1, ge=1, description="candidates per process() call")
    concurrency: int | Literal["auto"] = Field(
        "auto", description="actors in this stage's pool: 'auto' sizes every auto pool from the cluster and the "
                            "stages' measured throughput while the build runs; a number pins it")
    min_actors: int = Field(1, ge=1, description="with concurrency auto: the fewest actors of the pool")
    max_actors: int | None = Field(None, ge=1, description="with concurrency auto: the most actors (None: no bound "
                                                           "but the cluster)")
    max_cpus: float | None = Field(None, gt=0, description="with concurrency auto: the most CPUs one actor is given "
                                                           "(default: the stage's own, what its threads can use)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads of the stage's model; default: "
                                                        "Ray's share (num_cpus rounded, at least 1)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed(cls, data)

    @model_validator(mode="after")
    def _bounds(self) -> Resources:
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors})")
        if self.max_cpus is not None and self.max_cpus < self.num_cpus:
            raise ValueError(f"max_cpus ({self.max_cpus}) is below num_cpus ({self.num_cpus})")
        return self

    @property
    def pinned(self) -> int | None:
        """The pool size the config fixes, or None for an auto pool."""
        return None if self.concurrency == "auto" else int(self.concurrency)


@dataclass(frozen=True)
class Threshold:
    """A setting that decides on a stat, drawn as a dashed line at ``sign`` x its configured value.
    ``setting`` is a field of ``stage`` (a Stage class; None: the stage whose view this is), checked when the
    stage class is defined, so renaming a setting cannot leave the report reading a stale name."""

    label: str
    setting: str
    sign: int = 1
    stage: Any = None

    def stage_name(self, own: str) -> str:
        return self.stage.name if self.stage is not None else own


@dataclass(frozen=True)
class StatView:
    """How the dataset report shows one of a stage's stats, or one per character (pooled in the histogram,
    "a / b" on a gallery card). ``plot``: the histogram's file stem, None for a card-only stat; ``thresholds``:
    the settings that decide on the stat (:class:`Threshold`); ``level``: the candidates the stat is recorded
    on."""

    stats: tuple[str, ...]
    label: str
    plot: str | None = None
    title: str = ""
    unit: str = ""
    integer: bool = False
    level: Level = "clip"
    thresholds: tuple[Threshold, ...] = ()
    card: bool = True


ENABLED = "run this stage (false: skip it; a later stage that needs what it makes is refused at load)"
RESOURCES = "what one actor asks for and how many its pool may have (not part of the config hash)"
DEVICE = "where the stage's model runs: cpu, or cuda / cuda:N (refused at start where no CUDA device is)"


class Stage(BaseModel):
    """Base class of every stage. Subclasses set ``name`` and ``stats_schema`` and implement
    ``process`` (batched) or ``compute``/``decide`` (one candidate at a time)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: ClassVar[str] = ""
    # stat name -> one of STAT_TYPES; recorded as manifest column "<stage>.<stat>"
    stats_schema: ClassVar[dict[str, str]] = {}
    # a stage that turns one video candidate into clip candidates
    expands: ClassVar[bool] = False
    # reads the input video itself (through the node's source cache); the last such stage in a profile is
    # where a video's cached copy can go
    reads_source: ClassVar[bool] = False
    # reads the clip media the ``cut`` stage leaves in the node's workspace (for the scheduler; such a
    # stage also lists CLIP_MEDIA in ``requires``, and the maker in ``provides``)
    reads_clip_media: ClassVar[bool] = False
    # makes them
    makes_clip_media: ClassVar[bool] = False
    # what it reads from earlier stages and what it leaves for later ones (see ``Key``); checked in order
    # when a config is loaded
    requires: ClassVar[tuple[Key | type[Fact], ...]] = ()
    provides: ClassVar[tuple[Key | type[Fact], ...]] = ()
    # what the dataset report shows of the stats (histograms, gallery card scores), in this order
    report_views: ClassVar[tuple[StatView, ...]] = ()
    # settings renamed since an earlier release (old key -> new field), refused naming the new one
    renamed: ClassVar[dict[str, str]] = {}
    # what an auto pool is sized by until the build has measured it (pipeline/pools.py): actor-seconds per
    # second of media entering the stage at the profile's share (offline profile, this repo's 2-core CPU box,
    # `mtcc bench`), the share of its input's seconds it typically passes on (talk-show footage), the host
    # memory one actor holds once its models are loaded (measured as resident set size on Ray), and the
    # most CPUs one actor puts to use (1: no threads worth giving it more)
    expected_cost: ClassVar[float] = 0.01
    typical_keep: ClassVar[float] = 1.0
    # the clip section (mtcc.media.clip.ClipSpec) sets these settings of the stage (clip key -> field), and the
    # stage's models take clips only of these (clip key -> value): both checked when a config is loaded
    clip_fields: ClassVar[dict[str, str]] = {}
    clip_needs: ClassVar[dict[str, int]] = {}
    # settings that only say how the work is scheduled (how a long video is split): a run may change them
    # without changing a byte of its output, so the config hash leaves them out
    schedule_fields: ClassVar[frozenset[str]] = frozenset()
    actor_memory_mb: ClassVar[int] = 400
    max_actor_cpus: ClassVar[float] = 1.0
    # the libraries (distribution names, see mtcc.pipeline.node.LIBRARIES) the stage imports, for `mtcc env`
    uses: ClassVar[tuple[str, ...]] = ()

    enabled: bool = Field(True, description=ENABLED)
    resources: Resources = Field(default_factory=Resources, description=RESOURCES)

    _workspace: NodeWorkspace | None = PrivateAttr(None)
    _loaded: bool = PrivateAttr(False)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return refuse_renamed(cls, data)

    def libraries(self) -> tuple[str, ...]:
        """The libraries this stage imports with its settings (``uses``; a stage whose settings pick a library
        says which)."""
        return self.uses

    def attach(self, workspace: NodeWorkspace) -> None:
        """Share the node's workspace (fetched sources, clip media) with this stage; builds do this for
        every stage before ``setup``."""
        self._workspace = workspace

    @property
    def workspace(self) -> NodeWorkspace:
        if self._workspace is None:
            self._workspace = NodeWorkspace.scratch()  # a stage used on its own: a private one
        return self._workspace

    @property
    def thread_count(self) -> int:
        """The threads the stage's own compute runs with (torch intra-op, ONNX Runtime, ffmpeg where the stage
        does not fix it): its declared ``threads``, else its actor's CPU share (num_cpus rounded, at least 1),
        as Ray gives it."""
        return self.resources.threads or max(1, round(self.resources.num_cpus))

    def source(self, cand: Candidate) -> AbstractContextManager[Fetched]:
        """A local path of ``cand``'s input video for the block (the node's checked copy of a remote one:
        see :meth:`NodeWorkspace.source`); for stages that read the source (``reads_source``)."""
        known = cand.maybe(SourceFile) or SourceFile()
        return self.workspace.source(cand.source, known.fingerprint, known.size)

    @classmethod
    def stat_column(cls, stat: str) -> str:
        """The manifest column of this stage's ``stat`` (``"<stage>.<stat>"``); refuses a stat the stage does not
        record, so a reader naming another stage's stat fails where it is written, not with a missing column."""
        if stat not in cls.stats_schema:
            raise KeyError(f"stage '{cls.name}' records no stat {stat!r} (it records {sorted(cls.stats_schema)})")
        return f"{cls.name}.{stat}"

    @classmethod
    def made(cls) -> tuple[Key, ...]:
        """What this stage leaves: its declared ``provides``, its stats, and clips when it expands."""
        stats = tuple(Stat(f"{cls.name}.{k}") for k in cls.stats_schema)
        return cls.provides + stats + ((CLIPS,) if cls.expands else ())

    @classmethod
    def sample_meta(cls) -> tuple[str, ...]:
        """The keys of the facts this stage provides that go into the sample's json."""
        return tuple(f.key for f in cls.sample_facts())

    @classmethod
    def sample_facts(cls) -> tuple[type[Fact], ...]:
        """The fact classes this stage provides that go into the sample's json."""
        return tuple(k.fact for k in cls.provides if isinstance(k, FactKey) and k.fact and k.fact.sample_meta)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # fact classes listed bare stand for themselves: every reader of the contract sees keys
        type.__setattr__(cls, "requires", tuple(as_key(k) for k in cls.requires))
        type.__setattr__(cls, "provides", tuple(as_key(k) for k in cls.provides))
        for view in cls.report_views:
            for t in view.thresholds:
                owner = t.stage or cls
                if t.setting not in owner.model_fields:
                    raise TypeError(f"stage '{cls.name}': report threshold {t.label!r} names {t.setting!r}, which is "
                                    f"not a setting of stage '{owner.name}'")

    def setup(self) -> None:
        """Run ``load`` once per actor: the executors call this before the first batch, ``run_batch`` before
        each (a stage used on its own). A failed load is tried again by the next call."""
        if not self._loaded:
            self.load()
            self._loaded = True

    def load(self) -> None:
        """Load models and other per-actor state (through ``setup``, never more than once)."""

    # -- one-at-a-time stages implement these two --------------------------------------------------
    def compute(self, cand: Candidate) -> dict[str, Any]:
        raise NotImplementedError

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        return None

    # -- the batched entry point ----------------------------------------------------------------------
    def process(self, batch: list[Candidate]) -> list[Candidate]:
        out: list[Candidate] = []
        for cand in batch:
            self.settle(cand, self.compute(cand))
            out.append(cand)
        return out

    def record(self, cand: Candidate, stats: dict[str, Any]) -> None:
        for k, v in stats.items():
            cand.stats[f"{self.name}.{k}"] = v

    def settle(self, cand: Candidate, stats: dict[str, Any]) -> Rejection | None:
        """Record ``stats`` on ``cand``, then decide against the thresholds: a rejection rejects ``cand`` and
        is returned (a batched ``process`` ends each candidate with this, as the one-at-a-time path does)."""
        self.record(cand, stats)
        rejection = self.decide(stats)
        if rejection is not None:
            cand.reject(self.name, rejection.reason, rejection.message)
        return rejection

    def run_batch(self, batch: list[Candidate]) -> list[Candidate]:
        """``process`` with failure isolation: an exception for one candidate rejects that candidate
        with reason ``error`` and lets its neighbours go on."""
        todo = [c for c in batch if c.pending]
        done = [c for c in batch if not c.pending]
        if not todo:
            return batch
        for c in todo:
            c.stage = self.name
        before = {id(f) for c in todo for _, f in c.facts.items()}
        try:
            return done + self._finish(self._loaded_process(todo), before)
        except MemberLost:
            raise  # the build redoes the shard; no candidate is to blame
        except Exception:  # noqa: BLE001 - a failing batch is retried item by item to find the culprit
            if len(todo) == 1:
                self._reject_error(todo[0])
                return done + todo
        out = list(done)
        for c in todo:
            try:
                out.extend(self._finish(self._loaded_process([c]), before))
            except MemberLost:
                raise
            except Exception:  # noqa: BLE001 - becomes a manifest row with the exception text
                self._reject_error(c)
                out.append(c)
        return out

    # -- one long candidate over several workers (pipeline/flow.py sends the parts, then the merge) -----
    def chunks(self, cand: Candidate) -> list[dict[str, Any]]:
        """The parts of ``cand`` that several workers can do at once (each a JSON-able spec), or [] to do it
        whole. Called by the driver on the stage's config alone (no model is loaded there)."""
        return []

    def process_chunk(self, cand: Candidate, chunk: dict[str, Any]) -> Any:
        """One part's result (it travels to the driver, then to ``merge_chunks``)."""
        raise NotImplementedError

    def merge_chunks(self, cand: Candidate, parts: list[Any]) -> dict[str, Any]:
        """Fill ``cand`` from its parts' results, in order, as ``compute`` would; its stats."""
        raise NotImplementedError

    def parts_join(self, parts: list[Any]) -> bool:
        """Whether ``merge_chunks`` can use these part results as they are; False: it does the candidate whole
        instead (one worker, as if it were short). Asked by the driver too, which counts those rescans."""
        return True

    def run_chunk(self, cand: Candidate, chunk: dict[str, Any]) -> tuple[str, Any]:
        """``process_chunk`` with failure isolation: ``("ok", result)``, or ``("error", message)`` (the
        candidate is then rejected as ``error`` once every part is in)."""
        try:
            self.setup()
            return "ok", self.process_chunk(cand, chunk)
        except MemberLost:
            raise
        except Exception:  # noqa: BLE001 - becomes the candidate's manifest row, as in run_batch
            tb = traceback.format_exc(limit=-3).strip().splitlines()
            return "error", (f"stage '{self.name}' failed on {cand.source} ({cand.key}), part "
                             f"{chunk.get('index')}: {tb[-1] if tb else 'unknown error'}")

    def run_merge(self, cand: Candidate, parts: list[Any]) -> list[Candidate]:
        """``merge_chunks`` with failure isolation, then the stage's decision, as for a whole candidate."""
        cand.stage = self.name
        try:
            self.setup()
            self.settle(cand, self.merge_chunks(cand, parts))
        except MemberLost:
            raise
        except Exception:  # noqa: BLE001 - becomes a manifest row with the exception text
            self._reject_error(cand)
        return self._finish([cand])

    def _loaded_process(self, batch: list[Candidate]) -> list[Candidate]:
        # a load that fails (random weights refused, a missing file) rejects the batch's candidates with the
        # reason, as a failing process does
        self.setup()
        return self.process(batch)

    def _finish(self, cands: list[Candidate], before: set[int] | None = None) -> list[Candidate]:
        for c in cands:
            if c.pending or c.status == "expanded":
                c.stage = self.name
            if before is not None:
                self._check_facts(c, before)
        return cands

    def _check_facts(self, cand: Candidate, before: set[int]) -> None:
        """A fact on ``cand`` that was not there before this stage ran is one it declares in ``provides``:
        no stage leaves (or replaces) another stage's fact unannounced."""
        own = {k.name for k in self.provides if isinstance(k, FactKey)}
        foreign = sorted(k for k, f in cand.facts.items() if id(f) not in before and k not in own)
        if foreign:
            raise UndeclaredFact(f"stage '{self.name}' left fact(s) {foreign} on {cand.key} that it does not list "
                                 f"in `provides`; declare them there (or leave a fact of its own)")

    def _reject_error(self, cand: Candidate) -> None:
        err = sys.exc_info()[1]
        tb = traceback.format_exc(limit=-3).strip().splitlines()
        last = tb[-1] if tb else "unknown error"
        if is_out_of_memory(err):
            free_accelerator_memory()
            cand.reject(self.name, "error", out_of_memory_message(self.name, cand.source, cand.key, last))
            return
        cand.reject(
            self.name,
            "error",
            f"stage '{self.name}' failed on {cand.source} ({cand.key}): {last}",
        )


def is_out_of_memory(err: BaseException | None) -> bool:
    """Host or accelerator memory exhausted by one input: the input is rejected and its neighbours go on."""
    if err is None:
        return False
    if isinstance(err, MemoryError):
        return True
    # torch.OutOfMemoryError (CUDA caching allocator) and backends that raise RuntimeError("... out of memory")
    # torch.OutOfMemoryError (CUDA caching allocator); torch's CPU allocator raises a RuntimeError
    # "can't allocate memory"; other backends say "out of memory"
    text = str(err).lower()
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def out_of_memory_message(stage: str, source: str, key: str, detail: str) -> str:
    return (f"out of memory: stage '{stage}' on {source} ({key}): {detail}; this input alone exhausts the "
            f"memory of the stage's worker: lower stages.{stage}.resources.candidates_per_call (or the stage's "
            f"own forward_batch or batch settings), or give the stage more memory / a larger GPU share")


def free_accelerator_memory() -> None:
    """Return the cached blocks of a failed allocation so the next input starts from a clean pool."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
