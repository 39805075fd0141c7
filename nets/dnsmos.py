"""DNSMOS P.835 (Microsoft's non-intrusive speech quality model): SIG (the speech), BAK (the background)
and OVRL (overall), each on the 1-5 MOS scale, from the ONNX model that ships inside the ``speechmos``
wheel, run with onnxruntime on the CPU. No download, no librosa: the P.835 model reads the raw 16 kHz
waveform (its P.808 sibling, which needs a mel spectrogram, is not used).

The model reads windows of 9.01 s; a track is scored on windows side by side and the window scores
averaged. A track shorter than one window is repeated until it fills one, as the model's authors do.

    DnsMos().score([mixture, track0, track1])     # [(sig, bak, ovrl), ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcc.nets.loading import packaged_file

RATE = 16000
WINDOW = 144160  # samples the model reads: 9.01 s at 16 kHz
INSTALL = "pip install --no-deps speechmos==0.0.1.1"
# the model's raw outputs mapped to the P.835 MOS scale: the polynomial fits published with DNSMOS
# (highest power first), for the non-personalised model
CALIBRATION = {
    "sig": (-0.08397278, 1.22083953, 0.0052439),
    "bak": (-0.13166888, 1.60915514, -0.39604546),
    "ovrl": (-0.06766283, 1.11546468, 0.04602535),
}


def model_path() -> Path:
    """``speechmos/dnsmos_models/sig_bak_ovr.onnx`` inside the installed wheel (found without importing
    the package, whose module imports librosa)."""
    return packaged_file("speechmos", "dnsmos_models", "sig_bak_ovr.onnx", install=INSTALL)


def windows(track: np.ndarray) -> np.ndarray:
    """``[W, WINDOW]`` windows that cover a 16 kHz track side by side, the last one ending at its end (a
    10 s clip: two windows). The model's own script slides a window every second; nine tenths of each
    would be scored again, for a mean that barely moves and nine times the cost."""
    x = np.asarray(track, np.float32)
    if len(x) == 0:
        x = np.zeros(1, np.float32)
    if len(x) < WINDOW:
        x = np.tile(x, -(-WINDOW // len(x)))[:WINDOW]
    starts = sorted({*range(0, len(x) - WINDOW + 1, WINDOW), len(x) - WINDOW})
    return np.stack([x[s:s + WINDOW] for s in starts])


class DnsMos:
    """One onnxruntime session of the DNSMOS P.835 model."""

    def __init__(self, path: str | Path | None = None, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # one window at a time without onnxruntime's arena: ~200 MB for the actor instead of ~1 GB (a batch
        # of windows costs the same CPU time and holds all their activations at once)
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(path or model_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def score(self, tracks: list[np.ndarray], batch: int = 1) -> list[tuple[float, float, float]]:
        """(SIG, BAK, OVRL) of each 16 kHz float track (values in -1..1), all windows in batches."""
        per = [windows(np.clip(t, -1, 1)) for t in tracks]
        allw = np.concatenate(per) if per else np.zeros((0, WINDOW), np.float32)
        raw = np.concatenate([self.session.run(None, {self.input: allw[i:i + batch]})[0]
                              for i in range(0, len(allw), batch)]) if len(allw) else np.zeros((0, 3))
        out, at = [], 0
        for w in per:
            seg = raw[at:at + len(w)]
            at += len(w)
            # each window calibrated, then averaged over the track's windows
            out.append(tuple(float(np.polyval(CALIBRATION[k], seg[:, i]).mean())
                             for i, k in enumerate(("sig", "bak", "ovrl"))))
        return out
