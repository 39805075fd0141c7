"""OutPaths: the file names of a dataset build under OUT, shared by the writer (pipeline), the readers
(report, status, the training loader) and the remote publisher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

# the folder of the selections (mtcc select) under OUT; its name is also in the URLs users pass to training
SELECTIONS_DIR = "selections"


@dataclass(frozen=True)
class OutPaths:
    """Where everything of a build lives under OUT (``root``): the plan, the config, the lock, and per shard
    its tar, manifest and commit file; temporaries carry a leading dot and a ``.tmp`` suffix. ``root`` is a
    local Path, or a PurePosixPath of an fsspec store's path (bucket/prefix) for a remote OUT."""

    root: Path | PurePath

    @property
    def plan(self) -> Path:
        return self.root / "plan.parquet"

    @property
    def run_config(self) -> Path:
        return self.root / "config.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def dirs(self) -> list[Path]:
        return [self.root / d for d in ("shards", "manifests", "commits", "report")]

    def tar(self, shard: int) -> Path:
        return self.root / "shards" / f"mtcc-{shard:06d}.tar"

    def manifest(self, shard: int) -> Path:
        return self.root / "manifests" / f"{shard:06d}.parquet"

    def commit(self, shard: int) -> Path:
        return self.root / "commits" / f"{shard:06d}.json"

    def uncommit(self, shard: int) -> None:
        self.commit(shard).unlink(missing_ok=True)

    # the whole-build index (mtcc index) and the selections (mtcc select): layers over the committed
    # shards, which they never change
    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def index_state(self) -> Path:
        return self.index_dir / "state.json"

    @property
    def identities(self) -> Path:
        return self.index_dir / "identities.parquet"

    @property
    def identity_centres(self) -> Path:
        return self.index_dir / "identity_centres.parquet"

    @property
    def duplicates(self) -> Path:
        return self.index_dir / "duplicates.parquet"

    @property
    def duplicate_pairs(self) -> Path:
        return self.index_dir / "duplicate_pairs.parquet"

    def index_files(self) -> list[Path]:
        """Every file of the index, its state last (a reader that sees the state sees what it describes)."""
        return [self.identities, self.identity_centres, self.duplicates, self.duplicate_pairs, self.index_state]

    @property
    def selections_dir(self) -> Path:
        return self.root / SELECTIONS_DIR

    def selection(self, name: str) -> Path:
        return self.selections_dir / f"{name}.parquet"

    @staticmethod
    def temp(path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")
