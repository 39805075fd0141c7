"""The cut's picture size: the source's, or scaled down to ``max_short_side`` (aspect kept, even dimensions),
with the face crops and reference pictures cut at the scaled face positions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clips_through_stages, fresh

from mtcc.facts import CutMedia, ProbeResult
from mtcc.media.video import open_frames
from mtcc.stages.base import Candidate
from mtcc.stages.clip_media import ClipMedia
from mtcc.stages.cut import ClipCut, clip_size
from mtcc.stages.probe import Probe


@pytest.mark.parametrize("size, cap, want", [
    ((3840, 2160), 1080, (1920, 1080)),  # 4K landscape -> 1080p
    ((2160, 3840), 1080, (1080, 1920)),  # portrait: the shorter side is the width
    ((7680, 4320), 1080, (1920, 1080)),
    ((1280, 720), 1080, (1280, 720)),  # under the cap: the source's size
    ((1281, 721), None, (1280, 720)),  # no cap: rounded down to even
    ((1000, 563), 250, (444, 250)),  # 444.1 x 250: even after scaling
])
def test_clip_size_caps_the_shorter_side_and_keeps_the_aspect(size, cap, want):
    assert clip_size(*size, cap) == want


def _cut(clip, **settings):
    stage = ClipCut(**settings)
    stage.setup()
    (cut,) = stage.run_batch(fresh([clip]))
    assert cut.reason is None, cut.message
    return cut, ClipMedia(cut, stage.workspace, "test")


def test_a_capped_cut_is_the_full_size_cut_scaled_down(sample_dir, tmp_path):
    """two_talk (640x360) cut whole and with a 180-pixel cap: the capped mp4 is 320x180 with the same frames,
    its CutMedia scale is 1/2, and its face crops are the full cut's crops (the boxes were scaled with the
    picture): each character's crop is far closer to its own full-size crop than to the other character's."""
    (clip,) = clips_through_stages(sample_dir / "two_talk.mp4", max_seconds=3.0, cut=False)[:1]
    full, full_media = _cut(clip)
    small, small_media = _cut(clip, max_short_side=180)
    assert full.fact(CutMedia).size == (640, 360) and small.fact(CutMedia).size == (320, 180)
    assert small.fact(CutMedia).scale == (0.5, 0.5) and small.fact(CutMedia).frames == full.fact(CutMedia).frames
    mp4 = tmp_path / "small.mp4"
    mp4.write_bytes(small.members["mp4"])
    probed = Candidate(key="small", video_id="small", source=str(mp4), shard=0)
    Probe().run_batch([probed])
    video = open_frames(str(mp4), probed.fact(ProbeResult).to_json(), None)
    assert (video.width, video.height, video.n_frames) == (320, 180, full.fact(CutMedia).frames)
    a, b = full_media.crops().astype(np.float32), small_media.crops().astype(np.float32)
    assert a.shape == b.shape and a.shape[0] == 2
    for k in range(2):
        own = np.abs(a[k] - b[k]).mean()
        other = np.abs(a[1 - k] - b[k]).mean()
        assert own < 12 and own < other / 2, (k, own, other)
    assert {"ref0.jpg", "ref1.jpg"} <= set(small.members)
