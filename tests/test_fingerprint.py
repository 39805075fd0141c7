"""Near-duplicate fingerprints on planted truth: copies of a real clip that ffmpeg re-encodes at a low bitrate,
rescales from 720p to 480p and trims by 0.5 s must match the original at the planted offset; other real clips
must not. The hash definitions, Hamming distance, pair voting and the offset signs are checked against slow
references and synthetic shifts."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from mtcc.media.fingerprint import (
    AUDIO_FRAME,
    AUDIO_HOP,
    AUDIO_HOP_S,
    AUDIO_RATE,
    QUIET,
    audio_ber,
    audio_hashes,
    audio_pair_votes,
    frame_hashes,
    frame_match,
    hamming,
)

ORIGINAL = "debate_split_screen.avi"  # 1280x720, 25 fps, two people talking over each other
UNRELATED = ["single_talking_head_2997fps.mp4", "same_scene_pair_16fps.mp4"]
TRIM_S = 0.5
LOW_BITRATE = ["-vf", "scale=-2:480", "-c:v", "libx264", "-preset", "veryfast", "-b:v", "150k",
               "-c:a", "aac", "-b:a", "32k"]


def ffmpeg(*args: str) -> bytes:
    return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], capture_output=True,
                          check=True).stdout


def decode_audio(path: Path) -> np.ndarray:
    raw = ffmpeg("-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(AUDIO_RATE), "pipe:")
    return np.frombuffer(raw, np.float32)


def decode_frame_hashes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every frame at the video's own size, and each frame's time (index / fps)."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    hashes = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        hashes.append(frame_hashes(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None])[0])
    cap.release()
    assert hashes, f"no frames decoded from {path}"
    return np.array(hashes, np.int64), np.arange(len(hashes)) / fps


def entries(hashes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """audio_pair_votes input: (clip, position, value) of every non-QUIET sub-fingerprint."""
    live = [np.flatnonzero(h != QUIET) for h in hashes]
    clip = np.concatenate([np.full(len(k), i, np.int32) for i, k in enumerate(live)])
    pos = np.concatenate(live).astype(np.int32)
    value = np.concatenate([h[k] for h, k in zip(hashes, live)])
    return clip, pos, value


@pytest.fixture(scope="module")
def copies(real_dir, tmp_path_factory) -> dict[str, Path]:
    """The original and its planted copies: re-encoded at 480p, and the same trimmed by TRIM_S."""
    d = tmp_path_factory.mktemp("copies")
    src = real_dir / ORIGINAL
    ffmpeg("-i", str(src), *LOW_BITRATE, str(d / "reencoded.mp4"))
    # -ss after -i: decoded and dropped, so the cut is sample-exact; before -i, ffmpeg cuts this AVI's audio
    # at an AC-3 frame boundary (0.4876 s, measured by cross-correlation), which would blur the planted truth
    ffmpeg("-i", str(src), "-ss", str(TRIM_S), *LOW_BITRATE, str(d / "trimmed.mp4"))
    return {"original": src, "reencoded": d / "reencoded.mp4", "trimmed": d / "trimmed.mp4",
            **{name: real_dir / name for name in UNRELATED}}


@pytest.fixture(scope="module")
def audio(copies) -> dict[str, np.ndarray]:
    return {name: audio_hashes(decode_audio(path)) for name, path in copies.items()}


@pytest.fixture(scope="module")
def frames(copies) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: decode_frame_hashes(path) for name, path in copies.items()}


# --- real copies --------------------------------------------------------------------------------------------


def test_trimmed_low_bitrate_copy_is_found_at_the_planted_offset(audio):
    names = ["original", "trimmed", *UNRELATED]
    found = audio_pair_votes(*entries([audio[n] for n in names]))
    pairs = {(names[a], names[b]): (int(o), int(v)) for a, b, o, v in
             zip(found["a"], found["b"], found["offset"], found["votes"])}
    planted = TRIM_S / AUDIO_HOP_S  # 31.25 hops: the trim falls between two hops
    offset, votes = pairs.pop(("original", "trimmed"))
    assert abs(offset - planted) <= 1, f"offset {offset} hops, planted {planted}"
    assert not pairs, f"unrelated clips paired: {pairs}"
    ber, n = audio_ber(audio["original"], audio["trimmed"], offset)
    assert n > 250 and ber < 0.2, f"BER {ber:.3f} over {n} frames at offset {offset} ({votes} votes)"
    print(f"trimmed copy: offset {offset} ({votes} votes), BER {ber:.3f} over {n} frames")


def test_reencoded_copy_audio_matches_at_zero(audio):
    ber, n = audio_ber(audio["original"], audio["reencoded"], 0)
    assert n > 300 and ber < 0.15, f"BER {ber:.3f} over {n} frames"
    print(f"re-encoded copy: BER {ber:.3f} over {n} frames")


@pytest.mark.parametrize("other", UNRELATED)
def test_unrelated_speech_has_ber_near_one_half_at_every_offset(audio, other):
    a, b = audio["original"], audio[other]
    at_zero, _ = audio_ber(a, b, 0)
    # the lowest BER over every alignment with a fair overlap: what a search over offsets could find
    scored = [audio_ber(a, b, k) for k in range(-len(b) + 100, len(a) - 100)]
    lowest = min(ber for ber, n in scored if n >= 100)
    assert at_zero > 0.4 and lowest > 0.4, f"{other}: BER {at_zero:.3f} at offset 0, {lowest:.3f} at best"
    print(f"unrelated {other}: BER {at_zero:.3f} at offset 0, lowest {lowest:.3f} over offsets")


def test_rescaled_copy_frames_match_and_unrelated_frames_do_not(frames):
    ha, ta = frames["original"]
    same = frame_match(ha, ta, *frames["reencoded"], 0.0)
    trimmed = frame_match(ha, ta, *frames["trimmed"], TRIM_S)
    unrelated = {name: frame_match(ha, ta, *frames[name], 0.0) for name in UNRELATED}
    message = f"re-encoded {same}, trimmed {trimmed}, unrelated {unrelated}"
    assert same <= 10 and trimmed <= 10, message
    assert min(unrelated.values()) > 20, message
    print(message)


def test_audio_offset_gives_the_frame_shift(audio, frames):
    """The audio offset, in seconds, is the shift frame_match wants: one convention for both."""
    found = audio_pair_votes(*entries([audio["original"], audio["trimmed"]]))
    assert len(found["a"]) == 1, found
    shift = float(found["offset"][0]) * AUDIO_HOP_S
    assert frame_match(*frames["original"], *frames["trimmed"], shift) <= 10


# --- sign conventions on synthetic shifts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(copies) -> np.ndarray:
    return decode_audio(copies["original"])


def test_audio_offset_sign(speech):
    shift = 10  # b is a with its first 10 hops cut off: b[i] == a[i + 10]
    a, b = audio_hashes(speech), audio_hashes(speech[shift * AUDIO_HOP:])
    assert audio_ber(a, b, shift) == (0.0, int(((a[shift:shift + len(b)] != QUIET) & (b != QUIET)).sum()))
    assert audio_ber(a, b, -shift)[0] > 0.4
    found = audio_pair_votes(*entries([a, b]))
    assert (found["a"].tolist(), found["b"].tolist(), found["offset"].tolist()) == ([0], [1], [shift])
    swapped = audio_pair_votes(*entries([b, a]))  # clip 0 is now the trimmed one: pos_in_a - pos_in_b < 0
    assert swapped["offset"].tolist() == [-shift]
    assert audio_ber(b, a, -shift)[0] == 0.0


def smooth_random_frames(n: int, seed: int) -> np.ndarray:
    """Distinct pictures with their energy at low frequencies, as real frames have (pure noise would hash on
    noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(f, (160, 120), interpolation=cv2.INTER_CUBIC) for f in small])


def test_frame_shift_sign():
    fps = 25.0
    a = smooth_random_frames(50, seed=1)
    ha, ta = frame_hashes(a), np.arange(50) / fps
    hb, tb = frame_hashes(a[5:]), np.arange(45) / fps  # b[t] == a[t + 0.2]
    assert frame_match(ha, ta, hb, tb, 5 / fps) == 0.0
    assert frame_match(ha, ta, hb, tb, -5 / fps) > 20
    assert frame_match(hb, tb, ha, ta, -5 / fps) == 0.0
    assert frame_match(ha, ta, hb, tb, 100.0) == 64.0  # nothing overlaps


# --- definitions against slow references --------------------------------------------------------------------


def test_frame_hash_matches_a_per_frame_reference():
    frames = smooth_random_frames(6, seed=2)  # 160x120: no halving, one area resize as the reference does
    got = frame_hashes(frames)
    assert got.dtype == np.int64 and got.shape == (6,)
    for frame, h in zip(frames, got):
        luma = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        low = cv2.dct(luma.astype(np.float32))[:8, :8].reshape(-1)
        expected = sum(1 << k for k, c in enumerate(low) if c > np.median(low))
        assert int(np.int64(h).view(np.uint64)) == expected
        assert bin(expected).count("1") == 32  # the median splits 64 distinct coefficients in halves
    assert np.array_equal(frame_hashes(frames), got)


def test_frame_hash_survives_rescaling():
    frames = smooth_random_frames(8, seed=3)
    big = np.stack([cv2.resize(f, (1280, 720), interpolation=cv2.INTER_CUBIC) for f in frames])
    small = np.stack([cv2.resize(f, (854, 480), interpolation=cv2.INTER_AREA) for f in big])
    d = hamming(frame_hashes(big), frame_hashes(small))
    assert d.max() <= 4, d


def test_hamming_against_python_popcount():
    rng = np.random.default_rng(0)
    a = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500, dtype=np.int64, endpoint=True)
    b = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500, dtype=np.int64, endpoint=True)
    a[:3], b[:3] = [-1, 0, np.iinfo(np.int64).min], [0, 0, np.iinfo(np.int64).max]
    reference = [bin((int(x) ^ int(y)) & (2 ** 64 - 1)).count("1") for x, y in zip(a, b)]
    assert hamming(a, b).tolist() == reference
    assert reference[:3] == [64, 0, 64]
    grid = hamming(a[:5, None], b[None, :7])  # broadcasting
    assert grid.tolist() == [[bin((int(x) ^ int(y)) & (2 ** 64 - 1)).count("1") for y in b[:7]] for x in a[:5]]
    assert hamming(a[3], b[3]) == reference[3]  # scalars


def test_hamming_lookup_table_path_agrees(monkeypatch):
    from mtcc.media import fingerprint

    rng = np.random.default_rng(1)
    a, b = rng.integers(-2 ** 63, 2 ** 63 - 1, (2, 300), dtype=np.int64, endpoint=True)
    fast = hamming(a, b)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert fingerprint.hamming(a, b).tolist() == fast.tolist()


def brute_force_votes(clip, pos, value, min_votes, max_clips):
    """audio_pair_votes by dictionaries: every entry against every other."""
    clips_of = defaultdict(set)
    for c, v in zip(clip, value):
        clips_of[v].add(c)
    votes = defaultdict(lambda: defaultdict(int))
    n = len(clip)
    for i in range(n):
        for j in range(n):
            if value[i] == value[j] and clip[i] < clip[j] and len(clips_of[value[i]]) <= max_clips:
                votes[clip[i], clip[j]][pos[i] - pos[j]] += 1
    out = {}
    for pair, by_offset in votes.items():
        pooled = {o: by_offset[o] + by_offset.get(o - 1, 0) + by_offset.get(o + 1, 0) for o in list(by_offset)}
        best = min(pooled, key=lambda o: (-pooled[o], -by_offset[o], abs(o), o))
        if pooled[best] >= min_votes:
            out[pair] = (best, pooled[best])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_pair_votes_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 400
    clip = rng.integers(0, 12, n).astype(np.int32)
    pos = rng.integers(0, 25, n).astype(np.int32)
    value = rng.integers(0, 60, n).astype(np.int64)
    got = audio_pair_votes(clip, pos, value, min_votes=3, max_clips_per_value=6)
    expected = brute_force_votes(clip.tolist(), pos.tolist(), value.tolist(), 3, 6)
    assert list(zip(got["a"].tolist(), got["b"].tolist())) == sorted(expected)
    assert {(a, b): (o, v) for a, b, o, v in zip(*(got[k].tolist() for k in ("a", "b", "offset", "votes")))} \
        == expected
    assert expected  # the random case exercises something


def test_pair_votes_pool_neighbouring_offsets_and_break_ties():
    # pair (0, 1): 3 votes at offset 7 and 2 at 8 -> 5 pooled at both; own votes pick 7
    # pair (0, 2): 2 votes at -3 and 2 at 3, not neighbours -> 2 each, below min_votes; at min_votes=2 the
    # tie goes to the smallest |offset| then the smallest offset: -3
    rows = [(0, 10, 1), (1, 3, 1), (0, 11, 2), (1, 4, 2), (0, 12, 3), (1, 5, 3), (0, 20, 4), (1, 12, 4),
            (0, 21, 5), (1, 13, 5),
            (0, 30, 6), (2, 33, 6), (0, 31, 7), (2, 34, 7), (0, 40, 8), (2, 37, 8), (0, 41, 9), (2, 38, 9)]
    clip, pos, value = (np.array(col) for col in zip(*rows))
    got = audio_pair_votes(clip, pos, value, min_votes=4)
    assert (got["a"].tolist(), got["b"].tolist(), got["offset"].tolist(), got["votes"].tolist()) == \
        ([0], [1], [7], [5])
    loose = audio_pair_votes(clip, pos, value, min_votes=2)
    assert loose["offset"].tolist() == [7, -3] and loose["votes"].tolist() == [5, 2]


def test_pair_votes_ignore_stop_words():
    # values 100..105 at the same positions in 30 clips (a tone bed): each pair would get 6 votes at offset 0
    shared = [(c, p, 100 + p) for c in range(30) for p in range(6)]
    # clips 3 and 4 also share five values of their own, at offset 2
    own = [(3, 50 + k, 900 + k) for k in range(5)] + [(4, 48 + k, 900 + k) for k in range(5)]
    clip, pos, value = (np.array(col) for col in zip(*(shared + own)))
    got = audio_pair_votes(clip, pos, value, max_clips_per_value=20)
    assert (got["a"].tolist(), got["b"].tolist(), got["offset"].tolist()) == ([3], [4], [2])
    everything = audio_pair_votes(clip, pos, value, max_clips_per_value=30)
    assert len(everything["a"]) == 30 * 29 // 2  # the same entries pair once the values are no stop words


def test_pair_votes_edge_cases():
    empty = audio_pair_votes(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
    assert all(len(v) == 0 for v in empty.values())
    quiet = audio_pair_votes(np.array([0, 1] * 5), np.arange(10), np.full(10, QUIET))
    assert len(quiet["a"]) == 0
    with pytest.raises(ValueError):
        audio_pair_votes(np.zeros(2), np.zeros(3), np.zeros(2))


# --- silence ------------------------------------------------------------------------------------------------


def test_silence_is_quiet(speech):
    assert (audio_hashes(np.zeros(3 * AUDIO_RATE, np.float32)) == QUIET).all()
    gap = 2 * AUDIO_RATE
    wav = np.concatenate([speech[:gap], np.zeros(gap, np.float32), speech[gap:2 * gap]])
    h = audio_hashes(wav)
    # hashes whose samples lie wholly inside the gap: [i * hop, i * hop + frame + hop) within [gap, 2 * gap)
    inside = np.arange(len(h))
    inside = (inside * AUDIO_HOP >= gap) & (inside * AUDIO_HOP + AUDIO_FRAME + AUDIO_HOP <= 2 * gap)
    assert inside.sum() > 50 and (h[inside] == QUIET).all()
    assert (h[~inside] != QUIET).mean() > 0.8
    live = h[h != QUIET]
    assert ((live >= 0) & (live < 2 ** 32)).all()
    assert audio_ber(h[inside], h[inside], 0) == (1.0, 0)  # nothing but QUIET: nothing compared
    assert audio_ber(h, h, 10 ** 6) == (1.0, 0)  # nothing overlaps
    assert len(audio_hashes(np.zeros(1000, np.float32))) == 0  # shorter than one frame


def test_a_clip_whose_encode_ended_early_is_hashed_up_to_its_last_frame(tmp_path):
    """The cut promised 50 frames (2 s) and the mp4 holds 30: the stage hashes up to frame 29, standing for the
    rest, as the other readers of a short encode do, instead of rejecting the clip as an error."""
    import hashlib

    from mtcc.facts import CutMedia
    from mtcc.media.audio_io import flac_bytes
    from mtcc.media.members import MIX, MP4
    from mtcc.stages.candidate import Candidate
    from mtcc.stages.fingerprint import ClipFingerprint

    path = tmp_path / "short.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=25", "-frames:v", "30", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))
    data = path.read_bytes()
    c = Candidate(key="v_0000", video_id="v", source="v.mp4", shard=0, level="clip", start=0.0, end=2.0)
    c.members[MP4] = data
    c.members[MIX] = flac_bytes(np.zeros(2 * AUDIO_RATE, np.float32))
    c.put(CutMedia.of(hashlib.sha256(data).hexdigest(), 2.0, 50, 25.0, (160, 120), (1.0, 1.0)))
    (out,) = ClipFingerprint().run_batch([c])
    assert out.status == "pending", (out.reason, out.message)
    assert out.stats["fingerprint.frame_times"] == [0.0, 0.48, 1.0, 1.16]  # 0, 0.5, 1, 1.5 s; frame 29 for 1.5
    assert len(out.stats["fingerprint.frame_hashes"]) == 4
