"""Active speakers: who speaks when, per character and per clip frame, with Light-ASD (:mod:`.light_asd`).

Inputs, as Light-ASD's authors feed their model (their demo's ``crop_video`` / ``evaluate_network``):
  * faces: per character and frame, a square of side ``(1 + crop_scale)`` x the face box's longer side,
    centred ``crop_scale / 2`` x that side below the box centre, resized to 224 and cut to its central
    112 x 112, grey. That central square (side ``(1 + crop_scale) / 2``, same centre) is derived here
    directly at 112 px from the clip's shared face crops (``crops.CropGeometry``; one resample). The authors
    median-filter box centre and size over 13 frames first; our boxes come smoothed from the tracker;
  * audio: the clip mixture at 16 kHz on the int16 scale -> ``python_speech_features.mfcc`` (13
    coefficients, 25 ms window, 10 ms step): 4 rows per video frame at 25 fps.
Faces and audio come only from the clip media the ``cut`` stage made (:meth:`ActiveSpeakers._inputs`).

One chunking pass of the encoders: each character's frames are cut into windows of ``encode_frames`` (4 s;
the last one ends at the clip's last frame, overlapping its neighbour, whose embeddings are averaged there)
and every window of every character of every clip of a batch goes through the visual encoder once,
``forward_batch`` windows per forward; the audio encoder runs once per clip on the mixture (and on each
separated track when the ``separate`` stage ran before). The encoders see only +-6 frames of context, so the
windows barely matter to them; the sequence model (two GRUs, ~1 % of the cost) is what the authors' chunking
is about: it runs on chunks of ``context_frames`` (1 s, their shortest chunking; longer chunks let a
speaker's state run on into the other's turn, docs/calibration.md). Every
(audio, face) pair is scored from the same embeddings, so the 2x2 of separated tracks x faces costs two more
audio encodings and back-end passes.

Outputs (the contract the export reads): per character the raw speaking logit of every clip frame (the
``SpeakingCurves`` fact, which ``write`` puts beside the boxes in ``faces.json``: key ``speaking``; > 0 =
the model says speaking), and the ``Speakers`` fact (sample json ``asd``): speaking intervals, fractions,
both-speaking fraction, turns, the mixture's voice activity (``speech``), and with separated tracks the 2x2 mean logit of track i against face j.
Intervals: frames outside the mixture's voice activity (Silero VAD, ``speech_gate``) are set far below
the threshold (nobody speaks in silence: Light-ASD alone calls a face with moving lips speaking even with
the sound muted, mean logit 2.3 on a muted fixture), then a centred moving average of ``smooth_frames``
logits (the authors' demo uses 5) is thresholded at ``threshold`` (0, the authors'); pauses shorter than
``min_gap_s`` are closed, bursts shorter than ``min_speech_s`` dropped.

Decisions: ``no_speaker`` when every character speaks on less than ``min_speaking_fraction`` of the clip's
frames. A character below that fraction is ``silent`` (stats ``silent_0/1``): the sync stage takes its
single-speaker decision from these flags. A model made by ``mtcc models make-tiny`` (random weights, only
with ``allow_random_weights``) decides nothing: its numbers are recorded, flagged ``random_weights``, and no
clip is rejected on them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mtcc.facts import ClipFaces, Speakers, SpeakingCurves
from mtcc.media.audio_io import read_track
from mtcc.media.clip import AUDIO_RATE, CHARACTERS, FPS
from mtcc.media.members import TRACKS
from mtcc.media.windows import window_starts
from mtcc.nets import loading
from mtcc.nets.weights import Pin, Weights

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, StatView
from .model_stage import ModelStage

FACE_SIZE = 112
MFCC_PER_FRAME = 4
INT16_SCALE = 32768.0
GATED_LOGIT = -10.0  # what a frame outside the mixture's voice activity scores: far below any threshold
EMBED = 128  # Light-ASD's embedding width (stages.light_asd imports torch: loaded only by setup)
MODEL_FILE = "finetuning_TalkSet.model"
MODEL_URL = ("https://github.com/Junhua-Liao/Light-ASD/raw/ed38c232de5efe0261dbd68627c0ade7cdfe14eb/weight/"
             + MODEL_FILE)
HOW_TO_GET = (f"Light-ASD weights are the authors' public state-dict file {MODEL_FILE} (MIT licence): run "
              f"`mtcc models fetch DIR --only asd` on a machine with internet, or download {MODEL_URL} and set "
              f"stages.asd.model to the file; `mtcc models make-tiny DIR` writes a random-weights model for "
              f"plumbing runs only.")


# -- model -----------------------------------------------------------------------------------------------

def load_network(path: Path, device: str = "cpu"):
    """Light-ASD with the weights in ``path`` (strict keys and shapes), fused for inference on ``device``."""
    import torch

    from mtcc.nets.light_asd import LightASD, checkpoint_to_ours

    net = LightASD()
    state, _ = checkpoint_to_ours(loading.load_state_dict(path))
    problem = _mismatch(net, state)
    if problem:
        raise loading.WeightsError(f"stage 'asd': {path} is not a Light-ASD state dict ({problem}). Keys are loaded "
                                  f"strictly. {HOW_TO_GET}")
    net.load_state_dict(state, strict=True)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"stage 'asd': device {device!r} requested but CUDA is not available")
    return net.fuse().to(device)


def bf16_supported(device: str) -> bool:
    """bfloat16 convolutions run natively on ``device`` (oneDNN on the CPU, or the GPU)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _mismatch(net: Any, state: dict[str, Any]) -> str:
    return loading.state_mismatch(net.state_dict(), state)


def mfcc_rows(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """``[4 n_frames, 13]`` float32 MFCC of 16 kHz mono float audio on the int16 scale (the authors read
    int16 wav files); short audio is padded by repeating its last row."""
    import python_speech_features

    x = np.asarray(audio, np.float64) * INT16_SCALE
    m = python_speech_features.mfcc(x, AUDIO_RATE, numcep=13, winlen=0.025, winstep=0.010)
    want = MFCC_PER_FRAME * n_frames
    if len(m) < want:
        m = np.concatenate([m, np.repeat(m[-1:] if len(m) else np.zeros((1, 13)), want - len(m), axis=0)])
    return np.ascontiguousarray(m[:want], np.float32)


# -- post-processing ---------------------------------------------------------------------------------------

def smooth(logits: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over ``frames`` (the ends average what exists)."""
    x = np.asarray(logits, np.float64)
    k = max(1, int(frames))
    if k == 1 or len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo, hi = np.maximum(0, i - k // 2), np.minimum(len(x), i + (k - 1) // 2 + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of True."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2].tolist(), d[1::2].tolist()))


def speaking_mask(logits: np.ndarray, *, smooth_frames: int, threshold: float, min_gap: int,
                  min_run: int) -> np.ndarray:
    """Per frame: speaking after smoothing, with pauses shorter than ``min_gap`` frames closed and bursts
    shorter than ``min_run`` frames dropped."""
    on = smooth(logits, smooth_frames) > threshold
    n = len(on)
    for a, b in runs(~on):
        if 0 < a and b < n and b - a < min_gap:
            on[a:b] = True
    for a, b in runs(on):
        if b - a < min_run:
            on[a:b] = False
    return on


def turns(masks: list[np.ndarray]) -> int:
    """Speaker changes: how often the one character speaking alone differs from the previous one who did
    (overlaps and silences in between do not count as turns)."""
    if len(masks) != 2:
        return 0
    a, b = masks
    solo = np.where(a & ~b, 0, np.where(b & ~a, 1, -1))
    seq = [int(s) for s in solo if s >= 0]
    return int(sum(1 for x, y in zip(seq, seq[1:]) if x != y))


# -- the stage ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Clip:
    faces: np.ndarray  # uint8 grey [C, T, 112, 112]
    audio: list[np.ndarray]  # MFCC [4T, 13]: the mixture, then each separated track
    separated: bool
    speech: list[tuple[float, float]] | None = None  # voice activity of the mixture (s); None: no gate


def frame_gate(speech: list[tuple[float, float]] | None, n_frames: int) -> np.ndarray:
    """Per 25 fps frame: does its time fall inside a voice-activity segment (all True without segments)."""
    if speech is None:
        return np.ones(n_frames, bool)
    t = np.arange(n_frames) / FPS
    on = np.zeros(n_frames, bool)
    for a, b in speech:
        on |= (t >= a) & (t < b)
    return on


class ActiveSpeakers(ModelStage):
    name: ClassVar[str] = "asd"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.45
    typical_keep: ClassVar[float] = 0.9
    actor_memory_mb: ClassVar[int] = 1024
    uses: ClassVar[tuple[str, ...]] = ("torch", "silero-vad")
    max_actor_cpus: ClassVar[float] = 8.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "fps": FPS, "audio_rate": AUDIO_RATE}
    weights: ClassVar[tuple[Weights, ...]] = (Weights(
        title="Light-ASD active speaker detector, fine-tuned on TalkSet (CVPR 2023, MIT licence)",
        kind="url", folder="light_asd",
        url=MODEL_URL,
        files=(Pin(MODEL_FILE, bytes=4_175_289,
                   sha256="efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5",
                   source="the authors' repository Junhua-Liao/Light-ASD at commit ed38c232, weight/"),),
        settings={"model": f"./light_asd/{MODEL_FILE}"}),)
    # without the separated tracks it scores the mixture only (no track_face)
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, ClipFaces, *(Member(t, optional=True) for t in TRACKS))
    provides: ClassVar[tuple[Key | type, ...]] = (Speakers, SpeakingCurves)
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        "speaking_0": "float64", "speaking_1": "float64", "both_speaking": "float64", "turns": "int64",
        "silent_0": "bool", "silent_1": "bool", "n_speaking": "int64",
        "logit_mean_0": "float64", "logit_mean_1": "float64",
        "track_face_margin": "float64", "random_weights": "bool",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("speaking_0", "speaking_1"), "speaking 0/1"), StatView(("both_speaking",), "both speaking"),
        StatView(("turns",), "turns"),
    )

    model: loading.OptionalModelSpec = Field(None, description=f"Light-ASD state-dict file ({MODEL_FILE}) or a folder "
                                                              f"holding it")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="bfloat16 runs the encoders ~2.5x faster on CPUs with bf16 support (AVX512, AMX) and on "
                            "GPUs; logits move by up to ~0.1 (decisions on the shared real footage unchanged). auto: "
                            "bfloat16 where the actor's device supports it, else float32 (pin it for byte-identical "
                            "shards on nodes of mixed hardware)")
    encode_frames: int = Field(100, ge=8, description="frames per window of the visual encoder's one pass (4 s)")
    renamed: ClassVar[dict[str, str]] = {"batch_windows": "forward_batch"}
    forward_batch: int = Field(1, ge=1, description="windows (clips x characters x windows) per visual forward; on "
                                                   "CPUs one window keeps the activations in cache (fastest measured)")
    context_frames: int = Field(25, ge=1, description="frames per chunk of the sequence model (1 s: the authors' "
                                                      "shortest chunking; longer chunks carry a speaker's state into "
                                                      "the other's turn)")
    speech_gate: bool = Field(True, description="frames where the mixture has no voice activity (Silero VAD) count as "
                                                "nobody speaking")
    crop_scale: float = Field(0.4, ge=0, description="the authors' cropScale: crop side = (1 + s) x the box's longer "
                                                     "side, centred s/2 x that side below the box centre")
    smooth_frames: int = Field(5, ge=1, description="moving average of the logits before thresholding")
    threshold: float = Field(0.0, description="smoothed logit above this: speaking")
    min_gap_s: float = Field(0.2, ge=0, description="pauses shorter than this inside speech are closed")
    min_speech_s: float = Field(0.2, ge=0, description="speech bursts shorter than this are dropped")
    min_speaking_fraction: float = Field(0.1, ge=0, le=1, description="a character speaking on fewer of the clip's "
                                                                      "frames is silent; all silent: no_speaker")
    no_speaker: Literal["reject", "keep"] = Field("reject", description="what to do with clips where nobody speaks")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=1.0, candidates_per_call=4), description=RESOURCES)

    def _weights_path(self) -> Path:
        path = loading.resolve(self.model, stage=self.name, key="model",
                              expected=f"the Light-ASD state-dict file {MODEL_FILE}", how_to_get=HOW_TO_GET)
        if path.is_dir():
            found = [path / MODEL_FILE] if (path / MODEL_FILE).is_file() else sorted(path.glob("*.model"))
            if len(found) != 1:
                raise loading.WeightsError(f"stage 'asd': {path} is a directory without {MODEL_FILE} "
                                          f"(and not exactly one other *.model). {HOW_TO_GET}")
            path = found[0]
        return path

    def load(self) -> None:
        path = self._weights_path()
        self.admit(path)
        self._net = load_network(path, self.device)
        self._bf16 = self.dtype == "bfloat16" or (self.dtype == "auto" and bf16_supported(self.device))
        if self.speech_gate:
            from mtcc.nets.vad import SileroVad

            self._vad = SileroVad()  # its ONNX session, loaded once per actor (about 1.4 s here)
        # one small forward: the backend picks and compiles its kernels here, not on the first clip
        self.score([_Clip(np.zeros((1, self.encode_frames, FACE_SIZE, FACE_SIZE), np.uint8),
                          [np.zeros((MFCC_PER_FRAME * self.encode_frames, 13), np.float32)], False)])

    def check_model(self) -> str:
        path = self._weights_path()
        random = self.admit(path)
        load_network(path, "cpu")
        return f"Light-ASD state dict {path.name}: keys and shapes match{' (random weights)' if random else ''}"

    # -- inputs ---------------------------------------------------------------------------------------
    def _inputs(self, cand: Candidate) -> _Clip:
        """The only place this stage reads media: the face crops and mixture of the clip media."""
        import cv2

        from mtcc.media.crops import CropGeometry

        from .clip_media import clip_media

        media = clip_media(cand, self)
        half = (1.0 + self.crop_scale) / 2  # the central half of the authors' crop
        rgb = np.asarray(media.crops(CropGeometry(FACE_SIZE, half, self.crop_scale / 2)))
        c, t = rgb.shape[:2]
        grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb.reshape(-1, FACE_SIZE, FACE_SIZE, 3)])
        mix = media.mixture()
        audio = [mfcc_rows(mix, t)]
        separated = all(TRACKS[k] in cand.members for k in range(2))
        if separated:
            audio += [mfcc_rows(read_track(cand.member(TRACKS[k])), t) for k in range(2)]
        speech = None
        if self.speech_gate:
            from mtcc.nets.vad import RATES, segments_from_probs

            chunk_s = RATES[AUDIO_RATE][0] / AUDIO_RATE
            speech = segments_from_probs(self._vad.probs(mix, AUDIO_RATE)[0], chunk_s, len(mix) / AUDIO_RATE)
        return _Clip(grey.reshape(c, t, FACE_SIZE, FACE_SIZE), audio, separated, speech)

    # -- the model, batched across clips and characters -----------------------------------------------
    def score(self, clips: list[_Clip]) -> list[np.ndarray]:
        """Per clip ``[A, C, T]`` speaking logits of audio a (0 = mixture, then tracks) against face c."""
        import torch

        net, dev = self._net, self.device
        kind = "cuda" if dev.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=self._bf16):
            faces = self._encode_faces(clips)
            out = []
            for clip, v in zip(clips, faces):
                a = net.encode_audio(torch.from_numpy(np.stack(clip.audio)).to(dev)).float()  # [A, T, 128]
                out.append(np.stack([self._back_end(v + a[i][None]) for i in range(len(clip.audio))]))
        return out

    def _encode_faces(self, clips: list[_Clip]):
        """Per clip ``[C, T, 128]`` face embeddings: every window of every character of every clip through the
        visual encoder once, ``forward_batch`` windows of the same length per forward."""
        import torch

        w = self.encode_frames
        jobs = [(i, k, s, min(w, clip.faces.shape[1])) for i, clip in enumerate(clips)
                for k in range(clip.faces.shape[0]) for s in window_starts(clip.faces.shape[1], w)]
        emb = [torch.zeros((*c.faces.shape[:2], EMBED)) for c in clips]
        hits = [torch.zeros((*c.faces.shape[:2], 1)) for c in clips]
        by_length: dict[int, list[tuple[int, int, int, int]]] = {}
        for job in jobs:
            by_length.setdefault(job[3], []).append(job)
        for length in sorted(by_length):
            todo = by_length[length]
            for b0 in range(0, len(todo), self.forward_batch):
                chunk = todo[b0:b0 + self.forward_batch]
                x = torch.from_numpy(np.stack([clips[i].faces[k, s:s + n] for i, k, s, n in chunk]))
                v = self._net.encode_faces(x.to(self.device, torch.float32)).float().cpu()
                for (i, k, s, n), e in zip(chunk, v):
                    emb[i][k, s:s + n] += e
                    hits[i][k, s:s + n] += 1
        return [(e / h.clamp(min=1)).to(self.device) for e, h in zip(emb, hits)]

    def _back_end(self, x):
        """``[C, T]`` logits of fused embeddings ``x`` ``[C, T, 128]``, the sequence model run on chunks of
        ``context_frames`` (the last one shorter), as the authors run their shortest chunking."""
        import torch

        c, t = x.shape[:2]
        n = self.context_frames
        full = t // n * n
        parts = []
        if full:
            y = self._net.speaking_logits_fused(x[:, :full].reshape(c * (full // n), n, EMBED))
            parts.append(y.reshape(c, full))
        if full < t:
            parts.append(self._net.speaking_logits_fused(x[:, full:]))
        return torch.cat(parts, dim=1).float().cpu().numpy().astype(np.float64)

    # -- stage ----------------------------------------------------------------------------------------
    def process(self, batch: list[Candidate]) -> list[Candidate]:
        for cand in batch:
            n = len(cand.fact(ClipFaces).characters)
            if n != 2:
                raise ValueError(f"asd needs exactly 2 characters, clip has {n}")
        clips = [self._inputs(c) for c in batch]
        for cand, clip, logits in zip(batch, clips, self.score(clips)):
            self.settle(cand, self.summarise(cand, logits, clip))
        return batch

    def masks(self, logits: np.ndarray, speech: list[tuple[float, float]] | None = None) -> list[np.ndarray]:
        """Per character, speaking per frame: smoothed logits above the threshold, inside the mixture's voice
        activity (``speech``, when gated), short pauses closed, short bursts dropped."""
        gap, run = int(round(self.min_gap_s * FPS)), int(round(self.min_speech_s * FPS))
        gate = frame_gate(speech, np.shape(logits)[-1])
        out = []
        for x in logits:
            out.append(speaking_mask(np.where(gate, x, GATED_LOGIT), smooth_frames=self.smooth_frames,
                                     threshold=self.threshold, min_gap=gap, min_run=run))
        return out

    def summarise(self, cand: Candidate, logits: np.ndarray, clip: _Clip) -> dict[str, Any]:
        """Leave the ``SpeakingCurves`` and ``Speakers`` facts and return the stats, from ``[A, C, T]`` logits."""
        mix = logits[0]
        separated = clip.separated
        masks = self.masks(mix, clip.speech)
        t = mix.shape[1]
        frac = [float(m.mean()) if t else 0.0 for m in masks]
        both = float((masks[0] & masks[1]).mean()) if t else 0.0
        cand.put(SpeakingCurves(tuple(np.round(mix[k], 4).tolist() for k in range(len(mix)))))
        track_face = None
        if separated:
            track_face = [[round(float(logits[1 + i, j].mean()), 4) for j in range(2)] for i in range(2)]
        silent = [f < self.min_speaking_fraction for f in frac]
        speakers = Speakers(
            model=self.model, random_weights=self.is_random, fps=FPS,
            dtype="bfloat16" if self._bf16 else "float32",
            speaking_fraction=[round(f, 4) for f in frac],
            intervals=[[[round(a / FPS, 3), round(b / FPS, 3)] for a, b in runs(m)] for m in masks],
            both_speaking=round(both, 4),
            turns=turns(masks),
            track_face=track_face,
            speech=None if clip.speech is None else [[round(a, 3), round(b, 3)] for a, b in clip.speech],
            axes="track_face[i][j]: separated track i x face (character) j, mean speaking logit",
            silent=(silent[0], silent[1]),
        )
        cand.put(speakers)
        return {
            "speaking_0": round(frac[0], 4), "speaking_1": round(frac[1], 4), "both_speaking": round(both, 4),
            "turns": speakers.turns, "silent_0": silent[0], "silent_1": silent[1],
            "n_speaking": silent.count(False),
            "logit_mean_0": round(float(mix[0].mean()), 4), "logit_mean_1": round(float(mix[1].mean()), 4),
            "track_face_margin": (round(track_face[0][0] + track_face[1][1] - track_face[0][1] - track_face[1][0], 4)
                                  if track_face else None),
            "random_weights": self.is_random,
        }

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        if stats["random_weights"] or self.no_speaker == "keep" or stats["n_speaking"] > 0:
            return None
        return Rejection("no_speaker", f"nobody speaks: character 0 on {stats['speaking_0']:.1%} of frames, "
                                       f"character 1 on {stats['speaking_1']:.1%} < min_speaking_fraction "
                                       f"{self.min_speaking_fraction:.0%} (Light-ASD"
                                       f"{' within the mixture voice activity' if self.speech_gate else ''}, smoothed)")

    @classmethod
    def make_tiny(cls, root: Path) -> dict[str, Any]:
        """A random-initialised Light-ASD (the real class at its real size, 1.0 M parameters) in the public
        checkpoint's layout."""
        import torch

        from mtcc.nets.light_asd import LightASD, ours_to_checkpoint

        d = Path(root) / cls.name
        d.mkdir(parents=True, exist_ok=True)
        path = d / "light_asd_random.model"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = LightASD()
        torch.save(ours_to_checkpoint(net.state_dict()), path)
        loading.write_marker(d, "Light-ASD (CVPR 2023), random weights", file=path.name)
        return {"model": str(path), "allow_random_weights": True}
