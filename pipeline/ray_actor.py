"""One stage's actor on Ray: it holds the configured stage (``setup`` ran once when it started), runs the
tickets the executor sends it (pipeline/ray_executor.py) and returns each candidate's members as objects of
their own, so that they stay on this node until a later stage or the commit reads them."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from mtcc.stages import Stage
from mtcc.stages.base import Candidate

from .executor import WorkspaceSpec, run_ticket, split_members, stage_thread_count


class StageActor:
    """Holds one configured stage. Its constructor returns at once, so that the executor can tell an actor
    placed (``placed`` answers) from one still loading its models: ``setup`` runs in a thread of its own, and
    ``ready`` / ``process`` wait for it."""

    def __init__(self, stage_cls: type[Stage], config: dict[str, Any], workspace: WorkspaceSpec,
                 clear_workspace: bool = True):
        self.stage = stage_cls.model_validate(config)
        self.error: str | None = None
        self.workspace = workspace.open()
        if clear_workspace and not _restarted():
            self.workspace.clear()  # the start of a run: a killed run's leftovers on this node go
        self.stage.attach(self.workspace)
        # the stage's thread count, as in-process runs use (stage_threads), rather than whatever Ray and the
        # OpenMP runtime picked; torch is only pinned once something imported it: stages without a model
        # never pay for importing torch (a dozen actors doing so is a third of a small run's start-up)
        self.threads = stage_thread_count(self.stage)
        os.environ["OMP_NUM_THREADS"] = str(self.threads)
        # actors share their node's cores with other actors and their ffmpeg: OpenMP threads that spin while
        # they wait for a descheduled partner burn the cores the others need, so idle ones sleep (read when
        # torch loads OpenMP, which setup does; a policy set in the node's environment is kept)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._setup = threading.Thread(target=self._set_up, name=f"setup-{self.stage.name}", daemon=True)
        self._setup.start()

    def _set_up(self) -> None:
        try:
            self.stage.setup()
        except Exception as e:  # noqa: BLE001 - reported to the driver by ready(), which stops the run
            self.error = f"stage '{self.stage.name}' failed to set up: {type(e).__name__}: {e}"
        self._pin_threads()

    def placed(self) -> bool:
        """Answers as soon as the actor exists: Ray has given it its resources (its models may still load)."""
        return True

    def _pin_threads(self) -> None:
        # an OpenMP runtime loaded before the variable was set (scipy's, say) ignores it: set torch's directly
        torch = sys.modules.get("torch")
        if torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def ready(self) -> str | None:
        self._setup.join()
        return self.error

    def process(self, batch: list[Candidate], chunk: dict[str, Any] | None = None,
                parts: list[Any] | None = None) -> tuple[Any, ...]:
        """(the batch's candidates, the seconds this actor spent on them), then (one return value each, owned
        by the driver) the members made for each: the driver fetches only the first. A part ticket returns its
        ``(kind, result)`` in place of the candidates, and no members."""
        self._setup.join()
        self._pin_threads()
        t0 = time.perf_counter()
        got = run_ticket(self.stage, batch, chunk, parts)
        if chunk is not None:
            return ((got, time.perf_counter() - t0), *([None] * len(batch)))
        out, heavy = split_members(batch, got)
        return ((out, time.perf_counter() - t0), *heavy)

    def evict(self, sources: list[str], clips: list[str]) -> None:
        self.workspace.evict_sources(sources)
        self.workspace.evict_clips(clips)

    def io_counts(self) -> dict[str, dict[str, int]]:
        return self.workspace.remote.counts.snapshot()

    def peak_memory_mb(self) -> float:
        """The most host memory this actor's process has held (its models loaded, its batches run)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def cleanup(self) -> None:
        self.workspace.clear()


def _restarted() -> bool:
    """Whether this actor is a restart after its worker died (then its node's workspace is in use)."""
    import warnings

    import ray

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own use of its actor_id property
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
