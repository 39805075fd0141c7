from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "fixtures" / "real"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The generated sample videos (with ground truth), made once per test session."""
    from mtcc.sampledata import generate

    d = tmp_path_factory.mktemp("samples")
    generate(d, seed=0)
    return d


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.fail(f"real fixtures missing: {REAL} (the repo expects ../shared/fixtures/real beside it)")
    return REAL


@pytest.fixture(scope="session")
def tiny_overrides(tmp_path_factory) -> list[str]:
    """Random-initialised models of the real classes (``mtcc models make-tiny``), as --set overrides."""
    from mtcc.pipeline.cli import make_tiny

    made = make_tiny(tmp_path_factory.mktemp("tiny"))
    return [f"stages.{stage}.{k}={v}" for stage, over in sorted(made.items()) for k, v in sorted(over.items())]


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the session (init costs seconds)."""
    from mtcc.pipeline.executor import init_ray

    init_ray(None, num_cpus=2)
    yield
    import ray

    ray.shutdown()


def copy_inputs(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst
