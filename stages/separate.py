"""Separate: each character's own speech, extracted from the clip's mixture with that character's lips as
the cue (audio-visual target speaker extraction).

Model: clearvoice's ``AV_MossFormer2_TSE_16K`` network class (``av_mossformer2``), built from the network
settings of clearvoice's packaged inference YAML (or, for a reduced test model, from the settings saved
beside its checkpoint) and loaded strictly from a checkpoint directory in clearvoice's on-disk layout:
``last_best_checkpoint`` (a text file naming the ``.pt``) and that ``.pt`` holding ``{"model": state_dict}``.
clearvoice's own loader is not used: it falls back to random weights when the download fails and loads
keys leniently; its decoder's overlap-add calls ``.cuda()``, so ours replaces that one module with a
device-agnostic one that has the same parameter.

Inputs, as the model was trained (clearvoice's video path, reproduced on our own face tracks):
  * audio: the clip's mixture at 16 kHz mono, scaled to peak 1 (the outputs are scaled back);
  * visual: per frame at 25 fps, a square crop of side ``(1 + crop_scale)`` x the face box's longer side,
    centred ``crop_scale / 2`` x that side below the box centre, resized to 224x224; its grayscale
    112x112 centre (the mouth region), ``(x / 255 - 0.4161) / 0.1688``.
Long clips run in windows of ``window_seconds`` (3 s, the decode window clearvoice uses) that overlap by
``overlap``; the last window ends at the clip's end; window outputs are cross-faded (weighted overlap-add,
linear ramps over each overlap, normalised by the summed weights). Every (clip, character, window) of a
batch with the same shape goes through one forward, ``forward_batch`` at a time.

Members: ``spk{i}.flac`` (16 kHz mono PCM16 FLAC, exactly the clip's length). Stats per character i: RMS,
Silero-VAD speech seconds, a "silent" flag; the residual energy of ``mix - sum(spk)`` relative to the mix.
Clips with a silent character are rejected only when ``reject_silent`` is set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, ClassVar

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, Separation
from mtcc.media.audio_io import flac_bytes
from mtcc.media.clip import AUDIO_RATE, CHARACTERS
from mtcc.media.crops import CropGeometry
from mtcc.media.members import TRACKS
from mtcc.media.windows import window_starts
from mtcc.nets import loading
from mtcc.nets.weights import Pin, Weights

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, StatView
from .clip_media import clip_media
from .model_stage import ModelStage

VIDEO_FPS = 25  # the AV model's visual frame rate
CROP_SIZE, LIP_SIZE = 224, 112
GRAY_MEAN, GRAY_STD = 0.4161, 0.1688
HF_ID = "alibabasglab/AV_MossFormer2_TSE_16K"
BEST_FILE = "last_best_checkpoint"
NETWORK_FILE = "mtcc_network.json"  # network settings saved beside a reduced (tiny) checkpoint
HOW_TO_GET = (f"Get the weights on a machine with internet: `hf download {HF_ID} --local-dir DIR` "
              f"(DIR then holds {BEST_FILE} and the .pt it names) and set stages.separate.model to DIR "
              f"(or to the hub id {HF_ID} where the hub or its local cache is reachable); "
              f"`mtcc models make-tiny DIR` writes a random-weights model for plumbing runs only.")
# keys a checkpoint may lack because they are fixed functions of the network settings, not learned
DERIVED_KEYS = ("num_batches_tracked", "pos_enc.inv_freq", "rotary_pos_emb.freqs")
TINY_AUDIO = {"encoder_out_nchannels": 64, "intra_numlayers": 1, "intra_nhead": 4, "intra_dffn": 128}


# -- the network -------------------------------------------------------------------------------------

def packaged_settings() -> dict[str, dict[str, Any]]:
    """``network_reference`` and ``network_audio`` from clearvoice's packaged inference YAML."""
    import yaml

    path = loading.packaged_file("clearvoice", "config", "inference", "AV_MossFormer2_TSE_16K.yaml",
                                install="pip install --no-deps clearvoice==0.1.2")
    cfg = yaml.safe_load(path.read_text())
    return {"network_reference": dict(cfg["network_reference"]), "network_audio": dict(cfg["network_audio"])}


def network_settings(ckpt_dir: Path | None) -> dict[str, dict[str, Any]]:
    """The settings saved beside a checkpoint (reduced models), else the packaged full-size ones."""
    if ckpt_dir is not None and (ckpt_dir / NETWORK_FILE).is_file():
        saved = json.loads((ckpt_dir / NETWORK_FILE).read_text())
        return {"network_reference": dict(saved["network_reference"]), "network_audio": dict(saved["network_audio"])}
    return packaged_settings()


def overlap_add_halves(frames: Any, step: int) -> Any:
    """``[B, K, L]`` frames at hop ``step`` -> ``[B, (K-1)*step + L]``, summed where they overlap; on the
    frames' own device (clearvoice's ``overlap_and_add`` moves its index to CUDA)."""
    import torch.nn.functional as F

    b, k, length = frames.shape
    out = F.fold(frames.transpose(1, 2), output_size=(1, (k - 1) * step + length), kernel_size=(1, length),
                 stride=(1, step))
    return out.reshape(b, -1)


def _decoder_class() -> type:
    import torch

    class AnyDeviceDecoder(torch.nn.Module):
        """clearvoice's ``Decoder`` (same parameter, same maths) without the ``.cuda()`` call."""

        def __init__(self, n: int, length: int):
            super().__init__()
            self.N, self.L = n, length
            self.basis_signals = torch.nn.Linear(n, length, bias=False)

        def forward(self, mixture_w: Any, est_mask: Any) -> Any:
            est = (mixture_w * est_mask).transpose(2, 1)  # [B, K, N]
            return overlap_add_halves(self.basis_signals(est), self.L // 2)

    return AnyDeviceDecoder


def build_network(settings: dict[str, dict[str, Any]]) -> Any:
    """An ``av_mossformer2`` (the module clearvoice's ``AV_MossFormer2_TSE_16K`` wraps and loads weights
    into), with our device-agnostic decoder; random init, eval mode."""
    from clearvoice.models.av_mossformer2_tse.av_mossformer2 import av_mossformer2

    args = SimpleNamespace(network_reference=SimpleNamespace(**settings["network_reference"]),
                           network_audio=SimpleNamespace(**settings["network_audio"]), causal=0)
    net = av_mossformer2(args)
    old = net.sep_network.decoder
    new = _decoder_class()(old.N, old.L)
    new.basis_signals = old.basis_signals
    net.sep_network.decoder = new
    return net.eval()


def _strict_state(net: Any, state: dict[str, Any], ckpt: Path) -> dict[str, Any]:
    """``state`` with DDP's ``module.`` prefix dropped, checked key by key against ``net``: every learned
    key present with its shape, nothing extra. Only keys that are fixed functions of the settings may be
    missing (they keep their built values)."""
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    own = net.state_dict()
    problem = loading.state_mismatch(own, state, may_miss=tuple(DERIVED_KEYS))
    if problem:
        raise loading.WeightsError(
            f"stage 'separate': {ckpt} does not fit the AV_MossFormer2_TSE_16K network built from "
            f"{'its ' + NETWORK_FILE if (ckpt.parent / NETWORK_FILE).is_file() else 'the packaged YAML'} "
            f"({problem}). Keys are loaded strictly. {HOW_TO_GET}")
    return {**{k: v for k, v in own.items() if k not in state}, **state}


def checkpoint_file(path: Path) -> Path:
    """The ``.pt`` of a clearvoice checkpoint directory (named by its ``last_best_checkpoint``), or
    ``path`` itself when it is a file."""
    if path.is_file():
        return path
    best = path / BEST_FILE
    if not best.is_file():
        raise loading.WeightsError(
            f"stage 'separate': {best} not found: {path} is not a clearvoice checkpoint directory "
            f"({BEST_FILE} naming the .pt, and the .pt). {HOW_TO_GET}")
    lines = best.read_text().strip().splitlines()
    name = lines[0].strip() if lines else ""
    if not name:
        raise loading.WeightsError(f"stage 'separate': {best} is empty; it should name the checkpoint .pt. {HOW_TO_GET}")
    ckpt = path / name
    if not ckpt.is_file():
        raise loading.WeightsError(f"stage 'separate': {ckpt} (named by {best}) does not exist. {HOW_TO_GET}")
    return ckpt


def load_network(path: Path, device: str = "cpu") -> Any:
    """Build the network from the settings found at ``path`` and load its checkpoint strictly."""
    ckpt = checkpoint_file(path)
    net = build_network(network_settings(ckpt.parent))
    net.load_state_dict(_strict_state(net, loading.load_state_dict(ckpt), ckpt), strict=True)
    return net.to(device).eval()


# -- windows, visual track, overlap-add ----------------------------------------------------------------

def window_weights(starts: list[int], length: int, n: int) -> list[np.ndarray]:
    """Cross-fade weights per window: linear ramps over each overlap with a neighbour, 1 elsewhere."""
    out = []
    t = np.arange(length, dtype=np.float64) + 0.5
    for j, s in enumerate(starts):
        w = np.ones(length)
        if j > 0:
            ramp = starts[j - 1] + length - s
            if ramp > 0:
                w = np.minimum(w, t / ramp)
        if j + 1 < len(starts):
            ramp = s + length - starts[j + 1]
            if ramp > 0:
                w = np.minimum(w, (length - t) / ramp)
        out.append(w[: min(length, n - s)])
    return out


def visual_at_25fps(lips: np.ndarray, fps: float, n_samples: int) -> np.ndarray:
    """Lip frames ``[T, 112, 112]`` at ``fps`` -> the frames at 25 fps covering ``n_samples`` at 16 kHz
    (nearest frame in time; the last frame repeats, as clearvoice pads with ``edge``)."""
    n_v = max(1, math.ceil(n_samples / AUDIO_RATE * VIDEO_FPS - 1e-6))
    idx = np.clip(np.round(np.arange(n_v) * fps / VIDEO_FPS).astype(int), 0, len(lips) - 1)
    return lips[idx]


Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]


def separate_tracks(forward: Forward, mixes: list[np.ndarray], lips: list[np.ndarray], fps: list[float], *,
                    window: int, hop: int, forward_batch: int) -> tuple[list[np.ndarray], int]:
    """Target-speaker extraction for several clips at once.

    ``mixes[i]``: clip i's mixture (16 kHz float); ``lips[i]``: ``[C, T, 112, 112]`` normalised lip frames
    of its C characters at ``fps[i]``. ``forward(audio [B, w], visual [B, v, 112, 112]) -> [B, w]`` runs
    the model. Returns per clip ``[C, n]`` float32 tracks and the number of forward calls."""
    items: list[tuple[int, int, int, int]] = []  # (clip, character, window start, window length)
    peaks, visual25, plans = [], [], []
    for i, (mix, lp) in enumerate(zip(mixes, lips)):
        n = len(mix)
        peak = float(np.max(np.abs(mix))) if n else 0.0
        peaks.append(peak)
        visual25.append(np.stack([visual_at_25fps(lp[k], fps[i], n) for k in range(len(lp))]))
        starts = window_starts(n, window, hop)
        length = min(n, window)
        plans.append((starts, length))
        for k in range(len(lp)):
            for s in starts:
                items.append((i, k, s, length))
    outs = [np.zeros((len(lp), len(m)), np.float64) for lp, m in zip(lips, mixes)]
    wsum = [np.zeros(len(m), np.float64) for m in mixes]
    weights = [dict(zip(st, window_weights(st, ln, len(m)))) for (st, ln), m in zip(plans, mixes)]
    for i, (starts, length) in enumerate(plans):
        for s in starts:
            wsum[i][s: s + length] += weights[i][s]

    def visual_slice(i: int, k: int, s: int, length: int) -> np.ndarray:
        v = visual25[i][k]
        v0 = int(round(s / AUDIO_RATE * VIDEO_FPS))
        nv = max(1, int(round(length / AUDIO_RATE * VIDEO_FPS)))
        return v[np.clip(np.arange(v0, v0 + nv), 0, len(v) - 1)]

    # same-shape items share a forward; order is fixed (by shape, then clip, character, start)
    groups: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    for it in items:
        i, _, _, length = it
        nv = max(1, int(round(length / AUDIO_RATE * VIDEO_FPS)))
        groups.setdefault((length, nv), []).append(it)
    calls = 0
    for key in sorted(groups):
        todo = groups[key]
        for b0 in range(0, len(todo), forward_batch):
            chunk = todo[b0: b0 + forward_batch]
            audio = np.stack([mixes[i][s: s + ln] / (peaks[i] or 1.0) for i, _, s, ln in chunk]).astype(np.float32)
            visual = np.stack([visual_slice(i, k, s, ln) for i, k, s, ln in chunk]).astype(np.float32)
            est = np.asarray(forward(audio, visual), np.float64)
            calls += 1
            for (i, k, s, ln), y in zip(chunk, est):
                outs[i][k, s: s + ln] += y[:ln] * weights[i][s]
    result = []
    for i, o in enumerate(outs):
        o = o / np.maximum(wsum[i], 1e-12) * peaks[i]
        result.append(o.astype(np.float32))
    return result, calls


def lip_frames(crops_rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB crops ``[..., 224, 224, 3]`` -> normalised float32 grayscale centres ``[..., 112, 112]``."""
    import cv2

    lead = crops_rgb.shape[:-3]
    flat = crops_rgb.reshape(-1, CROP_SIZE, CROP_SIZE, 3)
    a = (CROP_SIZE - LIP_SIZE) // 2
    gray = np.stack([cv2.cvtColor(np.ascontiguousarray(f[a: a + LIP_SIZE, a: a + LIP_SIZE]), cv2.COLOR_RGB2GRAY)
                     for f in flat]) if len(flat) else np.zeros((0, LIP_SIZE, LIP_SIZE), np.uint8)
    x = (gray.astype(np.float32) / 255.0 - GRAY_MEAN) / GRAY_STD
    return x.reshape(*lead, LIP_SIZE, LIP_SIZE)


def rms_dbfs(rms: float) -> float:
    return 20.0 * math.log10(max(rms, 1e-10))


class SpeechSeparation(ModelStage):
    name: ClassVar[str] = "separate"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 2.7
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 1150
    uses: ClassVar[tuple[str, ...]] = ("clearvoice", "torchaudio", "torch", "silero-vad", "soxr")
    max_actor_cpus: ClassVar[float] = 8.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "audio_rate": AUDIO_RATE}
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="clearvoice AV-MossFormer2 target speaker extraction, 16 kHz",
        kind="hf", folder="AV_MossFormer2_TSE_16K", repo=HF_ID, revision=None,
        files=(Pin(BEST_FILE),
               Pin("last_best_checkpoint.pt", bytes=734_561_014,
                   source="size reported from the HF API in a public design note; no sha256 published")),
        settings={"model": "./AV_MossFormer2_TSE_16K"},
        note="the repo also holds last_best_checkpoint_old.pt (a second ~700 MB copy); it is not fetched"),)
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces)
    provides: ClassVar[tuple[Key | type, ...]] = (*(Member(t) for t in TRACKS), Separation)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "rms_0": "float64", "rms_1": "float64", "mix_rms": "float64",
        "speech_s_0": "float64", "speech_s_1": "float64",
        "silent_0": "bool", "silent_1": "bool",
        "residual_ratio": "float64", "n_windows": "int64", "random_weights": "bool",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (StatView(("speech_s_0", "speech_s_1"), "speech s 0/1"),)

    model: loading.ModelSpec = Field(HF_ID, description="clearvoice checkpoint directory (last_best_checkpoint + the .pt it "
                                          "names, {'model': state_dict}) or the Hugging Face id")
    window_seconds: float = Field(3.0, gt=0, description="decode window (the model's 3 s)")
    overlap: float = Field(0.4, ge=0, lt=1, description="fraction of a window shared with the next "
                                                        "(clearvoice decodes with a 0.6-window stride)")
    renamed: ClassVar[dict[str, str]] = {"batch_size": "forward_batch"}
    forward_batch: int = Field(4, ge=1, description="windows (characters x windows x clips) per model forward")
    crop_scale: float = Field(0.4, ge=0, description="clearvoice's cropScale: crop side = (1 + s) x face box "
                                                     "side, centred s/2 x side below the box centre")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero VAD speech probability on each track")
    min_speech_seconds: float = Field(0.3, ge=0, description="less VAD speech than this: the character is silent")
    silence_dbfs: float = Field(-50.0, description="a track quieter than this (RMS, dBFS) is silent")
    reject_silent: bool = Field(False, description="reject clips where a character is silent")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=2), description=RESOURCES)


    def load(self) -> None:
        path = loading.resolve(self.model, stage=self.name, key="model",
                              expected=f"a clearvoice checkpoint directory ({BEST_FILE} + the .pt it names)",
                              how_to_get=HOW_TO_GET)
        self.admit(path)
        self._net = load_network(path, self.device)

    def _forward(self, audio: np.ndarray, visual: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            a = torch.from_numpy(audio).to(self.device)
            v = torch.from_numpy(visual).to(self.device)
            return self._net(a, v).float().cpu().numpy()

    def _inputs(self, cand: Candidate) -> tuple[np.ndarray, np.ndarray, float]:
        media = clip_media(cand, self)
        lips = lip_frames(np.asarray(media.crops(CropGeometry.from_crop_scale(CROP_SIZE, self.crop_scale))))
        return media.mixture(), lips, float(cand.fact(ClipFaces).fps)

    def process(self, batch: list[Candidate]) -> list[Candidate]:
        from mtcc.nets.vad import speech_segments

        inputs = [self._inputs(c) for c in batch]
        window = max(1, int(round(self.window_seconds * AUDIO_RATE)))
        hop = max(1, int(round(window * (1.0 - self.overlap))))
        tracks, _ = separate_tracks(self._forward, [m for m, _, _ in inputs], [lp for _, lp, _ in inputs],
                                    [f for _, _, f in inputs], window=window, hop=hop, forward_batch=self.forward_batch)
        for cand, (mix, _, _), spk in zip(batch, inputs, tracks):
            vads = speech_segments(spk, AUDIO_RATE, threshold=self.vad_threshold) if spk.shape[1] else []
            stats: dict[str, Any] = {}
            mix_e = float(np.mean(mix.astype(np.float64) ** 2)) if len(mix) else 0.0
            resid = mix.astype(np.float64) - spk.astype(np.float64).sum(0)
            stats["mix_rms"] = round(math.sqrt(mix_e), 6)
            stats["residual_ratio"] = round(float(np.mean(resid ** 2)) / mix_e, 6) if mix_e > 0 else 0.0
            stats["n_windows"] = len(window_starts(len(mix), window, hop))
            stats["random_weights"] = self.is_random
            for k, track in enumerate(spk):
                rms = float(np.sqrt(np.mean(track.astype(np.float64) ** 2))) if len(track) else 0.0
                speech = vads[k].speech_s if vads else 0.0
                stats[f"rms_{k}"] = round(rms, 6)
                stats[f"speech_s_{k}"] = round(speech, 4)
                stats[f"silent_{k}"] = bool(speech < self.min_speech_seconds or rms_dbfs(rms) < self.silence_dbfs)
                cand.members[TRACKS[k]] = flac_bytes(track)
            cand.put(Separation(self.model, self.is_random, AUDIO_RATE, [[list(s) for s in v.segments] for v in vads],
                                silent=tuple(bool(stats.get(f"silent_{k}")) for k in range(len(spk)))))
            self.settle(cand, stats)
        return batch

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if not self.reject_silent:
            return None
        silent = sorted(int(k.split("_")[1]) for k, v in stats.items() if k.startswith("silent_") and v)
        if silent:
            who = ", ".join(f"character {k} ({stats[f'speech_s_{k}']:.2f}s speech, "
                            f"{rms_dbfs(stats[f'rms_{k}']):.1f} dBFS)" for k in silent)
            return Rejection("silent_speaker", f"separated track silent: {who}; needs >= {self.min_speech_seconds}s "
                                               f"VAD speech and >= {self.silence_dbfs} dBFS")
        return None

    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A reduced AV_MossFormer2_TSE_16K (fewer/narrower audio layers; the visual ResNet-18 is fixed by
        the class) with random weights, in clearvoice's checkpoint layout, its settings saved beside it."""
        import torch

        d = Path(root) / cls.name
        d.mkdir(parents=True, exist_ok=True)
        settings = packaged_settings()
        settings["network_audio"].update(TINY_AUDIO)
        torch.manual_seed(0)
        net = build_network(settings)
        torch.save({"model": net.state_dict()}, d / f"{BEST_FILE}.pt")
        (d / BEST_FILE).write_text(f"{BEST_FILE}.pt\n")
        (d / NETWORK_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        loading.write_marker(d, "AV_MossFormer2_TSE_16K (reduced)", network_audio=TINY_AUDIO)
        return {"model": str(d), "allow_random_weights": True}
