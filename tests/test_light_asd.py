"""Our Light-ASD class against the authors' reference implementation, and the loading rules.

Reference numbers: computed once (2026-12-02) with the authors' own model code, Junhua-Liao/Light-ASD at
commit ed38c232 (``model/Model.py`` ``ASD_Model`` + ``loss.py`` ``lossAV``, run from a scratch folder outside
this repo, CPU, float32), with ``weight/finetuning_TalkSet.model`` (the file in ../shared/models/light_asd/)
on the fixed input built by :func:`fixed_input`: ``forward_audio_frontend`` -> ``forward_visual_frontend`` ->
``forward_audio_visual_backend`` -> ``lossAV.forward(out, labels=None)`` (the speaking logit per frame).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtcc.nets import loading
from mtcc.nets.light_asd import LightASD, checkpoint_to_ours, ours_to_checkpoint
from mtcc.stages.asd import ActiveSpeakers, load_network

# the authors' speaking logits on fixed_input(), frames 0, 5, 10, ..., 45 and 49, and the sum of all 50
REFERENCE_EVERY_5TH = [-1.80656, -1.61567, -1.62409, -1.44282, -1.27925, -1.11027, -0.95271, -0.80148, -0.62099,
                       -0.39384]
REFERENCE_LAST = 0.00870
REFERENCE_SUM = -54.76689


def fixed_input() -> tuple[np.ndarray, np.ndarray]:
    """50 frames of 112x112 grey 'faces' (moving stripes + noise, 0..255) and 200 MFCC rows x 13."""
    rng = np.random.default_rng(20230618)
    t_frames = 50
    yy, xx = np.mgrid[0:112, 0:112]
    video = np.stack([127 + 60 * np.sin(xx / 9.0 + t / 3.0) + 40 * np.cos(yy / 7.0 - t / 5.0) for t in range(t_frames)])
    video = np.clip(video + rng.normal(0, 10, video.shape), 0, 255).astype(np.uint8).astype(np.float32)
    scale = np.array([8, 6, 5, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2])
    audio = rng.normal(0, 1, (4 * t_frames, 13)) * scale + np.linspace(-5, 5, 4 * t_frames)[:, None]
    return video, audio.astype(np.float32)


@pytest.fixture(scope="module")
def state(light_asd_weights):
    return loading.load_state_dict(light_asd_weights)


def test_our_class_gives_the_reference_logits(state):
    net = LightASD()
    net.load_state_dict(checkpoint_to_ours(state)[0], strict=True)
    net.eval()
    video, audio = fixed_input()
    with torch.inference_mode():
        plain = net(torch.from_numpy(audio)[None], torch.from_numpy(video)[None])[0].numpy()
        fused = net.fuse()(torch.from_numpy(audio)[None], torch.from_numpy(video)[None])[0].numpy()
    np.testing.assert_allclose(plain[0:50:5], REFERENCE_EVERY_5TH, atol=2e-4)
    assert plain[49] == pytest.approx(REFERENCE_LAST, abs=2e-4)
    assert plain.sum() == pytest.approx(REFERENCE_SUM, abs=2e-3)
    # the inference form (batch norms folded, 2D convolutions, channels-last) is the same arithmetic, and
    # its folded weights are no state: the state dict still has exactly the checkpoint's tensors
    np.testing.assert_allclose(fused, plain, atol=1e-4)
    assert set(net.state_dict()) == set(checkpoint_to_ours(state)[0])


def test_checkpoint_names_round_trip_and_parameter_count(state):
    ours, unknown = checkpoint_to_ours(state)
    assert unknown == []
    assert set(ours_to_checkpoint(ours)) == set(state)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n = sum(v.numel() for k, v in ours.items() if not k.endswith(buffers))
    assert 1.0e6 < n < 1.1e6  # the paper's 1.0 M (with the unused visual head)


def test_strict_loading_refuses_a_wrong_state_dict(state, tmp_path):
    missing = {k: v for k, v in state.items() if not k.startswith("lossAV.")}
    torch.save(missing, tmp_path / "missing.model")
    with pytest.raises(loading.WeightsError, match=r"not a Light-ASD state dict.*2 missing: speaking_head"):
        load_network(tmp_path / "missing.model")
    shaped = dict(state)
    shaped["lossAV.FC.weight"] = torch.zeros(3, 128)
    torch.save(shaped, tmp_path / "shaped.model")
    with pytest.raises(loading.WeightsError, match=r"of another shape: speaking_head.weight \(3, 128\)"):
        load_network(tmp_path / "shaped.model")
    extra = {**state, "model.extra.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.model")
    with pytest.raises(loading.WeightsError, match=r"1 unexpected: model.extra.weight"):
        load_network(tmp_path / "extra.model")


def test_random_weights_refused_unless_allowed(tmp_path):
    made = ActiveSpeakers.make_tiny(tmp_path)
    with pytest.raises(loading.WeightsError, match="RANDOM weights.*allow_random_weights=true"):
        ActiveSpeakers(model=made["model"]).setup()
    stage = ActiveSpeakers(**made)
    stage.setup()
    assert stage._random
    assert "random weights" in stage.check_model()
    # make-tiny writes the public checkpoint's layout: it loads through the same strict path
    assert set(loading.load_state_dict(tmp_path / "asd" / "light_asd_random.model")) == set(
        ours_to_checkpoint(LightASD().state_dict()))


def test_missing_weights_name_the_fix(tmp_path):
    with pytest.raises(loading.WeightsError, match="mtcc models fetch DIR --only asd"):
        ActiveSpeakers(model=str(tmp_path / "nope.model")).setup()
    with pytest.raises(loading.WeightsError, match="without finetuning_TalkSet.model"):
        ActiveSpeakers(model=str(tmp_path)).setup()
