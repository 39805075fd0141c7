"""GPU utilisation sampled while a measurement runs."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import threading
from typing import Any


class UtilSampler:
    """GPU utilisation (%) every ``period`` s while the ``with`` block runs: NVML through ``pynvml``
    (nvidia-ml-py) when importable, else ``nvidia-smi -lms``. On a CPU device it samples nothing."""

    def __init__(self, device: Any, period: float = 0.1):
        self.device = device
        self.period = period
        self.samples: list[float] = []
        self.source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._target = _gpu_ids(device) if getattr(device, "type", "cpu") == "cuda" else None

    def __enter__(self) -> UtilSampler:
        if self._target is None:
            return self
        handle = self._nvml_handle()
        if handle is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll_nvml, args=(handle,), daemon=True)
        elif shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            uuid, index = self._target
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", uuid or str(index), "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", str(max(1, int(self.period * 1000)))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        else:
            self.source = "unavailable (no pynvml, no nvidia-smi)"
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _nvml_handle(self) -> Any:
        try:
            import pynvml
        except ImportError:
            return None
        uuid, index = self._target  # type: ignore[misc]
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            print(f"warning: NVML unavailable ({e}); trying nvidia-smi", file=sys.stderr)
            return None
        if uuid:
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except pynvml.NVMLError as e:
                # MIG slices and some drivers: the index CUDA and NVML share when CUDA_VISIBLE_DEVICES is unset
                print(f"warning: NVML has no GPU {uuid} ({e}); using index {index}", file=sys.stderr)
        try:
            return pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as e:
            print(f"warning: NVML unavailable ({e}); trying nvidia-smi", file=sys.stderr)
            return None

    def _poll_nvml(self, handle: Any) -> None:
        import pynvml

        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            except pynvml.NVMLError as e:
                print(f"warning: NVML utilisation query failed ({e}); no more samples", file=sys.stderr)
                return

    def _read_smi(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            text = line.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                self.samples.append(float(text))

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"gpu_util_mean": round(statistics.fmean(s), 1) if s else None,
                "gpu_util_max": max(s) if s else None, "gpu_util_samples": len(s), "gpu_util_source": self.source}


def _gpu_ids(device: Any) -> tuple[str | None, int]:
    """(NVML UUID, CUDA index) of a CUDA device: the UUID names the same GPU whatever
    CUDA_VISIBLE_DEVICES renumbers."""
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    text = str(uuid) if uuid is not None else ""
    if text and not text.startswith(("GPU-", "MIG-")):
        text = "GPU-" + text
    return (text or None), int(index)
