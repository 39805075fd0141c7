"""Near-duplicate fingerprints of video clips: the same clip re-encoded at another bitrate, rescaled or trimmed
by a fraction of a second gets (nearly) the same fingerprints; unrelated clips do not.

Contract:

* ``frame_hashes(frames)``: one 64-bit DCT perceptual hash per RGB frame, as int64 (the uint64 bits viewed
  as signed: Parquet has no convenient uint64 list). Compare with ``hamming`` (0..64): re-encoded or
  rescaled copies of a frame land within ~10 bits, unrelated frames near 32.
* ``audio_hashes(wav)``: 16 kHz mono float32 -> one 32-bit sub-fingerprint (Haitsma-Kalker style) every
  ``AUDIO_HOP_S`` seconds, as int64 in [0, 2**32), or ``QUIET`` (-1) where the sound is near silence. Hash
  ``i`` describes the audio from ``i * AUDIO_HOP_S`` seconds on.
* Offsets: an audio offset is ``pos_in_a - pos_in_b`` (hops) and a frame shift is ``shift_s`` (seconds) with
  ``b[t] == a[t + shift_s]``: positive when b starts later in a's content (b is a with its head cut off),
  and ``shift_s ~= offset * AUDIO_HOP_S``. ``audio_ber(a, b, offset)`` aligns ``b[i]`` with ``a[i + offset]``;
  ``audio_pair_votes`` reports that same offset for its pairs (a < b by clip index).
* ``audio_pair_votes``: candidate pairs among many clips without ever forming all pairs: only clips sharing an
  exact sub-fingerprint value meet, and values shared by many clips (tones, silence, music beds) are skipped;
  memory grows with the matching (value, clip, clip) combinations, not with clips squared.
* Verification of a candidate: ``audio_ber`` (identical audio ~0, copies well under 0.35, unrelated ~0.5)
  and ``frame_match`` (median Hamming distance of time-aligned frames).
"""

from __future__ import annotations

import cv2
import numpy as np

# The fingerprint's own rate, not the build's clip rate: hashes stay comparable across builds only if they
# are computed from audio at this one rate.
AUDIO_RATE = 16000
AUDIO_FRAME = 4096  # samples (0.256 s): long frames against a short hop are what make a sub-hop trim harmless
AUDIO_HOP = 256  # samples
AUDIO_HOP_S = AUDIO_HOP / AUDIO_RATE  # 0.016 s
QUIET = -1

HASH_SIDE = 32  # the DCT's input side
HASH_LOW = 8  # the low-frequency block kept: 8x8 = 64 bits
AUDIO_BANDS = 33  # -> 32 bits from differences of adjacent bands
AUDIO_LOW_HZ, AUDIO_HIGH_HZ = 300.0, 2000.0
# A frame is quiet when its band energy is this far below the clip's loud frames (pauses, where a low-bitrate
# codec leaves only noise that hashes at random), or below an absolute floor (digital silence, fades).
QUIET_RELATIVE_DB = 35.0
QUIET_LOUD_PERCENTILE = 95.0
QUIET_FLOOR = 1e-7  # mean squared amplitude per sample in the band, ~ -70 dBFS
AUDIO_CHUNK = 1024  # frames per FFT batch: bounds memory on long tracks (16 MB of float32)


# --- frames -------------------------------------------------------------------------------------------------


def _luma_32(frame: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    # halving first: OpenCV's area filter has a fast path for exact halves and is several times slower at the
    # ratio straight from 720p to 32 px; the result is still an area average
    while h >= 4 * HASH_SIDE and w >= 4 * HASH_SIDE:
        g = cv2.resize(g, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        h, w = g.shape
    return cv2.resize(g, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    """[N, K] bool -> uint64 [N], bit k = column k (columns are distinct powers of two: the sum is an OR)."""
    weights = np.left_shift(np.uint64(1), np.arange(bits.shape[1], dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def frame_hashes(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[N, H, W, 3]`` -> int64 ``[N]`` 64-bit DCT perceptual hashes: luma area-resized to 32x32,
    orthonormal 2-D DCT-II, the 8x8 lowest frequencies; bit ``8 * u + v`` is set when coefficient ``(u, v)``
    exceeds the median of those 64. The uint64 is returned viewed as int64."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        return np.zeros(0, np.int64)
    import scipy.fft  # here: its import is start-up time for every actor that loads the stage registry

    small = np.stack([_luma_32(f) for f in frames]).astype(np.float32)
    low = scipy.fft.dctn(small, type=2, axes=(1, 2), norm="ortho")[:, :HASH_LOW, :HASH_LOW].reshape(len(frames), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return _pack_bits(bits).view(np.int64)


# --- Hamming distance ---------------------------------------------------------------------------------------

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount_lut(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64; np.bitwise_count where numpy has it (2.0+), a byte lookup table otherwise."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _popcount_lut(x)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise number of differing bits between int64 hashes (broadcasting), uint8 in 0..64 (small, as
    callers compare blocks of hashes; cast before subtracting)."""
    # as uint64: np.bitwise_count counts the bits of the absolute value of a signed integer
    x = np.asarray(np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64))).view(np.uint64)
    return np.asarray(_popcount(x), np.uint8)


# --- audio sub-fingerprints ---------------------------------------------------------------------------------


def _band_matrix() -> tuple[slice, np.ndarray]:
    """The FFT bins that fall in the bands, and the [bins, AUDIO_BANDS] 0/1 matrix summing them per band."""
    freqs = np.fft.rfftfreq(AUDIO_FRAME, 1.0 / AUDIO_RATE)
    edges = np.geomspace(AUDIO_LOW_HZ, AUDIO_HIGH_HZ, AUDIO_BANDS + 1)
    band = np.searchsorted(edges, freqs, side="right") - 1  # -1 below the first edge, AUDIO_BANDS above
    inside = np.flatnonzero((band >= 0) & (band < AUDIO_BANDS))
    bins = slice(int(inside[0]), int(inside[-1]) + 1)
    onehot = band[bins, None] == np.arange(AUDIO_BANDS)[None, :]
    return bins, onehot.astype(np.float32)


def _band_energies(wav: np.ndarray) -> np.ndarray:
    """[M, AUDIO_BANDS] energies of Hann-windowed frames every AUDIO_HOP samples (M = 0 when too short)."""
    if len(wav) < AUDIO_FRAME:
        return np.zeros((0, AUDIO_BANDS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(wav, AUDIO_FRAME)[::AUDIO_HOP]  # a view: only a chunk is copied
    n = len(frames)
    window = np.hanning(AUDIO_FRAME).astype(np.float32)
    bins, onehot = _band_matrix()
    out = np.zeros((n, AUDIO_BANDS), np.float32)
    for start in range(0, n, AUDIO_CHUNK):
        spec = np.fft.rfft(frames[start:start + AUDIO_CHUNK] * window, axis=1)[:, bins]
        out[start:start + AUDIO_CHUNK] = (spec.real ** 2 + spec.imag ** 2).astype(np.float32) @ onehot
    return out


def _quiet_frames(energy: np.ndarray) -> np.ndarray:
    """[M] bool: frames near silence, absolutely or relative to the clip's loud frames."""
    if len(energy) == 0:
        return np.zeros(0, bool)
    # Parseval over the one-sided spectrum of a Hann-windowed frame: this scale makes it the band's mean square
    total = energy.sum(axis=1) / (AUDIO_FRAME / 2 * float(np.sum(np.hanning(AUDIO_FRAME) ** 2)))
    loud = float(np.percentile(total, QUIET_LOUD_PERCENTILE))
    return (total < QUIET_FLOOR) | (total < loud * 10.0 ** (-QUIET_RELATIVE_DB / 10.0))


def audio_hashes(wav: np.ndarray) -> np.ndarray:
    """16 kHz mono float32 -> int64 ``[M]`` 32-bit sub-fingerprints, one per ``AUDIO_HOP_S``; ``QUIET`` (-1)
    where either frame it compares is near silence. Frames are 0.256 s long (Hann); E[n, m] is the energy of
    band m of 33 log-spaced bands from 300 to 2000 Hz, and bit m of hash n (m = 0..31, weight 2**m) is
    ``(E[n+1, m] - E[n+1, m+1]) - (E[n, m] - E[n, m+1]) > 0``. Hash n covers samples
    ``[n * AUDIO_HOP, n * AUDIO_HOP + AUDIO_FRAME + AUDIO_HOP)``; shorter than that, none."""
    wav = np.ascontiguousarray(np.asarray(wav, np.float32).reshape(-1))
    energy = _band_energies(wav)
    if len(energy) < 2:
        return np.zeros(0, np.int64)
    across = energy[:, :-1] - energy[:, 1:]
    bits = (across[1:] - across[:-1]) > 0
    hashes = _pack_bits(bits).astype(np.int64)
    quiet = _quiet_frames(energy)
    hashes[quiet[1:] | quiet[:-1]] = QUIET
    return hashes


def audio_ber(a: np.ndarray, b: np.ndarray, offset: int) -> tuple[float, int]:
    """Bit error rate between sub-fingerprints ``a`` and ``b`` with ``b[i]`` aligned to ``a[i + offset]``, over
    the overlap where neither is QUIET: ``(ber, frames compared)``, ``(1.0, 0)`` when nothing is compared."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    lo, hi = max(0, -offset), min(len(b), len(a) - offset)
    if hi <= lo:
        return 1.0, 0
    sa, sb = a[lo + offset:hi + offset], b[lo:hi]
    keep = (sa != QUIET) & (sb != QUIET)
    n = int(keep.sum())
    if n == 0:
        return 1.0, 0
    return float(hamming(sa[keep], sb[keep]).sum(dtype=np.int64)) / (32.0 * n), n


# --- candidate pairs among many clips -----------------------------------------------------------------------


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """bool [K]: where a run of equal key tuples starts in arrays sorted by those keys."""
    n = len(keys[0])
    start = np.zeros(n, bool)
    if n:
        start[0] = True
        for k in keys:
            start[1:] |= k[1:] != k[:-1]
    return start


def _run_ends(start: np.ndarray) -> np.ndarray:
    """[K]: for each element, the index one past the end of its run (``start`` from ``_run_starts``)."""
    first = np.flatnonzero(start)
    ends = np.append(first[1:], len(start))
    return ends[np.cumsum(start) - 1]


def _cross_clip_pairs(clip: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of entries sorted by (value, clip) with the same value and clip[i] < clip[j]:
    each entry meets the entries of the later clips of its value run, nothing else is formed."""
    value_end = _run_ends(_run_starts(value))
    clip_end = _run_ends(_run_starts(value, clip))
    count = value_end - clip_end
    total = int(count.sum())
    left = np.repeat(np.arange(len(value)), count)
    # j runs over clip_end[i] .. value_end[i] - 1 for each i
    step = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    right = np.repeat(clip_end, count) + step
    return left, right


def _drop_stop_words(clip: np.ndarray, value: np.ndarray, max_clips: int) -> np.ndarray:
    """bool [K] over entries sorted by (value, clip): keep values found in 2..max_clips distinct clips."""
    value_start = _run_starts(value)
    new_clip = _run_starts(value, clip)
    run = np.cumsum(value_start) - 1
    clips_per_value = np.bincount(run, weights=new_clip).astype(np.int64)
    n = clips_per_value[run]
    return (n >= 2) & (n <= max_clips)


def _empty_votes() -> dict[str, np.ndarray]:
    return {"a": np.zeros(0, np.int32), "b": np.zeros(0, np.int32), "offset": np.zeros(0, np.int32),
            "votes": np.zeros(0, np.int64)}


def audio_pair_votes(clip: np.ndarray, pos: np.ndarray, value: np.ndarray, *, min_votes: int = 4,
                     max_clips_per_value: int = 20) -> dict[str, np.ndarray]:
    """Clip pairs sharing exactly-equal sub-fingerprints, with the offset they agree on.

    Input: one entry per non-QUIET sub-fingerprint of every clip: its clip index, its position in that clip
    (hops) and its value (QUIET entries are ignored if given). Each (a, b) pair with a < b and a shared value
    votes for ``pos_in_a - pos_in_b`` (the ``audio_ber`` offset); values in more than ``max_clips_per_value``
    distinct clips vote for nothing. A pair's votes at offset o are its own plus those at o - 1 and o + 1,
    pooled because a trim by a fraction of a hop, or an encoder's drift, splits one alignment between two
    neighbouring offsets. Each pair reports its best offset: most pooled votes, then most own votes, then the
    smallest ``|offset|``, then the smallest offset.

    Returns ``a``, ``b``, ``offset`` (int32) and ``votes`` (pooled, int64), pairs with ``votes >= min_votes``,
    sorted by (a, b). Memory: a few int64 per matching (value, entry of a, entry of b) combination."""
    # int32 clip and position: 16 bytes an entry, ~100 MB for 10,000 clips of 10 s before stop words go
    clip = np.asarray(clip, np.int32).reshape(-1)
    pos = np.asarray(pos, np.int32).reshape(-1)
    value = np.asarray(value, np.int64).reshape(-1)
    if not len(clip) == len(pos) == len(value):
        raise ValueError(f"clip, pos and value differ in length: {len(clip)}, {len(pos)}, {len(value)}")
    live = value != QUIET
    clip, pos, value = clip[live], pos[live], value[live]
    order = np.lexsort((clip, value))
    clip, pos, value = clip[order], pos[order], value[order]
    keep = _drop_stop_words(clip, value, max_clips_per_value)
    clip, pos, value = clip[keep], pos[keep], value[keep]
    left, right = _cross_clip_pairs(clip, value)
    if len(left) == 0:
        return _empty_votes()
    a, b, off = clip[left], clip[right], pos[left] - pos[right]
    del left, right

    # one row per (a, b, offset) with its own votes, sorted so that a pair's offsets are consecutive
    order = np.lexsort((off, b, a))
    a, b, off = a[order], b[order], off[order]
    start = _run_starts(a, b, off)
    first = np.flatnonzero(start)
    own = np.diff(np.append(first, len(a)))
    a, b, off = a[first], b[first], off[first]

    # neighbours: offset o - 1 of the same pair, if present, is the row just before (rows are unique and sorted)
    same_prev = np.zeros(len(a), bool)
    same_prev[1:] = (a[1:] == a[:-1]) & (b[1:] == b[:-1]) & (off[1:] == off[:-1] + 1)
    pooled = own.copy()
    pooled[1:] += np.where(same_prev[1:], own[:-1], 0)
    pooled[:-1] += np.where(same_prev[1:], own[1:], 0)

    best = np.lexsort((off, np.abs(off), -own, -pooled, b, a))
    a, b, off, own, pooled = a[best], b[best], off[best], own[best], pooled[best]
    top = _run_starts(a, b)
    top &= pooled >= min_votes
    return {"a": a[top].astype(np.int32), "b": b[top].astype(np.int32), "offset": off[top].astype(np.int32),
            "votes": pooled[top].astype(np.int64)}


# --- frame alignment ----------------------------------------------------------------------------------------


def _nearest(sorted_times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the time in ``sorted_times`` nearest to each of ``t`` (the earlier one on a tie)."""
    if len(sorted_times) == 1:
        return np.zeros(len(t), np.int64)
    after = np.clip(np.searchsorted(sorted_times, t), 1, len(sorted_times) - 1)
    before = after - 1
    return np.where(np.abs(sorted_times[before] - t) <= np.abs(sorted_times[after] - t), before, after)


def frame_match(ha: np.ndarray, ta: np.ndarray, hb: np.ndarray, tb: np.ndarray, shift_s: float) -> float:
    """Median Hamming distance between each frame of clip a (hashes ``ha`` at ``ta`` seconds from a's start)
    and the frame of clip b nearest to ``ta - shift_s`` in b's time ``tb``, under ``b[t] == a[t + shift_s]``
    (positive shift: b starts later in a's content; ``shift_s = offset * AUDIO_HOP_S`` for an audio
    offset). Only frames of a whose aligned time lies within b's span ``[min(tb), max(tb)]`` count; 64.0
    when none does."""
    ha, ta = np.asarray(ha, np.int64), np.asarray(ta, np.float64)
    hb, tb = np.asarray(hb, np.int64), np.asarray(tb, np.float64)
    if len(ha) == 0 or len(hb) == 0:
        return 64.0
    order = np.argsort(tb, kind="stable")
    hb, tb = hb[order], tb[order]
    t = ta - shift_s
    inside = (t >= tb[0]) & (t <= tb[-1])
    if not inside.any():
        return 64.0
    return float(np.median(hamming(ha[inside], hb[_nearest(tb, t[inside])])))
