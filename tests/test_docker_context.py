"""The GPU image builds: its context is assembled from the Dockerfile's own COPY lines (and .dockerignore),
and the package installs from exactly that context. The base image cannot be pulled here, so this replays
the part of the build that broke before (a top-level folder the package maps was not copied)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
            return True
    return False


def docker_context(dest: Path) -> list[str]:
    """Copy what the Dockerfile's COPY lines take from the repo (minus .dockerignore) into ``dest``."""
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    copied = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"^COPY\s+(?!--from)(.+)$", line.strip())
        if not m:
            continue
        *srcs, _target = m.group(1).split()
        for src in srcs:
            root = (REPO / src).resolve()
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                if _ignored(rel, ignore):
                    continue
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / rel)
                copied.append(rel)
    return copied


def test_the_package_installs_from_the_images_build_context(tmp_path):
    ctx = tmp_path / "context"
    copied = docker_context(ctx)
    assert "pyproject.toml" in copied and not any(p.startswith((".venv/", ".git/")) for p in copied)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapped = project["tool"]["setuptools"]["package-dir"]
    for pkg, folder in mapped.items():
        assert (ctx / folder / "__init__.py").is_file(), f"{folder}/ ({pkg}) is not in the image's context"
    out = tmp_path / "wheel"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(ctx)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    wheel = next(out.glob("mtcc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in project["tool"]["setuptools"]["packages"]:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, pkg
    assert "mtcc/configs/offline.yaml" in names and "mtcc/manifests/templates/report.html.j2" in names


def test_the_image_runs_the_face_detector_on_the_gpu_build_of_onnx_runtime():
    from mtcc.pipeline.node import setup_commands

    text = (REPO / "Dockerfile").read_text()
    steps = text[text.index("RUN python3 -m venv"):]
    # the image installs the node the way every node is installed, with the GPU build of ONNX Runtime
    assert re.search(r"pip install -q '\.\[[a-z0-9,]*\]' \\\n && /opt/venv/bin/mtcc setup-node --gpu", steps), steps
    cmds = [" ".join(c) for c, _ in setup_commands(gpu=True)]
    uninstall = next(i for i, c in enumerate(cmds) if c.endswith("pip uninstall -q -y onnxruntime"))
    install = next(i for i, c in enumerate(cmds) if re.search(r"pip install -q onnxruntime-gpu==\d", c))
    assert uninstall < install
    assert not any("onnxruntime-gpu" in c for c in (" ".join(c) for c, _ in setup_commands(gpu=False)))


def test_device_cuda_without_the_cuda_provider_refuses_to_start_naming_the_package():
    import onnxruntime as ort
    import pytest

    from mtcc.nets.face_detectors import ProviderMissing
    from mtcc.stages.faces import FaceTrack

    stage = FaceTrack(detector="centerface", device="cuda")
    if "CUDAExecutionProvider" in ort.get_available_providers():  # a GPU node: it runs there, on the GPU
        stage.setup()
        assert stage._detector.providers[0] == "CUDAExecutionProvider"
        return
    with pytest.raises(ProviderMissing, match="onnxruntime-gpu"):
        stage.setup()
