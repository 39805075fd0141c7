"""Light-ASD, the active speaker detector of Liao et al., "A Light Weight Model for Active Speaker Detection"
(CVPR 2023), written here from the paper's description; its public checkpoints load into it strictly.

The network (about 1.0 M parameters) scores, for every video frame of a face track, whether that face is
speaking the audio heard at that moment:

  * visual encoder: grey 112x112 lip-region crops ``[B, T, 112, 112]`` (0..255), normalised with the
    training set's mean/std; three blocks, each two parallel paths that split a 3D convolution into a
    spatial ``1 x k x k`` and a temporal ``k x 1 x 1`` convolution (k = 3 and 5), summed and mixed by a
    1x1x1 convolution; the first block halves the resolution, max pools halve it twice more, a global
    spatial max pool leaves one 128-d vector per frame;
  * audio encoder: 13 MFCC rows at 100 Hz ``[B, 4T, 13]``; the same two-path design in 2D, split into a
    convolution along the cepstral axis (``k x 1``) and one along time (``1 x k``); two max pools along
    time bring 100 Hz to the video's 25 Hz, a mean over the cepstral axis leaves one 128-d vector per frame;
  * fusion: the two embeddings are added, then a forward GRU and a GRU run over the reversed sequence
    (each followed by GELU) give every frame context from both directions;
  * heads: a linear layer to two classes per frame; the speaking logit is the second class's output
    (> 0: speaking). A visual-only head (a training aid in the paper) is kept so the checkpoint loads
    strictly; the stage does not use it.

Checkpoint layout (the authors' ``.model`` files: a plain state dict): ``model.visualEncoder.*``,
``model.audioEncoder.*``, ``model.GRU.gru_forward/gru_backward.*``, ``lossAV.FC.*``, ``lossV.FC.*``.
:func:`checkpoint_to_ours` maps those names onto this module's; the block-internal names stay the
checkpoint's (``s_k`` spatial, ``t_k`` temporal, ``m_k`` cepstral convolutions, ``bn_*`` their batch norms,
``last`` the 1x1 mixing convolution).

Inference (:meth:`LightASD.fuse`) folds every batch norm into its convolution and runs the 3D
convolutions of the visual encoder as 2D ones (spatial: frames folded into the batch; temporal: pixels
folded into the width), which is the same arithmetic as the 3D form and several times faster on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GREY_MEAN = 0.4161  # of the training crops, on the 0..1 scale
GREY_STD = 0.1688
BN_EPS = 1e-3
EMBED = 128
MFCC_PER_FRAME = 4  # 100 Hz MFCC rows per 25 fps video frame

# checkpoint prefix -> this module's prefix
CHECKPOINT_PREFIXES = (
    ("model.visualEncoder.", "visual."),
    ("model.audioEncoder.", "audio."),
    ("model.GRU.gru_forward.", "temporal.forward_gru."),
    ("model.GRU.gru_backward.", "temporal.backward_gru."),
    ("lossAV.FC.", "speaking_head."),
    ("lossV.FC.", "visual_head."),
)


def checkpoint_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's tensors under this module's names, and the keys no prefix maps (left as they are,
    so strict loading names them)."""
    out, unknown = {}, []
    for key, value in state.items():
        for theirs, ours in CHECKPOINT_PREFIXES:
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            out[key] = value
            unknown.append(key)
    return out, unknown


def ours_to_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This module's state dict under the checkpoint's names (what ``make-tiny`` writes, so a random model
    has the public file's layout)."""
    out = {}
    for key, value in state.items():
        for theirs, ours in CHECKPOINT_PREFIXES:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            raise KeyError(f"no checkpoint name for {key}")
    return out


def _bn(kind: type[nn.Module], channels: int) -> nn.Module:
    return kind(channels, eps=BN_EPS, momentum=0.01)


def _fold(conv_weight: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free convolution followed by an eval-mode batch norm, as one convolution (weight, bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv_weight * scale.reshape(-1, *([1] * (conv_weight.dim() - 1)))
    return w.detach().clone(), (bn.bias - bn.running_mean * scale).detach().clone()


class VisualBlock(nn.Module):
    """Two paths (k = 3, 5), each a spatial ``1 x k x k`` then a temporal ``k x 1 x 1`` 3D convolution with
    batch norm and ReLU; their sum goes through a 1x1x1 convolution. ``down``: the spatial convolutions use
    stride 2."""

    def __init__(self, cin: int, cout: int, down: bool = False):
        super().__init__()
        self.stride = 2 if down else 1
        for k in (3, 5):
            setattr(self, f"s_{k}", nn.Conv3d(cin, cout, (1, k, k), stride=(1, self.stride, self.stride),
                                              padding=(0, k // 2, k // 2), bias=False))
            setattr(self, f"bn_s_{k}", _bn(nn.BatchNorm3d, cout))
            setattr(self, f"t_{k}", nn.Conv3d(cout, cout, (k, 1, 1), padding=(k // 2, 0, 0), bias=False))
            setattr(self, f"bn_t_{k}", _bn(nn.BatchNorm3d, cout))
        self.last = nn.Conv3d(cout, cout, 1, bias=False)
        self.bn_last = _bn(nn.BatchNorm3d, cout)
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, T, H, W]`` (the 3D form, as trained)."""
        paths = []
        for k in (3, 5):
            y = F.relu(getattr(self, f"bn_s_{k}")(getattr(self, f"s_{k}")(x)))
            paths.append(F.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y))))
        return F.relu(self.bn_last(self.last(paths[0] + paths[1])))

    def fuse(self) -> None:
        """Fold the batch norms into the convolutions, reshaped for the 2D forward."""
        f: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for k in (3, 5):
            w, b = _fold(getattr(self, f"s_{k}").weight, getattr(self, f"bn_s_{k}"))
            f[f"s_{k}"] = (w[:, :, 0].contiguous(), b)  # [O, I, k, k]
            w, b = _fold(getattr(self, f"t_{k}").weight, getattr(self, f"bn_t_{k}"))
            f[f"t_{k}"] = (w[:, :, :, :, 0].contiguous(), b)  # [O, I, k, 1]: along time (height of [B, C, T, HW])
        w, b = _fold(self.last.weight, self.bn_last)
        f["last"] = (w[:, :, 0], b)  # [O, I, 1, 1]
        # buffers, not state: they follow .to(device) and never enter the state dict
        for name, (w, b) in f.items():
            self.register_buffer(f"fused_{name}_weight", w.contiguous(memory_format=torch.channels_last),
                                 persistent=False)
            self.register_buffer(f"fused_{name}_bias", b, persistent=False)
        self.fused = True

    def _conv(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"fused_{name}_weight"), getattr(self, f"fused_{name}_bias")

    def forward_frames(self, x: torch.Tensor, tracks: int) -> torch.Tensor:
        """The fused form. ``x``: ``[B*T, C, H, W]`` frames of ``tracks`` (= B) tracks in channels-last memory
        (physically ``[B, T, H, W, C]``). That memory read as ``[B, C, T, H*W]`` (channels last) is what the
        temporal convolutions need, so no layout copy happens between the spatial and temporal ones."""
        assert self.fused, "call fuse() first"
        b_ = tracks
        n = x.shape[0]
        t = n // b_
        out = None
        for k in (3, 5):
            y = F.relu_(F.conv2d(x, *self._conv(f"s_{k}"), stride=self.stride, padding=k // 2))
            ho, wo = y.shape[-2:]
            cy = y.shape[1]
            y = y.permute(0, 2, 3, 1).reshape(b_, t, ho * wo, cy).permute(0, 3, 1, 2)  # a view: [B, C, T, HW]
            y = F.relu_(F.conv2d(y, *self._conv(f"t_{k}"), padding=(k // 2, 0)))
            out = y if out is None else out.add_(y)
        assert out is not None
        out = F.relu_(F.conv2d(out, *self._conv("last")))
        return out.permute(0, 2, 3, 1).reshape(n, ho, wo, -1).permute(0, 3, 1, 2)  # a view: [B*T, C, H, W]


class AudioBlock(nn.Module):
    """Two paths (k = 3, 5), each a ``k x 1`` convolution along the cepstral axis then a ``1 x k`` one along
    time, with batch norm and ReLU; their sum goes through a 1x1 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        for k in (3, 5):
            setattr(self, f"m_{k}", nn.Conv2d(cin, cout, (k, 1), padding=(k // 2, 0), bias=False))
            setattr(self, f"bn_m_{k}", _bn(nn.BatchNorm2d, cout))
            setattr(self, f"t_{k}", nn.Conv2d(cout, cout, (1, k), padding=(0, k // 2), bias=False))
            setattr(self, f"bn_t_{k}", _bn(nn.BatchNorm2d, cout))
        self.last = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_last = _bn(nn.BatchNorm2d, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, cepstra, time]``."""
        paths = []
        for k in (3, 5):
            y = F.relu(getattr(self, f"bn_m_{k}")(getattr(self, f"m_{k}")(x)))
            paths.append(F.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y))))
        return F.relu(self.bn_last(self.last(paths[0] + paths[1])))


def _halve_time(x: torch.Tensor) -> torch.Tensor:
    """Max over 3 steps, stride 2, along the last axis (length L -> ceil(L / 2))."""
    return F.max_pool2d(x, (1, 3), stride=(1, 2), padding=(0, 1))


def _halve_space(x: torch.Tensor) -> torch.Tensor:
    """Max over 3x3, stride 2, per frame (``[N, C, H, W]``)."""
    return F.max_pool2d(x, 3, stride=2, padding=1)


def _halve_space_3d(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    y = _halve_space(x.reshape(b, c * t, h, w))
    return y.reshape(b, c, t, *y.shape[-2:])


class VisualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = VisualBlock(1, 32, down=True)
        self.block2 = VisualBlock(32, 64)
        self.block3 = VisualBlock(64, 128)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """``faces``: ``[B, T, 112, 112]`` grey 0..255 -> ``[B, T, 128]``."""
        b, t = faces.shape[:2]
        x = (faces / 255.0 - GREY_MEAN) / GREY_STD
        if self.block1.fused:
            x = x.reshape(b * t, 1, *x.shape[-2:]).contiguous(memory_format=torch.channels_last)
            x = self.block1.forward_frames(x, b)
            x = self.block2.forward_frames(_halve_space(x), b)
            x = self.block3.forward_frames(_halve_space(x), b)  # [B*T, C, H, W]
            return x.amax(dim=(2, 3)).reshape(b, t, -1)
        x = self.block1(x.unsqueeze(1))
        x = self.block2(_halve_space_3d(x))
        x = self.block3(_halve_space_3d(x))  # [B, C, T, H, W]
        return x.amax(dim=(3, 4)).transpose(1, 2)


class AudioEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = AudioBlock(1, 32)
        self.block2 = AudioBlock(32, 64)
        self.block3 = AudioBlock(64, 128)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``mfcc``: ``[B, 4T, 13]`` -> ``[B, T, 128]``."""
        x = mfcc.transpose(1, 2).unsqueeze(1)  # [B, 1, 13, 4T]
        x = _halve_time(self.block1(x))
        x = _halve_time(self.block2(x))
        x = self.block3(x)
        return x.mean(dim=2).transpose(1, 2)


class BidirectionalContext(nn.Module):
    """A GRU over the sequence, GELU, a second GRU over the reversed result, GELU: each frame's vector
    sees the frames before it (first pass) and after it (second pass)."""

    def __init__(self, width: int = EMBED):
        super().__init__()
        self.forward_gru = nn.GRU(width, width, batch_first=True)
        self.backward_gru = nn.GRU(width, width, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.forward_gru(x)[0])
        x = self.backward_gru(x.flip(1))[0].flip(1)
        return F.gelu(x)


class LightASD(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = VisualEncoder()
        self.audio = AudioEncoder()
        self.temporal = BidirectionalContext()
        self.speaking_head = nn.Linear(EMBED, 2)
        self.visual_head = nn.Linear(EMBED, 2)  # training aid of the paper; loaded, unused here

    def fuse(self) -> LightASD:
        """Inference form (eval mode, batch norms folded, 2D convolutions); same outputs."""
        self.eval()
        for block in (self.visual.block1, self.visual.block2, self.visual.block3):
            block.fuse()
        return self

    def encode_faces(self, faces: torch.Tensor) -> torch.Tensor:
        return self.visual(faces)

    def encode_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.audio(mfcc)

    def speaking_logits(self, face_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` speaking logits from per-frame face and audio embeddings ``[B, T, 128]`` each."""
        return self.speaking_head(self.temporal(face_emb + audio_emb))[..., 1]

    def speaking_logits_fused(self, fused: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` speaking logits from already summed face + audio embeddings ``[B, T, 128]``."""
        return self.speaking_head(self.temporal(fused))[..., 1]

    def forward(self, mfcc: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """``mfcc`` ``[B, 4T, 13]``, ``faces`` ``[B, T, 112, 112]`` -> speaking logits ``[B, T]``."""
        return self.speaking_logits(self.encode_faces(faces), self.encode_audio(mfcc))
