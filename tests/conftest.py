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
    """Random-initialised models of the real classes (``mtcc models make-tiny``), included the way the
    offline profile includes .mtcc/tiny: as the --set that points ``models:`` at their models.yaml (only
    the stages the profile lists get their settings)."""
    from mtcc.pipeline.models_cli import write_tiny

    return [f"models={write_tiny(tmp_path_factory.mktemp('tiny'), out=lambda s: None)}"]


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the session (init costs seconds)."""
    from mtcc.pipeline.executor import init_ray

    init_ray("local", num_cpus=2)  # always our own embedded Ray, never a cluster found on the machine
    yield
    import ray

    ray.shutdown()


def copy_inputs(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst


def clips_through_stages(video: Path, max_seconds: float, cut: bool = True) -> list:
    """Clip candidates of ``video`` from the real probe -> faces -> segment stages, and (``cut``) with their
    media cut by the real cut stage, as every later stage reads them."""
    from mtcc.stages.base import Candidate
    from mtcc.stages.cut import ClipCut
    from mtcc.stages.faces import FaceTrack
    from mtcc.stages.probe import Probe
    from mtcc.stages.segment import TwoFaceSegments

    batch = [Candidate(key=video.stem, video_id=video.stem, source=str(video), shard=0)]
    stages = [Probe(), FaceTrack(detector="centerface", sample_fps=5), TwoFaceSegments(max_seconds=max_seconds)]
    for stage in stages + ([ClipCut()] if cut else []):
        stage.setup()
        batch = stage.run_batch(batch)
    return [c for c in batch if c.level == "clip"]
