"""Sync: SyncNet v2 audio-visual sync of every separated voice against every face, and the
audio-character binding read from it.

Model: syncnet_python's ``S`` network class (SyncNet v2, 1024-d embeddings) with weights from a local
state-dict file (the public ``syncnet_v2.model``), loaded through :mod:`mtcc.nets.loading` (``weights_only``).

Inputs, as syncnet_python feeds its model:
  * video: per character, 224x224 face crops at 25 fps, BGR, raw 0..255 floats, windows of 5 frames
    laid out ``[N, 3, 5, 224, 224]`` (``forward_lip``). Crops follow syncnet_python's ``crop_video``
    with ``crop_scale`` (its ``cs``, 0.4): side ``(1 + cs)`` x the box's longer side, centre moved down
    by ``cs / 2`` x that side;
  * audio: ``python_speech_features.mfcc`` of 16 kHz mono (13 coefficients, 100 Hz, its defaults) on the
    int16 sample scale syncnet_python reads with ``wavfile.read``; window ``v`` = MFCC frames
    ``4v .. 4v+20`` laid out ``[N, 1, 13, 20]`` (``forward_aud``);
  * ``min(frames, samples // 640) - 5`` windows per clip (syncnet_python's count).
Audio tracks are the separated ``spk0.flac`` / ``spk1.flac`` members (the separate stage runs first);
without them both tracks are the clip mixture and ``audio_source`` says ``mixture``.

Every (clip, character) video window and (clip, track) audio window of a batch goes through the model
``forward_batch`` at a time. Scores: :mod:`.sync_math` (Sync-C, Sync-D, offset per audio x face, binding).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, Separation, Speakers, SyncResult
from mtcc.media.audio_io import flac_bytes, read_track
from mtcc.media.clip import AUDIO_RATE, CHARACTERS, FPS
from mtcc.media.crops import CropGeometry
from mtcc.media.members import TRACKS
from mtcc.nets import loading
from mtcc.nets.sync_math import VSHIFT, binding, cross_matrix
from mtcc.nets.weights import Pin, Weights

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, StatView, Threshold, optional
from .clip_media import clip_media
from .model_stage import ModelStage

CROP_SIZE = 224
WINDOW = 5  # video frames per SyncNet window
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
MFCC_WINDOW = 20
SAMPLES_PER_FRAME = AUDIO_RATE // FPS
INT16_SCALE = 32768.0
MODEL_FILE = "syncnet_v2.model"
HOW_TO_GET = ("SyncNet v2 weights are the public syncnet_python release file syncnet_v2.model: on a machine "
              "with internet run `wget http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model` "
              "(as syncnet_python's download_model.sh does) and set stages.sync.model to the downloaded file; "
              "`mtcc models make-tiny DIR` writes a random-weights model for plumbing runs only.")


def syncnet_class() -> type:
    """syncnet_python's ``S`` (SyncNet v2) class.

    Loaded from the file ``syncnet_python/SyncNetModel.py`` directly: the package's ``__init__`` imports
    its whole video pipeline (ffmpeg-python, scenedetect < 0.7), which we neither need nor install
    (syncnet-python is installed with --no-deps), while the model file needs only torch.
    """
    path = loading.packaged_file("syncnet_python", "SyncNetModel.py", install="pip install --no-deps syncnet-python==0.2.3")
    mod_spec = importlib.util.spec_from_file_location("mtcc_syncnet_model", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.S


def load_network(path: Path, device: str):
    """SyncNet v2 with the weights in ``path`` (strict keys), in eval mode on ``device``."""
    import torch

    net = syncnet_class()(num_layers_in_fc_layers=1024)
    state = loading.load_state_dict(path)
    for prefix in ("__S__.", "module."):  # syncnet_python instance / DataParallel wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise loading.WeightsError(f"{path}: not a SyncNet v2 state dict ({first}). {HOW_TO_GET}") from e
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"stage 'sync': device {device!r} requested but CUDA is not available")
    return net.to(device).eval()


def mfcc_features(audio: np.ndarray) -> np.ndarray:
    """``[13, M]`` MFCC at 100 Hz of 16 kHz mono float audio, on syncnet_python's int16 scale."""
    import python_speech_features

    x = np.asarray(audio, np.float64) * INT16_SCALE
    return np.ascontiguousarray(python_speech_features.mfcc(x, AUDIO_RATE).T)


def n_windows(n_frames: int, n_samples: int) -> int:
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW


def shift_frames(x: np.ndarray, offset: int) -> np.ndarray:
    """Audio moved so that an ``offset`` (SyncNet convention) becomes 0: delayed by ``offset`` frames
    when positive (audio led), advanced when negative; same length, zeros fill in."""
    k = int(offset) * SAMPLES_PER_FRAME
    out = np.zeros_like(x)
    if abs(k) >= len(x):
        return out
    if k >= 0:
        out[k:] = x[:len(x) - k]
    else:
        out[:k] = x[-k:]
    return out


@dataclasses.dataclass
class _Clip:
    crops: np.ndarray  # uint8 BGR [n_chars, T, 224, 224, 3]
    mfcc: list[np.ndarray]  # per track [13, M]
    tracks: list[np.ndarray] | None  # separated tracks (None: mixture)
    windows: int


class SyncScores(ModelStage):
    name: ClassVar[str] = "sync"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 2.6
    typical_keep: ClassVar[float] = 0.4
    actor_memory_mb: ClassVar[int] = 1440
    uses: ClassVar[tuple[str, ...]] = ("syncnet-python", "torch")
    max_actor_cpus: ClassVar[float] = 8.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "fps": FPS, "audio_rate": AUDIO_RATE}
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="SyncNet v2 (syncnet_python release weights)",
        kind="url", folder="syncnet", url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        files=(Pin(MODEL_FILE),),
        settings={"model": f"./syncnet/{MODEL_FILE}"},
        note="the URL syncnet_python's download_model.sh uses (plain http: the sha256 recorded at first fetch "
             "is what protects later runs)"),)
    # without the separated tracks it scores the mixture; who is silent comes from asd, else separate
    # (see speaking_flags); the tracks it shifts it does not make
    requires: ClassVar[tuple[Key | type, ...]] = (
        CLIP_MEDIA, ClipFaces, *(Member(t, optional=True) for t in TRACKS), optional(Speakers), optional(Separation))
    provides: ClassVar[tuple[Key | type, ...]] = (SyncResult,)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "sync_c_0": "float64", "sync_c_1": "float64",
        "sync_d_0": "float64", "sync_d_1": "float64",
        "offset_0": "int64", "offset_1": "int64",
        "sync_c_mean": "float64",
        "cross_c_01": "float64", "cross_c_10": "float64",
        "cross_d_01": "float64", "cross_d_10": "float64",
        "cross_offset_01": "int64", "cross_offset_10": "int64",
        "binding_margin": "float64", "swapped": "bool",
        "silent_0": "bool", "silent_1": "bool", "n_speaking": "int64",
        "windows": "int64", "audio_source": "string", "random_weights": "bool", "silent_source": "string",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("sync_c_0", "sync_c_1"), "Sync-C 0/1", plot="sync_c", title="Sync-C (both characters)",
                 unit="confidence", thresholds=(Threshold("min_sync_c (mean)", "min_sync_c"),)),
        StatView(("sync_d_0", "sync_d_1"), "Sync-D 0/1", plot="sync_d", title="Sync-D (both characters)",
                 unit="distance"),
        StatView(("offset_0", "offset_1"), "offset 0/1", plot="offset", title="AV offset (both characters)",
                 unit="frames at 25 fps", integer=True,
                 thresholds=(Threshold("-max_abs_offset", "max_abs_offset", -1), Threshold("+max_abs_offset", "max_abs_offset"))),
    )

    model: loading.OptionalModelSpec = Field(None, description=f"SyncNet v2 state-dict file ({MODEL_FILE} from syncnet_python)")
    renamed: ClassVar[dict[str, str]] = {"batch_windows": "forward_batch"}
    forward_batch: int = Field(32, ge=1, description="5-frame windows (clips x characters x windows) per forward")
    crop_scale: float = Field(0.4, ge=0, description="syncnet_python's crop_video cs: crop side = (1 + cs) x face "
                                                     "box side, centred cs/2 x side below the box centre")
    min_sync_c: float = Field(3.0, description="mean Sync-C of the speaking characters (LatentSync keeps >= 3)")
    max_abs_offset: int = Field(6, ge=0, description="|offset| in frames per speaking character (LatentSync: 6)")
    require_binding: bool = Field(True, description="reject when the crossed pairing (audio i x face 1-i) fits "
                                                    "better than the diagonal")
    single_speaker: Literal["reject", "keep", "ignore"] = Field(
        "reject", description="when a character is silent (the asd stage's verdict when it ran with real weights, "
                              "else the separate stage's VAD on the separated tracks): reject the clip, keep it if one "
                              "character speaks, or ignore the silence flags (random-weight separators)")
    shift_audio_to_zero: bool = Field(False, description="shift each separated track of a kept clip by its "
                                                         "offset (LatentSync aligns audio to offset 0)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4), description=RESOURCES)


    def load(self) -> None:
        path = loading.resolve(self.model, stage=self.name, key="model",
                              expected=f"the SyncNet v2 state-dict file {MODEL_FILE}", how_to_get=HOW_TO_GET)
        if path.is_dir():
            if not (path / MODEL_FILE).is_file():
                raise loading.WeightsError(f"stage 'sync': {path} is a directory without {MODEL_FILE}. {HOW_TO_GET}")
            path = path / MODEL_FILE
        self.admit(path)
        self._net = load_network(path, self.device)

    # -- inputs ---------------------------------------------------------------------------------------
    def _inputs(self, cand: Candidate) -> tuple[_Clip, str]:
        n_chars = len(cand.fact(ClipFaces).characters)
        if n_chars != 2:
            raise ValueError(f"sync needs exactly 2 characters, clip has {n_chars}")
        media = clip_media(cand, self)
        geom = CropGeometry.from_crop_scale(CROP_SIZE, self.crop_scale)
        crops = np.asarray(media.crops(geom))[..., ::-1]  # RGB -> BGR (cv2.imread)
        if all(TRACKS[k] in cand.members for k in range(2)):
            tracks = [read_track(cand.member(TRACKS[k])) for k in range(2)]
            source = "separated"
        else:
            mix = media.mixture()
            tracks, source = [mix, mix], "mixture"
        n = min(n_windows(crops.shape[1], len(t)) for t in tracks)
        if n < 1:
            raise ValueError(f"clip too short for SyncNet: {crops.shape[1]} frames, needs more than {WINDOW}")
        mfcc = [mfcc_features(t) for t in tracks] if source == "separated" else [mfcc_features(tracks[0])] * 2
        return _Clip(crops, mfcc, tracks if source == "separated" else None, n), source

    # -- the model, batched across clips --------------------------------------------------------------
    def _embed(self, clips: list[_Clip]) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        """Video embeddings per clip per character and audio embeddings per clip per track."""
        import torch

        vid_jobs = [(c, k, t) for c, clip in enumerate(clips) for k in range(clip.crops.shape[0])
                    for t in range(clip.windows)]
        # a mixture's two tracks are the same audio: embed it once
        aud_jobs = [(c, k, t) for c, clip in enumerate(clips)
                    for k in range(1 if clip.tracks is None else len(clip.mfcc)) for t in range(clip.windows)]
        vid = self._run(vid_jobs, lambda j: clips[j[0]].crops[j[1], j[2]:j[2] + WINDOW], "lip", torch)
        aud = self._run(aud_jobs, lambda j: clips[j[0]].mfcc[j[1]][None, :, j[2] * MFCC_PER_FRAME:
                                                                    j[2] * MFCC_PER_FRAME + MFCC_WINDOW], "aud", torch)
        v_out: list[list[np.ndarray]] = [[None] * c.crops.shape[0] for c in clips]  # type: ignore[list-item]
        a_out: list[list[np.ndarray]] = [[None] * len(c.mfcc) for c in clips]  # type: ignore[list-item]
        for (c, k, _), e in _group(vid_jobs, vid):
            v_out[c][k] = e
        for (c, k, _), e in _group(aud_jobs, aud):
            a_out[c][k] = e
        for c, clip in enumerate(clips):
            if clip.tracks is None:
                a_out[c][1] = a_out[c][0]
        return v_out, a_out

    def _run(self, jobs: list[tuple[int, int, int]], get, kind: str, torch) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(jobs), self.forward_batch):
                chunk = [np.asarray(get(j), np.float32) for j in jobs[i:i + self.forward_batch]]
                x = torch.from_numpy(np.stack(chunk)).to(self.device)
                if kind == "lip":
                    x = x.permute(0, 4, 1, 2, 3)  # [N, 5, H, W, 3] -> [N, 3, 5, H, W]
                    y = self._net.forward_lip(x)
                else:
                    y = self._net.forward_aud(x)  # [N, 1, 13, 20]
                out.append(y.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1024), np.float32)

    # -- stage ----------------------------------------------------------------------------------------
    def process(self, batch: list[Candidate]) -> list[Candidate]:
        prepared = [self._inputs(c) for c in batch]
        clips = [p[0] for p in prepared]
        v_embs, a_embs = self._embed(clips)
        for cand, (clip, source), v, a in zip(batch, prepared, v_embs, a_embs):
            m = cross_matrix(v, a, VSHIFT)
            b = binding(m)
            silent, silent_source = speaking_flags(cand, source)
            stats = self.stats_from(m, b, silent, windows=clip.windows, source=source)
            stats["silent_source"] = silent_source
            result = SyncResult(
                model=self.model, random_weights=self.is_random, audio_source=source,
                vshift=VSHIFT, windows=clip.windows, cross=m, a_ac=b["a_ac"],
                binding_margin=b["margin"], swapped=b["swapped"],
                axes="cross[x][i][j]: audio track i x face (character) j",
            )
            cand.put(result)
            if self.settle(cand, stats) is None and self.shift_audio_to_zero and clip.tracks is not None:
                shifts = [0 if silent[k] else int(stats[f"offset_{k}"]) for k in range(2)]
                for k in range(2):
                    if shifts[k]:
                        cand.members[TRACKS[k]] = flac_bytes(shift_frames(clip.tracks[k], shifts[k]))
                cand.put(replace(result, shifted_frames=shifts))
        return batch

    def stats_from(self, m: dict[str, Any], b: dict[str, Any], silent: list[bool | None], *, windows: int,
                   source: str) -> dict[str, Any]:
        speaking = [k for k in range(2) if not silent[k]]
        c = m["c"]
        return {
            "sync_c_0": float(c[0][0]), "sync_c_1": float(c[1][1]),
            "sync_d_0": float(m["d"][0][0]), "sync_d_1": float(m["d"][1][1]),
            "offset_0": int(m["offset"][0][0]), "offset_1": int(m["offset"][1][1]),
            "sync_c_mean": float(np.mean([c[k][k] for k in speaking])) if speaking else 0.0,
            "cross_c_01": float(c[0][1]), "cross_c_10": float(c[1][0]),
            "cross_d_01": float(m["d"][0][1]), "cross_d_10": float(m["d"][1][0]),
            "cross_offset_01": int(m["offset"][0][1]), "cross_offset_10": int(m["offset"][1][0]),
            "binding_margin": float(b["margin"]), "swapped": bool(b["swapped"]),
            "silent_0": silent[0], "silent_1": silent[1], "n_speaking": len(speaking),
            "windows": int(windows), "audio_source": source, "random_weights": self.is_random,
        }

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        speaking = [k for k in range(2) if not stats.get(f"silent_{k}")]
        if self.single_speaker == "ignore":  # silence flags recorded, not acted on (random separator)
            speaking = [0, 1]
        if len(speaking) < 2 and (self.single_speaker == "reject" or not speaking):
            who = "no character speaks" if not speaking else f"only character {speaking[0]} speaks"
            by = {"asd": "Light-ASD on the faces and mixture", "separate": "VAD on the separated tracks"}.get(
                str(stats.get("silent_source")), "separated tracks")
            return Rejection("single_speaker", f"{who} ({by}); single_speaker={self.single_speaker}")
        if stats["sync_c_mean"] < self.min_sync_c:
            per = ", ".join(f"{stats[f'sync_c_{k}']:.2f}" for k in speaking)
            return Rejection("low_sync", f"mean Sync-C {stats['sync_c_mean']:.2f} (per character: {per}) "
                                         f"< min_sync_c {self.min_sync_c}")
        bad = [k for k in speaking if abs(int(stats[f"offset_{k}"])) > self.max_abs_offset]
        if bad:
            per = ", ".join(f"character {k}: {stats[f'offset_{k}']:+d}" for k in bad)
            return Rejection("offset", f"audio-visual offset {per} frames exceeds max_abs_offset {self.max_abs_offset}")
        if self.require_binding and stats["swapped"]:
            return Rejection("swapped", f"crossed pairing fits better: Sync-C audio0xface1 {stats['cross_c_01']:.2f} + "
                                        f"audio1xface0 {stats['cross_c_10']:.2f} > diagonal {stats['sync_c_0']:.2f} + "
                                        f"{stats['sync_c_1']:.2f} (binding margin {stats['binding_margin']:.2f})")
        return None

    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A random-initialised SyncNet v2 (the real class at full size: 13.6 M parameters)."""
        import torch

        d = Path(root) / cls.name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "syncnet_v2_random.model"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = syncnet_class()(num_layers_in_fc_layers=1024)
        torch.save(net.state_dict(), path)
        loading.write_marker(d, "syncnet_python SyncNetModel.S (SyncNet v2, 1024-d)", file=path.name)
        return {"model": str(path), "allow_random_weights": True}


def speaking_flags(cand: Candidate, audio_source: str) -> tuple[list[bool | None], str]:
    """Which characters are silent, and who said so: the asd stage (Light-ASD on faces and mixture) when it
    ran with real weights; else the separate stage's VAD on the separated tracks; else nobody (None flags)."""
    speakers = cand.maybe(Speakers)
    if speakers is not None and not speakers.random_weights:
        return [bool(x) for x in speakers.silent], "asd"
    separation = cand.maybe(Separation)
    if audio_source == "separated":
        return ([bool(x) for x in separation.silent] if separation else [None, None]), "separate"
    return [None, None], "none"


def _group(jobs: list[tuple[int, int, int]], embs: np.ndarray):
    """``((clip, index, first_window), [windows, D])`` per run of jobs with the same (clip, index)."""
    start = 0
    for i in range(1, len(jobs) + 1):
        if i == len(jobs) or jobs[i][:2] != jobs[start][:2]:
            yield jobs[start], embs[start:i]
            start = i
