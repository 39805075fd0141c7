"""The Embedding Router (Bind-Your-Avatar §3.3): which character, if any, each visual token belongs to.

Visual tokens live on the video model's latent token grid (T' x H' x W', 13 x 30 x 45 at 49 x 480 x 720). Here
a small patch encoder makes them from the frames (the real model takes them from its DiT), mirroring the
VAE + patchify geometry: space is reduced by ``spatial_stride x patch``, time by ``temporal_stride`` with the
first frame alone (it is repeated ``temporal_stride - 1`` times in front, as a causal VAE pads it). Each
character's face embedding comes from its reference image through a small CNN shared by all characters,
so the router is equivariant to the order of the characters: it must bind tokens to faces by appearance.

Each of the L layers is spatio-temporal self-attention over all tokens with 3D rotary position embedding,
then a correspondence step: a token's query against every face's key gives character logits, a learned
projection of the token gives the background logit; their softmax (the correspondence weights) mixes the
faces' values (and a learned background value) back into the token. Those per-layer n + 1 logits are the
layer's mask prediction (background is class 0, character k is class k + 1); the last layer's is the
router's output, and the spread of the predictions across layers is what the layer-variance loss shrinks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mtcc.media.geometry import LatentGeometry

from .config import ModelConfig


class RouterOutput(NamedTuple):
    logits: torch.Tensor  # [B, N, n+1] of the last layer; class 0 background, k+1 character k
    layer_logits: torch.Tensor  # [L, B, N, n+1]


def rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of a head given to (t, h, w): 3/8 each to the two spatial axes, the rest to time
    (CogVideoX's split), every part even so it holds whole rotation pairs."""
    dh = (3 * head_dim // 8) // 2 * 2
    dt = head_dim - 2 * dh
    if dt <= 0 or dt % 2:
        raise ValueError(f"head_dim {head_dim} cannot be split into even (t, h, w) parts")
    return dt, dh, dh


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float) -> torch.Tensor:
    """float64 ``[T*H*W, head_dim/2]``: rotation angle of each pair of each token, tokens in (t, h, w) order."""
    pos = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in grid), indexing="ij"), -1)
    pos = pos.reshape(-1, 3)
    parts = []
    for axis, d in enumerate(rope_dims(head_dim)):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        parts.append(pos[:, axis:axis + 1] * freqs[None])
    return torch.cat(parts, dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` ``[..., N, head_dim]`` by the token's angles."""
    x2 = x.float().unflatten(-1, (-1, 2))
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class PatchEncoder(nn.Module):
    def __init__(self, geo: LatentGeometry, hidden: int, dim: int):
        super().__init__()
        s, p, self.ts = geo.spatial_stride, geo.patch, geo.temporal_stride
        self.spatial = nn.Conv3d(3, hidden, kernel_size=(1, s, s), stride=(1, s, s))
        self.st = nn.Conv3d(hidden, dim, kernel_size=(self.ts, p, p), stride=(self.ts, p, p))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.spatial(video))
        if self.ts > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.ts - 1, -1, -1), x], dim=2)
        return self.st(x).flatten(2).transpose(1, 2)  # [B, N, dim]


class FaceEncoder(nn.Module):
    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for c in channels:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            prev = c
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, dim))

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        b, n = ref.shape[:2]
        return self.net(ref.flatten(0, 1)).unflatten(0, (b, n))  # [B, n, dim]


class RouterLayer(nn.Module):
    """Self-attention with 3D RoPE, then token x face correspondence. The last layer only predicts: its
    correspondence logits are the output, so it has no update path (DDP wants every parameter used)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, last: bool = False):
        super().__init__()
        self.heads, self.last = heads, last
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_corr = nn.LayerNorm(dim)
        self.norm_face = nn.LayerNorm(dim)
        self.q_tok = nn.Linear(dim, dim)
        self.k_face = nn.Linear(dim, dim)
        self.bg_logit = nn.Linear(dim, 1)
        if not last:
            self.v_face = nn.Linear(dim, dim)
            self.bg_value = nn.Parameter(torch.zeros(dim))
            self.mix = nn.Linear(dim, dim)
            self.norm_mlp = nn.LayerNorm(dim)
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, faces: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        h, f = self.norm_corr(x), self.norm_face(faces)
        chars = torch.einsum("bnd,bkd->bnk", self.q_tok(h), self.k_face(f)) / math.sqrt(d)
        logits = torch.cat([self.bg_logit(h), chars], dim=-1)  # [B, N, n+1]
        if self.last:
            return x, logits
        values = torch.cat([self.bg_value.expand(b, 1, d).to(f.dtype), self.v_face(f)], dim=1)
        x = x + self.mix(torch.einsum("bnk,bkd->bnd", logits.softmax(-1).to(values.dtype), values))
        x = x + self.mlp(self.norm_mlp(x))
        return x, logits


class EmbeddingRouter(nn.Module):
    """``forward(video [B,3,F,H,W] in [-1,1], ref [B,n,3,S,S] in [-1,1]) -> RouterOutput``."""

    def __init__(self, cfg: ModelConfig, geo: LatentGeometry):
        super().__init__()
        self.cfg, self.geo = cfg, geo
        self.patch = PatchEncoder(geo, cfg.patch_hidden, cfg.dim)
        self.face = FaceEncoder(list(cfg.face_channels), cfg.dim)
        self.layers = nn.ModuleList(RouterLayer(cfg.dim, cfg.heads, cfg.mlp_ratio, last=i == cfg.layers - 1)
                                    for i in range(cfg.layers))
        self.norm_tok = nn.LayerNorm(cfg.dim)
        angles = rope_angles(geo.grid, cfg.dim // cfg.heads, cfg.rope_theta)
        # derived from the geometry: rebuilt on load, never checkpointed
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    def forward(self, video: torch.Tensor, ref: torch.Tensor) -> RouterOutput:
        if ref.shape[1] != self.cfg.characters:
            raise ValueError(f"ref holds {ref.shape[1]} characters, the router is built for {self.cfg.characters}")
        x = self.norm_tok(self.patch(video))
        if x.shape[1] != self.rope_cos.shape[0]:
            raise ValueError(f"video gives {x.shape[1]} tokens, geometry {self.geo.grid} has {self.rope_cos.shape[0]}")
        faces = self.face(ref)
        per_layer = []
        for layer in self.layers:
            x, logits = layer(x, faces, self.rope_cos, self.rope_sin)
            per_layer.append(logits)
        stacked = torch.stack(per_layer)
        return RouterOutput(stacked[-1], stacked)
