"""Sound: how clean the clip's speech is, scored with real models that ship inside their wheels.

  * ``sig_mix`` / ``bak_mix`` / ``ovrl_mix``: DNSMOS P.835 (nets/dnsmos.py) of the clip's mixture, 1-5
    MOS: the speech itself (SIG), the background, high when quiet (BAK), and overall (OVRL);
  * ``sig_<k>`` / ``bak_<k>`` / ``ovrl_<k>``: the same on each character's separated track, when the
    ``separate`` stage ran before this one (NaN otherwise);
  * ``speech_fraction``: share of the clip Silero VAD hears speech in (nets/vad.py), on the mixture;
  * ``nonspeech_sound``: share of the clip that is not speech yet sounds above ``sound_floor_dbfs``:
    music beds, laughter, applause, room noise between the words.

Every score is a stat; a threshold left unset records it and rejects nothing. Where the bounds come from:
docs/quality.md.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mtcc.media.audio_io import read_track
from mtcc.media.clip import AUDIO_RATE, CHARACTERS
from mtcc.media.members import TRACKS
from mtcc.nets.vad import RATES

from .base import CLIP_MEDIA, RESOURCES, Candidate, Key, Member, Rejection, Resources, Stage, StatView, Threshold
from .clip_media import clip_media


def chunk_dbfs(track: np.ndarray, chunks: int, size: int) -> np.ndarray:
    """``[chunks]`` RMS level in dBFS of each ``size``-sample chunk (the last zero-padded)."""
    x = np.asarray(track, np.float64)
    x = np.pad(x, (0, max(0, chunks * size - len(x))))[:chunks * size].reshape(chunks, size)
    return 20 * np.log10(np.sqrt((x ** 2).mean(axis=1)) + 1e-9)


class SoundQuality(Stage):
    name: ClassVar[str] = "sound"
    # the pool planner's figures until the build measures its own (see Stage, pipeline/pools.py)
    expected_cost: ClassVar[float] = 0.1
    typical_keep: ClassVar[float] = 1.0
    actor_memory_mb: ClassVar[int] = 360
    uses: ClassVar[tuple[str, ...]] = ("speechmos", "silero-vad", "onnxruntime")
    max_actor_cpus: ClassVar[float] = 1.0
    clip_needs: ClassVar[dict[str, int]] = {"characters": CHARACTERS, "audio_rate": AUDIO_RATE}
    # the separated tracks only when a stage listed earlier made them
    requires: ClassVar[tuple[Key | type, ...]] = (CLIP_MEDIA, *(Member(t, if_earlier=True) for t in TRACKS))
    reads_clip_media: ClassVar[bool] = True
    stats_schema: ClassVar[dict[str, str]] = {
        **{f"{m}_{who}": "float64" for who in ("mix", *map(str, range(CHARACTERS))) for m in ("sig", "bak", "ovrl")},
        "speech_fraction": "float64", "nonspeech_sound": "float64",
    }
    report_views: ClassVar[tuple[StatView, ...]] = (
        StatView(("ovrl_mix",), "DNSMOS OVRL", plot="dnsmos_ovrl", title="DNSMOS overall quality of the mixture",
                 unit="MOS 1-5", thresholds=(Threshold("min_ovrl", "min_ovrl"),)),
        StatView(("bak_mix",), "DNSMOS BAK", plot="dnsmos_bak", title="DNSMOS background of the mixture (high: quiet)",
                 unit="MOS 1-5", thresholds=(Threshold("min_bak", "min_bak"),)),
        StatView(("sig_mix",), "DNSMOS SIG", plot="dnsmos_sig", title="DNSMOS speech signal of the mixture",
                 unit="MOS 1-5", thresholds=(Threshold("min_sig", "min_sig"),)),
        StatView(("speech_fraction",), "speech", plot="speech_fraction", title="Share of the clip with speech",
                 unit="share", thresholds=(Threshold("min_speech_fraction", "min_speech_fraction"),)),
        StatView(("nonspeech_sound",), "other sound", plot="nonspeech_sound",
                 title="Share of the clip with sound that is not speech (music, laughter, noise)", unit="share",
                 thresholds=(Threshold("max_nonspeech_sound", "max_nonspeech_sound"),)),
    )

    score_tracks: bool = Field(True, description="also score each separated track (spk<i>.flac) when present")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero VAD probability from which a chunk is speech")
    sound_floor_dbfs: float = Field(-45.0, le=0, description="a non-speech chunk louder than this is sound "
                                                             "(music, laughter, noise), quieter is silence")
    min_ovrl: float | None = Field(None, ge=1, le=5, description="reject when the mixture's DNSMOS OVRL is "
                                                                 "below this (None: record only)")
    min_bak: float | None = Field(None, ge=1, le=5, description="reject when the mixture's DNSMOS BAK (quiet "
                                                                "background) is below this (None: record only)")
    min_sig: float | None = Field(None, ge=1, le=5, description="reject when the mixture's DNSMOS SIG is below "
                                                                "this (None: record only)")
    min_speech_fraction: float | None = Field(None, ge=0, le=1, description="reject clips with speech in a "
                                                                            "smaller share (None: record only)")
    max_nonspeech_sound: float | None = Field(None, ge=0, le=1, description="reject clips with non-speech sound "
                                                                            "in a larger share (None: record only)")
    resources: Resources = Field(default_factory=lambda: Resources(num_cpus=0.5, candidates_per_call=4),
                                 description=RESOURCES)

    def load(self) -> None:
        from mtcc.nets.dnsmos import DnsMos
        from mtcc.nets.vad import SileroVad

        self._dnsmos = DnsMos(threads=1)
        self._vad = SileroVad(threads=1)

    def compute(self, cand: Candidate) -> dict[str, Any]:
        mix = clip_media(cand, self).mixture()
        tracks = [mix]
        names = [TRACKS[k] for k in range(CHARACTERS)]
        separated = self.score_tracks and all(m in cand.members for m in names)
        if separated:
            tracks += [read_track(cand.member(m)) for m in names]
        scores = self._dnsmos.score(tracks)
        stats: dict[str, Any] = {}
        for who, s in zip(["mix", *map(str, range(CHARACTERS))], [*scores, *[(math.nan,) * 3] * CHARACTERS]):
            stats.update({f"sig_{who}": s[0], f"bak_{who}": s[1], f"ovrl_{who}": s[2]})
        probs = self._vad.probs(mix, AUDIO_RATE)[0]
        speech = probs >= self.vad_threshold
        loud = chunk_dbfs(mix, len(probs), RATES[AUDIO_RATE][0]) > self.sound_floor_dbfs  # the VAD's chunks
        stats["speech_fraction"] = float(speech.mean()) if len(speech) else 0.0
        stats["nonspeech_sound"] = float((~speech & loud).mean()) if len(speech) else 0.0
        return stats

    def decide(self, stats: dict[str, Any]) -> Rejection | None:
        for reason, setting, stat in (("poor_sound", "min_ovrl", "ovrl_mix"), ("noisy_background", "min_bak", "bak_mix"),
                                      ("poor_speech_signal", "min_sig", "sig_mix"),
                                      ("little_speech", "min_speech_fraction", "speech_fraction")):
            limit = getattr(self, setting)
            if limit is not None and stats[stat] < limit:
                return Rejection(reason, f"{stat} {stats[stat]:.3f} < sound.{setting}={limit:g}")
        if self.max_nonspeech_sound is not None and stats["nonspeech_sound"] > self.max_nonspeech_sound:
            return Rejection("background_sound", f"nonspeech_sound {stats['nonspeech_sound']:.3f} > "
                                                 f"sound.max_nonspeech_sound={self.max_nonspeech_sound:g}")
        return None
